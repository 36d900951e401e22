"""quest.MultiheadAttention as a drop-in for torch.nn.MultiheadAttention; quest.convert;
TorchScript, pickling and torch.save; diagnostics recording."""
import io
import math
import pickle

import pytest
import torch
from torch import nn

import oracle
import quest

E, H = 16, 4


def pair(**config):
    """A torch module and a kind="standard" quest module with its state_dict."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, **config)
    with torch.no_grad():  # non-zero biases, so every parameter matters
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mine = quest.MultiheadAttention(E, H, **config, kind="standard")
    mine.load_state_dict(ref.state_dict())
    return ref.eval(), mine.eval()


def sequences(batch_first, l=6, s=6, n=3, kdim=E, vdim=E, self_attention=True):
    g = torch.Generator().manual_seed(1)
    shape = (lambda t, d: (n, t, d)) if batch_first else (lambda t, d: (t, n, d))
    q = torch.randn(*shape(l, E), generator=g)
    if self_attention:
        return q, q, q
    return q, torch.randn(*shape(s, kdim), generator=g), torch.randn(*shape(s, vdim), generator=g)


CONFIGS = [
    ("default", {}, {}),
    ("batch_first", {"batch_first": True}, {}),
    ("no_bias", {"bias": False}, {}),
    ("kdim_vdim", {"kdim": 5, "vdim": 7}, {"self_attention": False, "s": 9, "kdim": 5, "vdim": 7}),
    ("cross", {}, {"self_attention": False, "s": 4}),
    ("bias_kv", {"add_bias_kv": True}, {}),
    ("zero_attn", {"add_zero_attn": True}, {}),
]


def _attn_mask(kind, l, s, n=3):
    """torch's attn_mask forms: 2-D (L, S) or 3-D (N * H, L, S), bool (True = not allowed) or an
    additive float; every row keeps key 0 (a row that sees nothing is NaN in torch, 0 in quest)."""
    g = torch.Generator().manual_seed(2)
    shape = (l, s) if "2d" in kind else (n * H, l, s)
    if "bool" in kind:
        mask = torch.rand(*shape, generator=g) < 0.4
        mask[..., 0] = False
        return mask
    bias = torch.randn(*shape, generator=g)
    if "inf" in kind:  # additive, with -inf blocking some pairs
        bias[torch.rand(*shape, generator=g) < 0.3] = float("-inf")
        bias[..., 0] = 0.0
    return bias


MASKS = ["none", "padding", "causal", "padding+causal", "bool2d", "float2d", "bool3d",
         "float3d+inf", "padding+float2d+inf", "float_padding"]


@pytest.mark.parametrize("name,config,data", CONFIGS)
@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
def test_standard_kind_matches_torch_module(name, config, data, masks, need_weights, average):
    ref, mine = pair(**config)
    assert set(mine.state_dict()) == set(ref.state_dict())
    q, k, v = sequences(config.get("batch_first", False), **data)
    l, s = q.shape[1 if config.get("batch_first") else 0], k.shape[1 if config.get("batch_first") else 0]
    kw = {"need_weights": need_weights, "average_attn_weights": average}
    if "padding" in masks:
        if masks == "float_padding":  # an additive float key_padding_mask, as torch allows
            kpm = torch.randn(3, s, generator=torch.Generator().manual_seed(3))
        else:
            kpm = torch.zeros(3, s, dtype=torch.bool)
            kpm[0, -2:] = True
            if "float" in masks:  # torch wants both masks of one type
                kpm = torch.zeros(3, s).masked_fill(kpm, float("-inf"))
        kw["key_padding_mask"] = kpm
    if "causal" in masks:
        if l != s:
            pytest.skip("causal needs a square mask")
        kw["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(l)
    elif masks not in ("none", "padding", "float_padding"):
        kw["attn_mask"] = _attn_mask(masks.split("+", 1)[-1], l, s)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    if q is k and k is v:
        leaves = [leaves[0]] * 3
    ref_out, ref_w = ref(*leaves, **kw)
    ref_loss = ref_out.square().sum() + (ref_w.square().sum() if need_weights else 0)
    ref_grads = torch.autograd.grad(ref_loss, list(dict.fromkeys(leaves)) + list(ref.parameters()))
    out, w = mine(*leaves, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    if need_weights:
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    else:
        assert w is None and ref_w is None
    # Gradients too, also those of a loss on the returned weights (torch's are differentiable).
    loss = out.square().sum() + (w.square().sum() if need_weights else 0)
    grads = torch.autograd.grad(loss, list(dict.fromkeys(leaves)) + list(mine.parameters()))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unbatched_and_state_dict_back_to_torch():
    ref, mine = pair()
    x = torch.randn(5, E)
    torch.testing.assert_close(mine(x, x, x)[0], ref(x, x, x)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine(x, x, x)[1], ref(x, x, x)[1], rtol=1e-5, atol=1e-6)
    back = nn.MultiheadAttention(E, H)
    back.load_state_dict(mine.state_dict())          # quest -> torch, unchanged keys
    torch.testing.assert_close(back.eval()(x, x, x)[0], ref(x, x, x)[0])


@pytest.mark.parametrize("kind", quest.KINDS)
def test_kinds_compute_their_formula_and_train(kind):
    torch.manual_seed(0)
    m = quest.MultiheadAttention(E, H, kind=kind, batch_first=True)
    extra = {"qknorm": {"head_scale"},
             "qk_layernorm": {"q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias"}}
    assert set(m.state_dict()) - set(nn.MultiheadAttention(E, H).state_dict()) == \
        extra.get(kind, set())
    if kind == "qknorm":
        assert torch.allclose(m.head_scale, torch.full((H,), math.sqrt(E // H)))
    x = torch.randn(2, 5, E, requires_grad=True)
    out, _ = m(x, x, x, need_weights=False)
    # the same computation by hand, on the oracle
    qkv = nn.functional.linear(x, m.in_proj_weight, m.in_proj_bias).double()
    q, k, v = (t.view(2, 5, H, E // H).transpose(1, 2) for t in qkv.chunk(3, -1))
    params = {n: getattr(m, n).double() for n in ("head_scale", "q_norm_weight", "q_norm_bias",
                                                  "k_norm_weight", "k_norm_bias")
              if getattr(m, n) is not None}
    o, _ = oracle.attention(q, k, v, kind, **params)
    o = nn.functional.linear(o.transpose(1, 2).reshape(2, 5, E).float(), m.out_proj.weight,
                             m.out_proj.bias)
    torch.testing.assert_close(out, o, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_convert_transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2).eval()
    x = torch.randn(3, 6, E)
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[1, -2:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():   # torch's own layer takes its native fast path here
        ref = model(x, src_key_padding_mask=kpm)
        ref_causal = model(x, mask=causal)
        std = quest.convert(model, kind="standard")
        assert sum(isinstance(m, quest.MultiheadAttention) for m in std.modules()) == 2
        assert not any(isinstance(m, nn.MultiheadAttention) for m in std.modules())
        out = std(x, src_key_padding_mask=kpm)
        # padded positions: torch's fast path returns 0 there; compare the real tokens
        torch.testing.assert_close(out[~kpm], ref[~kpm], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std(x, mask=causal), ref_causal, rtol=1e-4, atol=1e-5)
    # torch 1.13's encoder fast path (eval, no grad) must not bypass quest's attention
    quest_model = quest.convert(nn.TransformerEncoder(layer, num_layers=2), kind="quest").eval()
    with torch.no_grad():
        fast = quest_model(x, src_key_padding_mask=kpm)
    slow = quest_model(x, src_key_padding_mask=kpm)  # grad enabled: torch's slow path
    torch.testing.assert_close(fast, slow)
    assert not torch.allclose(fast[~kpm], ref[~kpm], rtol=1e-2, atol=1e-2)
    with pytest.warns(UserWarning):  # quest modules are left as they are
        again = quest.convert(std, kind="quest")
    assert all(m.kind == "standard" for m in again.modules()
               if isinstance(m, quest.MultiheadAttention))


def test_convert_transformer_decoder():
    # torch 2.x's decoder layers pass is_causal to self-attention and cross-attend to the memory.
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerDecoder(layer, num_layers=2).eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    memory_kpm = torch.zeros(2, 7, dtype=torch.bool)
    memory_kpm[0, -3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        ref = model(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_kpm)
        std = quest.convert(model, kind="standard")
        assert sum(isinstance(m, quest.MultiheadAttention) for m in std.modules()) == 4
        out = std(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_kpm)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    x.requires_grad_(True)
    std.train()
    std(x, memory, tgt_mask=causal, tgt_is_causal=True).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(RuntimeError, match="is_causal=True needs attn_mask"):
        std.layers[0].self_attn(x, x, x, is_causal=True)


def test_convert_torchvision_vit():
    try:  # a torchvision built for another torch raises RuntimeError at import
        import torchvision
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no torchvision that imports beside this torch: {e}")
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16().eval()
    vit.heads = nn.Identity()  # torchvision zero-initialises the head: compare the features
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = vit(x)
        std = quest.convert(vit, kind="standard")
        assert sum(isinstance(m, quest.MultiheadAttention) for m in std.modules()) == 12
        torch.testing.assert_close(std(x), ref, rtol=1e-3, atol=1e-4)
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16().eval()
    vit.heads = nn.Identity()
    vit = quest.convert(vit, kind="quest")
    with torch.no_grad():
        assert not torch.allclose(vit(x), ref, rtol=1e-2, atol=1e-2)


def test_convert_without_attention_warns():
    with pytest.warns(UserWarning, match="no torch.nn.MultiheadAttention"):
        quest.convert(nn.Linear(2, 2))
    m = quest.convert(nn.MultiheadAttention(E, H), kind="qknorm")
    assert isinstance(m, quest.MultiheadAttention) and m.kind == "qknorm"


@pytest.mark.parametrize("kind", ["quest", "qk_layernorm"])
def test_torchscript_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    m = quest.MultiheadAttention(E, H, kind=kind, batch_first=True).eval()
    scripted = torch.jit.script(m)
    path = tmp_path / "mha.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 5, E)
    kpm = torch.tensor([[False] * 5, [False, False, False, True, True]])
    expected = m(x, x, x, key_padding_mask=kpm)[0]
    torch.testing.assert_close(loaded(x, x, x, key_padding_mask=kpm)[0], expected)
    # scripted code that calls the functional API and the operator directly
    q = torch.randn(1, 2, 4, 8)
    for fn in (causal_quest, causal_standard_op):
        scripted_fn = torch.jit.script(fn)
        assert "quest::attention" in str(scripted_fn.inlined_graph)
        torch.testing.assert_close(scripted_fn(q), fn(q))
    torch.testing.assert_close(causal_quest(q), quest.attention(q, q, q, "quest", causal=True))


def causal_quest(q: torch.Tensor) -> torch.Tensor:
    return quest.attention(q, q, q, "quest", True)


def causal_standard_op(q: torch.Tensor) -> torch.Tensor:
    return torch.ops.quest.attention(q, q, q, "standard", causal=True)


def test_pickle_and_torch_save(tmp_path):
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 32, batch_first=True), 1)
    model = quest.convert(model, kind="qknorm").eval()
    x = torch.randn(2, 5, E)
    expected = model(x)
    copy = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(copy(x), expected)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    torch.testing.assert_close(torch.load(path, weights_only=False)(x), expected)
    state = tmp_path / "state.pt"
    torch.save(model.state_dict(), state)
    fresh = quest.convert(nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, H, 32, batch_first=True), 1), kind="qknorm").eval()
    fresh.load_state_dict(torch.load(state))
    torch.testing.assert_close(fresh(x), expected)


def test_record_diagnostics():
    torch.manual_seed(0)
    model = quest.convert(nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, H, 32, batch_first=True), 2), kind="quest").eval()
    x = torch.randn(2, 5, E)
    with quest.record_diagnostics(model) as rec:
        model(x)
    names = [n for n, _ in rec.items()]
    assert names == ["layers.0.self_attn", "layers.1.self_attn"]
    d = rec["layers.0.self_attn"]
    assert d.logit_abs_max.shape == (H,)
    # QUEST: |logit| <= ||q||
    assert bool((d.logit_abs_max <= d.q_norm_max * (1 + 1e-5)).all())
    assert bool((d.entropy_mean > 0).all() and (d.entropy_mean <= math.log(5) + 1e-6).all())
    assert not any(m.record_diagnostics for m in model.modules()
                   if isinstance(m, quest.MultiheadAttention))
    with pytest.raises(ValueError, match="no quest.MultiheadAttention"):
        quest.record_diagnostics(nn.Linear(2, 2))


@pytest.mark.parametrize("kind", quest.KINDS)
def test_self_attention_is_packed_and_equals_the_split_projection(kind, monkeypatch):
    # Self-attention (query is key is value) runs attention_packed_forward on one projection; the
    # same values as distinct tensors take the split projections. Both give the same output,
    # weights, diagnostics and gradients, with dropout and a padding mask on.
    calls = []
    packed = quest.nn.attention_packed_forward

    def counting(*args, **kwargs):
        calls.append(1)
        return packed(*args, **kwargs)

    monkeypatch.setattr(quest.nn, "attention_packed_forward", counting)
    torch.manual_seed(3)
    m = quest.MultiheadAttention(E, H, dropout=0.2, kind=kind, batch_first=True).train()
    m.record_diagnostics = True
    x0 = torch.randn(3, 7, E)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[2, -2:] = True

    def run(same):
        m.zero_grad()
        x = x0.clone().requires_grad_()
        k = x if same else x * 1.0
        v = x if same else x * 1.0
        torch.manual_seed(11)  # the dropout mask's seed
        out, w = m(x, k, v, key_padding_mask=kpm, average_attn_weights=False)
        (out * torch.linspace(-1, 1, E)).sum().backward()
        grads = [p.grad.clone() for p in m.parameters() if p.grad is not None]
        return out.detach(), w, m.last_diagnostics, x.grad, grads

    out_p, w_p, d_p, dx_p, g_p = run(True)
    assert len(calls) == 1
    out_s, w_s, d_s, dx_s, g_s = run(False)
    assert len(calls) == 1  # distinct key and value tensors: the split projections
    close = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out_p, out_s, **close)
    torch.testing.assert_close(w_p, w_s, **close)
    torch.testing.assert_close(d_p, d_s, **close)
    torch.testing.assert_close(dx_p, dx_s, **close)
    assert len(g_p) == len(g_s) and len(g_p) >= 4
    for a, b in zip(g_p, g_s):
        torch.testing.assert_close(a, b, **close)


def test_empty_batch_and_no_keys_as_torch():
    # B = 0 and L = 0 give empty outputs as torch's module does; S = 0 (no keys) gives quest's
    # zeros-then-out_proj where torch gives NaN.
    ref, mine = pair(batch_first=True)
    for shape in [(0, 5, E), (2, 0, E)]:
        x = torch.randn(*shape)
        out, w = mine(x, x, x)
        ref_out, ref_w = ref(x, x, x)
        assert out.shape == ref_out.shape and w.shape == ref_w.shape
    q, none = torch.randn(2, 3, E), torch.randn(2, 0, E)
    out, _ = mine(q, none, none)
    torch.testing.assert_close(out, mine.out_proj.bias.expand(2, 3, E))


def test_general_masks_run_on_the_composite_and_kinds_keep_their_formula():
    # A non-causal attn_mask for a quest kind: the composite backend with the mask as a bias,
    # equal to the oracle with the same bias added to the logits.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, 5, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(5, 5, dtype=torch.float64)
    bias[1, 2:] = float("-inf")
    assert quest.select_backend(q.float(), k.float(), v.float(), attn_bias=bias.float())[0] == "composite"
    out = quest.attention(q, k, v, "quest", attn_bias=bias)
    kn = k / k.norm(dim=-1, keepdim=True)
    want = torch.softmax(q @ kn.transpose(-1, -2) + bias, -1) @ v
    torch.testing.assert_close(out, want)
    with pytest.raises(RuntimeError, match="fused backend cannot run this call: fused: takes masks as flags"):
        quest.attention(q.float(), k.float(), v.float(), attn_bias=bias.float(), backend="fused")
    with pytest.raises(RuntimeError, match="does not broadcast"):
        quest.attention(q, k, v, attn_bias=torch.zeros(3, 5, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="attn_bias has dtype Float but q has Double"):
        quest.attention(q, k, v, attn_bias=bias.float())


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("config", [{}, {"add_bias_kv": True}, {"add_zero_attn": True},
                                    {"kdim": 5, "vdim": 7}], ids=["plain", "bias_kv", "zero_attn", "kdim_vdim"])
def test_grouped_query_module_is_attention_on_repeated_heads(kv_heads, config):
    """num_kv_heads: the module equals its own projections run through quest.attention with each
    key/value head repeated for its group (no GQA), outputs and weights; it scripts and compiles."""
    torch.manual_seed(0)
    mha = quest.MultiheadAttention(E, H, batch_first=True, num_kv_heads=kv_heads, **config).eval()
    dh, kv = E // H, kv_heads * (E // H)
    assert (mha.k_proj_weight if "kdim" in config else mha.in_proj_weight).shape[0] == \
        (kv if "kdim" in config else E + 2 * kv)
    x = torch.randn(3, 6, E)
    memory = (torch.randn(3, 4, 5), torch.randn(3, 4, 7)) if "kdim" in config else (x, x)
    q, k, v = mha._project(x, *memory)
    assert k.shape[1] == kv_heads
    if mha.add_zero_attn:
        zeros = torch.zeros(3, kv_heads, 1, dh)
        k, v = torch.cat([k, zeros], 2), torch.cat([v, zeros], 2)
    group = H // kv_heads
    expected = quest.attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                               "quest").transpose(1, 2).reshape(3, 6, E)
    expected = torch.nn.functional.linear(expected, mha.out_proj.weight, mha.out_proj.bias)
    out, weights = mha(x, *memory)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert weights.shape == (3, 6, k.size(2))
    scripted = torch.jit.script(mha)
    torch.testing.assert_close(scripted(x, *memory)[0], out, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        quest.MultiheadAttention(E, H, num_kv_heads=3)
