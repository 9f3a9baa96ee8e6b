"""torch.compile(fullgraph=True) traces through the custom ops without a graph break."""
import pytest
import torch

import rmsnorm_triton as rt
from helpers import assert_close, rand_w, rand_x, rmsnorm_ref


def _compile(fn, device):
    # aot_eager runs the fake implementations and functionalization without needing a C++ or
    # GPU compiler; on a GPU the full inductor backend is used.
    backend = "inductor" if device == "cuda" else "aot_eager"
    return torch.compile(fn, fullgraph=True, backend=backend)


def test_rms_norm_compiles_fullgraph(device):
    x, w = rand_x((4, 256), torch.bfloat16, device), rand_w(256, torch.bfloat16, device)

    def f(x, w):
        return rt.rms_norm(x * 2, w, 1e-5, weight_offset=1.0, out_dtype=torch.float32) + 1

    torch._dynamo.reset()
    y = _compile(f, device)(x, w)
    assert y.dtype == torch.float32
    assert_close(y - 1, rmsnorm_ref(x * 2, w, 1e-5, weight_offset=1.0), torch.float32)


def test_out_and_fused_add_compile_fullgraph(device):
    x, w = rand_x((3, 128), torch.float16, device), rand_w(128, torch.float16, device)
    residual = rand_x((3, 128), torch.float32, device)
    want_res = x.float() + residual

    def f(x, residual, w, out):
        y, r = rt.fused_add_rms_norm(x, residual, w)
        rt.rms_norm(r, w, out=out, accumulate=True)
        return y

    torch._dynamo.reset()
    out = torch.zeros(3, 128, dtype=torch.float32, device=device)
    y = _compile(f, device)(x, residual, w, out)
    torch.testing.assert_close(residual, want_res, rtol=0, atol=0)
    assert_close(y, rmsnorm_ref(want_res, w))
    assert_close(out, rmsnorm_ref(want_res, w), torch.float32)


def test_compiled_equals_eager_bit_for_bit(device):
    """Compiled, the ops launch the same kernels with the same configs: equal, not just close
    (torch.compile of a composite norm is not bit-equal to eager; this package must be)."""
    x, w = rand_x((5, 384), torch.bfloat16, device), rand_w(384, torch.bfloat16, device)
    m = rt.RMSNorm(384, eps=1e-5, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        m.weight.copy_(w)

    def f(x, residual):
        y, r = rt.fused_add_rms_norm(x, residual, w)
        return rt.rms_norm(x, w, 1e-5), m(x), y, r

    torch._dynamo.reset()
    residual = rand_x((5, 384), torch.bfloat16, device)
    with torch.no_grad():
        got = _compile(f, device)(x, residual.clone())
        want = f(x, residual.clone())
    for g, e in zip(got, want):
        assert torch.equal(g, e)


def test_ops_are_registered():
    for name in ("rms_norm", "rms_norm_out", "fused_add_rms_norm", "fused_add_rms_norm_out"):
        assert hasattr(torch.ops.rmsnorm_triton, name)


@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
def test_opcheck(device, op):
    x, w = rand_x((2, 64), torch.bfloat16, device), rand_w(64, torch.bfloat16, device)
    if op == "rms_norm":
        args = (x, w, None, 1e-6, 0.0, torch.float32, False)
    else:
        args = (x, rand_x((2, 64), torch.float32, device), w, None, 1e-6, 0.0, None)
    torch.library.opcheck(getattr(torch.ops.rmsnorm_triton, op).default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_compiled_module_with_gradients_takes_the_differentiable_path(device):
    """Under torch.compile, inputs that need gradients trace the torch formula, as in eager."""
    m = rt.RMSNorm(64, dtype=torch.float32, device=device)
    with torch.no_grad():
        m.weight.copy_(rand_w(64, torch.float32, device))
    x = rand_x((3, 64), torch.float32, device).requires_grad_()
    torch._dynamo.reset()
    y = _compile(m, device)(x)
    y.square().sum().backward()
    assert x.grad is not None and m.weight.grad is not None
    assert_close(y.detach(), rmsnorm_ref(x.detach(), m.weight.detach()), torch.float32)


@pytest.mark.parametrize("call,error,message", [
    (lambda x, o: rt.rms_norm(x, accumulate=True), ValueError, "accumulate=True adds into out"),
    (lambda x, o: rt.rms_norm(x, out=o, out_dtype=torch.float16), ValueError, "out has dtype"),
    (lambda x, o: rt.rms_norm(x, eps=True), TypeError, "eps must be a float"),
    (lambda x, o: rt.fused_add_rms_norm(x, o, eps=None), TypeError, "eps must be a float"),
    (lambda x, o: rt.rms_norm(x, eps="1e-6"), TypeError, "eps must be a float"),
], ids=["accumulate-without-out", "out-dtype-mismatch", "bool-eps", "none-eps", "str-eps"])
def test_compiled_calls_refuse_what_eager_calls_refuse(call, error, message):
    """A traced call skips the eager path's validation; the flags it can check without data
    still raise, with the eager call's message (as the error itself once dynamo falls back to
    eager, inside its Unsupported error under fullgraph)."""
    x, o = rand_x((4, 64), torch.float32, "cpu"), rand_x((4, 64), torch.float32, "cpu")
    with pytest.raises(error, match=message):
        call(x, o.clone())
    for fullgraph in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(call, backend="eager", fullgraph=fullgraph)
        with pytest.raises(Exception, match=message) as info:
            compiled(x, o.clone())
        if not fullgraph:
            assert info.type is error
