"""`lolcats plan`: what linearizing a model involves, computed on the meta device."""

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM

from .config import LinearizeConfig
from .convert import attention_parameters, decoder_layers, linearize, linearized_attentions
from .distributed import layer_blocks
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
    gpus: int = 1
    # stage 1 per rank: {"rank", "layers": [first, last], "linearized", "weight_bytes", "train_bytes"}
    stage1_blocks: list[dict] = field(default_factory=list)
    stage2_rank_bytes: int = 0  # stage 2 per rank (data parallel): every weight + LoRA training state
    stage2_sharded_rank_bytes: int = 0  # the same with the weights sharded over the ranks (FSDP2)

    def decode_bytes(self, context: int, linearized: bool) -> int:
        """Decode memory per sequence at `context` tokens: KV cache vs lolcats state."""
        if not linearized:
            return self.kv_bytes_per_token * context
        return self.state_bytes + self.softmax_kv_bytes_per_token * context


TRAIN_BYTES_PER_PARAM = 16  # fp32 parameter, gradient and two AdamW moments
DDP_MEMORY_SHARE = 0.5  # stage 2 keeps every weight on every GPU up to this share of its memory


def stage2_parallel(setting: str, rank_bytes: int, device_bytes: int | None) -> str:
    """Stage 2's form on several ranks, "ddp" or "fsdp": `setting` unless it is "auto"; then
    FSDP2 when every weight plus the LoRA training state (`Plan.stage2_rank_bytes`) exceeds
    `DDP_MEMORY_SHARE` of the device's memory (the rest is left for activations), else DDP,
    always DDP on the CPU (`device_bytes` None)."""
    if setting != "auto":
        return setting
    return "fsdp" if device_bytes is not None and rank_bytes > DDP_MEMORY_SHARE * device_bytes else "ddp"


def stage1_blocks(model: torch.nn.Module, gpus: int, elt: int) -> list[dict]:
    """Block-wise stage 1 on `gpus` ranks: each rank's layers and device memory (weights in the
    model's dtype, fp32 trainable state; activations excluded). Rank 0 also holds the embeddings."""
    from .training.blockwise import layer_costs

    layers = decoder_layers(model)
    linear = {a.layer_idx: a for a in linearized_attentions(model)}
    out = []
    for rank, block in enumerate(layer_blocks(layer_costs(len(layers), linear), gpus)):
        trained = sum(p.numel() for i in block if i in linear for p in linear[i].transfer_parameters())
        frozen = sum(p.numel() for i in block for p in layers[i].parameters()) - trained
        if rank == 0:
            frozen += model.get_input_embeddings().weight.numel()
        out.append({"rank": rank, "layers": [block.start, block.stop - 1],
                    "linearized": sum(i in linear for i in block),
                    "weight_bytes": frozen * elt, "train_bytes": trained * TRAIN_BYTES_PER_PARAM})
    return out


def make_plan(model_name: str, lin: LinearizeConfig, lora: LoraSettings,
              dtype: torch.dtype = torch.bfloat16, gpus: int = 1) -> Plan:
    """Build the model on the meta device, linearize it and count (per rank on `gpus` ranks)."""
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
    total = sum(p.numel() for p in model.parameters())
    stage2_params = lora_parameter_count(model, lora)
    return Plan(
        model=model_name,
        num_layers=n_layers,
        linearized_layers=[a.layer_idx for a in attns],
        total_params=total,
        stage1_params=sum(p.numel() for p in attention_parameters(model)),
        stage2_params=stage2_params,
        state_bytes=state,
        kv_bytes_per_token=kv_per_layer * n_layers,
        softmax_kv_bytes_per_token=kv_per_layer * kept,
        gpus=gpus,
        stage1_blocks=stage1_blocks(model, gpus, elt),
        stage2_rank_bytes=total * elt + stage2_params * TRAIN_BYTES_PER_PARAM,
        stage2_sharded_rank_bytes=-(-total * elt // gpus) + stage2_params * TRAIN_BYTES_PER_PARAM,
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
    if plan.gpus > 1:
        lines += ["", f"training on {plan.gpus} GPUs (torchrun --nproc-per-node {plan.gpus} -m lolcats_core.cli train); "
                  "device memory without activations",
                  "stage 1, block-wise: weights of the rank's layers (rank 0: + embeddings), fp32 trained state",
                  f"{'rank':>6}  {'layers':>8}  {'linearized':>10}  {'weights':>10}  {'trained':>10}"]
        for b in plan.stage1_blocks:
            first, last = b["layers"]
            lines.append(f"{b['rank']:>6}  {f'{first}-{last}':>8}  {b['linearized']:>10}  "
                         f"{human_bytes(b['weight_bytes']):>10}  {human_bytes(b['train_bytes']):>10}")
        lines += [f"stage 2, data parallel (global batch = micro-batch x {plan.gpus} x grad_accum), per GPU:",
                  f"  DDP   {human_bytes(plan.stage2_rank_bytes):>10}  every weight + fp32 LoRA state",
                  f"  FSDP2 {human_bytes(plan.stage2_sharded_rank_bytes):>10}  1/{plan.gpus} of the weights + fp32 "
                  "LoRA state (+ the layers being gathered)",
                  f"  distributed.stage2 auto takes FSDP2 when DDP's footprint exceeds {DDP_MEMORY_SHARE:.0%} "
                  "of a GPU's memory"]
    return "\n".join(lines)
