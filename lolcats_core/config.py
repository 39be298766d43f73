"""What to linearize and how: the attention-swap configuration shared by every stage."""

import re
from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError

ATTENTION_KINDS = ("hybrid", "linear", "window")
GATES = ("none", "liger", "scalar")
_RETRIEVAL = re.compile(r"retrieval:([1-9][0-9]*)")


@dataclass
class LinearizeConfig:
    """How softmax attentions are replaced (DESIGN.md section 1).

    Attributes:
        feature_map: registered feature-map name (`hedgehog`, `t2r`, `elu1`).
        feature_dim: f, the feature map's projection size (hedgehog outputs 2f features).
        attention: `hybrid` (window softmax + linear), `linear` (no window) or `window`
            (sliding-window softmax only).
        window: w, tokens in the sliding window (hybrid and window attention).
        softmax_layers: layer indices kept as softmax attention, a fraction in [0, 1) of the
            layers to keep (spread evenly, first layer included), or "retrieval:K": the K
            layers whose heads attend most to a passkey needle in the teacher, measured when
            the run loads the teacher (`evaluation.resolve_softmax_layers`).
        share_key_map: one key feature map per KV group instead of one per query head
            (fewer parameters and a smaller decode state).
        gamma_init: initial softmax-term weight sigmoid(g) of every head.
        sinks: the first `sinks` tokens of each sequence stay in the softmax term for every
            query (attention sinks; 0 turns them off).
        sink_logits: learn a per-head logit added to the sink tokens' scores (stage 1).
        gate: decay of the linear state, per head and token: `none`; `liger`, derived from the
            pretrained key projection with no new parameters; `scalar`, a sigmoid of a learned
            projection of the layer input (one vector per head, trained in stage 1).
    """

    feature_map: str = "hedgehog"
    feature_dim: int = 64
    attention: str = "hybrid"
    window: int = 64
    softmax_layers: list[int] | float | str = field(default_factory=list)
    share_key_map: bool = False
    gamma_init: float = 0.1
    sinks: int = 4
    sink_logits: bool = False
    gate: str = "none"

    def __post_init__(self) -> None:
        from .feature_maps import FEATURE_MAPS

        if self.feature_map not in FEATURE_MAPS:
            raise ConfigError(
                f"unknown feature_map {self.feature_map!r}; choose one of {sorted(FEATURE_MAPS)}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"unknown attention {self.attention!r}; choose one of {ATTENTION_KINDS}")
        if self.attention == "linear":
            self.window = 0
        elif not isinstance(self.window, int) or self.window <= 0:
            raise ConfigError(
                f"window must be a positive number of tokens for {self.attention!r} attention, "
                f"got {self.window!r} (use attention='linear' for no window)"
            )
        if not isinstance(self.feature_dim, int) or self.feature_dim <= 0:
            raise ConfigError(f"feature_dim must be a positive integer, got {self.feature_dim!r}")
        if not isinstance(self.sinks, int) or isinstance(self.sinks, bool) or self.sinks < 0:
            raise ConfigError(f"sinks must be a number of tokens >= 0 (0: no sinks), got {self.sinks!r}")
        if self.sink_logits and not self.sinks:
            raise ConfigError("sink_logits needs sinks > 0")
        if self.gate not in GATES:
            raise ConfigError(f"unknown gate {self.gate!r}; choose one of {GATES}")
        if self.gate != "none" and not self.linear:
            raise ConfigError(f"gate {self.gate!r} decays the linear state: it needs attention 'hybrid' or 'linear'")
        if not 0.0 < self.gamma_init < 1.0:
            raise ConfigError(f"gamma_init must lie strictly between 0 and 1, got {self.gamma_init!r}")
        sl = self.softmax_layers
        if isinstance(sl, float) and not 0.0 <= sl < 1.0:
            raise ConfigError(f"softmax_layers as a fraction must lie in [0, 1), got {sl!r}")
        if isinstance(sl, (list, tuple)) and not all(isinstance(i, int) and i >= 0 for i in sl):
            raise ConfigError(f"softmax_layers must be non-negative layer indices, got {sl!r}")
        if isinstance(sl, str) and not _RETRIEVAL.fullmatch(sl):
            raise ConfigError(f"softmax_layers as text must be 'retrieval:K' (keep the K layers that attend "
                              f"most to a passkey needle), got {sl!r}")

    def retrieval_layers(self) -> int | None:
        """K of softmax_layers = "retrieval:K", else None."""
        sl = self.softmax_layers
        return int(_RETRIEVAL.fullmatch(sl).group(1)) if isinstance(sl, str) else None

    @property
    def linear(self) -> bool:
        """Whether the linear term over tokens older than the window is used."""
        return self.attention != "window"

    def softmax_layer_indices(self, num_layers: int) -> list[int]:
        """Resolve `softmax_layers` against a model with `num_layers` layers."""
        sl = self.softmax_layers
        if isinstance(sl, str):
            raise ConfigError(f"softmax_layers {sl!r} is measured on the teacher: resolve it with "
                              "lolcats_core.evaluation.resolve_softmax_layers before linearizing")
        if isinstance(sl, float):
            keep = round(sl * num_layers)
            return sorted({int(i * num_layers / keep) for i in range(keep)}) if keep else []
        bad = [i for i in sl if i >= num_layers]
        if bad:
            raise ConfigError(
                f"softmax_layers {bad} out of range: the model has {num_layers} layers (0..{num_layers - 1})"
            )
        if len(set(sl)) == num_layers:
            raise ConfigError("softmax_layers keeps every layer: nothing would be linearized")
        return sorted(set(sl))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LinearizeConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown linearization settings {unknown}; known: {sorted(known)}")
        return cls(**{"sinks": 0, **data})  # checkpoints from before sinks existed have none
