"""quest.attention and friends: typed wrappers of the torch.ops.quest operators (src/torch/ops.cpp).

Every function is TorchScript-compatible, so a scripted module may call it (which is why the
options are not keyword-only: TorchScript in torch 1.13 cannot compile keyword-only arguments with
defaults; the operators themselves take them keyword-only).
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import _ops  # noqa: F401  (loads libquest_ops.so: registers torch.ops.quest.*)

KINDS = ("standard", "quest", "qnorm", "qknorm", "qk_layernorm")
BACKENDS = ("auto", "fused", "composite", "reference", "sdpa")


def attention(q: Tensor, k: Tensor, v: Tensor, kind: str = "quest", causal: bool = False,
              causal_alignment: str = "top_left", key_padding_mask: Optional[Tensor] = None,
              dropout_p: float = 0.0, training: bool = False, scale: Optional[float] = None,
              head_scale: Optional[Tensor] = None, q_norm_weight: Optional[Tensor] = None,
              q_norm_bias: Optional[Tensor] = None, k_norm_weight: Optional[Tensor] = None,
              k_norm_bias: Optional[Tensor] = None, seed: Optional[int] = None,
              backend: str = "auto", check_finite: bool = True, l2_eps: float = 1e-6,
              layernorm_eps: float = 1e-5,
              attn_bias: Optional[Tensor] = None, enable_gqa: bool = False) -> Tensor:
    """softmax(S) V over (B, H, N, D) tensors, S by the attention kind.

    kind: "standard" (q·k/sqrt(D)), "quest" (keys L2-normalised, scale 1), "qnorm" (queries
    L2-normalised), "qknorm" (both, times a per-head `head_scale` (H,)), "qk_layernorm" (per-head
    LayerNorm of q and k with optional affine `q_norm_weight` ... `k_norm_bias` of shape (D,)).
    causal: query i sees key j only if j <= i (causal_alignment "top_left", as torch's is_causal)
    or j <= i + Nk - Nq ("bottom_right": the last query sees the last key, for decoding new
    queries against a cache of earlier keys). key_padding_mask: (B, Nk) bool, True = padding.
    dropout_p applies to the attention weights only when `training`; `seed` fixes its mask
    (default: drawn from torch's generator, so torch.manual_seed fixes it).
    scale: logit scale (default per kind). backend: "auto" (on CPU: fused for float32, else
    composite; on other devices: "sdpa"), "fused", "composite", "reference" or "sdpa" (torch's
    F.scaled_dot_product_attention on the kind's normalised q and k, any device). check_finite: reject NaN/Inf inputs with an error naming
    the tensor; off, NaN/Inf propagate exactly as in the matmul -> softmax -> matmul composite.
    attn_bias: an additive logit bias broadcastable to (B, H, Nq, Nk) in q's dtype (torch's float
    attn_mask: -inf blocks); it runs on the composite backend.
    enable_gqa: grouped- and multi-query attention as torch's SDPA: k and v have Hk heads, q a
    multiple of Hk, query head h reads key/value head h // (Hq // Hk); the kernels read K and V
    in place (no copy per group).
    Differentiable in q, k, v, head_scale and the LayerNorm affine; the fused and reference
    backends are once-differentiable (double backward: backend="composite").
    """
    return torch.ops.quest.attention(
        q, k, v, kind, causal=causal, causal_alignment=causal_alignment,
        key_padding_mask=key_padding_mask, dropout_p=dropout_p, training=training, scale=scale,
        head_scale=head_scale, q_norm_weight=q_norm_weight, q_norm_bias=q_norm_bias,
        k_norm_weight=k_norm_weight, k_norm_bias=k_norm_bias, seed=seed, backend=backend,
        check_finite=check_finite, l2_eps=l2_eps, layernorm_eps=layernorm_eps, attn_bias=attn_bias,
        enable_gqa=enable_gqa)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, kind: str = "quest",
                                 head_scale: Optional[Tensor] = None,
                                 q_norm_weight: Optional[Tensor] = None,
                                 q_norm_bias: Optional[Tensor] = None,
                                 k_norm_weight: Optional[Tensor] = None,
                                 k_norm_bias: Optional[Tensor] = None, seed: Optional[int] = None,
                                 backend: str = "auto", check_finite: bool = True,
                                 l2_eps: float = 1e-6, layernorm_eps: float = 1e-5,
                                 return_lse: bool = False, return_max_logit: bool = False):
    """torch.nn.functional.scaled_dot_product_attention's arguments and semantics, for every kind.

    query (..., Hq, L, E), key (..., Hk, S, E), value (..., Hk, S, Ev), any leading batch dims;
    attn_mask bool (True takes part) or float (added to the logits), broadcastable to
    (..., Hq, L, S); is_causal top-left (not with attn_mask); dropout_p applied whenever > 0;
    scale defaults to the kind's (1/sqrt(E) for "standard", as SDPA; 1 for "quest");
    enable_gqa: Hq a multiple of Hk (grouped- and multi-query attention, K and V read in place).
    With kind="standard" it equals F.scaled_dot_product_attention; kind="quest" equals
    SDPA(q, F.normalize(k, dim=-1), v, scale=1.0). A bool mask that varies along keys only
    (e.g. (N, 1, 1, S) padding) runs on the fused kernel; any other mask on the composite. A row
    that sees no key gives zeros (torch: NaN). Returns (..., Hq, L, Ev).

    return_lse: also the per-row log-sum-exp of the visible logits, (..., Hq, L) float32, detached
    (of the whole softmax, before dropout; -inf for a row that sees no key) — the fused and
    reference kernels' own row statistics, computed from the logits on the other backends.
    return_max_logit: also each head's largest logit over the batch and visible pairs, (Hq,)
    float32 (QK-clip's signal, as TransformerEngine's return_max_logit); computed with the
    diagnostics (under torch.compile: on the fused and reference backends). Returns (out, lse), (out, max_logit) or (out, lse, max_logit).
    """
    args = (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    kwargs = dict(kind=kind, head_scale=head_scale, q_norm_weight=q_norm_weight, q_norm_bias=q_norm_bias,
                  k_norm_weight=k_norm_weight, k_norm_bias=k_norm_bias, seed=seed, backend=backend,
                  check_finite=check_finite, l2_eps=l2_eps, layernorm_eps=layernorm_eps)
    if not (return_lse or return_max_logit):
        return torch.ops.quest.scaled_dot_product_attention(*args, **kwargs)
    out, lse, max_logit = torch.ops.quest.scaled_dot_product_attention_forward(
        *args, **kwargs, need_logsumexp=return_lse, need_max_logit=return_max_logit)
    return (out,) + ((lse,) if return_lse else ()) + ((max_logit,) if return_max_logit else ())


def attention_forward(q: Tensor, k: Tensor, v: Tensor, kind: str = "quest", causal: bool = False,
                      causal_alignment: str = "top_left", key_padding_mask: Optional[Tensor] = None,
                      dropout_p: float = 0.0, training: bool = False, scale: Optional[float] = None,
                      head_scale: Optional[Tensor] = None, q_norm_weight: Optional[Tensor] = None,
                      q_norm_bias: Optional[Tensor] = None, k_norm_weight: Optional[Tensor] = None,
                      k_norm_bias: Optional[Tensor] = None, seed: Optional[int] = None,
                      backend: str = "auto", check_finite: bool = True, l2_eps: float = 1e-6,
                      layernorm_eps: float = 1e-5,
                      need_weights: bool = False, need_diagnostics: bool = False,
                      attn_bias: Optional[Tensor] = None, enable_gqa: bool = False
                      ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """As attention(), also returning (B, H, Nq, Nk) weights (before dropout; in the autograd graph
    on the composite backend, detached from the fused and reference ones) and a (7, H) float64 diagnostics tensor (rows as
    quest.HeadDiagnostics.FIELDS), each None unless asked for."""
    out, weights, diagnostics = torch.ops.quest.attention_forward(
        q, k, v, kind, causal=causal, causal_alignment=causal_alignment,
        key_padding_mask=key_padding_mask, dropout_p=dropout_p, training=training, scale=scale,
        head_scale=head_scale, q_norm_weight=q_norm_weight, q_norm_bias=q_norm_bias,
        k_norm_weight=k_norm_weight, k_norm_bias=k_norm_bias, seed=seed, backend=backend,
        check_finite=check_finite, l2_eps=l2_eps, layernorm_eps=layernorm_eps,
        attn_bias=attn_bias, need_weights=need_weights, need_diagnostics=need_diagnostics,
        enable_gqa=enable_gqa)
    return (out, weights if need_weights else None, diagnostics if need_diagnostics else None)


def attention_packed(qkv: Tensor, num_heads: int, kind: str = "quest", causal: bool = False,
                     causal_alignment: str = "top_left", key_padding_mask: Optional[Tensor] = None,
                     dropout_p: float = 0.0, training: bool = False, scale: Optional[float] = None,
                     head_scale: Optional[Tensor] = None, q_norm_weight: Optional[Tensor] = None,
                     q_norm_bias: Optional[Tensor] = None, k_norm_weight: Optional[Tensor] = None,
                     k_norm_bias: Optional[Tensor] = None, seed: Optional[int] = None,
                     backend: str = "auto", check_finite: bool = True, l2_eps: float = 1e-6,
                     layernorm_eps: float = 1e-5,
                     attn_bias: Optional[Tensor] = None) -> Tensor:
    """Self-attention from a packed projection, as FlashAttention's qkvpacked functions: qkv is
    (B, N, 3 * num_heads * D) with its last dimension laid out (3, num_heads, D) -- what
    F.linear(x, in_proj_weight, in_proj_bias) gives -- and the result is (B, N, num_heads * D),
    ready for the output projection. Options and results as attention() on the split heads; on
    the fused backend the heads are read in place and the gradient is written into one buffer of
    qkv's shape (no split, merge or stacking copies)."""
    return torch.ops.quest.attention_packed(
        qkv, num_heads, kind, causal=causal, causal_alignment=causal_alignment,
        key_padding_mask=key_padding_mask, dropout_p=dropout_p, training=training, scale=scale,
        head_scale=head_scale, q_norm_weight=q_norm_weight, q_norm_bias=q_norm_bias,
        k_norm_weight=k_norm_weight, k_norm_bias=k_norm_bias, seed=seed, backend=backend,
        check_finite=check_finite, l2_eps=l2_eps, layernorm_eps=layernorm_eps, attn_bias=attn_bias)


def attention_packed_forward(qkv: Tensor, num_heads: int, kind: str = "quest", causal: bool = False,
                             causal_alignment: str = "top_left",
                             key_padding_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                             training: bool = False, scale: Optional[float] = None,
                             head_scale: Optional[Tensor] = None,
                             q_norm_weight: Optional[Tensor] = None,
                             q_norm_bias: Optional[Tensor] = None,
                             k_norm_weight: Optional[Tensor] = None,
                             k_norm_bias: Optional[Tensor] = None, seed: Optional[int] = None,
                             backend: str = "auto", check_finite: bool = True,
                             l2_eps: float = 1e-6, layernorm_eps: float = 1e-5,
                             need_weights: bool = False, need_diagnostics: bool = False,
                             attn_bias: Optional[Tensor] = None
                             ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """As attention_packed() (output (B, N, num_heads * D)), also returning the weights and
    diagnostics of attention_forward(), each None unless asked for."""
    out, weights, diagnostics = torch.ops.quest.attention_packed_forward(
        qkv, num_heads, kind, causal=causal, causal_alignment=causal_alignment,
        key_padding_mask=key_padding_mask, dropout_p=dropout_p, training=training, scale=scale,
        head_scale=head_scale, q_norm_weight=q_norm_weight, q_norm_bias=q_norm_bias,
        k_norm_weight=k_norm_weight, k_norm_bias=k_norm_bias, seed=seed, backend=backend,
        check_finite=check_finite, l2_eps=l2_eps, layernorm_eps=layernorm_eps,
        attn_bias=attn_bias, need_weights=need_weights, need_diagnostics=need_diagnostics)
    return (out, weights if need_weights else None, diagnostics if need_diagnostics else None)


def select_backend(q: Tensor, k: Tensor, v: Tensor, kind: str = "quest", causal: bool = False,
                   causal_alignment: str = "top_left", key_padding_mask: Optional[Tensor] = None,
                   dropout_p: float = 0.0, training: bool = False, scale: Optional[float] = None,
                   head_scale: Optional[Tensor] = None, q_norm_weight: Optional[Tensor] = None,
                   q_norm_bias: Optional[Tensor] = None, k_norm_weight: Optional[Tensor] = None,
                   k_norm_bias: Optional[Tensor] = None, seed: Optional[int] = None,
                   backend: str = "auto", check_finite: bool = True, l2_eps: float = 1e-6,
                   layernorm_eps: float = 1e-5,
                   attn_bias: Optional[Tensor] = None, enable_gqa: bool = False) -> Tuple[str, List[str]]:
    """The backend attention() would run for these arguments, and why each backend before it in
    the order was not taken, e.g. ("composite", ["fused: computes in float32 only, got Double"])."""
    return torch.ops.quest.select_backend(
        q, k, v, kind, causal=causal, causal_alignment=causal_alignment,
        key_padding_mask=key_padding_mask, dropout_p=dropout_p, training=training, scale=scale,
        head_scale=head_scale, q_norm_weight=q_norm_weight, q_norm_bias=q_norm_bias,
        k_norm_weight=k_norm_weight, k_norm_bias=k_norm_bias, seed=seed, backend=backend,
        check_finite=check_finite, l2_eps=l2_eps, layernorm_eps=layernorm_eps, attn_bias=attn_bias,
        enable_gqa=enable_gqa)


def set_bf16_products(enabled: bool) -> bool:
    """Whether the fused kernel's bfloat16 path may take bf16 products (vdpbf16ps; P and dS
    rounded to bf16 as in FlashAttention-2) where the CPU has AVX512_BF16. On by default; off, bf16
    inputs get the float32 kernel's results on their values, the same on every machine (slower
    where the products would run). Process-wide; returns the previous setting."""
    return torch.ops.quest.set_bf16_products(bool(enabled))


def set_simd_target(name: str) -> str:
    """Runs the fused kernel's code for another SIMD target from now on, as a CPU with only that
    target would, rounding included: e.g. "AVX2" reproduces an AVX2 machine's results on an
    AVX-512 one; "" goes back to the best this CPU has (runtime()["simd_target"] says which runs).
    The environment variable QUEST_SIMD_TARGET does the same before the first call. Process-wide;
    returns the previous target; an unknown name raises ValueError listing the ones there are."""
    return torch.ops.quest.set_simd_target(str(name))


def runtime() -> Dict[str, str]:
    """The fused kernel's SIMD target ("AVX3", "AVX2", ...), whether its bfloat16 path takes bf16
    products (bf16_products: "vdpbf16ps" on CPUs with AVX512_BF16, "disabled" there after
    set_bf16_products(False), else "none": float32 arithmetic on the bf16 values), the BLAS behind
    torch's matmul
    (blas, blas_library; blas_core: OpenBLAS's kernel set, where it is OpenBLAS), the OpenMP
    runtimes mapped in this process (openmp_runtimes, ";"-separated: one is right) and the torch
    quest was built against (torch)."""
    return torch.ops.quest.runtime()
