"""Shared by the tests: the fp64 oracle, relative error, poisoned buffers, verbose asserts."""
import torch

# Keyed on the output dtype: about one finfo(out).eps; final rounding alone is ~0.2-0.3 eps.
# bf16 gets 8e-3: the interpreter truncates bf16 stores instead of rounding (one ulp).
REL_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GUARD = 64


def rmsnorm_ref(x, w=None, eps=1e-6, weight_offset=0.0, bias=None, clamp=False):
    """fp64 oracle of DESIGN.md's formula."""
    x64 = x.double()
    if clamp and x.dtype == torch.float16:
        x64 = torch.where(torch.isnan(x64), x64, x64.clamp(-65504.0, 65504.0))
    y = x64 * torch.rsqrt(x64.square().mean(-1, keepdim=True) + eps)
    if w is not None:
        y = y * (w.double() + weight_offset)
    elif weight_offset:
        y = y * (1.0 + weight_offset)
    if bias is not None:
        y = y + bias.double()
    return y


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def rand_x(shape, dtype, device, scale=2.0):
    """Random, non-zero, off-centre data."""
    return (0.5 + scale * torch.randn(shape, device=device)).to(dtype)


def rand_w(n, dtype, device, gemma=False):
    w = 0.1 * torch.randn(n, device=device)
    return (w if gemma else 1.0 + w).to(dtype)


def poisoned(rows, cols, dtype, device):
    """A NaN-filled buffer with a guard band; returns (buffer, the [rows, cols] view to write)."""
    buf = torch.full((rows, cols + GUARD), float("nan"), dtype=dtype, device=device)
    return buf, buf[:, :cols]


def poison_allocator(shape, dtype, device):
    """Leave a NaN-filled block behind, which the next allocation of that size tends to reuse,
    so an output the kernel forgot to write shows up as NaN."""
    junk = torch.full(shape, float("nan"), dtype=dtype, device=device)
    del junk


def assert_guard_intact(buf, cols):
    assert torch.isnan(buf[:, cols:]).all(), "the kernel wrote past the end of a row"


def assert_close(out, ref, dtype=None, tol=None):
    """Relative-error check that explains itself when it fails."""
    dtype = dtype or out.dtype
    tol = tol or REL_TOL[dtype]
    assert torch.isfinite(out).all(), (
        f"non-finite outputs at {torch.nonzero(~torch.isfinite(out))[:5].tolist()}")
    err = rel_err(out, ref)
    if err > tol:
        diff = (out.double() - ref).abs()
        idx = torch.nonzero(diff == diff.max())[0].tolist()
        raise AssertionError(
            f"rel err {err:.3e} > {tol:.1e}; max abs err {diff.max().item():.3e} at {idx}: "
            f"got {out[tuple(idx)].item()}, want {ref[tuple(idx)].item()}")
