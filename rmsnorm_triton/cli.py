"""`rmsnorm-triton` (also `python -m rmsnorm_triton`): demo, tune, bench, info.

Each subcommand lives in its own module and is imported only when run, so `info` and `--help`
stay fast and nothing here needs a GPU.
"""
from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.model_dir, device=args.device)


def _cmd_tune(args) -> int:
    from .tuning import run_tune
    return run_tune(args)


def _cmd_bench(args) -> int:
    from .benchmark import run_bench
    return run_bench(args)


def _cmd_info(args) -> int:
    import os

    import torch
    import triton

    from . import __version__
    from .config import cache_path, device_name, tuned_table
    from .ops import INTERPRET
    print(f"rmsnorm_triton {__version__}")
    print(f"torch {torch.__version__}, triton {triton.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"interpreter mode (TRITON_INTERPRET=1): {INTERPRET}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            name = device_name(i)
            print(f"cuda:{i}: {name}; tuned entries: {len(tuned_table(name))} "
                  f"({cache_path(name)})")
    else:
        print("device: cpu (no CUDA GPU)")
        env = os.environ.get("RMSNORM_TRITON_CACHE", "")
        print(f"cache: {cache_path('cpu').parent} (RMSNORM_TRITON_CACHE={env})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmsnorm-triton", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="load every norm of a checkpoint and check it against fp64")
    d.add_argument("model_dir", nargs="?", default=None,
                   help="HF model directory (default: tiny Llama- and Gemma-style checkpoints "
                        "written on the fly)")
    d.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: GPU if present)")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("tune", help="offline autotune; writes the tuned-config cache")
    t.set_defaults(func=_cmd_tune)
    from .tuning import add_arguments as add_tune_arguments
    add_tune_arguments(t)

    b = sub.add_parser("bench", help="ours against the installed peers, %% of the copy ceiling")
    b.set_defaults(func=_cmd_bench)
    from .benchmark import add_arguments as add_bench_arguments
    add_bench_arguments(b)

    i = sub.add_parser("info", help="versions, device, interpreter mode, tuned-config cache")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
