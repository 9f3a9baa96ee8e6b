"""Launch a compiled Triton kernel again without Triton's per-call dispatch.

Triton's `kernel[grid](...)` rebinds every argument, rebuilds its specialization and a string
cache key on each call: microseconds that dominate a decode-sized norm. `CachedLauncher` lets
the first call of a specialization go through Triton (which compiles it), keeps the compiled
kernel under a key at least as fine as Triton's own (argument dtypes, 16-byte alignment of
pointers, integers equal to 1, divisible by 16, or past int32; the constexprs; warps; device),
and later calls hand the arguments straight to the compiled kernel's launcher.

Any surprise from Triton's internals (they are not a stable API) turns the fast path off for
the process and every launch takes Triton's own path: slower, never wrong.
"""
from __future__ import annotations

try:
    from triton.runtime import driver
except ImportError:  # pragma: no cover - every supported Triton has it
    driver = None

_INT32_MAX = 2 ** 31 - 1


def _spec_key(args) -> tuple:
    """What Triton specializes runtime arguments on (and a little more), cheaply: tensors by
    dtype and 16-byte alignment; ints by == 1, % 16 == 0, and int32 range; floats not at all."""
    dtypes = []
    bits = 0
    for a in args:
        cls = a.__class__
        if cls is int:
            bits = (bits << 2) | (2 if a == 1 else 1 if a & 15 == 0 else 0)
            if not -_INT32_MAX - 1 <= a <= _INT32_MAX:
                dtypes.append(("i64", a < 0))
        elif cls is float:
            continue
        elif cls is bool:
            dtypes.append(a)
        else:
            dtypes.append(a.dtype)
            bits = (bits << 1) | (a.data_ptr() & 15 == 0)
    return bits, tuple(dtypes)


class CachedLauncher:
    def __init__(self, jit_fn, enabled: bool = True):
        self.fn = jit_fn
        self.enabled = enabled and driver is not None
        self.kernels = {}

    def __call__(self, grid: int, device_index: int, args: tuple, constexprs: tuple,
                  num_warps: int) -> None:
        """Launch fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps).

        `args` are the kernel's runtime arguments in signature order; `constexprs` the
        (name, value) pairs of the constexpr parameters, which follow them in the signature.
        """
        if not self.enabled:
            self.fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps)
            return
        key = (device_index, num_warps, constexprs, _spec_key(args))
        kernel = self.kernels.get(key)
        if kernel is None:
            kernel = self.fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps)
            if hasattr(kernel, "run") and hasattr(kernel, "function"):
                self.kernels[key] = kernel
            return
        try:
            stream = driver.active.get_current_stream(device_index)
            kernel[(grid, 1, 1)](*args, *(v for _, v in constexprs), stream=stream)
        except (AttributeError, TypeError):
            # An incompatible Triton: launch this call (and all later ones) its own way.
            self.enabled = False
            self.fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps)
