"""`lolcats plan`: what linearizing a model involves, computed on the meta device."""

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from .config import LinearizeConfig
from .convert import attention_parameters, linearize, linearized_attentions
from .lora import LoraSettings, lora_parameter_count
from .presets import model_config


@dataclass
class Plan:
    """Sizes of a linearization, all counts exact."""

    model: str
    num_layers: int
    linearized_layers: list[int]
    total_params: int
    stage1_params: int
    stage2_params: int
    state_bytes: int  # decode state per sequence, linearized layers (constant in context)
    kv_bytes_per_token: int  # softmax KV cache per token per sequence, all layers of the base
    softmax_kv_bytes_per_token: int  # the same for the layers kept as softmax

    def decode_bytes(self, context: int, linearized: bool) -> int:
        """Decode memory per sequence at `context` tokens: KV cache vs lolcats state."""
        if not linearized:
            return self.kv_bytes_per_token * context
        return self.state_bytes + self.softmax_kv_bytes_per_token * context


def make_plan(model_name: str, lin: LinearizeConfig, lora: LoraSettings,
              dtype: torch.dtype = torch.bfloat16) -> Plan:
    """Build the model on the meta device, linearize it and count."""
    cfg = model_config(model_name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    linearize(model, lin)
    attns = linearized_attentions(model)
    elt = torch.finfo(dtype).bits // 8
    head_dim = attns[0].head_dim if attns else cfg.head_dim
    kv_per_layer = 2 * cfg.num_key_value_heads * head_dim * elt
    state = 0
    for a in attns:
        state += 2 * a.num_kv_heads * a.window * a.head_dim * elt + a.window  # ring buffer + validity
        if a.linear:
            state += a.key_heads * a.feature_dim * (a.head_dim + 1) * 4  # S and z in fp32
    n_layers = cfg.num_hidden_layers
    kept = n_layers - len(attns)
    return Plan(
        model=model_name,
        num_layers=n_layers,
        linearized_layers=[a.layer_idx for a in attns],
        total_params=sum(p.numel() for p in model.parameters()),
        stage1_params=sum(p.numel() for p in attention_parameters(model)),
        stage2_params=lora_parameter_count(model, lora),
        state_bytes=state,
        kv_bytes_per_token=kv_per_layer * n_layers,
        softmax_kv_bytes_per_token=kv_per_layer * kept,
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_plan(plan: Plan, lin: LinearizeConfig, lora: LoraSettings,
                contexts: tuple[int, ...] = (4096, 32768)) -> str:
    """Human-readable report of a plan."""
    n_lin = len(plan.linearized_layers)
    kept = sorted(set(range(plan.num_layers)) - set(plan.linearized_layers))
    fm = f"{lin.feature_map} (f={lin.feature_dim})"
    pct = lambda n: f"{100 * n / plan.total_params:.3f}%"  # noqa: E731
    lines = [
        f"model            {plan.model}: {plan.num_layers} layers, {human_count(plan.total_params)} parameters",
        f"attention        {lin.attention}, window {lin.window}, feature map {fm}, "
        f"key maps per {'KV group' if lin.share_key_map else 'query head'}",
        f"layers converted {n_lin} of {plan.num_layers}"
        + (f" (softmax kept: {kept})" if kept else ""),
        f"stage 1 trains   {human_count(plan.stage1_params)} parameters ({pct(plan.stage1_params)}): "
        "feature maps + gates",
        f"stage 2 trains   {human_count(plan.stage2_params)} parameters ({pct(plan.stage2_params)}): "
        f"LoRA r={lora.r} on {','.join(lora.target_modules)}",
        "",
        "decode memory per sequence (bf16 KV, fp32 state)",
        f"{'context':>10}  {'softmax KV cache':>18}  {'lolcats':>12}  {'ratio':>7}",
    ]
    for t in contexts:
        kv, ours = plan.decode_bytes(t, False), plan.decode_bytes(t, True)
        lines.append(f"{t:>10,}  {human_bytes(kv):>18}  {human_bytes(ours):>12}  {kv / ours:>6.1f}x")
    return "\n".join(lines)
