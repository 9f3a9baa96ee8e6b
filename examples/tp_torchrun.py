"""Broadcast hidden states from one rank and normalize them on every rank.

    torchrun --nproc-per-node=2 examples/tp_torchrun.py            # one process per GPU (NCCL)
    torchrun --nproc-per-node=2 examples/tp_torchrun.py --cpu      # gloo, no GPU needed

Each rank prints its result's max difference from a local rms_norm of the same data; every
line should read 0.
"""
import argparse
import os

import torch
import torch.distributed as dist

import rmsnorm_triton as rt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU tensors")
    parser.add_argument("--rows", type=int, default=8, help="tokens (M)")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden size (N)")
    parser.add_argument("--src", type=int, default=0, help="rank that holds the hidden states")
    args = parser.parse_args()

    use_gpu = torch.cuda.is_available() and not args.cpu
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_gpu else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    try:
        # Every rank owns a replica of the norm weight; only `src` has the hidden states.
        torch.manual_seed(0)
        weight = (1 + 0.1 * torch.randn(args.hidden)).to(torch.bfloat16).to(device)
        hidden = (0.5 + 2 * torch.randn(args.rows, args.hidden)).to(torch.bfloat16).to(device)
        x = hidden.clone() if rank == args.src else torch.empty_like(hidden)

        y = rt.distributed.broadcast_rms_norm(x, weight, 1e-6, src=args.src)

        diff = (y.float() - rt.rms_norm(hidden, weight, 1e-6).float()).abs().max().item()
        print(f"rank {rank} on {device}: out {tuple(y.shape)} {y.dtype}, max diff {diff}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
