"""The split-row kernel's partial-sum slots, kept from call to call (split_slots.py).

Every launch moves each slot of the rows it covers one round on; the programs of a row wait for
the round they publish. These tests change what a stream's slots went through before a call
(more rows, fewer rows, other splits, another stream, a CUDA graph) and compare every result
with the fp64 oracle. GPU only: the interpreter runs programs one by one and never splits rows.
"""
import pytest
import torch

import rmsnorm_triton as rt
from rmsnorm_triton import config, split_slots

from helpers import assert_close, poison_allocator, rand_w, rand_x, rmsnorm_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the split-row kernel runs on a GPU only")
BF16, FP32 = torch.bfloat16, torch.float32
# (rows, N): row counts that grow, shrink and grow again, over three numbers of splits.
SEQUENCE = [(3, 40000), (64, 65536), (5, 65536), (130, 65536), (64, 65536), (1, 262144),
            (7, 40000), (300, 40000), (2, 262144), (2, 131072), (3, 100000)]


def _splits(M, N):
    return config.pick_config(N, config.row_bucket(M), BF16, BF16, False, 0).splits


def test_slots_carry_over_calls_of_other_row_counts_and_splits():
    assert len({_splits(M, N) for M, N in SEQUENCE}) >= 2, "expected several split counts"
    weights = {}
    for M, N in SEQUENCE * 2:
        assert _splits(M, N) > 1, (M, N)
        w = weights.setdefault(N, rand_w(N, BF16, "cuda"))
        x = rand_x((M, N), BF16, "cuda")
        poison_allocator((M, N), BF16, "cuda")
        y = rt.rms_norm(x, w)
        assert_close(y, rmsnorm_ref(x, w))
        # A second call on the same slots: the same bits (one rstd per row, whatever round).
        assert torch.equal(rt.rms_norm(x, w), y)
        res = rand_x((M, N), FP32, "cuda")
        want_res = x.float() + res
        poison_allocator((M, N), BF16, "cuda")
        y, _ = rt.fused_add_rms_norm(x, res, w)
        torch.testing.assert_close(res, want_res, rtol=0, atol=0)
        assert_close(y, rmsnorm_ref(want_res, w))
    torch.cuda.synchronize()


def test_concurrent_streams_get_their_own_slots():
    M, N = 64, 65536
    w = rand_w(N, BF16, "cuda")
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    xs = [rand_x((M, N), BF16, "cuda") for _ in streams]
    wants = [rmsnorm_ref(x, w) for x in xs]
    outs = [[] for _ in streams]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    for _ in range(20):             # queued on both streams with no host sync between
        for i, s in enumerate(streams):
            with torch.cuda.stream(s):
                outs[i].append(rt.rms_norm(xs[i], w))
    for s in streams:
        torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    keys = {k for k in split_slots._kept if k[1] in {s.cuda_stream for s in streams}}
    assert len(keys) == 2, f"expected one set of slots a stream, got {keys}"
    for ys, want in zip(outs, wants):
        for y in ys:
            assert_close(y, want)
        assert all(torch.equal(y, ys[0]) for y in ys)


def test_split_rows_in_a_cuda_graph_beside_eager_calls():
    M, N = 96, 65536
    w = rand_w(N, BF16, "cuda")
    x = rand_x((M, N), BF16, "cuda")
    res = rand_x((M, N), FP32, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):       # compile outside the capture
        rt.rms_norm(x, w)
        rt.fused_add_rms_norm(x, res.clone(), w)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    captured = len(split_slots._captured)
    with torch.cuda.graph(graph):
        capture_stream = torch.cuda.current_stream().cuda_stream
        y = rt.rms_norm(x, w)
        z, _ = rt.fused_add_rms_norm(x, res, w)
    # The capture took slots of its own, held for the graph, and kept none for its stream.
    assert len(split_slots._captured) == captured + 2
    assert all(k[1] != capture_stream for k in split_slots._kept)
    for _ in range(3):
        x.copy_(rand_x((M, N), BF16, "cuda"))
        res.copy_(rand_x((M, N), FP32, "cuda"))
        want_res = x.float() + res
        graph.replay()
        eager = rt.rms_norm(x, w)          # the default stream's slots, between replays
        torch.cuda.synchronize()
        assert_close(y, rmsnorm_ref(x, w))
        assert_close(z, rmsnorm_ref(want_res, w))
        assert torch.equal(eager, y)


def _capped_kernels(cap: int) -> list:
    """Split-row kernels this process compiled under register cap `cap` (Triton's JIT cache)."""
    from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_split_kernel
    return [k for cache in rmsnorm_fwd_split_kernel.device_caches.values()
            for k in cache[0].values()
            if getattr(k.metadata, "maxnreg", None) == cap]


@pytest.mark.parametrize("dtype,out_dtype,res_dtype,M,N,launcher", [
    (BF16, BF16, None, 512, 65536, "_launch_split_capped"),
    (torch.float16, torch.float16, None, 512, 65536, "_launch_split_capped"),
    (BF16, BF16, BF16, 512, 65536, "_launch_split_capped"),
    (torch.float16, FP32, None, 64, 65536, "_launch_split_capped_wide"),    # 4096 slices
    (torch.float16, FP32, None, 64, 262144, "_launch_split_capped_wide"),   # 8192 slices
], ids=["bf16", "fp16", "add-bf16", "fp16-fp32", "fp16-fp32-long"])
def test_register_capped_split_rows_equal_the_uncapped_kernel(monkeypatch, dtype, out_dtype,
                                                              res_dtype, M, N, launcher):
    """The register cap changes how the compiler holds values, not the arithmetic: the same
    bits as the uncapped kernel, and the fp64 oracle's values. The capped form holds at most
    the cap's registers and spills nothing."""
    from rmsnorm_triton import ops, plans
    from rmsnorm_triton.launcher import CachedLauncher
    shipped = getattr(ops, launcher)
    capped_launcher = CachedLauncher(shipped.fn, options=shipped.options)
    monkeypatch.setattr(ops, launcher, capped_launcher)
    cap = shipped.options["maxnreg"]
    w, x = rand_w(N, dtype, "cuda"), rand_x((M, N), dtype, "cuda")
    r = None if res_dtype is None else rand_x((M, N), res_dtype, "cuda")
    results = []
    for capped in (True, False):
        monkeypatch.setattr(ops, "split_register_cap", lambda *a, c=capped, **k: cap if c else None)
        plans.clear()
        out = torch.full((M, N), float("nan"), dtype=out_dtype, device="cuda")
        if r is None:
            rt.rms_norm(x, w, out=out)
        else:
            res = r.clone()
            rt.fused_add_rms_norm(x, res, w, out=out)
            assert torch.equal(res, (x.float() + r.float()).to(res_dtype))
        results.append(out)
    assert capped_launcher.kernels, "the capped call did not go through the capped launcher"
    compiled = _capped_kernels(cap)
    assert compiled, "nothing was compiled under the register cap"
    assert all(k.n_regs <= cap and k.n_spills == 0 for k in compiled), \
        [(k.n_regs, k.n_spills) for k in compiled]
    want = rmsnorm_ref(x if r is None else (x.float() + r.float()).to(res_dtype), w)
    assert_close(results[0], want)
    assert torch.equal(results[0], results[1])


@pytest.mark.skipif(not config.SPLIT_CAP_HERE, reason="this Triton compiles nothing capped")
@pytest.mark.parametrize("dtype,out_dtype,M,off", [
    (BF16, BF16, 512, "weight"), (BF16, BF16, 512, "out"), (BF16, BF16, 512, "cols"),
    (torch.float16, FP32, 64, "weight"), (torch.float16, FP32, 64, "out"),
    (torch.float16, FP32, 64, "cols"),
])
def test_calls_off_vectors_compile_nothing_spilling_under_a_cap(dtype, out_dtype, M, off):
    """Rows the register caps cover, with the weight or the output 2 bytes off 16-byte
    alignment, or 8 columns short of a multiple of 16: capped, the kernel would spill
    (config.row_vectors); they run uncapped, and right."""
    N = 65536 - (8 if off == "cols" else 0)
    caps = (config.SPLIT_MAX_REGISTERS, config.SPLIT_WIDE_OUT_MAX_REGISTERS)
    before = {id(k) for cap in caps for k in _capped_kernels(cap)}
    x = rand_x((M, N), dtype, "cuda")
    w_buf = rand_w(N + 8, dtype, "cuda")
    w = w_buf[1:N + 1] if off == "weight" else w_buf[:N]
    out_buf = torch.full((M * N + 8,), float("nan"), dtype=out_dtype, device="cuda")
    out = out_buf[1:M * N + 1].view(M, N) if off == "out" else out_buf[:M * N].view(M, N)
    rt.rms_norm(x, w, out=out, out_dtype=out_dtype)
    assert_close(out, rmsnorm_ref(x, w))
    spilling = [(k.n_regs, k.n_spills) for cap in caps for k in _capped_kernels(cap)
                if id(k) not in before and k.n_spills]
    assert not spilling, spilling


def _kept_slots(stream, splits):
    return split_slots._kept[(torch.cuda.current_device(), stream.cuda_stream, splits)]


def test_rounds_move_once_a_launch_and_wrap_around():
    M, N = 6, 65536
    splits = _splits(M, N)
    w = rand_w(N, BF16, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for calls in (1, 2):
            x = rand_x((M, N), BF16, "cuda")
            assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
            slots = _kept_slots(stream, splits)
            stream.synchronize()
            assert bool((slots[:M] >> 32 == calls).all()), slots[:M] >> 32
            assert bool((slots[M:] == 0).all()), "rows past the call's were written"
        # Rounds about to wrap, as int64: 0xFFFFFFFF and 0x7FFFFFFF in the high word.
        for start, after in ((-(1 << 32), 0), (0x7FFFFFFF << 32, -(1 << 31))):
            slots[:M] = start
            x = rand_x((M, N), BF16, "cuda")
            y = rt.rms_norm(x, w)
            stream.synchronize()
            assert_close(y, rmsnorm_ref(x, w))
            assert bool((slots[:M] >> 32 == after).all()), slots[:M] >> 32
    torch.cuda.current_stream().wait_stream(stream)


def test_slots_come_from_the_ordinary_pool_under_a_private_one():
    """torch.compile's CUDA graphs warm up with allocations routed to their own pool, which
    they later reclaim: kept slots must not come from there."""
    if not hasattr(torch.cuda, "use_mem_pool"):
        pytest.skip("this torch has no torch.cuda.use_mem_pool")
    M, N = 3, 65536
    w = rand_w(N, BF16, "cuda")
    x = rand_x((M, N), BF16, "cuda")
    pool = torch.cuda.MemPool()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.use_mem_pool(pool):
        y = rt.rms_norm(x, w)
        slots = _kept_slots(stream, _splits(M, N))
    stream.synchronize()
    assert_close(y, rmsnorm_ref(x, w))
    try:
        segments = torch.cuda.memory_snapshot(pool.id)
    except TypeError:
        pytest.skip("this torch cannot take a snapshot of one pool")
    inside = [s for s in segments if s["address"] <= slots.data_ptr() < s["address"] +
              s["total_size"]]
    assert not inside, "the kept slots were allocated from the private pool"
    assert any(s["address"] <= y.data_ptr() < s["address"] + s["total_size"]
               for s in segments), "expected the output in the private pool (the test's premise)"


def test_the_per_thread_default_stream_gets_slots_a_thread(monkeypatch):
    """Raw handle 2 (cudaStreamPerThread) names a different stream on every thread."""
    import threading
    monkeypatch.setattr(split_slots, "_current_stream", lambda index: 2)
    M, N = 3, 65536
    w = rand_w(N, BF16, "cuda")
    x = rand_x((M, N), BF16, "cuda")
    want = rmsnorm_ref(x, w)
    torch.cuda.synchronize()
    ys = [None, None]

    def call(i):
        ys[i] = rt.rms_norm(x, w)
        torch.cuda.synchronize()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for y in ys:
        assert_close(y, want)
    keys = [k for k in split_slots._kept if k[1] == 2]
    assert len({k[2] for k in keys}) == 2, f"expected one set of slots a thread, got {keys}"
