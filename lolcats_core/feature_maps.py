"""Feature maps phi for linear attention, one set of parameters per head, selectable by name.

Every map takes x: (B, Hx, T, D) and returns phi(x): (B, Hm, T, out_dim), where Hm is the
number of heads the map has parameters for. Hx may divide Hm (GQA keys feeding per-query-head
key maps): head m reads input head m // (Hm // Hx), without materialising repeated inputs.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def _project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: (B, Hx, T, D), weight: (Hm, D, f) -> (B, Hm, T, f), broadcasting input heads."""
    B, Hx, T, D = x.shape
    Hm, _, f = weight.shape
    out = torch.einsum("bgtd,grdf->bgrtf", x, weight.view(Hx, Hm // Hx, D, f))
    return out.reshape(B, Hm, T, f)


class FeatureMap(nn.Module):
    """Base class: `num_heads` heads mapping head_dim inputs to `out_dim` features."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int):
        super().__init__()
        self.num_heads, self.head_dim, self.feature_dim = num_heads, head_dim, feature_dim

    @property
    def out_dim(self) -> int:
        raise NotImplementedError


class Hedgehog(FeatureMap):
    """phi(x) = [softmax(x W), softmax(-x W)] per head; W: (H, D, f), identity-like init."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int):
        super().__init__(num_heads, head_dim, feature_dim)
        eye = torch.eye(head_dim, feature_dim)
        self.weight = nn.Parameter(eye.expand(num_heads, -1, -1).clone())

    @property
    def out_dim(self) -> int:
        return 2 * self.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hx, T, D) -> (B, H, T, 2f), softmax in fp32.

        One projection onto [W, -W] gives [xW, -xW] side by side, so one softmax over its two
        halves (B, H, T, 2, f) writes the output in place of a negation, two softmaxes and a
        concatenation of fp32 copies.
        """
        w = self.weight.float()
        u = _project(x.float(), torch.cat([w, -w], dim=-1))  # (B, H, T, 2f)
        return u.unflatten(-1, (2, -1)).softmax(-1).flatten(-2).to(x.dtype)


class T2R(FeatureMap):
    """phi(x) = relu(x W + b) per head (Transformer-to-RNN); W: (H, D, f), b: (H, f)."""

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int):
        super().__init__(num_heads, head_dim, feature_dim)
        eye = torch.eye(head_dim, feature_dim)
        self.weight = nn.Parameter(eye.expand(num_heads, -1, -1).clone())
        self.bias = nn.Parameter(torch.zeros(num_heads, feature_dim))

    @property
    def out_dim(self) -> int:
        return self.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hx, T, D) -> (B, H, T, f)."""
        u = _project(x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)[None, :, None, :]
        return F.relu(u)


class Elu1(FeatureMap):
    """phi(x) = elu(x) + 1, no parameters (untrained baseline); out_dim = head_dim."""

    @property
    def out_dim(self) -> int:
        return self.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hx, T, D) -> (B, H, T, D)."""
        reps = self.num_heads // x.shape[1]
        return (F.elu(x) + 1).repeat_interleave(reps, dim=1) if reps > 1 else F.elu(x) + 1


FEATURE_MAPS: dict[str, type[FeatureMap]] = {"hedgehog": Hedgehog, "t2r": T2R, "elu1": Elu1}


def build_feature_map(name: str, num_heads: int, head_dim: int, feature_dim: int) -> FeatureMap:
    """Instantiate the registered feature map `name`."""
    return FEATURE_MAPS[name](num_heads, head_dim, feature_dim)
