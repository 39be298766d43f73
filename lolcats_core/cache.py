"""Decode cache of a linearized layer, plugged into transformers' `Cache` machinery.

A `HybridCacheLayer` replaces the `DynamicLayer` of a linearized layer inside whatever cache
transformers built (`DynamicCache` in `generate()` or `forward(use_cache=True)`). It holds the
ring buffer of the last w raw keys/values and the running linear state (S, z): memory per
sequence is constant in the context length.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from lolcats_kernels.hybrid_decode.naive import SinkState

from .errors import LolcatsError


class HybridCacheLayer(CacheLayerMixin):
    """State of one linearized layer for a batch (layout in `lolcats_kernels.hybrid_decode`).

    Attributes:
        win_k, win_v: (B, Hkv, w, D) ring buffer; position p lives in slot p % w.
        win_valid: (B, w) bool, slot holds a real token.
        S: (B, Hk, F, D) fp32 running sum of kf v^T over folded keys.
        z: (B, Hk, F) fp32 running sum of kf over folded keys.
        sinks: the attention sinks' state (`SinkState`), or None without sinks.
        win_decay: (B, Hk, w) fp32 log-decay of each window slot since written, or None
            without a gate.
        seen: tokens processed so far (padding included).
    """

    is_sliding = False
    is_compileable = False

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.win_k = self.win_v = self.win_valid = self.S = self.z = self.win_decay = None
        self.sinks: SinkState | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise LolcatsError("a linearized layer's cache is filled by its attention module, not update()")

    def allocate(self, batch: int, kv_heads: int, key_heads: int, window: int, head_dim: int,
                 feature_dim: int, dtype: torch.dtype, device: torch.device, sinks: int = 0,
                 gated: bool = False) -> None:
        """Create empty state tensors for a batch (with `sinks` sink slots, and window decays
        when `gated`)."""
        self.win_k = torch.zeros(batch, kv_heads, window, head_dim, dtype=dtype, device=device)
        self.win_v = torch.zeros_like(self.win_k)
        self.win_valid = torch.zeros(batch, window, dtype=torch.bool, device=device)
        self.S = torch.zeros(batch, key_heads, feature_dim, head_dim, dtype=torch.float32, device=device)
        self.z = torch.zeros(batch, key_heads, feature_dim, dtype=torch.float32, device=device)
        self.win_decay = torch.zeros(batch, key_heads, window, device=device) if gated else None
        self.sinks = None
        if sinks:
            sink_k = torch.zeros(batch, kv_heads, sinks, head_dim, dtype=dtype, device=device)
            self.sinks = SinkState(torch.zeros(batch, window, dtype=torch.bool, device=device), sink_k,
                                   torch.zeros_like(sink_k), torch.zeros(batch, sinks, dtype=torch.bool, device=device),
                                   torch.zeros(batch, dtype=torch.long, device=device))
        self.is_initialized = True

    def state_tensors(self) -> list[torch.Tensor]:
        extra = [] if self.sinks is None else list(self.sinks)
        return [t for t in (self.win_k, self.win_v, self.win_valid, self.S, self.z, self.win_decay, *extra)
                if t is not None]

    def nbytes(self) -> int:
        """Bytes held by this layer's state for the whole batch."""
        return sum(t.numel() * t.element_size() for t in self.state_tensors())

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def _map_batch(self, fn) -> None:
        for name in ("win_k", "win_v", "win_valid", "S", "z", "win_decay"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))
        if self.sinks is not None:
            self.sinks = SinkState(*(fn(t) for t in self.sinks))

    def reset(self) -> None:
        self.seen = 0
        self.win_k = self.win_v = self.win_valid = self.S = self.z = self.win_decay = None
        self.sinks = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices])

    def offload(self) -> None:
        """The state is small and constant-size: it stays on its device."""

    def prefetch(self) -> None:
        """Nothing is offloaded (see `offload`)."""


def hybrid_cache_layer(cache: Cache, layer_idx: int) -> HybridCacheLayer:
    """The `HybridCacheLayer` of `layer_idx` in `cache`, installing a fresh one if needed."""
    while len(cache.layers) <= layer_idx:
        cache.layers.append(DynamicLayer())
    layer = cache.layers[layer_idx]
    if not isinstance(layer, HybridCacheLayer):
        if layer.get_seq_length() > 0:
            raise LolcatsError(
                f"layer {layer_idx} of the cache already holds softmax keys/values; "
                "a cache cannot be shared between a softmax and a linearized model"
            )
        layer = cache.layers[layer_idx] = HybridCacheLayer()
    return layer
