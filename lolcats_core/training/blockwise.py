"""Stage 1 on several ranks: each rank trains the attention of one contiguous block of layers.

Stage 1 is teacher-forced: the hidden states entering layer l are the frozen teacher's,
whatever the students learn, so a block of layers trains independently of the others once it
has the teacher's hidden states at its input. Rank r owns block r (`layer_blocks`, balanced by
`layer_costs`) and receives those hidden states from rank r-1, which sends its block's output
for every micro-batch, (B, T, hidden) in the model's dtype. The alternative, each rank running
the frozen layers before its block itself, needs no messages but leaves the last rank with the
forward of every layer: with a layer's forward costing about as much as its training, 8 ranks
would be at most ~1.8x faster than one. Passing on costs one message of B x T x hidden per
micro-batch and block boundary (16 MiB in bf16 for 1 x 1024 tokens of Llama 3 70B) and keeps
every rank's work at its block; rank r starts r micro-batches after rank 0 and otherwise runs
concurrently (sends are asynchronous), waiting for the others only at evaluations, whose
per-layer MSE every rank gathers so that all ranks see the single-process score, plateau
schedule and best step.

A rank reads only its block's weights from the base model's files (`load_rank_block`: its
layers, and the token embeddings on rank 0; no rank needs the final norm or the output head),
the rest of its model staying on the meta device, so that host memory per rank is its share
of the model. Each rank keeps its own trainer state (`<out_dir>/block-<r>-of-<N>`: resume with
the same number of ranks); at the end rank 0 gathers every block's best parameters into its
model, which the caller saves as the usual single checkpoint: a checkpoint holds the trained
parameters and a reference to the base model, never the frozen weights.
"""

import logging
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import LinearizeConfig
from ..convert import base_model, decoder_layers, linearized_attentions
from ..distributed import Ranks, layer_blocks
from ..errors import ConfigError
from ..presets import BaseModelRef, base_weights_dir, load_base_model
from ..weights import load_parts
from .execution import compiled_layers
from .loop import BatchSource, TrainConfig, TrainResult, restore_best, train_loop
from .state import saved_states, settle_train_state
from .transfer import attention_state_names, transfer_mode, transfer_step

log = logging.getLogger("lolcats.training")

LINEARIZED_LAYER_COST = 2.0  # a linearized layer (teacher forward + student forward/backward)
SOFTMAX_LAYER_COST = 1.0  # a layer kept as softmax (frozen forward only); an estimate, not measured


def layer_costs(num_layers: int, linearized: Iterable[int]) -> list[float]:
    """Relative stage-1 cost of each decoder layer, as `layer_blocks` balances them."""
    linear = set(linearized)
    return [LINEARIZED_LAYER_COST if i in linear else SOFTMAX_LAYER_COST for i in range(num_layers)]


def layer_block(num_layers: int, linearized: Iterable[int], ranks: Ranks) -> range:
    """The decoder layers rank `ranks.rank` trains when `linearized` are the linearized ones of
    `num_layers`; every block holds a linearized layer."""
    linear = sorted(linearized)
    blocks = layer_blocks(layer_costs(num_layers, linear), ranks.world_size)
    idle = [r for r, b in enumerate(blocks) if not set(b) & set(linear)]
    if idle:
        raise ConfigError(f"stage 1 on {ranks.world_size} ranks: the blocks of ranks {idle} "
                          f"({[f'{b.start}-{b.stop - 1}' for b in blocks]}) hold no linearized layer "
                          f"(linearized: {linear}); use fewer ranks")
    return blocks[ranks.rank]


def rank_block(model: nn.Module, ranks: Ranks) -> range:
    """The decoder layers rank `ranks.rank` trains of a linearized model (`layer_block`)."""
    return layer_block(len(decoder_layers(model)), [a.layer_idx for a in linearized_attentions(model)], ranks)


def load_rank_block(name_or_path: str, lin: LinearizeConfig, ranks: Ranks, dtype: torch.dtype,
                    ref: BaseModelRef | None = None):
    """The base model (to linearize with `lin`) with only what rank's block needs read from
    its files: the block's decoder layers, and the token embeddings for the first block (the
    others start from hidden states). The other weights stay on the meta device.

    ref: the base model's `BaseModelRef` when the caller has it (else read from the files).
    Returns (model, tokenizer, BaseModelRef) as `load_base_model`.
    """
    model, tokenizer, ref = load_base_model(name_or_path, dtype=dtype, device="meta", ref=ref)
    load_parts(model, base_weights_dir(name_or_path), block_parts(model, lin, ranks), dtype)
    return model, tokenizer, ref


def block_parts(model: nn.Module, lin: LinearizeConfig, ranks: Ranks) -> list[nn.Module]:
    """The modules of a base model (to linearize with `lin`) that rank's block needs: its
    decoder layers and, for the first block, the token embeddings."""
    num_layers = len(decoder_layers(model))
    block = layer_block(num_layers, set(range(num_layers)) - set(lin.softmax_layer_indices(num_layers)), ranks)
    inner = base_model(model).model
    return [*inner.layers[block.start:block.stop], *([inner.embed_tokens] if block.start == 0 else [])]


class PassThrough(nn.Module):
    """Stands in for a decoder layer outside the block: returns the hidden states it is given."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


@contextmanager
def block_only(model: nn.Module, block: range):
    """Make the decoder run `block` only: other layers pass their input on and the final norm is
    skipped, so `model.model(...)` returns the block's output hidden states (B, T, hidden)."""
    inner = base_model(model).model
    layers, norm = inner.layers, inner.norm
    skip = PassThrough()
    inner.layers = nn.ModuleList([layer if i in block else skip for i, layer in enumerate(layers)])
    inner.norm = nn.Identity()
    try:
        yield
    finally:
        inner.layers, inner.norm = layers, norm


class BlockPipe:
    """Runs a rank's block on the teacher's hidden states from the previous rank and sends its
    output to the next; rank 0 starts from the token ids."""

    def __init__(self, model: nn.Module, ranks: Ranks, device):
        self.inner = base_model(model).model
        self.ranks, self.device = ranks, device
        self.hidden_size = base_model(model).config.hidden_size
        self.dtype = self.inner.embed_tokens.weight.dtype
        self.sending: tuple[dist.Work, torch.Tensor] | None = None

    def run(self, input_ids: torch.Tensor) -> None:
        """Forward one micro-batch (B, T) of token ids through the block (inside `transfer_mode`)."""
        rank, world = self.ranks.rank, self.ranks.world_size
        if rank == 0:
            out = self.inner(input_ids=input_ids.to(self.device), use_cache=False).last_hidden_state
        else:
            hidden = torch.empty((*input_ids.shape, self.hidden_size), dtype=self.dtype, device=self.device)
            dist.recv(hidden, rank - 1)
            out = self.inner(inputs_embeds=hidden, use_cache=False).last_hidden_state
        if rank < world - 1:
            self.flush()
            out = out.contiguous()
            self.sending = (dist.isend(out, rank + 1), out)

    def flush(self) -> None:
        """Wait until the last output sent has left."""
        if self.sending is not None:
            self.sending[0].wait()
            self.sending = None


def place_block(model: nn.Module, block: range, device) -> None:
    """Move what the block's forward needs to `device`: its layers, the rotary tables and, for
    the first block, the embeddings. The rest stays where the model was loaded (the host, or
    the meta device: `load_rank_block`)."""
    inner = base_model(model).model
    if block.start == 0:
        inner.embed_tokens.to(device)
    inner.rotary_emb.to(device)
    for i in block:
        inner.layers[i].to(device)


def blockwise_attention_transfer(
    model: nn.Module,
    ranks: Ranks,
    train_batches: BatchSource,
    eval_batches: Iterable[dict],
    cfg: TrainConfig,
    out_dir: Path,
    device,
    on_eval=None,
) -> tuple[TrainResult, dict[int, float]]:
    """Stage 1 of this rank's block (resuming from its trainer state), then the best parameters.

    Every rank iterates the same micro-batches (the whole global batch: stage 1 splits layers,
    not data). Returns the training result and the held-out MSE of every linearized layer
    (all ranks); on rank 0 `model` then holds every block's best parameters.
    """
    block = rank_block(model, ranks)
    place_block(model, block, device)
    every = attention_state_names(model)  # all layers in fp32, as rank 0 saves them all
    own = {id(p) for a in linearized_attentions(model) if a.layer_idx in block for p in a.transfer_parameters()}
    params = {n: p for n, p in every.items() if id(p) in own}
    eval_batches = list(eval_batches)
    pipe = BlockPipe(model, ranks, device)
    step = transfer_step(model, pipe.run, cfg.compile)  # the loss of this block's layers

    def all_layer_mse() -> dict[int, float]:
        model.eval()
        with torch.no_grad(), transfer_mode(model, train=False) as record:
            for batch in eval_batches:
                pipe.run(batch["input_ids"])
        blocks: list = [None] * ranks.world_size
        dist.all_gather_object(blocks, record.totals())
        totals = {layer: sn for part in blocks for layer, sn in part.items()}
        return {layer: s / n for layer, (s, n) in sorted(totals.items())}

    def evaluate() -> tuple[float, dict]:
        mse = all_layer_mse()
        return sum(mse.values()) / len(mse), {f"mse/layer_{k}": v for k, v in mse.items()}

    trainer_dir = Path(out_dir) / f"block-{ranks.rank}-of-{ranks.world_size}"
    align_resume(trainer_dir / "last", ranks)
    with compiled_layers(model, cfg.compile), block_only(model, block):
        result = train_loop(f"attention transfer, layers {block.start}-{block.stop - 1}", params, step,
                            evaluate, train_batches, cfg, trainer_dir, on_eval if ranks.is_main else None,
                            commit_barrier=dist.barrier)
        restore_best(params, trainer_dir)
        mse = all_layer_mse()
    pipe.flush()
    gather_parameters(model, {n: p.detach().cpu() for n, p in params.items()}, ranks)
    return result, mse


def align_resume(last: Path, ranks: Ranks) -> None:
    """Make every rank resume at the same step: the newest one whose checkpoint all ranks hold.

    The ranks commit each checkpoint together (`commit_barrier`), so a rank killed meanwhile
    leaves every rank either the previous checkpoint or the new one (at `last` or, not yet
    renamed, at `last.tmp`); ranks resuming at different steps would wait for each other's
    micro-batches forever. With no step in common (a kill during the first commit) all start
    afresh.
    """
    every: list = [None] * ranks.world_size
    dist.all_gather_object(every, sorted(saved_states(last)))
    common = set(every[0]).intersection(*every[1:])
    if not common and any(every):
        log.warning("stage 1 block-wise: the ranks' checkpoints share no step (%s); starting afresh",
                    ", ".join(f"rank {r}: {steps or 'none'}" for r, steps in enumerate(every)))
    settle_train_state(last, max(common) if common else None)


def gather_parameters(model: nn.Module, own: dict[str, torch.Tensor], ranks: Ranks) -> None:
    """Put the other ranks' `own` tensors (by parameter name) into rank 0's model, in place of
    its parameters there (on the meta device when `load_rank_block` loaded it)."""
    parts: list | None = [None] * ranks.world_size if ranks.is_main else None
    dist.gather_object(own, parts, dst=0)
    if parts is None:
        return
    gathered = {name: tensor for part in parts[1:] for name, tensor in part.items()}
    model.load_state_dict(gathered, strict=False, assign=True)
