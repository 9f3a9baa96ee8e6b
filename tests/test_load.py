"""Sustained use on a GPU: no memory growth, no drift, graph replays and threads agree.

An inference engine calls the norm millions of times, replays it inside CUDA graphs and runs it
from several threads and streams at once. Each test here repeats one of those patterns and
checks that the allocator ends where it started and that the last result is, bit for bit, the
first. RMSNORM_LOAD_SCALE (default 1.0) scales every count: 0.1 for a quick pass.
"""
import os
import threading

import pytest
import torch

import rmsnorm_triton as rt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="load tests need a CUDA GPU (100,000 calls; the CPU "
                                       "interpreter would take hours)")

SCALE = float(os.environ.get("RMSNORM_LOAD_SCALE", "1.0"))
M = 64
# 4096: one program per row tile; 65536: on a GPU, programs share a row (the split-row kernel,
# whose partial-sum slots each thread's stream keeps).
WIDTHS = [pytest.param(4096, id="N4096"), pytest.param(65536, id="N65536")]


def scaled(count):
    return max(2, int(count * SCALE))


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def make_data(n):
    torch.manual_seed(0)
    x = (0.5 + 2 * torch.randn(M, n, device="cuda")).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(n, device="cuda")).to(torch.bfloat16)
    residual = (0.5 + 2 * torch.randn(M, n, device="cuda"))          # fp32 residual stream
    return x, w, residual


def _forward(kind, x, w, residual):
    """One call of the kind under test; returns its output. The fused add restores residual
    first, since it updates it in place (the reset is part of the pattern, not of the norm)."""
    if kind == "functional":
        return rt.rms_norm(x, w, 1e-6)
    if kind == "functional-gemma-fp32-out":
        return rt.rms_norm(x, w, 1e-6, weight_offset=1.0, out_dtype=torch.float32)
    if kind == "fused-add":
        res = residual.clone()
        return rt.fused_add_rms_norm(x, res, w, 1e-6)[0]
    raise ValueError(kind)


def _module(w):
    m = rt.RMSNorm(w.numel(), eps=1e-6, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        m.weight.copy_(w)
    return m


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("kind", ["functional", "functional-gemma-fp32-out", "fused-add",
                                  "module"])
def test_many_calls_no_growth_no_drift(kind, n):
    x, w, residual = make_data(n)
    # Inference mode, as engines run: with autograd on, a Parameter weight takes the torch path.
    with torch.inference_mode():
        if kind == "module":
            call = _module(w).__call__
            call_args = (x,)
        else:
            call, call_args = _forward, (kind, x, w, residual)
        first = call(*call_args).clone()
        y = call(*call_args)          # one result held, as during the loop
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(scaled(100_000)):
            y = call(*call_args)
        torch.cuda.synchronize()
        after = torch.cuda.memory_allocated()
    assert after == before, f"allocated memory grew by {after - before} bytes"
    assert torch.equal(_bits(y), _bits(first)), "the result drifted"


@pytest.mark.parametrize("n", WIDTHS)
def test_graph_replays_no_growth_no_drift(n):
    x, w, residual0 = make_data(n)
    out_norm = torch.empty(M, n, dtype=torch.float32, device="cuda")
    out_fused = torch.empty_like(x)
    residual = residual0.clone()

    def step():
        rt.rms_norm(x, w, 1e-6, weight_offset=1.0, out=out_norm)
        residual.copy_(residual0)
        rt.fused_add_rms_norm(x, residual, w, 1e-6, out=out_fused)

    # Warm up (JIT compile, config lookup) on a side stream, as torch.cuda.graphs requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    eager = (out_norm.clone(), out_fused.clone(), residual.clone())

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for t in (out_norm, out_fused, residual):
        t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip((out_norm, out_fused, residual), eager):
        assert torch.equal(_bits(got), _bits(want)), "the graph differs from eager"
    before = torch.cuda.memory_allocated()
    for _ in range(scaled(10_000)):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    for got, want in zip((out_norm, out_fused, residual), eager):
        assert torch.equal(_bits(got), _bits(want)), "graph replays drifted"


@pytest.mark.parametrize("n", WIDTHS)
def test_threads_and_streams_share_weights(n):
    x0, w, residual0 = make_data(n)
    n_threads, iters = 4, scaled(2_000)
    # Each thread its own input, output dtype and stream; all read the one weight.
    xs = [x0.roll(i, dims=0) for i in range(n_threads)]
    out_dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.bfloat16]
    serial = [rt.rms_norm(xs[i], w, 1e-6, out_dtype=out_dtypes[i]) for i in range(n_threads)]
    serial_fused = [rt.fused_add_rms_norm(xs[i], residual0.clone(), w, 1e-6)[0]
                    for i in range(n_threads)]
    torch.cuda.synchronize()
    mismatches = [torch.zeros((), dtype=torch.int64, device="cuda") for _ in range(n_threads)]
    errors = []

    def worker(i):
        try:
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                for _ in range(iters):
                    y = rt.rms_norm(xs[i], w, 1e-6, out_dtype=out_dtypes[i])
                    mismatches[i] += (_bits(y) != _bits(serial[i])).sum()
                    res = residual0.clone()
                    y = rt.fused_add_rms_norm(xs[i], res, w, 1e-6)[0]
                    mismatches[i] += (_bits(y) != _bits(serial_fused[i])).sum()
            stream.synchronize()
        except Exception as e:       # surfaced below: a thread's exception would be lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [int(m) for m in mismatches] == [0] * n_threads, "a thread saw another's results"
