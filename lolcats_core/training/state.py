"""Trainer checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds `tensors.safetensors` (trained parameters, optimizer state,
RNG state) and `state.json` (step, data position, scheduler state, best metric, ...).
It is written to `<dir>.tmp` and renamed, so a crash never leaves a half-written checkpoint;
`state.json` is written last, so a `.tmp` that holds it is complete (`saved_states`).
"""

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def saved_states(path: Path) -> dict[int, Path]:
    """The complete checkpoints at `path` and at its `.tmp` (written, not yet renamed), by step."""
    states = {}
    for folder in (Path(path), _tmp(Path(path))):
        if (folder / "state.json").exists():
            states[json.loads((folder / "state.json").read_text())["info"]["step"]] = folder
    return states


def settle_train_state(path: Path, step: int | None) -> None:
    """Leave at `path` the complete checkpoint of `step` (taken from `.tmp` if it is there) and
    nothing else; `step` None removes both (start afresh)."""
    path = Path(path)
    keep = saved_states(path).get(step) if step is not None else None
    if step is not None and keep is None:
        raise ValueError(f"no checkpoint of step {step} at {path}")
    for folder in (path, _tmp(path)):
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)
    if keep is not None and keep != path:
        keep.rename(path)


def save_train_state(path: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     scheduler, info: dict, before_commit: Callable[[], None] | None = None) -> None:
    """Atomically write parameters, optimizer, scheduler, RNG and `info` to `path`.

    before_commit: called once the new checkpoint is complete at `<path>.tmp` and before it
    replaces `path` (ranks that must commit together wait for each other there).
    """
    path = Path(path)
    tmp = _tmp(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in params.items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "tensors.safetensors")
    py_state = random.getstate()
    meta = {
        "info": info,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    if before_commit is not None:
        before_commit()
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def load_train_state(path: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     scheduler) -> dict:
    """Restore what `save_train_state` wrote (parameters in place); returns `info`."""
    path = Path(path)
    tensors = load_file(path / "tensors.safetensors")
    meta = json.loads((path / "state.json").read_text())
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    v, st, g = meta["rng_python"]
    random.setstate((v, tuple(st), g))
    return meta["info"]
