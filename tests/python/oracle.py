"""The test oracle: QUEST attention and its baselines written in plain torch, float64.

Independent of quest's C++ reference: S from the kind's formula, masked softmax, S V.
"""
import math
from typing import Optional

import torch
from torch import Tensor


def normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def layernorm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


def logits(q: Tensor, k: Tensor, kind: str, scale: Optional[float] = None,
           head_scale: Optional[Tensor] = None, q_norm_weight=None, q_norm_bias=None,
           k_norm_weight=None, k_norm_bias=None, l2_eps=1e-6, layernorm_eps=1e-5) -> Tensor:
    d = q.shape[-1]
    if kind == "standard":
        default = 1 / math.sqrt(d)
    elif kind == "quest":
        k, default = normalise(k, l2_eps), 1.0
    elif kind == "qnorm":
        q, default = normalise(q, l2_eps), 1.0
    elif kind == "qknorm":
        q, k, default = normalise(q, l2_eps), normalise(k, l2_eps), math.sqrt(d)
    elif kind == "qk_layernorm":
        q = layernorm(q, q_norm_weight, q_norm_bias, layernorm_eps)
        k = layernorm(k, k_norm_weight, k_norm_bias, layernorm_eps)
        default = 1 / math.sqrt(d)
    else:
        raise ValueError(kind)
    s = q @ k.transpose(-1, -2)
    if head_scale is not None:
        return s * head_scale.view(1, -1, 1, 1)
    return s * (default if scale is None else scale)


def visible(q_len: int, k_len: int, batch: int, causal: bool,
            key_padding_mask: Optional[Tensor], causal_alignment: str = "top_left") -> Tensor:
    """(B, 1, Nq, Nk) bool: which key each query sees (bottom_right: j <= i + Nk - Nq)."""
    ok = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool)
    if causal:
        shift = k_len - q_len if causal_alignment == "bottom_right" else 0
        ok &= torch.ones(q_len, k_len, dtype=torch.bool).tril(shift)
    if key_padding_mask is not None:
        ok &= ~key_padding_mask.view(batch, 1, 1, k_len)
    return ok


def attention(q, k, v, kind="quest", causal=False, key_padding_mask=None,
              causal_alignment="top_left", **params):
    """(output, probabilities). quest's conventions: a hidden key's weight is exactly 0 (also in a
    row made NaN by a NaN logit, where an additive -inf mask would give NaN), and a row that sees
    no key outputs zeros."""
    s = logits(q, k, kind, **params)
    ok = visible(q.shape[2], k.shape[2], q.shape[0], causal, key_padding_mask, causal_alignment)
    s = s.masked_fill(~ok, float("-inf"))
    p = torch.softmax(s, -1).masked_fill(~ok, 0)
    p = torch.where(ok.any(-1, keepdim=True), p, torch.zeros_like(p))
    return p @ v, p
