"""The split-row kernel's partial-sum slots, kept from call to call (plans.split_workspace).

Every launch moves each slot of the rows it covers one round on; the programs of a row wait for
the round they publish. These tests change what a stream's slots went through before a call
(more rows, fewer rows, other splits, another stream, a CUDA graph) and compare every result
with the fp64 oracle. GPU only: the interpreter runs programs one by one and never splits rows.
"""
import pytest
import torch

import rmsnorm_triton as rt
from rmsnorm_triton import config, plans

from helpers import assert_close, rand_w, rand_x, rmsnorm_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the split-row kernel runs on a GPU only")
BF16, FP32 = torch.bfloat16, torch.float32
# (rows, N): row counts that grow, shrink and grow again, over three numbers of splits.
SEQUENCE = [(3, 40000), (64, 65536), (5, 65536), (130, 65536), (64, 65536), (1, 262144),
            (7, 40000), (300, 40000), (2, 262144)]


def _splits(M, N):
    return config.pick_config(N, config.row_bucket(M), BF16, BF16, False, 0).splits


def _poisoned_out(M, N, dtype):
    junk = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
    del junk        # the next allocation of this size tends to reuse the NaN block


def test_slots_carry_over_calls_of_other_row_counts_and_splits():
    assert len({_splits(M, N) for M, N in SEQUENCE}) >= 2, "expected several split counts"
    weights = {}
    for M, N in SEQUENCE * 2:
        assert _splits(M, N) > 1, (M, N)
        w = weights.setdefault(N, rand_w(N, BF16, "cuda"))
        x = rand_x((M, N), BF16, "cuda")
        _poisoned_out(M, N, BF16)
        y = rt.rms_norm(x, w)
        assert_close(y, rmsnorm_ref(x, w))
        # A second call on the same slots: the same bits (one rstd per row, whatever round).
        assert torch.equal(rt.rms_norm(x, w), y)
        res = rand_x((M, N), FP32, "cuda")
        want_res = x.float() + res
        _poisoned_out(M, N, BF16)
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
    keys = {k for k in plans._split_slots if k[1] in {s.cuda_stream for s in streams}}
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
    with torch.cuda.graph(graph):
        y = rt.rms_norm(x, w)
        z, _ = rt.fused_add_rms_norm(x, res, w)
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
