"""Decode benchmarks of benchmarks/attention_gpu.py (`run --parts decode,decode_8b`).

Per layer (`decode_rows`): one step of our decode kernel (window 64 + state S of 32 x 128 x 128
fp32 per sequence, flat in context) against SDPA attending the 4 query heads of each K/V group
over a bf16 KV cache of the context length; both as CUDA-graph replays.

Whole model (`decode_8b_rows`): the attention of a Llama-3-8B-shaped model: 32 layers, hidden
4096, 32 query heads, 8 K/V heads, head dim 128; each layer linearized with window 64 and
hedgehog features of size 128 (feature_dim 64, two softmaxes), one key feature map per K/V
group (`share_key_map`, as benchmarks/generation.py). Configurations: plain, + gate (scalar,
Lizard's), + sinks + gate (4 sinks with learned logits: configs/ablations/sinks-gate.yaml).

History: each layer runs its own prefill path (`LolcatsAttention` with a cache: window ring,
sinks, decayed state) over PREFILL_ROWS sequences of `history` tokens of random hidden states,
and the cache is tiled to the batch (`batch_repeat_interleave`): the state has its fixed size
whatever the history, with the content a real prefill leaves, without prefilling batch x
history tokens per point.

Step ("attention" rows): for every layer, q/k/v projections, gate, RoPE, feature maps, our
decode kernel (window + sinks + state) and o projection, as `LolcatsAttention` decodes
(`layer_step` mirrors its `_step`, with the position in device memory), then the position
advances: the 32 layers are captured as one CUDA graph and each replay decodes the next token
of every sequence. All layers read the same input (the MLPs and norms are not part of it); the
RoPE angles stay those of the first new position. "kernel" rows: the 32 decode-kernel calls
alone on the same cache, one graph. tokens/s = batch / replay time (median of REPLAYS).
"""

import functools
import statistics

import torch
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding, apply_rotary_pos_emb

from lolcats_core import LinearizeConfig
from lolcats_core.attention import LolcatsAttention
from lolcats_core.cache import hybrid_cache_layer
from lolcats_kernels import hybrid_decode_step

H, HKV, D, F, WINDOW = 32, 8, 128, 128, 64
DECODE_LENGTHS = [1024, 4096, 16384, 65536, 131072]
DECODE_BATCHES = [1, 64]
LLAMA3_8B_ATTENTION = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                           head_dim=128, max_position_embeddings=16384, intermediate_size=14336, vocab_size=128256)
CONFIGS = {  # row name: LinearizeConfig options beyond the window and the features
    "ours": dict(sinks=0, gate="none"),
    "ours_gate": dict(sinks=0, gate="scalar"),
    "ours_sinks_gate": dict(sinks=4, sink_logits=True, gate="scalar"),
}
BATCHES = [1024, 2048]
HISTORY = 4096
PREFILL_ROWS = 8
REPLAYS = 20


def graph_ms(fn) -> float:
    """Median ms of one CUDA-graph replay of fn."""
    import triton

    fn()
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")


def decode_rows(batch: int):
    """{context: (ours_ms, sdpa_ms)} for one decode step of one layer."""
    from lolcats_kernels.hybrid_decode.triton_step import hybrid_decode_step_triton

    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(batch, H, D, device=dev, dtype=dt)
    k, v = (torch.randn(batch, HKV, D, device=dev, dtype=dt) for _ in range(2))
    qf, kf = (torch.rand(batch, H, F, device=dev, dtype=dt) for _ in range(2))
    gamma = torch.full((H,), 0.1, device=dev)
    win_k, win_v = (torch.randn(batch, HKV, WINDOW, D, device=dev, dtype=dt) for _ in range(2))
    win_valid = torch.ones(batch, WINDOW, dtype=torch.bool, device=dev)
    S = torch.rand(batch, H, F, D, device=dev)
    z = torch.rand(batch, H, F, device=dev)
    valid = torch.ones(batch, dtype=torch.bool, device=dev)
    rows = {}
    for T in DECODE_LENGTHS:
        pos = torch.tensor(T, device=dev)
        ours = graph_ms(lambda: hybrid_decode_step_triton(q, k, v, qf, kf, gamma, win_k, win_v,
                                                          win_valid, S, z, pos, valid))
        try:  # the 4 query heads of a K/V group act as 4 queries over that head's cache
            kc, vc = (torch.randn(batch, HKV, T, D, device=dev, dtype=dt) for _ in range(2))
            qg = q.view(batch, HKV, H // HKV, D)
            # partial holds the tensors themselves, not a closure over names that `del` unbinds;
            # it is dropped when graph_ms returns, so `del` frees the cache before the next length.
            sdpa = graph_ms(functools.partial(torch.nn.functional.scaled_dot_product_attention, qg, kc, vc))
            del kc, vc
        except torch.cuda.OutOfMemoryError:
            sdpa = None
        torch.cuda.empty_cache()
        rows[T] = (ours, sdpa)
    return rows


def build_layers(shape: dict, options: dict, dtype, device, window: int = 64, feature_dim: int = 64):
    """(layers, rotary): `num_hidden_layers` random-weight linearized attentions of `shape`."""
    cfg = LlamaConfig(**shape)
    lin = LinearizeConfig(window=window, feature_dim=feature_dim, share_key_map=True, softmax_layers=[],
                          **options)
    layers = []
    with torch.device(device):
        for i in range(cfg.num_hidden_layers):
            attn = LolcatsAttention(LlamaAttention(cfg, i), cfg, lin, i).to(dtype).eval()
            if attn.state_gate is not None:  # an untrained gate is ~1: give it a realistic spread
                torch.nn.init.normal_(attn.state_gate.weight, std=shape["hidden_size"] ** -0.5)
                torch.nn.init.zeros_(attn.state_gate.bias)
            layers.append(attn)
    return layers, LlamaRotaryEmbedding(cfg).to(device)


@torch.no_grad()
def prefilled_cache(layers, rotary, rows: int, history: int, batch: int) -> DynamicCache:
    """Every layer's state after its own prefill of `rows` random `history`-token sequences,
    tiled to `batch` rows (batch a multiple of rows)."""
    if batch % rows:
        raise ValueError(f"batch {batch} is not a multiple of the {rows} prefilled rows")
    p = layers[0].q_proj.weight
    cache = DynamicCache()
    x = torch.randn(rows, history, layers[0].q_proj.in_features, dtype=p.dtype, device=p.device)
    pos_emb = rotary(x, torch.arange(history, device=p.device)[None])
    for attn in layers:
        attn(x, pos_emb, past_key_values=cache)
    for i in range(len(layers)):
        hybrid_cache_layer(cache, i).batch_repeat_interleave(batch // rows)
    return cache


def kernel_args(attn: LolcatsAttention, state, x, cos, sin, pos, valid) -> dict:
    """The keyword arguments of `hybrid_decode_step` for one token x (B, 1, hidden) at device
    position pos (1,) of `state` (a HybridCacheLayer): LolcatsAttention._step's inputs."""
    B = x.shape[0]
    q, k, v = (proj(x).view(B, 1, -1, attn.head_dim).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    log_gate = attn.log_gate(x, k)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if attn.window:
        slot = pos % attn.window
        leaving, leaving_valid = state.win_k.index_select(2, slot), state.win_valid.index_select(1, slot)
    else:
        leaving, leaving_valid = k, valid[:, None]
    kf_fold = attn.feature_map_k(leaving)[:, :, 0] * leaving_valid[:, :, None]
    return dict(q=q[:, :, 0], k=k[:, :, 0], v=v[:, :, 0], qf=attn.feature_map_q(q)[:, :, 0], kf_fold=kf_fold,
                gamma=attn.gamma(), win_k=state.win_k, win_v=state.win_v, win_valid=state.win_valid, S=state.S,
                z=state.z, pos=pos, valid=valid, linear=attn.linear, scale=attn.scaling, sink_state=state.sinks,
                sink_bias=attn.sink_logit, log_gate=None if log_gate is None else log_gate[:, :, 0],
                win_decay=state.win_decay)


def layer_step(attn: LolcatsAttention, state, x, cos, sin, pos, valid) -> torch.Tensor:
    """One token through `attn` with its decode state, updated in place: (B, 1, hidden) ->
    (B, 1, hidden), as attn(x, (cos, sin), past_key_values=cache); pos is not advanced."""
    y = hybrid_decode_step(**kernel_args(attn, state, x, cos, sin, pos, valid))
    return attn.o_proj(y.reshape(x.shape[0], 1, -1))


def captured(fn) -> torch.cuda.CUDAGraph:
    """fn run once on a side stream (kernel compilation, cuBLAS workspaces), then captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def replay_ms(graph: torch.cuda.CUDAGraph, reps: int = REPLAYS) -> float:
    """Median ms of one replay of `graph` (CUDA events around each replay)."""
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def decode_8b_point(layers, rotary, batch: int, history: int) -> dict:
    """tokens/s of one decode step of all layers' attention (and of their kernels alone)."""
    cache = prefilled_cache(layers, rotary, PREFILL_ROWS, history, batch)
    states = [hybrid_cache_layer(cache, i) for i in range(len(layers))]
    p = layers[0].q_proj.weight
    x = torch.randn(batch, 1, p.shape[1], dtype=p.dtype, device=p.device)
    pos = torch.full((1,), history, dtype=torch.long, device=p.device)
    cos, sin = rotary(x, pos[None])
    valid = torch.ones(batch, dtype=torch.bool, device=p.device)

    def attention():
        for attn, state in zip(layers, states):
            layer_step(attn, state, x, cos, sin, pos, valid)
        pos.add_(1)

    args = [kernel_args(attn, state, x, cos, sin, pos, valid) for attn, state in zip(layers, states)]

    def kernels():
        for a in args:
            hybrid_decode_step(**a)
        pos.add_(1)

    row = {"history": history, "state_gib": sum(s.nbytes() for s in states) / 2**30}
    for name, fn in (("attention", attention), ("kernel", kernels)):
        ms = replay_ms(captured(fn))
        row |= {f"{name}_ms": ms, f"{name}_tokens_per_s": batch * 1e3 / ms}
        torch.cuda.empty_cache()
    return row


def decode_8b_rows(batches=BATCHES, history: int = HISTORY, configs=CONFIGS, on_row=print) -> dict:
    """{config: {batch: row of `decode_8b_point` or {"oom": True}}}; on_row(config, batch, row)
    after each point."""
    out = {}
    for name, options in configs.items():
        layers, rotary = build_layers(LLAMA3_8B_ATTENTION, options, torch.bfloat16, "cuda")
        out[name] = {}
        for batch in batches:
            try:
                out[name][batch] = decode_8b_point(layers, rotary, batch, history)
            except torch.cuda.OutOfMemoryError:
                out[name][batch] = {"history": history, "oom": True}
            torch.cuda.empty_cache()
            on_row(name, batch, out[name][batch])
        del layers
        torch.cuda.empty_cache()
    return out
