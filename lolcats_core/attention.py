"""The linearized attention module that replaces a softmax attention of a HF decoder layer."""

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lolcats_kernels import hybrid_attention, hybrid_decode_step

from .cache import HybridCacheLayer, hybrid_cache_layer
from .config import LinearizeConfig
from .feature_maps import build_feature_map

# Called in attention-transfer mode with (module, y_student, y_teacher), both (B, H, T, D).
TransferHook = Callable[["LolcatsAttention", torch.Tensor, torch.Tensor], None]


def key_validity(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """(B, T) bool validity of the last `length` keys from a HF attention mask, or None.

    transformers passes a 4D mask (B, 1, Tq, Tk) (bool: True attends; float: 0 attends) or
    a 2D padding mask; the last query row of a causal mask lists every valid key.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 4:
        row = attention_mask[:, 0, -1, -length:]
        valid = row if row.dtype == torch.bool else row == 0
    else:
        valid = attention_mask[:, -length:].bool()
    return None if bool(valid.all()) else valid


class LolcatsAttention(nn.Module):
    """Hybrid sliding-window softmax + linear attention (DESIGN.md section 1).

    Reuses the q/k/v/o projections of the softmax attention it replaces (same parameter
    names, so state dicts and LoRA targets are unchanged) and adds the feature maps
    `feature_map_q`, `feature_map_k` and the per-head gate `window_gate` (gamma = sigmoid).
    """

    def __init__(self, softmax_attn: nn.Module, model_config, lin: LinearizeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = model_config.num_attention_heads
        self.num_kv_heads = model_config.num_key_value_heads
        self.head_dim = getattr(softmax_attn, "head_dim", model_config.hidden_size // self.num_heads)
        self.scaling = getattr(softmax_attn, "scaling", self.head_dim**-0.5)
        self.window, self.linear = lin.window, lin.linear
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, getattr(softmax_attn, name))
        key_heads = self.num_kv_heads if lin.share_key_map else self.num_heads
        with torch.device(self.q_proj.weight.device):
            self.feature_map_q = build_feature_map(lin.feature_map, self.num_heads, self.head_dim, lin.feature_dim)
            self.feature_map_k = build_feature_map(lin.feature_map, key_heads, self.head_dim, lin.feature_dim)
            logit = math.log(lin.gamma_init / (1 - lin.gamma_init))
            self.window_gate = nn.Parameter(torch.full((self.num_heads,), logit))
        self.transfer_hook: TransferHook | None = None

    @property
    def key_heads(self) -> int:
        return self.feature_map_k.num_heads

    @property
    def feature_dim(self) -> int:
        return self.feature_map_k.out_dim

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """hidden_states: (B, T, hidden) -> ((B, T, hidden), None)."""
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        valid = key_validity(attention_mask, T)

        if self.transfer_hook is not None:
            y = self._attention_transfer(q, k, v)
        elif past_key_values is not None:
            y = self._cached(q, k, v, valid, hybrid_cache_layer(past_key_values, self.layer_idx))
        else:
            y = self.attend(q, k, v, valid)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), None

    def gamma(self) -> torch.Tensor:
        """(H,) softmax-term weight per head."""
        return torch.sigmoid(self.window_gate)

    def attend(self, q, k, v, key_valid=None) -> torch.Tensor:
        """Parallel hybrid attention: q (B, H, T, D), k/v (B, Hkv, T, D) -> (B, H, T, D)."""
        qf, kf = self.feature_map_q(q), self.feature_map_k(k)
        return hybrid_attention(q, k, v, qf, kf, self.gamma(), self.window, self.linear,
                                self.scaling, key_valid)

    def _attention_transfer(self, q, k, v) -> torch.Tensor:
        """Stage 1: hand student and teacher outputs to the hook; the teacher's flows on."""
        with torch.no_grad():
            teacher = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scaling, enable_gqa=True)
        with torch.enable_grad():
            student = self.attend(q.detach(), k.detach(), v.detach())
            self.transfer_hook(self, student, teacher)
        return teacher

    def _cached(self, q, k, v, valid, cache: HybridCacheLayer) -> torch.Tensor:
        """Attention that reads and advances the decode state."""
        B, _, T, _ = q.shape
        if cache.seen == 0:
            y = self.attend(q, k, v, valid)
            self._prefill_state(k, v, valid, cache)
            return y
        steps = [self._step(q[:, :, t], k[:, :, t], v[:, :, t],
                            None if valid is None else valid[:, t], cache) for t in range(T)]
        return torch.stack(steps, dim=2)

    def _prefill_state(self, k, v, valid, cache: HybridCacheLayer) -> None:
        """Fill the state from a prompt: window = last w keys, (S, z) = the older ones."""
        B, Hkv, T, D = k.shape
        w = self.window
        cache.allocate(B, Hkv, self.key_heads, w, D, self.feature_dim, k.dtype, k.device)
        valid = torch.ones(B, T, dtype=torch.bool, device=k.device) if valid is None else valid
        if w:
            recent = torch.arange(max(0, T - w), T, device=k.device)
            cache.win_k[:, :, recent % w] = k[:, :, recent]
            cache.win_v[:, :, recent % w] = v[:, :, recent]
            cache.win_valid[:, recent % w] = valid[:, recent]
        old = T - w
        if self.linear and old > 0:
            kf = self.feature_map_k(k[:, :, :old]).float() * valid[:, None, :old, None]
            vv = v[:, :, :old].float().repeat_interleave(self.key_heads // Hkv, dim=1)
            cache.S += kf.transpose(-1, -2) @ vv
            cache.z += kf.sum(-2)
        cache.seen = T

    def _step(self, q, k, v, valid, cache: HybridCacheLayer) -> torch.Tensor:
        """One token: q (B, H, D), k/v (B, Hkv, D) -> (B, H, D)."""
        B = q.shape[0]
        pos, w = cache.seen, self.window
        valid = torch.ones(B, dtype=torch.bool, device=q.device) if valid is None else valid
        if w:
            leaving, leaving_valid = cache.win_k[:, :, pos % w], cache.win_valid[:, pos % w]
        else:
            leaving, leaving_valid = k, valid
        kf_fold = self.feature_map_k(leaving[:, :, None])[:, :, 0] * leaving_valid[:, None, None]
        qf = self.feature_map_q(q[:, :, None])[:, :, 0]
        y = hybrid_decode_step(q, k, v, qf, kf_fold, self.gamma(), cache.win_k, cache.win_v,
                               cache.win_valid, cache.S, cache.z, pos, valid, self.linear, self.scaling)
        cache.seen += 1
        return y
