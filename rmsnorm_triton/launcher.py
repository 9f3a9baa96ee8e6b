"""Launch a compiled Triton kernel again without Triton's per-call dispatch.

Triton's `kernel[grid](...)` rebinds every argument, rebuilds its specialization and a string
cache key on each call: microseconds that dominate a decode-sized norm. `CachedLauncher` lets
the first call of a specialization go through Triton (which compiles it), keeps the compiled
kernel under a key at least as fine as Triton's own (argument dtypes, 16-byte alignment of
pointers, integers equal to 1, divisible by 16, or past int32, arguments that are None; the
constexprs; warps; device),
and later calls hand the arguments straight to the compiled kernel's launcher. Compile options
(a register cap) belong to a launcher instance: every kernel it compiles takes them, and Triton
caches that kernel apart from one compiled without.

Where this Triton's launcher has the argument layout we know (`CudaLauncher.__call__(gridX,
gridY, gridZ, stream, function, *args)`, Triton 3.6), a cached kernel is launched by calling its
C launch function directly, skipping two Python layers (about 3 us a call on a slow host). Other
versions go through `compiled_kernel[grid](..., stream=)`.

Any surprise from Triton's internals (they are not a stable API) turns the fast path off for
the process and every launch takes Triton's own path: slower, never wrong.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

try:
    from triton.runtime import driver
except ImportError:  # pragma: no cover - every supported Triton has it
    driver = None
try:
    from triton import knobs
except ImportError:  # pragma: no cover - Triton < 3.4
    knobs = None

# (grid, stream, runtime args) -> None: one cached kernel, its constexprs bound.
Runner = Callable[[int, int, tuple], None]
_KNOWN_LAUNCHER_PARAMS = ["self", "gridX", "gridY", "gridZ", "stream", "function", "args"]

_INT32_MAX = 2 ** 31 - 1


def _spec_key(args) -> tuple:
    """What Triton specializes runtime arguments on (and a little more), cheaply: tensors by
    dtype and 16-byte alignment; ints by == 1, % 16 == 0, and int32 range; floats not at all;
    None (a constexpr, compiled out) as a code of its own among the ints' and in the dtypes."""
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
        elif a is None:
            bits = (bits << 2) | 3
            dtypes.append(None)
        elif cls is bool:
            dtypes.append(a)
        else:
            dtypes.append(a.dtype)
            bits = (bits << 1) | (a.data_ptr() & 15 == 0)
    return bits, tuple(dtypes)


def make_runner(kernel, constexpr_values: tuple) -> Runner:
    """The cheapest correct way to launch this compiled kernel again.

    A runner made for the known launcher layout has `int_pointers` set: it also takes pointer
    arguments as plain ints (data_ptr() values), which spares the C launcher a Python call and
    a driver query (cuPointerGetAttribute) per tensor. Callers pass ints only for tensors they
    have already checked to be on the kernel's GPU.
    """
    def via_triton(grid, stream, args):
        kernel[(grid, 1, 1)](*args, *constexpr_values, stream=stream)
    via_triton.int_pointers = False

    run = getattr(kernel, "run", None)
    try:
        params = list(inspect.signature(type(run).__call__).parameters)
        launch, function, meta = run.launch, kernel.function, kernel.packed_metadata
        coop, pdl = run.launch_cooperative_grid, run.launch_pdl
        plain = run.global_scratch_size == 0 and run.profile_scratch_size == 0
    except (AttributeError, TypeError, ValueError):
        return via_triton
    if params != _KNOWN_LAUNCHER_PARAMS or not plain or knobs is None:
        return via_triton
    hooks = knobs.runtime

    def direct(grid, stream, args):
        # Launch hooks (Triton's profiler adds some) need Triton's own path, which calls them:
        # a hook is unset when None (older Triton) or an empty HookChain (`calls` is []).
        enter, leave = hooks.launch_enter_hook, hooks.launch_exit_hook
        if not getattr(enter, "calls", enter) and not getattr(leave, "calls", leave):
            # What CudaLauncher.__call__ passes: no scratch buffers, no launch metadata/hooks.
            launch(grid, 1, 1, stream, function, coop, pdl, None, None, meta, None, None, None,
                   *args, *constexpr_values)
        else:
            via_triton(grid, stream, args)
    direct.int_pointers = True
    return direct


class CachedLauncher:
    """One Triton kernel's launches; `options` are compile options (e.g. maxnreg) that every
    launch of this launcher compiles with, a kernel apart from another launcher's."""

    def __init__(self, jit_fn, enabled: bool = True, options: Optional[dict] = None):
        self.fn = jit_fn
        self.enabled = enabled and driver is not None
        self.options = dict(options or {})
        self.kernels = {}

    def __call__(self, grid: int, device_index: int, args: tuple, constexprs: tuple,
                  num_warps: int) -> None:
        """Launch fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps).

        `args` are the kernel's runtime arguments in signature order; `constexprs` the
        (name, value) pairs of the constexpr parameters, which follow them in the signature.
        """
        if not self.enabled:
            self.fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps, **self.options)
            return
        key = (device_index, num_warps, constexprs, _spec_key(args))
        runner = self.kernels.get(key)
        if runner is None:
            kernel = self.fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps,
                                      **self.options)
            if hasattr(kernel, "run") and hasattr(kernel, "function"):
                self.kernels[key] = make_runner(kernel, tuple(v for _, v in constexprs))
            return
        self.launch_cached(runner, grid, device_index, args, constexprs, num_warps)

    def runner(self, device_index: int, args: tuple, constexprs: tuple,
               num_warps: int) -> Optional[Runner]:
        """The cached runner for these arguments' specialization, once one launch made it."""
        if not self.enabled:
            return None
        return self.kernels.get((device_index, num_warps, constexprs, _spec_key(args)))

    def launch_cached(self, runner: Runner, grid: int, device_index: int, args: tuple,
                      constexprs: tuple, num_warps: int) -> None:
        try:
            runner(grid, driver.active.get_current_stream(device_index), args)
        except (AttributeError, TypeError):
            # An incompatible Triton: launch this call (and all later ones) its own way.
            self.enabled = False
            self.fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps, **self.options)
