"""torch.compile: quest's operators trace with fullgraph=True into its kernel operators
(quest::_kernel_forward / _kernel_backward, _packed_kernel_*) and torch ops, match eager outputs
and gradients, pass torch.library.opcheck, and keep one graph when the sequence length varies
(dynamic=True)."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch.library import opcheck

import quest

KINDS = ["standard", "quest", "qnorm", "qknorm", "qk_layernorm"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def qkv(b=2, h=3, n=10, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def forward_backward(f, inputs):
    """f's output and the gradients of every input, for a fixed upstream gradient."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = f(*leaves)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype))
    return [out.detach()] + [x.grad for x in leaves]


def assert_same(eager, compiled, exact):
    for a, b in zip(eager, compiled):
        if exact:  # the same kernels on the same inputs
            assert torch.equal(a, b), (a - b).abs().max()
        else:  # torch ops, possibly fused differently by the compiler
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def options(kind, mask):
    o = {"kind": kind}
    if kind == "qknorm":
        o["head_scale"] = torch.tensor([2.0, 3.0, 4.0])
    if kind == "qk_layernorm":
        o["q_norm_weight"] = torch.linspace(0.5, 1.5, 8)
        o["k_norm_bias"] = torch.linspace(-0.1, 0.1, 8)
    if mask:
        padding = torch.zeros(2, 10, dtype=torch.bool)
        padding[1, 6:] = True
        o["key_padding_mask"] = padding
    return o


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["auto", "reference", "composite"])
@pytest.mark.parametrize("causal,mask", [(False, False), (True, True)])
def test_fullgraph_matches_eager(kind, backend, causal, mask):
    o = options(kind, mask)

    def f(q, k, v):
        return quest.attention(q, k, v, causal=causal, backend=backend, **o)

    inputs = qkv()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    # The kernels give bit-identical results; qk_layernorm normalises with torch ops first.
    exact = backend != "composite" and kind != "qk_layernorm"
    assert_same(forward_backward(f, inputs), forward_backward(compiled, inputs), exact)


def test_inductor_runs_the_fused_kernel_in_the_graph():
    f = lambda q, k, v: quest.attention(q, k, v, kind="quest", causal=True)  # noqa: E731
    inputs = qkv(n=33, d=16)
    assert quest.select_backend(*inputs, kind="quest", causal=True)[0] == "fused"
    compiled = torch.compile(f, fullgraph=True)
    assert_same(forward_backward(f, inputs), forward_backward(compiled, inputs), exact=True)


@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_multihead_attention_compiles(self_attention, kv_heads):
    torch.manual_seed(0)
    mha = quest.MultiheadAttention(24, 4, kind="quest", batch_first=True,
                                   num_kv_heads=kv_heads).train()
    x = torch.randn(2, 9, 24)
    memory = x if self_attention else torch.randn(2, 5, 24)

    def step(module):
        module.zero_grad()
        out, _ = module(x, memory, memory, need_weights=False)
        out.square().mean().backward()
        return [out.detach()] + [p.grad.clone() for p in module.parameters()]

    eager = step(mha)
    compiled = step(torch.compile(mha, fullgraph=True))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_converted_torchvision_vit_compiles():
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    vit = models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                   hidden_dim=32, mlp_dim=64, num_classes=5)
    vit = quest.convert(vit, kind="quest").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.compile(vit, fullgraph=True)(x), vit(x), rtol=1e-5, atol=1e-5)


class _EncoderViT(torch.nn.Module):
    """torchvision's ViT layout (class token, learned positions, pre-norm torch.nn encoder
    layers, whose nn.MultiheadAttention quest.convert replaces), without torchvision."""

    def __init__(self, dim=32, heads=2, depth=2):
        super().__init__()
        self.conv_proj = torch.nn.Conv2d(3, dim, kernel_size=8, stride=8)
        self.class_token = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = torch.nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, depth, norm=torch.nn.LayerNorm(dim),
                                                   enable_nested_tensor=False)
        self.heads = torch.nn.Linear(dim, 5)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.size(0), -1, -1), x], 1) + self.pos_embedding
        return self.heads(self.encoder(x)[:, 0])


@pytest.mark.parametrize("autocast", [False, True])
def test_converted_encoder_vit_compiles_and_trains(autocast):
    """A converted torch.nn encoder ViT (torchvision's layout) under torch.compile(fullgraph=True):
    outputs and every parameter's gradient as eager, in float32 and under bf16 CPU autocast (where
    the attention reads bf16 in place)."""
    torch.manual_seed(0)
    vit = quest.convert(_EncoderViT(), kind="quest").train()
    assert any(isinstance(m, quest.MultiheadAttention) for m in vit.modules())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def step(model):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in vit.parameters()]

    eager = step(vit)
    compiled = step(torch.compile(vit, fullgraph=True))
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, **tol)


@pytest.mark.parametrize("causal", [False, True])
def test_varying_length_compiles_once(causal):
    f = lambda q, k, v: quest.attention(q, k, v, kind="quest", causal=causal)  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    # Lengths differ from D = 8: dynamo gives equal sizes one symbol, so N = D would tie N to D.
    for n in (10, 13, 17, 22):
        inputs = qkv(n=n, seed=n)
        assert torch.equal(compiled(*inputs), f(*inputs))
    assert counters["stats"]["unique_graphs"] == 1


def test_nonfinite_inputs_are_named_under_compile():
    q, k, v = qkv()
    q[0, 1, 2, 3] = float("nan")
    compiled = torch.compile(lambda q, k, v: quest.attention(q, k, v), fullgraph=True)
    with pytest.raises(RuntimeError, match="q contains NaN or Inf"):
        compiled(q, k, v)
    # check_finite=False: NaN propagates as in eager.
    unchecked = lambda q, k, v: quest.attention(q, k, v, check_finite=False)  # noqa: E731
    eager, traced = unchecked(q, k, v), torch.compile(unchecked, fullgraph=True)(q, k, v)
    assert torch.equal(eager.isnan(), traced.isnan())
    assert torch.equal(eager.nan_to_num(), traced.nan_to_num())


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("kind", KINDS)
def test_diagnostics_and_max_logit_compile(kind, backend):
    """Compiled, the kernels' diagnostics are reduced by the graph's quest::_reduce_diagnostics
    (QK-LayerNorm's raw norms by torch ops): equal to eager's, with GQA and padding, and
    return_max_logit with them."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 9, 8, generator=g) * 3
    k, v = (torch.randn(2, 2, 11, 8, generator=g) * 2 for _ in range(2))
    pad = torch.zeros(2, 11, dtype=torch.bool)
    pad[1, 7:] = True
    k[1, :, 8] = 1e3  # a padded key with a huge norm: it must not reach the key norms
    o = dict(kind=kind, backend=backend, enable_gqa=True, key_padding_mask=pad, causal=True)
    if kind == "qknorm":
        o["head_scale"] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    if kind == "qk_layernorm":
        o["q_norm_weight"] = torch.linspace(0.5, 1.5, 8)

    def f(q, k, v):
        out, _, d = quest.attention_forward(q, k, v, need_diagnostics=True, **o)
        return out, d

    # QK-LayerNorm's normalisation is torch ops, which the compiler may fuse with other rounding.
    tol = dict(rtol=1e-5, atol=1e-6) if kind == "qk_layernorm" else dict(rtol=1e-12, atol=0)
    (out, want), (got_out, got) = f(q, k, v), torch.compile(f, fullgraph=True)(q, k, v)
    torch.testing.assert_close(got_out, out, **tol)
    assert got.shape == (7, 4) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, **tol)
    assert want[3].max() < 100  # the padded key is not among the norms
    qn = q.double().norm(dim=-1)  # raw query norms per head (eager once mixed GQA groups' for qk_layernorm)
    torch.testing.assert_close(want[:2], torch.stack([qn.mean((0, 2)), qn.amax((0, 2))]), rtol=1e-6, atol=0)

    def sdpa(q, k, v):
        return quest.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :], enable_gqa=True,
                                                  kind=kind, backend=backend, return_max_logit=True,
                                                  **{n: x for n, x in o.items() if n in ("head_scale", "q_norm_weight")})

    torch._dynamo.reset()
    (_, eager_max), (_, compiled_max) = sdpa(q, k, v), torch.compile(sdpa, fullgraph=True)(q, k, v)
    assert compiled_max.dtype == torch.float32 and compiled_max.shape == (4,)
    torch.testing.assert_close(compiled_max, eager_max, **tol)


def test_what_does_not_compile_says_so():
    q, k, v = qkv()
    diagnostics = torch.compile(
        lambda q, k, v: quest.attention_forward(q, k, v, need_diagnostics=True, backend="composite")[2],
        fullgraph=True)
    with pytest.raises(Exception, match="eager mode only"):
        diagnostics(q, k, v)
    torch._dynamo.reset()
    seeded = torch.compile(lambda q, k, v: quest.attention(q, k, v, dropout_p=0.1, training=True, seed=3),
                           fullgraph=True)
    with pytest.raises(Exception, match="a dropout seed does not compile"):
        seeded(q, k, v)
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["standard", "quest"])
def test_attention_dropout_compiles_with_fresh_masks(kind):
    # Compiled dropout draws torch's in-graph random numbers: each call a fresh mask, kept weights
    # scaled by 1/(1-p), so the output's mean over calls is the output without dropout; gradients flow.
    torch._dynamo.reset()
    torch.manual_seed(0)  # the in-graph random numbers come from torch's generator: a fixed draw
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, 6, 8, generator=g) for _ in range(2))
    v = torch.randn(2, 2, 6, 8, generator=g).requires_grad_()
    f = torch.compile(lambda q, k, v: quest.attention(q, k, v, kind, dropout_p=0.5, training=True), fullgraph=True)
    outs = [f(q, k, v) for _ in range(400)]
    assert not torch.equal(outs[0], outs[1])
    plain = quest.attention(q, k, v, kind)
    torch.testing.assert_close(torch.stack(outs).mean(0), plain.detach(), rtol=0, atol=0.25)
    outs[0].sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()
    # With v = 1 a row is 2 x the sum of its kept weights: some rows lose weight, some gain.
    rows = f(q, k, torch.ones(2, 2, 6, 8))[..., 0]
    assert (rows < 0.99).any() and (rows > 1.01).any()
    torch._dynamo.reset()


SCALARS = dict(q_norm=0, k_norm=1, scale=1.0, l2_eps=1e-6, layernorm_eps=1e-5, causal=False,
               causal_alignment=0, dropout=0.0, seed=0)


def kernel_cases():
    """(name, op, args, kwargs) for the kernel operators over a grid of options."""
    q, k, v = (t.requires_grad_() for t in qkv(n=5, d=4))
    hs = torch.tensor([1.5, 2.0, 2.5], requires_grad=True)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    cases = []
    for backend, dtype in (("fused", torch.float32), ("reference", torch.float64)):
        qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        for causal, alignment, mask, scale in ((False, 0, None, None), (True, 1, pad, hs)):
            scale = scale.detach().to(dtype).requires_grad_() if scale is not None else None
            for q_norm, k_norm in ((0, 0), (0, 1), (1, 1)):
                s = dict(SCALARS, q_norm=q_norm, k_norm=k_norm, causal=causal,
                         causal_alignment=alignment)
                cases.append((f"{backend}-causal{causal}-norms{q_norm}{k_norm}",
                              torch.ops.quest._kernel_forward.default,
                              (qd, kd, vd, scale, None, None, None, None, mask, backend),
                              dict(s, need_diagnostics=False)))
    # LayerNorm with its affine runs on the reference kernel only.
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    w = torch.linspace(0.5, 1.5, 4, dtype=torch.float64, requires_grad=True)
    cases.append(("reference-layernorm", torch.ops.quest._kernel_forward.default,
                  (qd, kd, vd, None, w, None, None, w.detach(), None, "reference"),
                  dict(SCALARS, q_norm=2, k_norm=2, need_diagnostics=False)))
    qkv5 = torch.randn(2, 5, 3, 3, 4, requires_grad=True)
    for mask, scale in ((None, None), (pad, hs)):
        cases.append((f"packed-mask{mask is not None}", torch.ops.quest._packed_kernel_forward.default,
                      (qkv5, scale, mask), dict(SCALARS, causal=True, need_diagnostics=False)))
    # The backward operators, called as autograd calls them (their inputs need no gradient).
    out, stats, _ = torch.ops.quest._kernel_forward(q.detach(), k.detach(), v.detach(), None, None,
                                                    None, None, None, None, "fused", **SCALARS,
                                                    need_diagnostics=False)
    cases.append(("fused-backward", torch.ops.quest._kernel_backward.default,
                  (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, stats, None, None,
                   None, None, None, None, "fused"), SCALARS))
    out, stats, _ = torch.ops.quest._packed_kernel_forward(qkv5.detach(), None, None, **SCALARS,
                                                           need_diagnostics=False)
    cases.append(("packed-backward", torch.ops.quest._packed_kernel_backward.default,
                  (torch.randn_like(out), qkv5.detach(), out, stats, None, None), SCALARS))
    # The diagnostics reduction the compiled graph runs, over a forward's partials.
    _, _, partials = torch.ops.quest._kernel_forward(q.detach(), k.detach(), v.detach(), None, None, None,
                                                     None, None, None, "fused", **SCALARS, need_diagnostics=True)
    cases.append(("reduce-diagnostics", torch.ops.quest._reduce_diagnostics.default, (partials, 3), {}))
    return cases


def test_kernel_operators_check_their_scalars():
    q, k, v = qkv(n=5, d=4)
    for bad, match in ((dict(q_norm=5), "q_norm and k_norm must be"),
                       (dict(causal_alignment=2), "causal_alignment must be")):
        with pytest.raises(RuntimeError, match=match):
            torch.ops.quest._kernel_forward(q, k, v, None, None, None, None, None, None, "fused",
                                            **dict(SCALARS, **bad), need_diagnostics=False)
    with pytest.raises(RuntimeError, match="backend must be fused or reference"):
        torch.ops.quest._kernel_forward(q, k, v, None, None, None, None, None, None, "turbo",
                                        **SCALARS, need_diagnostics=False)
    with pytest.raises(RuntimeError, match="multiple of k's"):
        torch.ops.quest._kernel_forward(q, k[:, :2], v[:, :2], None, None, None, None, None, None,
                                        "fused", **SCALARS, need_diagnostics=False)


@pytest.mark.parametrize("case", kernel_cases(), ids=lambda c: c[0])
def test_opcheck_kernel_operators(case):
    _, op, args, kwargs = case
    opcheck(op, args, kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_opcheck_attention_operators(kind):
    q, k, v = (t.requires_grad_() for t in qkv(n=5, d=4))
    o = {"head_scale": torch.tensor([1.0, 2.0, 3.0], requires_grad=True)} if kind == "qknorm" else {}
    opcheck(torch.ops.quest.attention.default, (q, k, v, kind), dict(o, causal=True))
    opcheck(torch.ops.quest.attention.default, (q.double(), k.double(), v.double(), kind),
            {"backend": "composite", **({"head_scale": o["head_scale"].double()} if o else {})})
    opcheck(torch.ops.quest.attention_forward.default, (q, k, v, kind),
            dict(o, need_weights=True))
    packed = torch.randn(2, 5, 36, requires_grad=True)
    opcheck(torch.ops.quest.attention_packed.default, (packed, 3, kind), o)


def test_multihead_attention_records_diagnostics_compiled():
    torch.manual_seed(0)
    m = quest.MultiheadAttention(32, 4, kind="quest", batch_first=True)
    m.record_diagnostics = True
    x = torch.randn(2, 10, 32)
    eager = m(x, x, x, need_weights=False)[0]
    want = m.last_diagnostics
    m.last_diagnostics = None
    compiled = torch.compile(m, fullgraph=True)(x, x, x, need_weights=False)[0]
    assert torch.equal(compiled, eager)
    torch.testing.assert_close(m.last_diagnostics, want, rtol=1e-12, atol=0)
