"""A model's weights read piecewise from its safetensors: a model built on the meta device
(structure only, no memory), then only the parts a process needs read from the files.

Under torchrun each rank materialises its share only: stage 1 block-wise its block of decoder
layers (`lolcats_core.training.blockwise.load_rank_block`), stage 2 sharded nothing but what
rank 0 broadcasts into its shards (`lolcats_core.training.sharded`).
"""

import json
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from .errors import ConfigError
from .model_parts import reset_rotary

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_map(directory: Path) -> dict[str, Path]:
    """The safetensors file of `directory` that holds each tensor, by tensor name (from the
    index of a sharded checkpoint, else the header of model.safetensors); {} when it has none."""
    directory = Path(directory)
    if (directory / INDEX).exists():
        where = json.loads((directory / INDEX).read_text())["weight_map"]
        return {name: directory / file for name, file in where.items()}
    if not (directory / SINGLE).exists():
        return {}
    with safe_open(directory / SINGLE, framework="pt") as f:
        return {name: directory / SINGLE for name in f.keys()}


def read_tensors(directory: Path, names: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The named tensors of `directory`'s safetensors (in `dtype` when given), each file opened
    once; no other tensor is read."""
    where = weight_map(directory)
    names = list(names)
    missing = [n for n in names if n not in where]
    if missing:
        raise ConfigError(f"the safetensors of {directory} lack {len(missing)} weights the model needs: {missing[:5]}")
    out = {}
    for file in sorted({where[n] for n in names}):
        with safe_open(file, framework="pt") as f:
            for name in (n for n in names if where[n] == file):
                tensor = f.get_tensor(name)
                out[name] = tensor if dtype is None else tensor.to(dtype)
    return out


def empty_model(config, dtype: torch.dtype) -> nn.Module:
    """The causal LM of `config` with its parameters on the meta device (no memory, no init)
    and its rotary tables, computed from the config, on the host."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    reset_rotary(model, "cpu")
    return model


def load_parts(model: nn.Module, directory: Path, parts: Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Give the submodules `parts` of `model` (built by `empty_model`) their weights from the
    safetensors of `directory`, in `dtype`, on the host; every other parameter stays on meta."""
    names = {module: name for name, module in model.named_modules()}
    prefixes = tuple(names[part] + "." for part in parts)
    wanted = [n for n, _ in model.named_parameters(remove_duplicate=False) if n.startswith(prefixes)]
    model.load_state_dict(read_tensors(directory, wanted, dtype), strict=False, assign=True)
