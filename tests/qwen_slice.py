"""The real Qwen2.5-Coder-0.5B (preset `qwen2.5-0.5b`) cut down to chosen decoder layers.

    from qwen_slice import load_qwen_slice
    model, tok = load_qwen_slice([2, 8], dtype=torch.bfloat16)   # layers 2 and 8, as layers 0, 1

The first call builds the dequantised copy of the preset (~3 minutes on 2 CPU cores).
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load_qwen_slice(layers=(0, 1), dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer): the real model keeping only `layers`, in the order given.

    The kept layers are renumbered 0..n-1 (attention `layer_idx`, `config.num_hidden_layers`,
    `config.layer_types`), so KV caches, `linearize` and `generate` treat the slice as a whole
    model; embeddings, final norm and the untied lm_head are the real ones.
    """
    from lolcats_core.presets import gguf_preset_dir

    path = gguf_preset_dir("qwen2.5-0.5b")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    kept = [model.model.layers[i] for i in layers]
    for new_idx, layer in enumerate(kept):
        layer.self_attn.layer_idx = new_idx
    model.model.layers = torch.nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    return model.to(device), AutoTokenizer.from_pretrained(path)
