"""quest: QUEST attention (query-modulated spherical attention) and its baselines for PyTorch.

    import quest
    out = quest.attention(q, k, v, kind="quest")           # (B, H, N, D) tensors
    out = quest.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # SDPA's contract
    mha = quest.MultiheadAttention(512, 8, kind="quest")   # drop-in for torch.nn.MultiheadAttention
    model = quest.convert(model, kind="quest")             # every nn.MultiheadAttention replaced

The operators are torch.ops.quest.attention / attention_forward / attention_packed /
attention_packed_forward / select_backend (TorchScript can call them); they run quest's C++
kernels (fused SIMD for float32) in the process's LibTorch.
"""
from .functional import (BACKENDS, KINDS, attention, attention_forward, attention_packed,
                         attention_packed_forward, runtime, scaled_dot_product_attention,
                         select_backend, set_bf16_products, set_simd_target)
from .nn import MultiheadAttention
from .convert import convert
from .diagnostics import HeadDiagnostics, record_diagnostics

__all__ = ["attention", "scaled_dot_product_attention", "attention_forward", "attention_packed", "attention_packed_forward",
           "select_backend", "MultiheadAttention", "convert", "HeadDiagnostics", "record_diagnostics", "runtime",
           "set_bf16_products", "set_simd_target", "KINDS", "BACKENDS"]
__version__ = "0.1.0"
