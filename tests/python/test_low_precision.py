"""bfloat16 and float16 inputs on every backend and under torch.autocast: outputs and gradients in
the input dtype. Bound against the float64 oracle on the same (rounded) inputs: the output's own
rounding, 2^-8 relative for bfloat16 and 2^-11 for float16 (half a unit in the last place), plus
1e-5 absolute for the float32 arithmetic inside.

Where the fused kernel takes bf16 products (quest.runtime()["bf16_products"], CPUs with
AVX512_BF16), P and dS are rounded to bf16 inside and D_i = rowsum(dO o O) comes from that output,
as in FlashAttention-2: its bfloat16 results are then held to the output's rounding plus 2^-5 of
the tensor's largest entry (measured: up to 6.4 x 2^-8 at these tiny shapes, for standard's sharp
rows whose dK cancels to little; <= 1.5 x 2^-8 at N ~ 100, D = 32)."""
import pytest
import torch

import oracle
import quest

BOUND = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
PRODUCTS = quest.runtime()["bf16_products"] == "vdpbf16ps"
PRODUCTS_BOUND = 2.0 ** -5


def inputs(kind, dtype, seed=0, b=2, h=2, nq=5, nk=7, d=8):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(b, h, n, d, generator=g).to(dtype).requires_grad_() for n in (nq, nk, nk)]
    params = {}
    if kind == "qknorm":
        params["head_scale"] = (1 + 3 * torch.rand(h, generator=g)).requires_grad_()
    if kind == "qk_layernorm":
        params = {n: (1 + 0.3 * torch.randn(d, generator=g) if "weight" in n else 0.2 * torch.randn(d, generator=g))
                  .requires_grad_() for n in ("q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias")}
    return t, params


def close(actual, expected, dtype, fused=False):
    """fused: the fused kernel computed it (bf16 products where PRODUCTS)."""
    assert actual.dtype == dtype
    atol = 1e-5
    if fused and dtype == torch.bfloat16 and PRODUCTS:
        atol = PRODUCTS_BOUND * expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=BOUND[dtype], atol=atol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["fused", "composite", "reference", "sdpa"])
@pytest.mark.parametrize("kind", quest.KINDS)
@pytest.mark.parametrize("causal", [False, True])
def test_reduced_precision_matches_the_oracle(kind, backend, dtype, causal):
    (q, k, v), params = inputs(kind, dtype)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    out = quest.attention(q, k, v, kind, causal=causal, key_padding_mask=mask, backend=backend, **params)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    out.backward(dout)
    # The oracle in float64 on the same rounded values (parameters as given: float32 master weights).
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref_params = {n: p.detach().double() for n, p in params.items()}
    expected, _ = oracle.attention(*ref, kind, causal=causal, key_padding_mask=mask, **ref_params)
    expected.backward(dout.double())
    close(out, expected, dtype, fused=backend == "fused")
    for x, r in zip((q, k, v), ref):
        close(x.grad, r.grad, dtype, fused=backend == "fused")


def test_packed_and_sdpa_entry_points_answer_in_the_input_dtype():
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 6, 3 * 2 * 4, generator=g).to(torch.bfloat16).requires_grad_()
    out = quest.attention_packed(qkv, 2, "quest")
    out.sum().backward()
    assert out.dtype == torch.bfloat16 and qkv.grad.dtype == torch.bfloat16
    expected = quest.attention_packed(qkv.detach().float(), 2, "quest")
    close(out, expected.double(), torch.bfloat16, fused=True)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g).to(torch.bfloat16) for _ in range(3))
    bias = torch.randn(5, 5, generator=g).to(torch.bfloat16)
    out = quest.scaled_dot_product_attention(q, k, v, attn_mask=bias, kind="standard")
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                               attn_mask=bias.double())
    close(out, expected, torch.bfloat16)
    with pytest.raises(RuntimeError, match="must share a dtype"):
        quest.attention(q, k.float(), v)


def test_autocast_runs_the_module_in_bfloat16_with_float32_parameters():
    torch.manual_seed(0)
    for kind in quest.KINDS:
        mha = quest.MultiheadAttention(16, 2, batch_first=True, kind=kind)
        x = torch.randn(3, 6, 16)
        plain, _ = mha(x, x, x, need_weights=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = mha(x, x, x, need_weights=False)
        assert out.dtype == torch.bfloat16, kind
        # bf16 projections and attention: a few bf16 roundings from the float32 module's output
        torch.testing.assert_close(out.float(), plain, rtol=0.05, atol=0.05)
        out.float().sum().backward()
        for name, p in mha.named_parameters():
            assert p.grad is not None and p.grad.dtype == torch.float32, (kind, name)
    # The functional operator under autocast: float32 inputs come back in the autocast dtype.
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quest.attention(q, k, v, "qknorm", head_scale=torch.full((2,), 3.0))
        assert out.dtype == torch.bfloat16
        assert quest.scaled_dot_product_attention(q, k, v).dtype == torch.bfloat16
    expected = quest.attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), "qknorm",
                               head_scale=torch.full((2,), 3.0))
    close(out, expected.double(), torch.bfloat16, fused=True)


def test_select_backend_answers_for_reduced_precision_as_attention_runs():
    """select_backend sees bfloat16/float16 inputs as attention() does: as their float32 copies
    (the fused kernel on CPU), instead of refusing the dtype."""
    (q, k, v), _ = inputs("quest", torch.bfloat16)
    assert quest.select_backend(q, k, v) == ("fused", [])
    assert quest.select_backend(q.half(), k.half(), v.half(), backend="sdpa") == ("sdpa", [])
    with pytest.raises(RuntimeError, match="must share a dtype"):
        quest.select_backend(q, k.float(), v)


def _graph_chain(out):
    """The autograd nodes from out back along each node's first input."""
    chain, node = [], out.grad_fn
    while node is not None:
        chain.append(node.name())
        inputs = [n for n, _ in node.next_functions if n is not None]
        node = inputs[0] if inputs else None
    return chain


def test_fused_kernel_reads_bfloat16_in_place():
    """bfloat16 q, k, v (and a packed qkv) reach the fused kernel as they are: no float32 copy
    between them and the kernel in the graph (the kernel's float32 output is rounded after it).
    QK-LayerNorm's q and k reach it as torch's bfloat16 LayerNorm outputs; float16 takes float32
    copies."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 20, 16, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3))
    chain = _graph_chain(quest.attention(q, k, v, "quest", backend="fused"))
    assert "KernelFunction" in chain[1] and chain[2].endswith("AccumulateGrad"), chain
    qkv = torch.randn(2, 20, 3 * 4 * 8, generator=g).to(torch.bfloat16).requires_grad_()
    chain = _graph_chain(quest.attention_packed(qkv, 4, "quest"))
    assert "PackedKernelFunction" in chain[2] and chain[-1].endswith("AccumulateGrad") and "ToCopy" not in chain[3], chain
    chain = _graph_chain(quest.attention(q.half(), k.half(), v.half(), "quest", backend="fused"))
    assert "KernelFunction" in chain[1] and "ToCopy" in chain[2], chain
    _, params = inputs("qk_layernorm", torch.bfloat16, h=3, d=16)
    chain = _graph_chain(quest.attention(q, k, v, "qk_layernorm", backend="fused", **params))
    assert "KernelFunction" in chain[1] and "LayerNorm" in chain[2] and chain[3].endswith("AccumulateGrad"), chain
    chain = _graph_chain(quest.attention_packed(qkv, 4, "qk_layernorm", **inputs("qk_layernorm", torch.bfloat16, d=8)[1]))
    kernel = next(i for i, n in enumerate(chain) if "KernelFunction" in n)
    assert "LayerNorm" in chain[kernel + 1] and not any("ToCopy" in n for n in chain[kernel:]), chain


@pytest.mark.parametrize("kind", quest.KINDS)
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_bfloat16_matches_the_oracle(kind, causal):
    """GQA in bfloat16 storage: each query-head group's dK, dV share summed in float32."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 9, 8, generator=g).to(torch.bfloat16).requires_grad_()
    k, v = (torch.randn(2, 2, 11, 8, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(2))
    _, params = inputs(kind, torch.bfloat16, h=4)
    out = quest.attention(q, k, v, kind, causal=causal, enable_gqa=True, backend="fused", **params)
    dout = torch.randn(out.shape, generator=g).to(torch.bfloat16)
    out.backward(dout)
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    expected, _ = oracle.attention(ref[0], ref[1].repeat_interleave(2, 1), ref[2].repeat_interleave(2, 1), kind,
                                   causal=causal, **{n: p.detach().double() for n, p in params.items()})
    expected.backward(dout.double())
    close(out, expected, torch.bfloat16, fused=True)
    for x, r in zip((q, k, v), ref):
        close(x.grad, r.grad, torch.bfloat16, fused=True)


@pytest.mark.parametrize("kind", ["standard", "quest", "qknorm"])
def test_bf16_products_can_be_turned_off_for_the_float32_kernels_results(kind):
    """quest.set_bf16_products(False): bf16 inputs get the float32 kernel's results on their values
    (rounded once), bit for bit, on every machine; on one with AVX512_BF16 the products (on by
    default) give other, bf16-accurate results."""
    (q, k, v), params = inputs(kind, torch.bfloat16, nq=40, nk=37, d=16)
    dout = torch.randn(2, 2, 40, 16, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)

    def run(x):
        xs = [t.detach().to(x).requires_grad_() for t in (q, k, v)]
        out = quest.attention(*xs, kind, causal=True, backend="fused", **params)
        grads = torch.autograd.grad(out, xs, dout.to(x))
        return [out.bfloat16()] + [g.bfloat16() for g in grads]

    previous = quest.set_bf16_products(False)
    try:
        assert quest.runtime()["bf16_products"] in ("disabled", "none")
        off = run(torch.bfloat16)
    finally:
        quest.set_bf16_products(previous)
    assert previous is True  # the default
    for got, want in zip(off, run(torch.float32)):
        assert torch.equal(got, want)
    on = run(torch.bfloat16)
    if PRODUCTS:
        assert not torch.equal(on[0], off[0])
        for got, want in zip(on, off):
            close(got, want.double(), torch.bfloat16, fused=True)
    else:
        for got, want in zip(on, off):
            assert torch.equal(got, want)


def test_qk_layernorm_bfloat16_diagnostics_use_the_raw_rows():
    """bfloat16 QK-LayerNorm runs the kernel on torch's bf16 LayerNorm outputs; its diagnostics'
    query and key norms are still those of the raw rows (as on the float32 path, bit for bit), the
    rest (entropy, logits) those of the rounded LayerNorm outputs."""
    (q, k, v), params = inputs("qk_layernorm", torch.bfloat16, b=2, h=3, nq=20, nk=20, d=16)
    _, _, diag = quest.attention_forward(q, k, v, "qk_layernorm", backend="fused", need_diagnostics=True, **params)
    _, _, ref = quest.attention_forward(q.float(), k.float(), v.float(), "qk_layernorm", backend="fused",
                                        need_diagnostics=True, **params)
    torch.testing.assert_close(diag[:4], ref[:4], rtol=0, atol=0)
    torch.testing.assert_close(diag[4:], ref[4:], rtol=0.02, atol=0.02)


@pytest.mark.parametrize("kind", ["quest", "qk_layernorm"])
def test_bfloat16_rows_without_unit_stride_match_the_oracle(kind):
    """q, k, v whose rows are not contiguous along D reach the fused kernel as bf16 copies (and
    QK-LayerNorm's as bf16 LayerNorm outputs of them): same bound against the float64 oracle."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 8, 6, generator=g).to(torch.bfloat16).transpose(-1, -2).requires_grad_()
               for _ in range(3))
    assert q.stride(-1) != 1
    _, params = inputs(kind, torch.bfloat16, d=8)
    out = quest.attention(q, k, v, kind, backend="fused", **params)
    dout = torch.randn(out.shape, generator=g).to(torch.bfloat16)
    out.backward(dout)
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    expected, _ = oracle.attention(*ref, kind, **{n: p.detach().double() for n, p in params.items()})
    expected.backward(dout.double())
    close(out, expected, torch.bfloat16, fused=True)
    for x, r in zip((q, k, v), ref):
        close(x.grad, r.grad, torch.bfloat16, fused=True)
