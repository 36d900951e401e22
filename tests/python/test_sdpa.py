"""quest.scaled_dot_product_attention: torch SDPA's arguments and semantics. With kind="standard" it
equals F.scaled_dot_product_attention (outputs and gradients, tested against SDPA itself) for every
argument combination; kind="quest" equals SDPA(q, F.normalize(k), v, scale=1); grouped- and
multi-query attention run on every backend with K and V read in place."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import quest

E = 8


def tensors(lead, hq=4, hk=4, l=5, s=7, ev=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, hq, l, E, generator=g, dtype=dtype)
    k = torch.randn(*lead, hk, s, E, generator=g, dtype=dtype)
    v = torch.randn(*lead, hk, s, ev, generator=g, dtype=dtype)
    return q, k, v


def make_mask(form, lead, hq=4, l=5, s=7, dtype=torch.float32):
    """SDPA's mask forms; every row keeps key 0 (a row that sees nothing is NaN in torch, 0 here)."""
    g = torch.Generator().manual_seed(3)
    if form is None:
        return None
    shape = {"padding": (*lead, 1, 1, s), "full_bool": (*lead, hq, l, s), "2d_bool": (l, s),
             "float": (*lead, 1, l, s), "float_inf": (l, s)}[form]
    if "bool" in form or form == "padding":
        m = torch.rand(*shape, generator=g) < 0.6
        m[..., 0] = True
        return m
    bias = torch.randn(*shape, generator=g, dtype=dtype)
    if form == "float_inf":
        bias[torch.rand(*shape, generator=g) < 0.3] = float("-inf")
        bias[..., 0] = 0.0
    return bias


def forward_backward(f, inputs):
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = f(*leaves)
    # Drawn in float64 whatever the dtype, so float32 and float64 runs share their upstream gradient.
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out.backward(upstream.to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves if x.is_floating_point()]


LEADS = [(), (2,), (2, 3)]
MASKS = [None, "padding", "full_bool", "2d_bool", "float", "float_inf"]


@pytest.mark.parametrize("lead", LEADS, ids=lambda x: f"lead{len(x)}")
@pytest.mark.parametrize("mask,causal", [(m, False) for m in MASKS] + [(None, True)])
@pytest.mark.parametrize("gqa", [1, 2, 4], ids=lambda g: f"group{g}")
@pytest.mark.parametrize("scale", [None, 0.3])
def test_standard_equals_torch_sdpa(lead, mask, causal, gqa, scale):
    q, k, v = tensors(lead, hq=4, hk=4 // gqa)
    m = make_mask(mask, lead)
    inputs = [q, k, v] + ([m] if m is not None else [])

    def ours(q, k, v, m=None):
        return quest.scaled_dot_product_attention(q, k, v, m, is_causal=causal, scale=scale,
                                                  enable_gqa=gqa > 1, kind="standard")

    def torchs(q, k, v, m=None):
        return F.scaled_dot_product_attention(q, k, v, m, is_causal=causal, scale=scale,
                                              enable_gqa=gqa > 1)

    for a, b in zip(forward_backward(ours, inputs), forward_backward(torchs, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("mask", [None, "padding", "float_inf"])
@pytest.mark.parametrize("gqa", [1, 4])
def test_quest_equals_sdpa_on_normalised_keys(mask, gqa):
    lead = (2,)
    q, k, v = tensors(lead, hq=4, hk=4 // gqa, dtype=torch.float64)
    m = make_mask(mask, lead, dtype=torch.float64)
    ours = quest.scaled_dot_product_attention(q, k, v, m, enable_gqa=gqa > 1, kind="quest")
    theirs = F.scaled_dot_product_attention(q, F.normalize(k, dim=-1, eps=1e-6), v, m, scale=1.0,
                                            enable_gqa=gqa > 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["standard", "quest", "qnorm", "qknorm", "qk_layernorm"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("group", [2, 4])
def test_grouped_query_on_every_backend(kind, causal, group):
    """Every backend against the composite in float64 (the fused kernel in float32): outputs and
    the gradients of q, k, v and the kind's parameters."""
    q, k, v = tensors((2,), hq=4, hk=4 // group, l=9, s=9, ev=E, dtype=torch.float64)
    params = {}
    if kind == "qknorm":
        params["head_scale"] = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    if kind == "qk_layernorm":
        params["q_norm_weight"] = torch.linspace(0.5, 1.5, E, dtype=torch.float64)
        params["k_norm_bias"] = torch.linspace(-0.2, 0.2, E, dtype=torch.float64)
    names = list(params)

    def run(backend, dtype):
        def f(q, k, v, *p):
            return quest.attention(q, k, v, kind, causal=causal, backend=backend, enable_gqa=True,
                                   **dict(zip(names, p)))
        return [t.double() for t in forward_backward(
            f, [t.to(dtype) for t in [q, k, v, *params.values()]])]

    expected = run("composite", torch.float64)
    for got, tol in ((run("reference", torch.float64), 1e-12), (run("fused", torch.float32), 2e-5)):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_grouped_query_reads_kv_in_place():
    """The kernels take k and v's own storage: a gradient the size of K, not of K per group."""
    q, k, v = tensors((2,), hq=8, hk=1, l=6, s=6, ev=E)
    k.requires_grad_()
    out = quest.scaled_dot_product_attention(q, k, v, enable_gqa=True, backend="fused")
    out.sum().backward()
    assert k.grad.shape == k.shape
    q, k, v = tensors((2,), hq=6, hk=4)
    with pytest.raises(RuntimeError, match="multiple"):
        quest.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    with pytest.raises(RuntimeError, match="head counts differ.*enable_gqa"):
        quest.scaled_dot_product_attention(q, k, v)


def test_masks_that_fuse_and_masks_that_do_not():
    q, k, v = tensors((2,))
    padding = make_mask("padding", (2,))
    quest.scaled_dot_product_attention(q, k, v, padding, backend="fused")  # a key padding mask
    with pytest.raises(RuntimeError, match="fused backend cannot run this call.*attn_bias"):
        quest.scaled_dot_product_attention(q, k, v, make_mask("2d_bool", (2,)), backend="fused")


def test_bad_arguments_are_named():
    q, k, v = tensors((2,))
    with pytest.raises(RuntimeError, match="attn_mask or is_causal, not both"):
        quest.scaled_dot_product_attention(q, k, v, make_mask("padding", (2,)), is_causal=True)
    with pytest.raises(RuntimeError, match="attn_mask has dtype Long"):
        quest.scaled_dot_product_attention(q, k, v, torch.ones(5, 7, dtype=torch.long))
    with pytest.raises(RuntimeError, match="same batch dims"):
        quest.scaled_dot_product_attention(q, k[:1], v[:1])
    with pytest.raises(RuntimeError, match="same rank"):
        quest.scaled_dot_product_attention(q, k[0], v[0])
    with pytest.raises(RuntimeError, match="dropout_p must be in"):
        quest.scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        quest.scaled_dot_product_attention(q, k, v, kind="nope")


def test_dropout_is_applied_and_seeded():
    q, k, v = tensors((2,), l=16, s=16)
    plain = quest.scaled_dot_product_attention(q, k, v)
    a = quest.scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=3)
    b = quest.scaled_dot_product_attention(q, k, v, dropout_p=0.5, seed=3)
    assert torch.equal(a, b) and not torch.allclose(a, plain)


def test_compiles_with_gqa_and_padding():
    torch._dynamo.reset()
    q, k, v = tensors((2,), hq=4, hk=2)
    m = make_mask("padding", (2,))
    f = lambda q, k, v: quest.scaled_dot_product_attention(q, k, v, m, enable_gqa=True)  # noqa: E731
    eager, compiled = forward_backward(f, [q, k, v]), forward_backward(torch.compile(f, fullgraph=True), [q, k, v])
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
    torch._dynamo.reset()


@pytest.mark.parametrize("mask,gqa", list(itertools.product([None, "padding", "float"], [False, True])))
def test_opcheck(mask, gqa):
    q, k, v = (t.requires_grad_() for t in tensors((2,), hq=4, hk=2 if gqa else 4))
    m = make_mask(mask, (2,))
    opcheck(torch.ops.quest.scaled_dot_product_attention.default, (q, k, v, m),
            {"enable_gqa": gqa, "is_causal": mask is None})


@pytest.mark.parametrize("kind", ["standard", "quest", "qnorm", "qknorm", "qk_layernorm"])
@pytest.mark.parametrize("causal,alignment", [(False, "top_left"), (True, "top_left"),
                                              (True, "bottom_right")])
@pytest.mark.parametrize("nq,nk", [(5, 5), (7, 4), (3, 8)])
def test_sdpa_backend_equals_the_composite(kind, causal, alignment, nq, nk):
    """backend="sdpa" (torch's SDPA on the normalised q and k: what other devices run) against the
    composite in float64, with padding that empties whole rows, a bias with -inf rows and GQA."""
    g = torch.Generator().manual_seed(nq * 10 + nk)
    q = torch.randn(2, 4, nq, E, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, nk, E, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, nk, 6, generator=g, dtype=torch.float64)
    pad = torch.zeros(2, nk, dtype=torch.bool)
    pad[1] = True  # every row of batch 1 sees no key: zeros, not NaN
    pad[0, -1] = True
    for bias in (None, torch.randn(nq, nk, generator=g, dtype=torch.float64)):
        if bias is not None:
            bias[0] = float("-inf")
        o = dict(kind=kind, causal=causal, causal_alignment=alignment, enable_gqa=True,
                 key_padding_mask=pad, attn_bias=bias)
        if kind == "qknorm":
            o["head_scale"] = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
        if kind == "qk_layernorm":
            o["q_norm_weight"] = torch.linspace(0.5, 1.5, E, dtype=torch.float64)
        got = forward_backward(lambda q, k, v: quest.attention(q, k, v, backend="sdpa", **o), [q, k, v])
        want = forward_backward(lambda q, k, v: quest.attention(q, k, v, backend="composite", **o),
                                [q, k, v])
        for a, b in zip(got, want):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sdpa_backend_says_what_it_cannot_run():
    q, k, v = tensors((2,))
    assert quest.select_backend(q, k, v, backend="sdpa") == ("sdpa", [])
    with pytest.raises(RuntimeError, match="sdpa backend cannot run this call.*dropout"):
        quest.attention(q, k, v, backend="sdpa", dropout_p=0.1, training=True)


def test_a_refused_backend_suggests_only_backends_that_can_run_the_call():
    q, k, v = tensors((2,))
    bias = torch.zeros(5, 7)
    # The reference has the fused kernel's mask limits: only the composite is suggested.
    for backend in ("fused", "reference"):
        with pytest.raises(RuntimeError, match=f"the {backend} backend cannot run this call: .*attn_bias; "
                                               "use the composite backend$"):
            quest.attention(q, k, v, backend=backend, attn_bias=bias)
    # float64 stops the fused kernel only: the reference can run it.
    with pytest.raises(RuntimeError, match="computes in float32 only.*; use the composite or reference backend$"):
        quest.attention(q.double(), k.double(), v.double(), backend="fused")


def reference_logits(q, k, kind, scale=None, enable_gqa=False):
    """The kind's logits in float64 (query heads; grouped keys repeated)."""
    q, k = q.double(), k.double()
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
    if kind == "quest":
        return q @ F.normalize(k, dim=-1).transpose(-2, -1) * (1.0 if scale is None else scale)
    return q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)


@pytest.mark.parametrize("backend", ["fused", "reference", "composite", "sdpa"])
@pytest.mark.parametrize("kind", ["standard", "quest"])
@pytest.mark.parametrize("mask,gqa", [(None, False), ("padding", True), ("float_inf", False), ("causal", True)])
def test_lse_and_max_logit_are_the_logits(backend, kind, mask, gqa):
    lead = (2,)
    q, k, v = tensors(lead, hq=4, hk=2 if gqa else 4)
    m = None if mask in (None, "causal") else make_mask(mask, lead)
    if m is not None and m.dtype != torch.bool and backend in ("fused", "reference"):
        backend = "composite"  # the kernels take masks as flags: a float bias runs on the composite
    bias = m is not None and m.dtype != torch.bool
    if bias:  # the max logit follows the kernels' flags: not with a float mask
        with pytest.raises(RuntimeError, match="not computed with an attn_bias"):
            quest.scaled_dot_product_attention(q, k, v, m, kind=kind, backend=backend, return_max_logit=True)
    out, lse, *max_logit = quest.scaled_dot_product_attention(
        q, k, v, m, is_causal=mask == "causal", enable_gqa=gqa, kind=kind, backend=backend,
        return_lse=True, return_max_logit=not bias)
    s = reference_logits(q, k, kind, enable_gqa=gqa)
    if m is not None:
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.double()
    if mask == "causal":
        s = s.masked_fill(torch.ones(5, 7, dtype=torch.bool).triu(1), float("-inf"))
    assert lse.shape == (*lead, 4, 5) and lse.dtype == torch.float32 and not lse.requires_grad
    torch.testing.assert_close(lse.double(), s.logsumexp(-1), rtol=1e-5, atol=1e-5)
    if not bias:
        assert max_logit[0].shape == (4,) and max_logit[0].dtype == torch.float32
        torch.testing.assert_close(max_logit[0].double(), s.amax((0, 2, 3)), rtol=1e-5, atol=1e-5)
    # the output is the plain call's
    torch.testing.assert_close(out, quest.scaled_dot_product_attention(
        q, k, v, m, is_causal=mask == "causal", enable_gqa=gqa, kind=kind, backend=backend))


def test_lse_of_an_empty_row_and_the_return_forms():
    q, k, v = tensors(())
    m = torch.ones(5, 7, dtype=torch.bool)
    m[2] = False  # row 2 sees no key
    out, lse = quest.scaled_dot_product_attention(q, k, v, m, return_lse=True)
    assert torch.isneginf(lse[:, 2]).all() and torch.isfinite(lse[:, [0, 1, 3, 4]]).all()
    assert (out[:, 2] == 0).all()
    out2, max_logit = quest.scaled_dot_product_attention(q, k, v, return_max_logit=True)
    assert max_logit.shape == (4,) and torch.equal(out2, quest.scaled_dot_product_attention(q, k, v))


def test_lse_compiles():
    torch._dynamo.reset()
    q, k, v = tensors((2,), hq=4, hk=2)
    f = lambda q, k, v: quest.scaled_dot_product_attention(q, k, v, enable_gqa=True, return_lse=True)  # noqa: E731
    eager, compiled = f(q, k, v), torch.compile(f, fullgraph=True)(q, k, v)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
    torch._dynamo.reset()
