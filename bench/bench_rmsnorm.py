"""RMSNorm forward: ours against torch eager, torch.compile and the peers installed.

    python bench/bench_rmsnorm.py [--quick | --full] [--providers ours,compile,...]
                                  [--csv out.csv] [--markdown table.md] [--plot out.png]

The same run as `rmsnorm-triton bench`; see bench/README.md for the columns and the targets.
"""
import sys

from rmsnorm_triton.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
