import pytest
import transformers as T
from conftest import ARCH_CONFIGS, tiny_model
from torch import nn

from hf_layerwise import UnsupportedModelError, discover_layers, layer_map


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_every_parameter_has_one_depth_and_blocks_are_ordered(arch):
    model = tiny_model(arch)
    lm = discover_layers(model)
    names = [n for n, _ in model.named_parameters()]
    assert set(lm.depths) == set(names)
    L = lm.num_layers
    assert L == (6 if arch == "minilm" else 4)
    assert set(lm.depths.values()) == set(range(L + 2))
    # every block's parameters sit at depth index+1, found through the module list
    blocks = model.get_submodule(lm.block_path)
    for i, block in enumerate(blocks):
        ids = {id(p) for p in block.parameters()}
        for n, p in model.named_parameters():
            if id(p) in ids:
                assert lm.depths[n] == i + 1
    emb = model.get_input_embeddings().weight
    assert [lm.depths[n] for n, p in model.named_parameters() if p is emb] == [0]


@pytest.mark.parametrize(
    "arch, depth0, head",
    [
        ("bert", "bert.embeddings.LayerNorm.weight", ["bert.pooler.dense.weight", "classifier.weight"]),
        ("xlm-roberta", "roberta.embeddings.position_embeddings.weight", ["classifier.out_proj.weight"]),
        ("distilbert", "distilbert.embeddings.LayerNorm.bias", ["pre_classifier.weight"]),
        ("electra", "electra.embeddings_project.weight", ["classifier.dense.weight"]),
        ("deberta-v2", "deberta.encoder.rel_embeddings.weight", ["pooler.dense.weight", "classifier.weight"]),
        ("deberta-v2", "deberta.encoder.LayerNorm.weight", ["classifier.bias"]),
        ("mpnet", "mpnet.encoder.relative_attention_bias.weight", ["classifier.out_proj.bias"]),
        ("modernbert", "model.embeddings.norm.weight", ["model.final_norm.weight", "head.dense.weight"]),
    ],
)
def test_shared_and_head_parameters(arch, depth0, head):
    depths = layer_map(tiny_model(arch))
    L = max(depths.values()) - 1
    assert depths[depth0] == 0
    for name in head:
        assert depths[name] == L + 1


def test_base_model_without_head():
    model = T.BertModel(ARCH_CONFIGS["bert"]())
    depths = layer_map(model)
    assert depths["embeddings.word_embeddings.weight"] == 0
    assert depths["encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["pooler.dense.weight"] == 5


def test_wrapped_model_names_are_understood():
    model = tiny_model("bert")

    class Wrapper(nn.Module):  # what DDP / accelerate put around a model
        def __init__(self, module):
            super().__init__()
            self.module = module

    depths = layer_map(Wrapper(model))
    assert depths["module.bert.encoder.layer.3.output.dense.weight"] == 4
    assert depths["module.classifier.weight"] == 5


def test_albert_explains_shared_weights():
    config = T.AlbertConfig(vocab_size=96, embedding_size=16, hidden_size=32, num_hidden_layers=4,
                            num_attention_heads=2, intermediate_size=64)
    with pytest.raises(UnsupportedModelError, match="shares its encoder weights across all 4 layers"):
        discover_layers(T.AlbertForSequenceClassification(config))


def test_cnn_lists_what_it_found():
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModelError, match=r"Module lists found: <root> \(Sequential of 5"):
        discover_layers(cnn)
    with pytest.raises(UnsupportedModelError, match=r"none \(top-level modules: conv \(Conv2d\)"):
        discover_layers(nn.ModuleDict({"conv": nn.Conv2d(3, 8, 3)}))


def test_wrong_layer_count_lists_module_lists():
    model = tiny_model("bert")
    model.config.num_hidden_layers = 7
    with pytest.raises(UnsupportedModelError, match=r"bert.encoder.layer \(ModuleList of 4 x BertLayer\)"):
        discover_layers(model)


def test_plain_module_list_without_config():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.head = nn.Linear(4, 2)

    depths = layer_map(Tiny())
    assert depths == {"embed.weight": 0, "blocks.0.weight": 1, "blocks.0.bias": 1, "blocks.1.weight": 2,
                      "blocks.1.bias": 2, "blocks.2.weight": 3, "blocks.2.bias": 3, "head.weight": 4,
                      "head.bias": 4}
