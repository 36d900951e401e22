"""quest.attention: outputs and gradients of every kind, option and backend against the float64
plain-torch oracle; gradcheck; dropout; backend selection."""
import math
import os

import pytest
import torch

import oracle
import quest

KINDS = list(quest.KINDS)
BACKENDS = ["fused", "composite", "reference"]


def make_inputs(kind, batch=2, heads=3, q_len=7, k_len=9, dk=8, dv=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {name: torch.randn(batch, heads, n, d, generator=g, dtype=torch.float64)
         for name, n, d in (("q", q_len, dk), ("k", k_len, dk), ("v", k_len, dv))}
    params = {}
    if kind == "qknorm":
        params["head_scale"] = 1.0 + torch.rand(heads, generator=g, dtype=torch.float64) * 3
    if kind == "qk_layernorm":
        for name in ("q_norm_weight", "k_norm_weight"):
            params[name] = 1.0 + 0.3 * torch.randn(dk, generator=g, dtype=torch.float64)
        for name in ("q_norm_bias", "k_norm_bias"):
            params[name] = 0.2 * torch.randn(dk, generator=g, dtype=torch.float64)
    return t, params


def leaves(tensors, dtype):
    return {n: x.detach().to(dtype).requires_grad_() for n, x in tensors.items()}


# (name, options): every option of the C++ API the oracle can express.
CASES = [
    ("plain", {}),
    ("causal", {"causal": True}),
    ("padding", {"key_padding_mask": "pad"}),
    ("causal+padding", {"causal": True, "key_padding_mask": "pad"}),
    ("bottom_right", {"causal": True, "causal_alignment": "bottom_right"}),
    ("bottom_right+padding", {"causal": True, "causal_alignment": "bottom_right",
                              "key_padding_mask": "pad"}),
    ("scale", {"scale": 0.37}),
]
SHAPES = [
    ("Nq<Nk", dict(q_len=7, k_len=9)),
    ("Nq>Nk,Dv!=Dk", dict(q_len=11, k_len=5, dk=8, dv=5)),
]


def padding_mask(batch, k_len):
    mask = torch.zeros(batch, k_len, dtype=torch.bool)
    mask[0, -2:] = True          # a few padded keys
    mask[-1, 1] = True
    return mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape_name,shape", SHAPES)
@pytest.mark.parametrize("case_name,case", CASES)
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_gradients_match_oracle(kind, case_name, case, shape_name, shape, backend):
    if case_name == "scale" and kind == "qknorm":
        pytest.skip("qknorm's scale is its head_scale")
    tensors, params = make_inputs(kind, **shape)
    options = dict(case)
    if options.get("key_padding_mask") == "pad":
        options["key_padding_mask"] = padding_mask(2, shape["k_len"])
    dtype = torch.float32 if backend == "fused" else torch.float64
    # float64 oracle on the same (rounded) values the backend sees
    ref_in = leaves({n: x.to(dtype) for n, x in {**tensors, **params}.items()}, torch.float64)
    got_in = leaves({**tensors, **params}, dtype)

    ref_out, _ = oracle.attention(ref_in["q"], ref_in["k"], ref_in["v"], kind,
                                  **options, **{n: ref_in[n] for n in params})
    got_out = quest.attention(got_in["q"], got_in["k"], got_in["v"], kind, backend=backend,
                              **options, **{n: got_in[n] for n in params})
    assert got_out.dtype == dtype and got_out.shape == ref_out.shape
    dout = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    (ref_out * dout).sum().backward()
    (got_out * dout.to(dtype)).sum().backward()

    tol = dict(rtol=2e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_out.double(), ref_out.detach(), **tol)
    for name in got_in:
        torch.testing.assert_close(got_in[name].grad.double(), ref_in[name].grad, **tol,
                                   msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["composite", "reference"])
def test_gradcheck_float64(kind, backend):
    tensors, params = make_inputs(kind, batch=1, heads=2, q_len=4, k_len=5, dk=3, dv=2)
    names = list(tensors) + list(params)
    inputs = tuple(leaves({**tensors, **params}, torch.float64)[n] for n in names)
    mask = torch.tensor([[False, False, False, True, False]])

    def f(*xs):
        a = dict(zip(names, xs))
        return quest.attention(a["q"], a["k"], a["v"], kind, causal=True, key_padding_mask=mask,
                               backend=backend, **{n: a[n] for n in params})

    assert torch.autograd.gradcheck(f, inputs)
    if backend == "composite":
        assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_kernel_backends_refuse_double_backward(backend):
    dtype = torch.float32 if backend == "fused" else torch.float64
    q, k, v = (torch.randn(1, 1, 4, 4, dtype=dtype, requires_grad=True) for _ in range(3))
    out = quest.attention(q, k, v, backend=backend)
    (gq,) = torch.autograd.grad(out.sum(), q, create_graph=False)  # single backward is fine
    out = quest.attention(q, k, v, backend=backend)
    with pytest.raises(RuntimeError, match="once-differentiable.*composite"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


def test_dropout_keeps_or_drops_each_weight_and_is_seeded():
    # With V = identity the output row is the (dropped, rescaled) probability row itself.
    torch.manual_seed(0)
    n, p = 16, 0.25
    q = torch.randn(2, 2, n, 8)
    k = torch.randn(2, 2, n, 8)
    v = torch.eye(n).expand(2, 2, n, n).contiguous()
    _, probs = oracle.attention(q.double(), k.double(), v.double(), "quest")
    outs = {b: quest.attention(q, k, v, "quest", dropout_p=p, training=True, seed=7, backend=b)
            for b in BACKENDS}
    kept = outs["fused"] != 0
    torch.testing.assert_close(outs["fused"][kept].double(), (probs / (1 - p))[kept],
                               rtol=1e-5, atol=1e-7)
    assert abs((~kept).double().mean().item() - p) < 0.05
    for b in ("composite", "reference"):  # every backend draws the same mask for a seed
        torch.testing.assert_close(outs[b], outs["fused"], rtol=1e-5, atol=1e-7)
    again = quest.attention(q, k, v, "quest", dropout_p=p, training=True, seed=7)
    other = quest.attention(q, k, v, "quest", dropout_p=p, training=True, seed=8)
    assert torch.equal(again, outs["fused"]) and not torch.equal(other, outs["fused"])
    # without a seed, torch's generator decides: torch.manual_seed makes it repeatable
    torch.manual_seed(3)
    a = quest.attention(q, k, v, "quest", dropout_p=p, training=True)
    torch.manual_seed(3)
    b = quest.attention(q, k, v, "quest", dropout_p=p, training=True)
    assert torch.equal(a, b)
    # not training: no dropout
    torch.testing.assert_close(quest.attention(q, k, v, "quest", dropout_p=p),
                               probs.float(), rtol=1e-5, atol=1e-6)


def test_weights_and_diagnostics_match_oracle():
    tensors, _ = make_inputs("quest", q_len=6, k_len=6)
    q, k, v = (tensors[n].float() for n in "qkv")
    mask = padding_mask(2, 6)
    out, weights, diag = quest.attention_forward(q, k, v, "quest", causal=True,
                                                 key_padding_mask=mask, need_weights=True,
                                                 need_diagnostics=True)
    ref_out, probs = oracle.attention(q.double(), k.double(), v.double(), "quest", causal=True,
                                      key_padding_mask=mask)
    torch.testing.assert_close(weights.double(), probs, rtol=1e-5, atol=1e-6)
    d = quest.HeadDiagnostics.from_tensor(diag)
    qn = q.double().norm(dim=-1)                       # (B, H, N)
    kn = k.double().norm(dim=-1).masked_fill(mask.view(2, 1, 6), float("nan"))
    torch.testing.assert_close(d.q_norm_max, qn.amax((0, 2)), rtol=1e-5, atol=0)
    torch.testing.assert_close(d.q_norm_mean, qn.mean((0, 2)), rtol=1e-5, atol=0)
    torch.testing.assert_close(d.k_norm_max, kn.nan_to_num(-1).amax((0, 2)), rtol=1e-5, atol=0)
    torch.testing.assert_close(d.k_norm_mean, kn.nanmean((0, 2)), rtol=1e-5, atol=0)
    s = oracle.logits(q.double(), k.double(), "quest")
    ok = oracle.visible(6, 6, 2, True, mask).expand_as(s)
    torch.testing.assert_close(d.logit_abs_max, s.abs().where(ok, torch.zeros_like(s)).amax((0, 2, 3)),
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(d.logit_max, s.where(ok, torch.full_like(s, -math.inf)).amax((0, 2, 3)),
                               rtol=1e-5, atol=0)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)   # (B, H, N); every row sees a key
    torch.testing.assert_close(d.entropy_mean, entropy.mean((0, 2)), rtol=1e-4, atol=1e-6)
    assert weights.shape == (2, 3, 6, 6) and diag.dtype == torch.float64
    assert "logit_abs_max" in str(d)
    # not asked for: None
    _, w, dg = quest.attention_forward(q, k, v)
    assert w is None and dg is None


def test_backend_selection_says_why():
    q = torch.randn(1, 2, 4, 8, dtype=torch.float64)
    backend, why = quest.select_backend(q, q, q)
    assert backend == "composite" and any("float32" in r for r in why)
    assert quest.select_backend(q.float(), q.float(), q.float())[0] == "fused"
    with pytest.raises(RuntimeError, match="float32"):
        quest.attention(q, q, q, backend="fused")


def test_runtime_names_the_kernel_target_the_blas_and_torch():
    info = quest.runtime()
    assert set(info) == {"simd_target", "bf16_products", "blas", "blas_library", "blas_core",
                         "openmp_runtimes", "torch"}
    assert info["simd_target"] and info["blas"]
    # bf16 products need the AVX-512 code and the CPU's AVX512_BF16 (the kernel's runtime check)
    has_bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    want = "vdpbf16ps" if has_bf16 and info["simd_target"].startswith("AVX3") else "none"
    assert info["bf16_products"] == want, info
    previous = quest.set_bf16_products(False)
    try:
        assert quest.runtime()["bf16_products"] == ("disabled" if want != "none" else "none")
    finally:
        quest.set_bf16_products(previous)
    assert quest.runtime()["bf16_products"] == want
    assert torch.__version__.startswith(info["torch"]), (torch.__version__, info["torch"])


def test_simd_target_from_the_environment():
    # QUEST_SIMD_TARGET is read once per process, before the first kernel call: a fresh one each.
    # SSE4: every x86-64 machine has it; its code has no bf16 products.
    import subprocess
    import sys
    code = ("import torch, quest; q = torch.randn(1, 2, 5, 8); quest.attention(q, q, q, backend='fused'); "
            "print(quest.runtime()['simd_target'], quest.runtime()['bf16_products'])")
    run = lambda target: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        env={**os.environ, "QUEST_SIMD_TARGET": target})
    ok = run("SSE4")
    assert ok.returncode == 0 and ok.stdout.split() == ["SSE4", "none"], ok.stderr
    bad = run("AVX9")
    assert bad.returncode != 0 and '"AVX9" is not a SIMD target' in bad.stderr, bad.stderr
    # and in this process, back and forth; the results are the target's own (SSE4 against the best:
    # the same values to rounding)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    best = quest.runtime()["simd_target"]
    expected = quest.attention(q, k, v, backend="fused")
    assert quest.set_simd_target("SSE4") == best
    try:
        assert quest.runtime()["simd_target"] == "SSE4"
        torch.testing.assert_close(quest.attention(q, k, v, backend="fused"), expected)
        with pytest.raises(ValueError, match='"AVX9" is not a SIMD target'):
            quest.set_simd_target("AVX9")
        assert quest.runtime()["simd_target"] == best  # an unknown name: the best one runs
    finally:
        quest.set_simd_target("")
    assert quest.runtime()["simd_target"] == best


def test_rows_that_see_no_key_are_zero_with_finite_gradients():
    q = torch.randn(1, 1, 3, 4, requires_grad=True)
    k = torch.randn(1, 1, 3, 4, requires_grad=True)
    v = torch.randn(1, 1, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, True, True]])
    for backend in BACKENDS:
        out = quest.attention(q, k, v, key_padding_mask=mask, backend=backend)
        assert torch.equal(out, torch.zeros_like(out))
        out.sum().backward()
        assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_scale_default_per_kind():
    tensors, _ = make_inputs("standard")
    q, k, v = (tensors[n].float() for n in "qkv")
    for kind in ("standard", "quest"):
        explicit = 1 / math.sqrt(8) if kind == "standard" else 1.0
        torch.testing.assert_close(quest.attention(q, k, v, kind),
                                   quest.attention(q, k, v, kind, scale=explicit))


@pytest.mark.parametrize("kind", quest.KINDS)
@pytest.mark.parametrize("backend", ["fused", "composite", "auto"])
def test_packed_projection_equals_split_heads(kind, backend):
    # attention_packed on a (B, N, 3E) projection = attention on its heads, merged; the gradient
    # reaches the projection (and qknorm's head scale) alike.
    torch.manual_seed(5)
    b, n, h, d = 2, 19, 3, 8
    qkv0 = torch.randn(b, n, 3 * h * d)
    extra = {"causal": True}
    if kind == "qknorm":
        extra["head_scale"] = (torch.rand(h) + 0.5).requires_grad_()
    if kind == "qk_layernorm":
        extra["q_norm_weight"] = torch.rand(d) + 0.5
        extra["k_norm_bias"] = torch.randn(d) * 0.1
    w = torch.randn(b, n, h * d)

    def run(packed):
        qkv = qkv0.clone().requires_grad_()
        if packed:
            out = quest.attention_packed(qkv, h, kind, backend=backend, **extra)
        else:
            q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            out = quest.attention(q, k, v, kind, backend=backend, **extra)
            out = out.transpose(1, 2).reshape(b, n, h * d)
        scale = extra.get("head_scale")
        if scale is not None:
            scale.grad = None
        (out * w).sum().backward()
        return out.detach(), qkv.grad, None if scale is None else scale.grad.clone()

    out_p, dqkv_p, ds_p = run(True)
    out_s, dqkv_s, ds_s = run(False)
    assert out_p.shape == (b, n, h * d)
    torch.testing.assert_close(out_p, out_s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dqkv_p, dqkv_s, rtol=1e-5, atol=1e-6)
    if ds_p is not None:
        torch.testing.assert_close(ds_p, ds_s, rtol=1e-5, atol=1e-6)


def test_packed_projection_bad_shape_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"is not 3 x heads \(2\) x head_dim"):
        quest.attention_packed(torch.randn(2, 5, 20), 2)
    with pytest.raises(RuntimeError, match=r"qkv must have shape \(B, N, 3 x heads x head_dim\)"):
        quest.attention_packed_forward(torch.randn(5, 24), 2, need_weights=True)


@pytest.mark.parametrize("kind", ["quest", "qk_layernorm"])
def test_packed_forward_returns_the_split_heads_weights_and_diagnostics(kind):
    # attention_packed_forward = attention_forward on the split heads: output merged to
    # (B, N, E), the same (B, H, N, N) weights and (7, H) diagnostics; None unless asked.
    torch.manual_seed(6)
    b, n, h, d = 2, 11, 3, 8
    qkv = torch.randn(b, n, 3 * h * d)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[1, -3:] = True
    out, weights, diag = quest.attention_packed_forward(
        qkv, h, kind, key_padding_mask=mask, need_weights=True, need_diagnostics=True)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    out_s, weights_s, diag_s = quest.attention_forward(
        q, k, v, kind, key_padding_mask=mask, need_weights=True, need_diagnostics=True)
    assert out.shape == (b, n, h * d) and weights.shape == (b, h, n, n) and diag.shape == (7, h)
    torch.testing.assert_close(out, out_s.transpose(1, 2).reshape(b, n, h * d), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights, weights_s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(diag, diag_s, rtol=1e-5, atol=1e-6)
    plain = quest.attention_packed_forward(qkv, h, kind, key_padding_mask=mask)
    assert plain[1] is None and plain[2] is None
    torch.testing.assert_close(plain[0], out, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["fused", "composite", "reference", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_inputs_are_named_on_every_entry_point(backend, dtype):
    # The fused CPU kernel finds them as it reads q, k, v; the other backends check first. Either
    # way the error names the tensor, with and without autograd; unchecked, the NaN or infinity
    # reaches the output instead.
    if backend == "reference" and dtype == torch.bfloat16:
        pytest.skip("the reference backend runs float32 and float64 only")
    for part, bad in (("q", float("nan")), ("k", float("inf")), ("v", -float("inf"))):
        t, _ = make_inputs("quest")
        t = {n: x.to(dtype) for n, x in t.items()}
        t[part][1, 2, 3, 4] = bad
        for grad in (False, True):
            q, k, v = (t[n].clone().requires_grad_(grad) for n in ("q", "k", "v"))
            with pytest.raises(RuntimeError, match=f"{part} contains NaN or Inf"):
                quest.attention(q, k, v, "quest", backend=backend)
            with pytest.raises(RuntimeError, match=f"{part} contains NaN or Inf"):
                quest.functional.scaled_dot_product_attention(q, k, v, backend=backend)
            out = quest.attention(q, k, v, "quest", backend=backend, check_finite=False)
            # (torch's CPU SDPA, which the sdpa backend is, outputs zeros for a NaN query row)
            assert not torch.isfinite(out).all() or (backend == "sdpa" and part == "q")
    qkv = torch.randn(2, 5, 3 * 2 * 4, dtype=dtype)
    qkv[1, 4, 2 * 2 * 4 + 5] = float("nan")  # v, head 1, channel 1
    with pytest.raises(RuntimeError, match="v contains NaN or Inf"):
        quest.functional.attention_packed(qkv, 2, backend=backend)
