"""A tiny real setup for flow tests: a random 2-layer Llama (SmolLM2's vocabulary and
tokenizer) saved to a directory, and a run config with budgets of seconds."""

from __future__ import annotations

from pathlib import Path

import yaml


def make_tiny_base(root: Path) -> Path:
    """Save a random 2-layer Llama + the SmolLM2 tokenizer under `root/base` (once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lolcats_core.presets import smollm2_dir

    target = Path(root) / "base"
    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=2048, tie_word_embeddings=True,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(target)
    tok.save_pretrained(target)
    return target


def tiny_tree(name: str, base: Path, root: Path, **stage1) -> dict:
    """A run config (as a dict) for the tiny base: a few steps per stage, small evaluations."""
    return {
        "name": name, "model": str(base), "dtype": "float32", "device": "cpu",
        "output_dir": str(Path(root) / "runs"),
        "linearize": {"feature_map": "hedgehog", "feature_dim": 16, "attention": "hybrid", "window": 16},
        "data": {"mix": {"sharegpt": 1.0}, "seq_len": 64, "train_tokens": 4096, "val_tokens": 256,
                 "cache_dir": str(Path(root) / "data")},
        "stage1": {"batch_size": 2, "max_steps": 6, "eval_every": 3, **stage1},
        "stage2": {"batch_size": 2, "max_steps": 4, "eval_every": 2,
                   "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "eval": {"ppl_max_rows": 4, "passkey_lengths": [128], "passkey_depths": [0.5],
                 "passkey_trials": 1, "tasks": ["lambada"], "limit": 4, "batch_size": 4},
        "gate": {"max_perplexity_ratio": 100.0},
    }


def write_config(path: Path, tree: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def wait_flow_run(flow_run_id, timeout: float = 300):
    """The flow run once it is final (polls the API)."""
    import time
    from uuid import UUID

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(UUID(str(flow_run_id)))
            if run.state.is_final() or time.monotonic() > deadline:
                return run
            time.sleep(1)


def task_runs(flow_run_id) -> list:
    """The task runs of a flow run, read from the Prefect API."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))])))
