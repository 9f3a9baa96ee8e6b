"""Host microseconds of the primitives a forward call is built from (one line each).

    python bench/probe_host_ops.py

A decode-sized call is all host time: this says what each piece costs on this host, and what
each layer of Triton's launch adds (jit dispatch, compiled_kernel[grid], the C launcher).
"""
import time

import torch
import triton
import triton.language as tl
from triton.runtime import driver

from rmsnorm_triton.launcher import make_runner


def us(fn, n=3000):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


@triton.jit
def _empty(x_ptr):
    pass


@triton.jit
def _eleven(a, b, c, d, e, f, n0, n1, s0, s1, eps, X: tl.constexpr, Y: tl.constexpr):
    pass


def main():
    print(triton.__version__, torch.__version__)
    x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    k = _empty[(1,)](x)
    k11 = _eleven[(8,)](x, x, w, w, x, x, 8, 4096, 4096, 0, 1e-6, X=1, Y=2)
    s = torch.cuda.current_stream()
    raw = torch._C._cuda_getCurrentRawStream
    stream = raw(0)
    runner = make_runner(k11, (1, 2))
    args11 = (x, x, w, w, x, x, 8, 4096, 4096, 0, 1e-6)
    ptrs11 = tuple(a.data_ptr() for a in args11[:6]) + args11[6:]
    print("runner:", runner.__name__)
    rows = {
        "empty jit launch": lambda: _empty[(1,)](x),
        "empty compiled[grid](stream=)": lambda: k[(1, 1, 1)](x, stream=stream),
        "11-arg compiled[grid](stream=)": lambda: k11[(8, 1, 1)](x, x, w, w, x, x, 8, 4096, 4096,
                                                                0, 1e-6, 1, 2, stream=stream),
        "11-arg make_runner (C launcher)": lambda: runner(8, stream, args11),
        "11-arg make_runner, int pointers": lambda: runner(8, stream, ptrs11),
        "driver.active.get_current_stream(0)": lambda: driver.active.get_current_stream(0),
        "_cuda_getCurrentRawStream(0)": lambda: raw(0),
        "torch.cuda.current_device()": torch.cuda.current_device,
        "torch.cuda.current_stream(0)": lambda: torch.cuda.current_stream(0),
        "torch.empty 8x4096 bf16": lambda: torch.empty((8, 4096), dtype=torch.bfloat16,
                                                       device=x.device),
        "torch.empty_like": lambda: torch.empty_like(x),
        "x.shape": lambda: x.shape,
        "x.stride(0)": lambda: x.stride(0),
        "x.dtype": lambda: x.dtype,
        "x.device": lambda: x.device,
        "x.data_ptr()": lambda: x.data_ptr(),
        "x.is_contiguous()": lambda: x.is_contiguous(),
        "x.requires_grad": lambda: x.requires_grad,
        "torch.is_grad_enabled()": torch.is_grad_enabled,
        "torch.compiler.is_compiling()": torch.compiler.is_compiling,
        "F.rms_norm": lambda: torch.nn.functional.rms_norm(x, (4096,), w, 1e-6),
        "x.mul_(1.0) (one aten kernel)": lambda: x.mul_(1.0),
        "Event()+record": lambda: torch.cuda.Event().record(),
        "with torch.cuda.stream(s)": lambda: _ctx(s),
        "_cuda_setDevice(0)": lambda: torch._C._cuda_setDevice(0),
        "with torch.cuda.device(0)": lambda: _dev(0),
        "python fn call, 10 args": lambda: _f(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
    }
    ev = torch.cuda.Event()
    rows["reused event record"] = lambda: ev.record(s)
    rows["stream.wait_event(ev)"] = lambda: s.wait_event(ev)
    rows["x.record_stream(s)"] = lambda: x.record_stream(s)
    if torch.cuda.device_count() > 1:
        y = torch.empty(8, 4096, device="cuda:1", dtype=torch.bfloat16)
        s1 = torch.cuda.current_stream(1)
        rows["torch.empty on cuda:1"] = lambda: torch.empty((8, 4096), dtype=torch.bfloat16,
                                                            device=y.device)
        rows["s1.wait_event(ev)"] = lambda: s1.wait_event(ev)
        rows["x.record_stream(stream of cuda:1)"] = lambda: x.record_stream(s1)
        rows["setDevice(1)+setDevice(0)"] = lambda: (torch._C._cuda_setDevice(1),
                                                     torch._C._cuda_setDevice(0))
    for name, fn in rows.items():
        try:
            print(f"{name:40s} {us(fn):8.2f} us")
        except Exception as e:  # noqa: BLE001
            print(f"{name:40s} failed: {type(e).__name__}: {e}")


def _f(*a):
    return a


def _ctx(s):
    with torch.cuda.stream(s):
        pass


def _dev(i):
    with torch.cuda.device(i):
        pass


if __name__ == "__main__":
    main()
