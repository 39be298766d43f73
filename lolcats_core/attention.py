"""The linearized attention module that replaces a softmax attention of a HF decoder layer."""

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lolcats_kernels import hybrid_attention, hybrid_decode_step
from lolcats_kernels.hybrid_attention.naive import sink_keys

from .cache import HybridCacheLayer, hybrid_cache_layer
from .config import LinearizeConfig
from .feature_maps import build_feature_map

# Called in attention-transfer mode with (module, y_student, y_teacher), both (B, H, T, D).
TransferHook = Callable[["LolcatsAttention", torch.Tensor, torch.Tensor], None]

# A decoder layer compiled for training (`lolcats_core.training.execution`) is traced around these
# two calls, which run eagerly between its graphs: the kernel dispatcher (Triton autograd
# functions with host-side launch logic) and the stage-1 hook (it runs a backward).
_attention_kernel = torch.compiler.disable(hybrid_attention)


@torch.compiler.disable
def _report(module: "LolcatsAttention", student: torch.Tensor, teacher: torch.Tensor) -> None:
    module.transfer_hook(module, student, teacher)


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


# Both gates are log g = logsigmoid(x) / GATE_SCALE (the normaliser Liger uses), which keeps
# g close to 1 for moderate x; the scalar gate's bias starts at SCALAR_GATE_BIAS, g = 0.99998,
# so that an untrained scalar gate is almost no decay (the plain LoLCATs layer).
GATE_SCALE = 16.0
SCALAR_GATE_BIAS = 8.0


class LolcatsAttention(nn.Module):
    """Hybrid sliding-window softmax + linear attention (DESIGN.md sections 1 and 6).

    Reuses the q/k/v/o projections of the softmax attention it replaces (same parameter
    names, so state dicts and LoRA targets are unchanged) and adds the feature maps
    `feature_map_q`, `feature_map_k`, the per-head weight `window_gate` (gamma = sigmoid), and
    with the options: `sink_logit` (H,) added to the sink tokens' scores, and `state_gate`, the
    scalar gate's projection of the layer input (hidden -> one logit per key-feature head).
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
            self.sinks, self.gate_kind = lin.sinks, lin.gate
            self.sink_logit = nn.Parameter(torch.zeros(self.num_heads)) if lin.sink_logits else None
            self.state_gate = None
            if lin.gate == "scalar":
                self.state_gate = nn.Linear(model_config.hidden_size, key_heads)
                nn.init.zeros_(self.state_gate.weight)
                nn.init.constant_(self.state_gate.bias, SCALAR_GATE_BIAS)
        self.transfer_hook: TransferHook | None = None

    def transfer_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by attention transfer: feature maps, gamma, sink logits, gate."""
        params = [*self.feature_map_q.parameters(), *self.feature_map_k.parameters(), self.window_gate]
        if self.sink_logit is not None:
            params.append(self.sink_logit)
        if self.state_gate is not None:
            params += list(self.state_gate.parameters())
        return params

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
        if self.transfer_hook is not None:  # stage 1 runs the model without grad: the gate trains here
            with torch.enable_grad():
                log_gate = self.log_gate(hidden_states.detach(), k.detach())
        else:
            log_gate = self.log_gate(hidden_states, k)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        valid = key_validity(attention_mask, T)

        if self.transfer_hook is not None:
            y = self._attention_transfer(q, k, v, log_gate)
        elif past_key_values is not None:
            y = self._cached(q, k, v, valid, log_gate, hybrid_cache_layer(past_key_values, self.layer_idx))
        else:
            y = self.attend(q, k, v, valid, log_gate)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), None

    def gamma(self) -> torch.Tensor:
        """(H,) softmax-term weight per head."""
        return torch.sigmoid(self.window_gate)

    def log_gate(self, hidden_states: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
        """(B, Hk, T) fp32 log-decay of the linear state per key-feature head and token, or None.

        hidden_states: (B, T, hidden) layer input; k: (B, Hkv, T, D) keys before RoPE.
        `liger` pools each KV head's key to one logit (its mean over D); `scalar` projects the
        layer input. Both give log g = logsigmoid(logit) / GATE_SCALE.
        """
        if self.gate_kind == "none":
            return None
        if self.gate_kind == "liger":
            logit = k.float().mean(-1).repeat_interleave(self.key_heads // self.num_kv_heads, dim=1)
        else:
            gate = self.state_gate  # fp32 like the feature maps, whatever the model's dtype
            logit = F.linear(hidden_states.float(), gate.weight.float(), gate.bias.float()).transpose(1, 2)
        return F.logsigmoid(logit) / GATE_SCALE

    def attend(self, q, k, v, key_valid=None, log_gate=None) -> torch.Tensor:
        """Parallel hybrid attention: q (B, H, T, D), k/v (B, Hkv, T, D), log_gate (B, Hk, T)
        or None -> (B, H, T, D)."""
        qf, kf = self.feature_map_q(q), self.feature_map_k(k)
        return _attention_kernel(q, k, v, qf, kf, self.gamma(), self.window, self.linear,
                                 self.scaling, key_valid, sinks=self.sinks, sink_bias=self.sink_logit,
                                 log_gate=log_gate)

    def _attention_transfer(self, q, k, v, log_gate) -> torch.Tensor:
        """Stage 1: hand student and teacher outputs to the hook; the teacher's flows on."""
        with torch.no_grad():
            teacher = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scaling, enable_gqa=True)
        with torch.enable_grad():
            student = self.attend(q.detach(), k.detach(), v.detach(), log_gate=log_gate)
            _report(self, student, teacher)
        return teacher

    def _cached(self, q, k, v, valid, log_gate, cache: HybridCacheLayer) -> torch.Tensor:
        """Attention that reads and advances the decode state."""
        B, _, T, _ = q.shape
        if cache.seen == 0:
            y = self.attend(q, k, v, valid, log_gate)
            self._prefill_state(k, v, valid, log_gate, cache)
            return y
        steps = [self._step(q[:, :, t], k[:, :, t], v[:, :, t], None if valid is None else valid[:, t],
                            None if log_gate is None else log_gate[:, :, t], cache) for t in range(T)]
        return torch.stack(steps, dim=2)

    def _prefill_state(self, k, v, valid, log_gate, cache: HybridCacheLayer) -> None:
        """Fill the state from a prompt: window = last w keys, sinks = the sinks older than the
        window, (S, z) = the other older keys, decayed to the last position."""
        B, Hkv, T, D = k.shape
        w, dev = self.window, k.device
        cache.allocate(B, Hkv, self.key_heads, w, D, self.feature_dim, k.dtype, dev,
                       sinks=self.sinks, gated=log_gate is not None)
        valid = torch.ones(B, T, dtype=torch.bool, device=dev) if valid is None else valid
        sink = sink_keys(valid, self.sinks)
        old = max(0, T - w)
        G = None if log_gate is None else log_gate.cumsum(-1)  # (B, Hk, T)
        if w:
            recent = torch.arange(old, T, device=dev)
            cache.win_k[:, :, recent % w] = k[:, :, recent]
            cache.win_v[:, :, recent % w] = v[:, :, recent]
            cache.win_valid[:, recent % w] = valid[:, recent]
            if self.sinks:
                cache.sinks.win_sink[:, recent % w] = sink[:, recent]
            if G is not None:
                cache.win_decay[..., recent % w] = G[..., -1:] - G[..., recent]
        if self.sinks:
            cache.sinks.seen_valid.copy_(valid.sum(-1))
            for b in range(B):  # sinks already out of the window, in order
                pos = sink[b, :old].nonzero()[:, 0]
                cache.sinks.sink_k[b, :, : len(pos)] = k[b, :, pos]
                cache.sinks.sink_v[b, :, : len(pos)] = v[b, :, pos]
                cache.sinks.sink_valid[b, : len(pos)] = True
        if self.linear and old > 0:
            keep = (valid & ~sink)[:, None, :old, None]
            kf = self.feature_map_k(k[:, :, :old]).float() * keep
            if G is not None:
                kf = kf * (G[..., -1:] - G[..., :old]).exp()[..., None]
            vv = v[:, :, :old].float().repeat_interleave(self.key_heads // Hkv, dim=1)
            cache.S += kf.transpose(-1, -2) @ vv
            cache.z += kf.sum(-2)
        cache.seen = T

    def _step(self, q, k, v, valid, log_gate, cache: HybridCacheLayer) -> torch.Tensor:
        """One token: q (B, H, D), k/v (B, Hkv, D), log_gate (B, Hk) or None -> (B, H, D)."""
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
                               cache.win_valid, cache.S, cache.z, pos, valid, self.linear, self.scaling,
                               sink_state=cache.sinks, sink_bias=self.sink_logit, log_gate=log_gate,
                               win_decay=cache.win_decay)
        cache.seen += 1
        return y
