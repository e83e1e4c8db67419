"""Tiny random models built from configs (no download) shared by the tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as T  # noqa: E402

_COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64)

ARCH_CONFIGS = {
    "bert": lambda: T.BertConfig(**_COMMON),
    "roberta": lambda: T.RobertaConfig(**_COMMON),
    "xlm-roberta": lambda: T.XLMRobertaConfig(**_COMMON),
    "distilbert": lambda: T.DistilBertConfig(vocab_size=96, dim=32, n_layers=4, n_heads=2, hidden_dim=64,
                                             max_position_embeddings=64),
    "electra": lambda: T.ElectraConfig(embedding_size=16, **_COMMON),
    "deberta-v2": lambda: T.DebertaV2Config(relative_attention=True, position_buckets=8,
                                            pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", **_COMMON),
    "mpnet": lambda: T.MPNetConfig(**_COMMON),
    "modernbert": lambda: T.ModernBertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=4,
                                             num_attention_heads=2, intermediate_size=64,
                                             max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                             eos_token_id=2, cls_token_id=1, sep_token_id=2),
    # all-MiniLM-L6-v2's layout: a plain BERT (6 blocks, hidden 384) -- shrunk here
    "minilm": lambda: T.BertConfig(vocab_size=96, hidden_size=24, num_hidden_layers=6, num_attention_heads=2,
                                   intermediate_size=48, max_position_embeddings=64),
}


def tiny_model(arch: str = "bert", num_labels: int = 2, seed: int = 0, **overrides) -> T.PreTrainedModel:
    config = ARCH_CONFIGS[arch]()
    for key, value in overrides.items():
        setattr(config, key, value)
    config.num_labels = num_labels
    torch.manual_seed(seed)
    return T.AutoModelForSequenceClassification.from_config(config)


@pytest.fixture
def bert():
    return tiny_model("bert")


_DECODER = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# decoder LLMs: the layout of Llama / Qwen2 / Mistral / Gemma (RMSNorm, rotary, grouped-query attention) and GPT-2
DECODER_CONFIGS = {
    "llama": lambda: T.LlamaConfig(**_DECODER),
    "qwen2": lambda: T.Qwen2Config(**_DECODER),
    "mistral": lambda: T.MistralConfig(**_DECODER),
    "gemma": lambda: T.GemmaConfig(head_dim=8, **_DECODER),
    "gpt2": lambda: T.GPT2Config(vocab_size=96, n_embd=32, n_layer=4, n_head=2, n_positions=64, pad_token_id=0,
                                 bos_token_id=1, eos_token_id=2),
}
# the modules LoRA adapts in each (GPT-2 fuses q, k, v into one Conv1D)
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
                "gemma": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


def tiny_decoder(arch: str = "llama", causal_lm: bool = False, num_labels: int = 2, seed: int = 0,
                 **overrides) -> T.PreTrainedModel:
    """A tiny random decoder: ``*ForSequenceClassification`` (the score head on the last token), or
    ``*ForCausalLM`` with ``causal_lm=True`` (tied input/output embeddings unless ``tie_word_embeddings=False``)."""
    config = DECODER_CONFIGS[arch]()
    for key, value in overrides.items():
        setattr(config, key, value)
    config.num_labels = num_labels
    torch.manual_seed(seed)
    auto = T.AutoModelForCausalLM if causal_lm else T.AutoModelForSequenceClassification
    return auto.from_config(config)


def tiny_lora(arch: str = "llama", seed: int = 0, **lora):
    """``tiny_decoder(arch)`` wrapped by PEFT: LoRA r=4 on the attention projections, the score head trained whole."""
    from peft import LoraConfig, get_peft_model

    settings = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS[arch], task_type="SEQ_CLS")
    settings.update(lora)
    return get_peft_model(tiny_decoder(arch, seed=seed), LoraConfig(**settings))
