"""quest.MultiheadAttention: a drop-in for torch.nn.MultiheadAttention with any attention kind."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from .functional import KINDS, BACKENDS, attention_forward, attention_packed_forward


class MultiheadAttentionError(ValueError, AssertionError):
    """A bad argument to quest.MultiheadAttention: a ValueError, and an AssertionError where
    torch.nn.MultiheadAttention asserts, so that code written against either catches it."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise MultiheadAttentionError("quest.MultiheadAttention: " + message)


def _mask_dtype(mask: Tensor, name: str) -> None:
    _check(mask.dtype == torch.bool or mask.is_floating_point(),
           f"only bool and floating types of {name} are supported, got {mask.dtype}")


def _as_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A torch-style mask as an additive logit bias: bool True (not allowed) -> -inf, float as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def _blocks_only(mask: Tensor) -> bool:
    """Whether a float mask only keeps (0) or blocks (-inf), i.e. says no more than a bool one."""
    return mask.dtype == torch.bool or bool(((mask == 0) | (mask == float("-inf"))).all())


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention with the attention of any quest kind.

    The constructor's arguments, the parameter names (in_proj_weight, in_proj_bias, or
    q/k/v_proj_weight when kdim/vdim differ; out_proj; bias_k, bias_v) and forward()'s signature
    and return value are torch's, so a state_dict moves between the two unchanged. Keyword-only
    extras: kind ("quest" by default), num_kv_heads (grouped- and multi-query attention: fewer
    key/value heads, num_heads a multiple; the projections then have E + 2 * num_kv_heads * head_dim
    rows, so such a state_dict is not torch's), causal (always causal, without an attn_mask),
    scale (logit scale; default per kind), qknorm_init_scale (qknorm's per-head scale, default
    sqrt(head_dim)), backend, check_finite (off: NaN/Inf propagate as in torch). The kinds'
    parameters are extra entries: head_scale (qknorm), q_norm_weight/bias and k_norm_weight/bias
    (qk_layernorm).

    Masks as torch takes them: the causal mask and padding run on the fused kernel as flags, any
    other attn_mask (2-D or 3-D, bool or float) as a logit bias on the composite backend, which
    also serves calls that ask for the weights under autograd (they carry gradients, as torch's).
    Differences from torch's module: the returned weights are before dropout; nested tensors are
    refused; a query that sees no key outputs zeros (torch: NaN); a hidden key's weight is exactly 0, also in a row
    that a NaN made NaN (torch's additive mask: NaN), so such a row's NaN reaches the visible
    keys' gradients only.

    Set `record_diagnostics = True` (or use quest.record_diagnostics) to keep each forward's
    per-head diagnostics as `last_diagnostics`, a (7, H) float64 tensor.
    """

    __constants__ = ["batch_first", "kind"]
    bias_k: Optional[Tensor]
    bias_v: Optional[Tensor]
    in_proj_weight: Optional[Tensor]
    in_proj_bias: Optional[Tensor]
    q_proj_weight: Optional[Tensor]
    k_proj_weight: Optional[Tensor]
    v_proj_weight: Optional[Tensor]
    head_scale: Optional[Tensor]
    q_norm_weight: Optional[Tensor]
    q_norm_bias: Optional[Tensor]
    k_norm_weight: Optional[Tensor]
    k_norm_bias: Optional[Tensor]
    scale: Optional[float]
    last_diagnostics: Optional[Tensor]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: Optional[int] = None, vdim: Optional[int] = None,
                 batch_first: bool = False, device=None, dtype=None, *, kind: str = "quest",
                 causal: bool = False, scale: Optional[float] = None,
                 qknorm_init_scale: Optional[float] = None, backend: str = "auto",
                 check_finite: bool = False, num_kv_heads: Optional[int] = None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"quest.MultiheadAttention: embed_dim ({embed_dim}) and num_heads "
                             f"({num_heads}) must be positive")
        if embed_dim % num_heads != 0:
            raise ValueError(f"quest.MultiheadAttention: embed_dim {embed_dim} is not divisible "
                             f"by num_heads {num_heads}")
        if num_kv_heads is not None and (num_kv_heads <= 0 or num_heads % num_kv_heads != 0):
            raise ValueError(f"quest.MultiheadAttention: num_heads {num_heads} is not a multiple "
                             f"of num_kv_heads {num_kv_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"quest.MultiheadAttention: dropout must be in [0, 1), got {dropout}")
        if kind not in KINDS:
            raise ValueError(f"quest.MultiheadAttention: unknown kind '{kind}'; expected one of "
                             f"{', '.join(KINDS)}")
        if backend not in BACKENDS:
            raise ValueError(f"quest.MultiheadAttention: unknown backend '{backend}'; expected "
                             f"one of {', '.join(BACKENDS)}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._packed = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads if num_kv_heads is not None else num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        kv_dim = self.num_kv_heads * self.head_dim  # the key and value projections' width
        self.kv_dim = kv_dim
        self.kind = kind
        self.causal = causal
        self.scale = scale
        self.backend = backend
        self.check_finite = check_finite
        self.add_zero_attn = add_zero_attn
        self.record_diagnostics = False
        self.last_diagnostics = None

        if self._packed:
            self.in_proj_weight = nn.Parameter(torch.empty(embed_dim + 2 * kv_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(kv_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(kv_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(embed_dim + 2 * kv_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, kv_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, kv_dim, **factory))
        else:
            self.bias_k = self.bias_v = None

        # The kinds' parameters, as quest::nn::KindParameters registers them in C++.
        for name in ("head_scale", "q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias"):
            self.register_parameter(name, None)
        self._qknorm_init_scale = (qknorm_init_scale if qknorm_init_scale is not None
                                   else math.sqrt(self.head_dim))
        if kind == "qknorm":
            self.head_scale = nn.Parameter(torch.empty(num_heads, **factory))
        if kind == "qk_layernorm":
            for name in ("q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias"):
                setattr(self, name, nn.Parameter(torch.empty(self.head_dim, **factory)))
        self._reset_parameters()

    # torch 1.13's TransformerEncoder(Layer) fast path calls native *standard* attention on
    # in_proj_weight directly whenever self_attn._qkv_same_embed_dim is True (there is no switch
    # to turn it off in 1.13), which would bypass this module's kind; False keeps every forward
    # here. The projection layout itself is `_packed`.
    @property
    def _qkv_same_embed_dim(self) -> bool:
        return False

    def _reset_parameters(self) -> None:
        # torch.nn.MultiheadAttention's initialisation, plus the kinds' parameters.
        if self._packed:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        if self.head_scale is not None:
            nn.init.constant_(self.head_scale, self._qknorm_init_scale)
        if self.q_norm_weight is not None:
            nn.init.ones_(self.q_norm_weight)
            nn.init.zeros_(self.q_norm_bias)
            nn.init.ones_(self.k_norm_weight)
            nn.init.zeros_(self.k_norm_bias)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, kind: str = "quest",
                   **options) -> "MultiheadAttention":
        """A quest module with `module`'s configuration, weights (shared, not copied), device,
        dtype and training mode; `options` are the keyword-only extras (causal, scale, ...)."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError("quest.MultiheadAttention.from_torch: expected a "
                            f"torch.nn.MultiheadAttention, got {type(module).__name__}")
        weight = module.out_proj.weight
        quest_module = cls(module.embed_dim, module.num_heads, dropout=module.dropout,
                           bias=module.in_proj_bias is not None,
                           add_bias_kv=module.bias_k is not None,
                           add_zero_attn=module.add_zero_attn, kdim=module.kdim, vdim=module.vdim,
                           batch_first=module.batch_first, device=weight.device,
                           dtype=weight.dtype, kind=kind, **options)
        for name, parameter in module.named_parameters(recurse=False):
            setattr(quest_module, name, parameter)
        quest_module.out_proj = module.out_proj
        quest_module.train(module.training)
        return quest_module

    def extra_repr(self) -> str:
        kv = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}{kv}, kind={self.kind}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}, causal={self.causal}")

    def _split_heads(self, x: Tensor, heads: int) -> Tensor:
        # (B, N, heads * Dh) -> (B, heads, N, Dh)
        return x.view(x.size(0), x.size(1), heads, self.head_dim).transpose(1, 2)

    def _project(self, query: Tensor, key: Tensor, value: Tensor
                 ) -> Tuple[Tensor, Tensor, Tensor]:
        """Batch-first (B, L, E), (B, S, kdim), (B, S, vdim) -> q (B, H, L, Dh), k, v (B, Hkv, S, Dh)."""
        e, kv = self.embed_dim, self.kv_dim
        b_q: Optional[Tensor] = None
        b_k: Optional[Tensor] = None
        b_v: Optional[Tensor] = None
        in_bias = self.in_proj_bias
        if in_bias is not None:
            b_q, b_k, b_v = in_bias[:e], in_bias[e:e + kv], in_bias[e + kv:]
        w = self.in_proj_weight
        bias_k, bias_v = self.bias_k, self.bias_v
        if w is not None:
            if query is key and key is value and bias_k is None and kv == e:
                # Self-attention with add_zero_attn (forward packs plain self-attention itself):
                # one projection; q, k, v are strided views of it (the fused
                # kernel reads rows with unit stride along Dh). unbind's backward is one stack,
                # where indexing would build a zero-filled projection-sized buffer per part.
                b, n = query.size(0), query.size(1)
                qkv = F.linear(query, w, in_bias)
                q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
                return q, k, v
            w_q, w_k, w_v = w[:e], w[e:e + kv], w[e + kv:]
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            assert w_q is not None and w_k is not None and w_v is not None
        q = F.linear(query, w_q, b_q)
        k = F.linear(key, w_k, b_k)
        v = F.linear(value, w_v, b_v)
        if bias_k is not None and bias_v is not None:
            k = torch.cat([k, bias_k.expand(k.size(0), 1, kv)], 1)
            v = torch.cat([v, bias_v.expand(v.size(0), 1, kv)], 1)
        return (self._split_heads(q, self.num_heads), self._split_heads(k, self.num_kv_heads),
                self._split_heads(v, self.num_kv_heads))

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """As torch.nn.MultiheadAttention.forward: query (L, N, E), key (S, N, kdim), value
        (S, N, vdim) — (N, L, E) ... with batch_first, or unbatched (L, E) ...; key_padding_mask
        (N, S), True = ignore (or an additive float); attn_mask (L, S) or (N * num_heads, L, S),
        bool (True = not allowed) or an additive float; is_causal: torch 2.x's hint that
        attn_mask is the causal mask (which must then be given, as torch requires). Returns
        (output, weights or None)."""
        if query.is_nested or key.is_nested or value.is_nested:
            raise MultiheadAttentionError(
                "quest.MultiheadAttention: nested tensors are not supported; pad the sequences "
                "and pass key_padding_mask")
        if is_causal and attn_mask is None:
            raise RuntimeError("quest.MultiheadAttention: is_causal=True needs attn_mask (the causal "
                               "mask), as torch.nn.MultiheadAttention; or build the module with "
                               "causal=True")
        # Shapes and masks checked as torch checks them (its messages, so that code matching them
        # keeps working), before anything is reshaped.
        _check(query.dim() in (2, 3), "query should be unbatched 2D or batched 3D tensor but "
               f"received {query.dim()}-D query tensor")
        batched = query.dim() == 3
        d = query.dim()
        _check(key.dim() == d and value.dim() == d,
               f"For {'batched' if batched else 'unbatched'} ({d}-D) `query`, expected `key` and "
               f"`value` to be {d}-D but found {key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None:
            _check(key_padding_mask.dim() == d - 1,
                   f"For {'batched' if batched else 'unbatched'} ({d}-D) `query`, expected "
                   f"`key_padding_mask` to be `None` or {d - 1}-D but found "
                   f"{key_padding_mask.dim()}-D tensor instead")
            _mask_dtype(key_padding_mask, "key_padding_mask")
        if attn_mask is not None:
            _check(attn_mask.dim() in (2, 3),
                   f"For {'batched' if batched else 'unbatched'} ({d}-D) `query`, expected "
                   f"`attn_mask` to be `None`, 2-D or 3-D but found {attn_mask.dim()}-D tensor instead")
            _mask_dtype(attn_mask, "attn_mask")
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            # Keep identity (self-attention) through the transpose.
            same_kv = key is value
            same_qk = query is key
            query = query.transpose(0, 1)
            key = query if same_qk else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        _check(query.size(2) == self.embed_dim and key.size(2) == self.kdim and
               value.size(2) == self.vdim,
               f"expected feature sizes (embed_dim {self.embed_dim}, kdim {self.kdim}, vdim "
               f"{self.vdim}), got {query.size(2)}, {key.size(2)}, {value.size(2)}")
        _check(key.size(0) == query.size(0) and value.size(0) == query.size(0) and
               key.size(1) == value.size(1),
               "key and value must have the query's batch size and one sequence length, got "
               f"(batch-first) {list(query.shape)}, {list(key.shape)}, {list(value.shape)}")
        batch, tgt_len, src_len = query.size(0), query.size(1), key.size(1)
        if key_padding_mask is not None:
            _check(list(key_padding_mask.shape) == [batch, src_len],
                   f"expected `key_padding_mask` of shape (N, S) = ({batch}, {src_len}) (or (S,) "
                   f"for unbatched input), got {list(key_padding_mask.shape)} (batched)")
        if attn_mask is not None:
            want = [tgt_len, src_len] if attn_mask.dim() == 2 else [batch * self.num_heads, tgt_len, src_len]
            shown = "(" + ", ".join([str(n) for n in want]) + ")"
            _check(list(attn_mask.shape) == want,
                   f"The shape of the {attn_mask.dim()}D attn_mask is {list(attn_mask.shape)}, "
                   f"but should be {shown}. Expected `attn_mask` shape to be {shown}")

        extra_keys = (1 if self.bias_k is not None else 0) + (1 if self.add_zero_attn else 0)
        # The kernels take causality and padding as flags; any other mask becomes an additive bias
        # (B or 1, H or 1, L, S), which runs on the composite backend.
        causal = self.causal
        bias: Optional[Tensor] = None
        if attn_mask is not None:
            flags = _blocks_only(attn_mask)  # says no more than a bool mask
            blocked = attn_mask if attn_mask.dtype == torch.bool else attn_mask == float("-inf")
            if flags and not bool(blocked.any()):
                pass  # keeps everything
            elif (flags and attn_mask.dim() == 2 and tgt_len == src_len and extra_keys == 0 and
                    torch.equal(blocked, torch.ones_like(blocked).triu(1))):
                causal = True
            else:
                bias = _as_bias(attn_mask, query.dtype)
                bias = bias.view(1, 1, tgt_len, src_len) if bias.dim() == 2 else \
                    bias.view(batch, self.num_heads, tgt_len, src_len)
        if is_causal and not causal:
            raise ValueError("quest.MultiheadAttention: is_causal=True but attn_mask is not the "
                             "causal mask")
        if causal and extra_keys > 0:
            raise ValueError("quest.MultiheadAttention: causal=True with add_bias_kv or "
                             "add_zero_attn is not supported (the extra keys would be visible "
                             "to every query, which a causal flag cannot express); pass the causal "
                             "attn_mask instead")

        mask: Optional[Tensor] = None
        if key_padding_mask is not None:
            if _blocks_only(key_padding_mask):
                mask = key_padding_mask if key_padding_mask.dtype == torch.bool else \
                    key_padding_mask == float("-inf")
            else:  # an additive float key_padding_mask, as torch allows
                padding = key_padding_mask.to(query.dtype).view(batch, 1, 1, src_len)
                bias = padding if bias is None else bias + padding
        if extra_keys > 0:  # the extra keys are visible to every query, as in torch
            if mask is not None:
                mask = torch.cat([mask, mask.new_zeros(batch, extra_keys)], 1)
            if bias is not None:
                bias = F.pad(bias, (0, extra_keys))

        if batch == 0 or tgt_len == 0 or src_len == 0:
            # Empty batches and queries give empty outputs, as torch's; queries without keys see
            # nothing and output zeros (quest's rule for rows that see no key) through out_proj.
            out = F.linear(query.new_zeros(batch, tgt_len, self.embed_dim), self.out_proj.weight,
                           self.out_proj.bias)
            weights = query.new_zeros(batch, self.num_heads, tgt_len, src_len + extra_keys) \
                if need_weights else None
            return self._finish(out, weights, batched, average_attn_weights)

        backend = self.backend
        if need_weights and backend == "auto" and torch.is_grad_enabled() and (
                query.requires_grad or key.requires_grad or value.requires_grad or
                self.out_proj.weight.requires_grad):
            # The returned weights must carry gradients (torch's do): the composite backend
            # computes output and weights in one autograd graph.
            backend = "composite"

        w = self.in_proj_weight
        if (w is not None and query is key and key is value and extra_keys == 0 and
                self.num_kv_heads == self.num_heads):
            # Self-attention: the heads straight from one projection and the output already
            # (B, L, E), so no split, merge or stacking copies (on the fused backend).
            qkv = F.linear(query, w, self.in_proj_bias)
            out, weights, diagnostics = attention_packed_forward(
                qkv, self.num_heads, self.kind, causal=causal, key_padding_mask=mask,
                dropout_p=self.dropout, training=self.training, scale=self.scale,
                head_scale=self.head_scale, q_norm_weight=self.q_norm_weight,
                q_norm_bias=self.q_norm_bias, k_norm_weight=self.k_norm_weight,
                k_norm_bias=self.k_norm_bias, backend=backend,
                check_finite=self.check_finite, need_weights=need_weights,
                need_diagnostics=self.record_diagnostics, attn_bias=bias)
        else:
            q, k, v = self._project(query, key, value)
            if self.add_zero_attn:
                zeros = torch.zeros(batch, self.num_kv_heads, 1, self.head_dim, dtype=k.dtype,
                                    device=k.device)
                k = torch.cat([k, zeros], 2)
                v = torch.cat([v, zeros], 2)
            out, weights, diagnostics = attention_forward(
                q, k, v, self.kind, causal=causal, key_padding_mask=mask, dropout_p=self.dropout,
                training=self.training, scale=self.scale, head_scale=self.head_scale,
                q_norm_weight=self.q_norm_weight, q_norm_bias=self.q_norm_bias,
                k_norm_weight=self.k_norm_weight, k_norm_bias=self.k_norm_bias,
                backend=backend, check_finite=self.check_finite, need_weights=need_weights,
                need_diagnostics=self.record_diagnostics, attn_bias=bias,
                enable_gqa=self.num_kv_heads != self.num_heads)
            # (B, H, L, Dh) -> (B, L, E)
            out = out.transpose(1, 2).reshape(batch, tgt_len, self.embed_dim)
        if self.record_diagnostics:
            self.last_diagnostics = diagnostics

        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        return self._finish(out, weights, batched, average_attn_weights)

    def _finish(self, out: Tensor, weights: Optional[Tensor], batched: bool,
                average_attn_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """(B, L, E) output and (B, H, L, S) weights in the caller's layout."""
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            if average_attn_weights:
                weights = weights.mean(1)
            if not batched:
                weights = weights.squeeze(0)
        return out, weights
