"""rt.distributed.broadcast_rms_norm across processes: gloo on CPUs, NCCL on 2+ GPUs."""
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rmsnorm_triton as rt
from helpers import rand_w, rand_x
from rmsnorm_triton.distributed import _check_before_collective

M, N, EPS = 6, 96, 1e-5
WORLD = 2
TIMEOUT_S = 120


def _worker(rank, init_file, backend):
    """Every rank: receive from each source rank in turn and check against a local rms_norm."""
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        device = torch.device("cpu")
        if backend == "nccl":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        torch.manual_seed(0)                 # the same data on every rank, for the check
        data = rand_x((M, N), torch.bfloat16, "cpu").to(device)
        w = rand_w(N, torch.float16, "cpu").to(device)
        want = rt.rms_norm(data, w, EPS, out_dtype=torch.float32)
        for src in range(WORLD):
            x = data.clone() if rank == src else torch.zeros_like(data)
            y = rt.distributed.broadcast_rms_norm(x, w, EPS, src=src, out_dtype=torch.float32)
            assert torch.equal(x, data), f"rank {rank}: x did not receive rank {src}'s data"
            assert torch.equal(y, want), f"rank {rank}: result differs (source {src})"
            # A row-strided buffer is broadcast through a contiguous copy and written back.
            big = torch.zeros(M, N + 8, dtype=data.dtype, device=device)
            if rank == src:
                big[:, :N] = data
            y = rt.distributed.broadcast_rms_norm(big[:, :N], w, EPS, src=src,
                                                  out_dtype=torch.float32)
            assert torch.equal(big[:, :N], data) and torch.equal(y, want)
            assert (big[:, N:] == 0).all(), f"rank {rank}: wrote outside the view"
            # A negative view sends its values, not its memory (which holds -data).
            x = torch._neg_view(-data) if rank == src else torch.zeros_like(data)
            y = rt.distributed.broadcast_rms_norm(x, w, EPS, src=src, out_dtype=torch.float32)
            assert torch.equal(x, data) and torch.equal(y, want), f"rank {rank}: negative view"
    finally:
        dist.destroy_process_group()


def _run(tmp_path, backend):
    procs = mp.start_processes(_worker, args=(str(tmp_path / "rendezvous"), backend),
                               nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not procs.join(timeout=1):        # raises as soon as a rank fails
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.terminate()
            pytest.fail(f"{backend} ranks did not finish within {TIMEOUT_S} s")


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with gloo is not available in this build")
def test_gloo_two_processes_every_rank_matches(tmp_path):
    _run(tmp_path, "gloo")


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not dist.is_available()
                    or not dist.is_nccl_available(),
                    reason="needs 2+ CUDA GPUs and NCCL")
def test_nccl_two_processes_every_rank_matches(tmp_path):
    _run(tmp_path, "nccl")


def test_needs_an_initialized_process_group():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        rt.distributed.broadcast_rms_norm(torch.ones(2, 4))


def test_bad_arguments_raise_before_the_collective():
    x = torch.ones(2, 8)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        _check_before_collective([1.0], None, EPS, {})
    with pytest.raises(TypeError, match="x must be"):
        _check_before_collective(x.long(), None, EPS, {})
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        _check_before_collective(x, torch.ones(7), EPS, {})
    with pytest.raises(ValueError, match="out must have x's shape"):
        _check_before_collective(x, None, EPS, {"out": torch.empty(3, 8)})
    with pytest.raises(TypeError, match="unexpected keyword"):
        _check_before_collective(x, None, EPS, {"residual": x})
    with pytest.raises(ValueError, match="eps"):
        _check_before_collective(x, None, -1.0, {})
