"""Bad input from Python raises an exception that names the problem; NaN/Inf are rejected by
default in the functional API and propagate exactly as in torch when check_finite=False."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import oracle
import quest


def qkv(b=2, h=2, n=5, d=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3))


BAD_CALLS = [
    ("rank", lambda q, k, v: quest.attention(q[0], k, v), RuntimeError, "rank 4"),
    ("dtype int", lambda q, k, v: quest.attention(q.long(), k, v), RuntimeError, "q"),
    ("dtypes differ", lambda q, k, v: quest.attention(q, k.double(), v), RuntimeError, "dtype"),
    ("head dims", lambda q, k, v: quest.attention(q, k[..., :3], v), RuntimeError, "head dims"),
    ("key counts", lambda q, k, v: quest.attention(q, k, v[:, :, :4]), RuntimeError, "key counts"),
    ("empty", lambda q, k, v: quest.attention(q[:, :, :0], k, v), RuntimeError, "empty"),
    ("kind", lambda q, k, v: quest.attention(q, k, v, "flash"), ValueError, "unknown kind 'flash'"),
    ("backend", lambda q, k, v: quest.attention(q, k, v, backend="gpu"), ValueError,
     "unknown backend 'gpu'"),
    ("seed", lambda q, k, v: quest.attention(q, k, v, seed=-1), ValueError, "seed"),
    ("alignment", lambda q, k, v: quest.attention(q, k, v, causal=True, causal_alignment="left"),
     ValueError, "unknown causal_alignment 'left'"),
    ("dropout", lambda q, k, v: quest.attention(q, k, v, dropout_p=1.5, training=True),
     RuntimeError, "dropout"),
    ("mask dtype", lambda q, k, v: quest.attention(q, k, v, key_padding_mask=torch.zeros(2, 5)),
     RuntimeError, "key_padding_mask"),
    ("mask shape", lambda q, k, v: quest.attention(
        q, k, v, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), RuntimeError,
     "key_padding_mask"),
    ("head_scale shape", lambda q, k, v: quest.attention(q, k, v, "qknorm",
                                                          head_scale=torch.ones(3)),
     RuntimeError, "head_scale"),
    ("NaN", lambda q, k, v: quest.attention(q, k.index_fill(2, torch.tensor([1]), float("nan")), v),
     RuntimeError, "k"),
    ("Inf", lambda q, k, v: quest.attention(q, k, v.index_fill(2, torch.tensor([1]), float("inf"))),
     RuntimeError, "v"),
    ("scale", lambda q, k, v: quest.attention(q, k, v, scale=float("inf")), RuntimeError, "scale"),
    ("fused float64", lambda q, k, v: quest.attention(q.double(), k.double(), v.double(),
                                                      backend="fused"), RuntimeError, "float32"),
    ("missing arg", lambda q, k, v: quest.attention(q, k), TypeError, "v"),
]


@pytest.mark.parametrize("name,call,error,words", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_functional_call_raises_named_error(name, call, error, words):
    q, k, v = qkv()
    with pytest.raises(error, match=words):
        call(q, k, v)


BAD_MODULES = [
    ("indivisible", lambda: quest.MultiheadAttention(10, 3), "divisible"),
    ("kind", lambda: quest.MultiheadAttention(8, 2, kind="nope"), "unknown kind"),
    ("dropout", lambda: quest.MultiheadAttention(8, 2, dropout=1.0), "dropout"),
    ("backend", lambda: quest.MultiheadAttention(8, 2, backend="cuda"), "unknown backend"),
]


@pytest.mark.parametrize("name,make,words", BAD_MODULES, ids=[c[0] for c in BAD_MODULES])
def test_bad_module_construction(name, make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_bad_module_forward():
    # torch's module asserts (AssertionError) or raises RuntimeError; quest's errors are both
    # ValueError and AssertionError, with torch's wording where torch's tests match it.
    m = quest.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    cases = [
        (lambda: m(x, x, x[..., :4]), "feature sizes"),
        (lambda: m(x, x[:1], x[:1]), "batch size"),
        (lambda: m(x, x, x[0]), "expected `key` and `value` to be 3-D but found 3-D and 2-D"),
        (lambda: m(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
         r"key_padding_mask` of shape \(N, S\) = \(2, 5\)"),
        (lambda: m(x, x, x, key_padding_mask=torch.zeros(5, dtype=torch.bool)),
         "expected `key_padding_mask` to be `None` or 2-D but found 1-D"),
        (lambda: m(x[0], x[0], x[0], key_padding_mask=torch.zeros(1, 5, dtype=torch.bool)),
         "expected `key_padding_mask` to be `None` or 1-D but found 2-D"),
        (lambda: m(x, x, x, attn_mask=torch.zeros(5, dtype=torch.bool)),
         "expected `attn_mask` to be `None`, 2-D or 3-D but found 1-D"),
        (lambda: m(x, x, x, attn_mask=torch.zeros(4, 5)), r"Expected `attn_mask` shape to be \(5, 5\)"),
        (lambda: m(x, x, x, attn_mask=torch.zeros(3, 5, 5)), r"Expected `attn_mask` shape to be \(4, 5, 5\)"),
        (lambda: m(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.int32)), "bool and floating"),
        (lambda: m(torch.randn(2, 2, 2, 8), x, x), "unbatched 2D or batched 3D"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=words):
            call()
        with pytest.raises(AssertionError, match=words):
            call()
    nested = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(4, 8)], layout=torch.jagged)
    with pytest.raises(ValueError, match="nested tensors are not supported"):
        m(nested, nested, nested)
    with pytest.raises(RuntimeError, match="is_causal=True needs attn_mask"):
        m(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="is_causal=True but attn_mask is not the causal mask"):
        m(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.bool).fill_diagonal_(True), is_causal=True)
    # float masks that block (-inf) or keep (0) work as in torch
    blocked = torch.zeros(2, 5)
    blocked[0, -1] = float("-inf")
    out_float, _ = m(x, x, x, key_padding_mask=blocked)
    out_bool, _ = m(x, x, x, key_padding_mask=blocked.isinf())
    torch.testing.assert_close(out_float, out_bool)


CORRUPTIONS = [("q", 1, "nan"), ("k", 2, "nan"), ("k", 4, "nan"), ("v", 2, "inf"),
               ("v", 4, "nan"), ("k", 3, "-inf"), ("q", 0, "inf")]


@pytest.mark.parametrize("backend", ["fused", "composite", "reference"])
@pytest.mark.parametrize("tensor,row,value", CORRUPTIONS)
def test_nonfinite_propagates_as_in_torch(backend, tensor, row, value):
    """check_finite=False: output and gradients are non-finite exactly where the plain-torch
    float64 composite's are, and equal elsewhere (key 4 is padded in batch 0). Which non-finite
    value (NaN or Inf) is not part of the contract: the online softmax makes NaN of some Infs."""
    base = dict(zip("qkv", qkv(dtype=torch.float64)))
    base[tensor][0, 1, row, 2] = float(value)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 4] = True
    dtype = torch.float32 if backend == "fused" else torch.float64
    ref = {n: t.clone().requires_grad_() for n, t in base.items()}
    got = {n: t.to(dtype).requires_grad_() for n, t in base.items()}
    ref_out, _ = oracle.attention(ref["q"], ref["k"], ref["v"], "quest", key_padding_mask=mask)
    out = quest.attention(got["q"], got["k"], got["v"], "quest", key_padding_mask=mask,
                          backend=backend, check_finite=False)
    ref_out.sum().backward()
    out.sum().backward()
    pairs = [("output", out, ref_out)] + [(f"d{n}", got[n].grad, ref[n].grad) for n in "qkv"]
    for name, a, b in pairs:
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), name
        torch.testing.assert_close(a.double()[finite], b.detach()[finite], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


def test_module_nan_token_as_torch_module():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    mine = quest.MultiheadAttention(8, 2, batch_first=True, kind="standard").eval()
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 8)
    x[1, 3] = float("nan")
    out, ref_out = mine(x, x, x)[0], ref(x, x, x)[0]
    assert torch.equal(out.isnan(), ref_out.isnan()) and out[1].isnan().all()
    torch.testing.assert_close(out[0], ref_out[0], rtol=1e-5, atol=1e-5)


def python_output(code: str) -> str:
    """What `code` prints in a fresh interpreter (its own threads and loaded libraries)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_one_openmp_runtime_with_torch_and_quest():
    # quest's kernels link torch's own libgomp: after torch's parallel ops and quest's fused kernel
    # have run on two threads, one OpenMP runtime is mapped in the process (in a subprocess, so
    # the thread count and what was loaded are this test's own).
    code = (
        "import torch, quest\n"
        "torch.set_num_threads(2)\n"
        "x = torch.randn(4, 2, 64, 16)\n"
        "quest.attention(x, x, x, backend='fused').sum().item()\n"
        "(x @ x.transpose(-1, -2)).sum().item()\n"
        "print(quest.runtime()['openmp_runtimes'])\n")
    out = python_output(code)
    runtimes = out.strip().split(";")
    assert len(runtimes) == 1 and "libgomp" in runtimes[0], out


def test_import_under_another_torch_names_both_versions():
    # The operator library only works with the torch it was built against: importing quest under
    # another version says so, instead of an undefined-symbol error or worse.
    code = ("import torch\n"
            "torch.__version__ = '1.0.0'\n"
            "try:\n"
            "    import quest\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = python_output(code)
    assert "built against torch 2." in out and "has torch 1.0.0" in out, out
