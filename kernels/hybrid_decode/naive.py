"""Reference of one decoding step of the hybrid attention, in plain PyTorch.

The per-layer decode state of a batch (all tensors updated in place):

    win_k, win_v: (B, Hkv, w, D)  ring buffer of the last w raw keys/values; the token at
                                  absolute position p lives in slot p % w
    win_valid:    (B, w) bool     slot holds a real (non-padding) token
    S:            (B, Hk, F, D)   fp32, sum over folded keys of kf_j v_j^T
    z:            (B, Hk, F)      fp32, sum over folded keys of kf_j

Step for the token at position p (DESIGN.md section 1, same shift c as the parallel form):
the key in slot p % w (position p - w) leaves the window and is folded into (S, z), the new
key/value take its slot, then the query attends over the window (positions p-w+1..p) and
the state (positions <= p-w). With w == 0 the new key is folded before attending.
"""

import torch

from ..hybrid_attention.naive import expand_heads


def hybrid_decode_step_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qf: torch.Tensor,
    kf_fold: torch.Tensor,
    gamma: torch.Tensor,
    win_k: torch.Tensor,
    win_v: torch.Tensor,
    win_valid: torch.Tensor,
    S: torch.Tensor,
    z: torch.Tensor,
    pos: int,
    valid: torch.Tensor,
    linear: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """One decoding step for a batch; updates the state in place.

    Args:
        q: (B, H, D) query of the new token (after RoPE).
        k, v: (B, Hkv, D) key (after RoPE) and value of the new token.
        qf: (B, H, F) query features.
        kf_fold: (B, Hk, F) features of the key folded into the state at this step: the key
            leaving the window (zeros if its slot is empty or padding), or the new key when
            the window is 0.
        gamma: (H,) softmax-term weight per head.
        win_k, win_v, win_valid, S, z: the decode state (module docstring); w = win_k.shape[2].
        pos: absolute position of the new token.
        valid: (B,) bool, False where the new token is padding.
        linear: include the state term.
    Returns:
        (B, H, D) in the dtype of q.
    """
    B, H, D = q.shape
    w = win_k.shape[2]
    scale = D**-0.5 if scale is None else scale
    if linear:
        if w > 0:
            fold_v = win_v[:, :, pos % w].float()
        else:
            fold_v = v.float()
        fold_v = expand_heads(fold_v, S.shape[1])
        S += kf_fold.float()[..., :, None] * fold_v[..., None, :]
        z += kf_fold.float()
    num = torch.zeros(B, H, D, dtype=torch.float32, device=q.device)
    den = torch.zeros(B, H, 1, dtype=torch.float32, device=q.device)
    c = torch.zeros(B, H, 1, dtype=torch.float32, device=q.device)
    if w > 0:
        slot = pos % w
        win_k[:, :, slot] = k
        win_v[:, :, slot] = v
        win_valid[:, slot] = valid
        kk = expand_heads(win_k.float(), H)
        vv = expand_heads(win_v.float(), H)
        s = scale * torch.einsum("bhd,bhwd->bhw", q.float(), kk)
        s = s.masked_fill(~win_valid[:, None, :], float("-inf"))
        c = s.amax(-1, keepdim=True).clamp_min(0.0)
        a = gamma.float()[None, :, None] * torch.exp(s - c)
        num = torch.einsum("bhw,bhwd->bhd", a, vv)
        den = a.sum(-1, keepdim=True)
    if linear:
        SS, zz = expand_heads(S, H), expand_heads(z, H)
        e = torch.exp(-c)
        num = num + e * torch.einsum("bhf,bhfd->bhd", qf.float(), SS)
        den = den + e * torch.einsum("bhf,bhf->bh", qf.float(), zz)[..., None]
    return (num / torch.where(den > 0, den, 1.0)).to(q.dtype)
