"""Bytes model, copy ceiling and timers for the benchmark scripts.

They live in the package (rmsnorm_triton/timing.py) because `rmsnorm-triton tune` and
`rmsnorm-triton bench` need them in an installed copy too; this module is the scripts' name
for them.
"""
from rmsnorm_triton.timing import (copy_ceiling_gbps, eager_us, empty_launch_us, graph_us,
                                   header_lines, host_us, l2_bytes, n_sets, rmsnorm_bytes)

__all__ = ["rmsnorm_bytes", "copy_ceiling_gbps", "eager_us", "graph_us", "host_us",
           "empty_launch_us", "header_lines", "l2_bytes", "n_sets"]
