"""Helpers shared by the tests (importable as `helpers`: pytest adds tests/ to the path)."""

import torch


def make_tiny_config(model_type: str = "llama", **overrides):
    """A 2-layer config with GQA (4 query heads, 2 KV heads, head dim 16)."""
    from transformers import AutoConfig

    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, pad_token_id=0)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def randomize_attention(model, std: float = 0.3) -> None:
    """Move feature maps and gates away from their init so tests see trained-like values."""
    from lolcats_core.convert import attention_parameters

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in attention_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * std)


def descendant_pids(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (e.g. a worker's flow-run subprocess)."""
    from pathlib import Path

    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def wait_for(pred, timeout: float, what: str, poll: float = 0.2):
    """The first truthy value of `pred()`, polled every `poll` s; AssertionError naming `what`
    after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
