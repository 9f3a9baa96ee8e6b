"""The long property run on a GPU: tests/test_properties.py, "gpu-long" profile, in parallel.

    python scripts/fuzz_long.py [--jobs 12] [--seconds 180] [--examples 1500]

Almost every drawn case is a new kernel specialization (dtypes, flags, block shapes), so one
process spends its time in the Triton compiler on one CPU core; --jobs processes with distinct
Hypothesis seeds share the GPU and the on-disk kernel cache. Half of them fuzz rms_norm, half
fused_add_rms_norm. Each stops starting examples after --seconds (plus start-up and compiles in
flight) and writes its count; the total is printed. Exit status: 0 no failure, 1 a failure
(its falsifying case and seed printed), 0 with "skipped" when there is no GPU.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = {"rms_norm": "test_rms_norm_matches_fp64", "fused_add_rms_norm":
         "test_fused_add_matches_fp64"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--seconds", type=float, default=180, help="per process, for new examples")
    ap.add_argument("--examples", type=int, default=1500, help="max examples per process")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--cpu", action="store_true", help="allow a run in the interpreter")
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available() and not args.cpu:
        print("fuzz_long: skipped, no CUDA GPU")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="rmsnorm_fuzz_"))
    procs, t0 = [], time.time()
    for i in range(args.jobs):
        test = list(TESTS.values())[i % 2]
        env = dict(os.environ, RMSNORM_HYPOTHESIS_PROFILE="gpu-long",
                   RMSNORM_FUZZ_SECONDS=str(args.seconds), RMSNORM_FUZZ_EXAMPLES=str(args.examples),
                   RMSNORM_FUZZ_COUNT_FILE=str(tmp / f"count{i}.json"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
               f"--hypothesis-seed={args.seed + i}", f"tests/test_properties.py::{test}"]
        log = open(tmp / f"log{i}.txt", "w")
        procs.append((i, test, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                stderr=subprocess.STDOUT), log))
    totals, failed = {op: 0 for op in TESTS}, []
    for i, test, p, log in procs:
        rc = p.wait()
        log.close()
        count_file = tmp / f"count{i}.json"
        counts = json.loads(count_file.read_text()) if count_file.exists() else {}
        for op in TESTS:
            totals[op] += counts.get(op, 0)
        if rc != 0:
            failed.append((i, test, (tmp / f"log{i}.txt").read_text()))
    print(f"fuzz_long: {sum(totals.values())} examples run ({totals}) by {args.jobs} processes "
          f"in {time.time() - t0:.0f}s, seeds {args.seed}..{args.seed + args.jobs - 1}; "
          f"{len(failed)} failed; logs in {tmp}")
    for i, test, text in failed:
        print(f"--- process {i} ({test}, --hypothesis-seed={args.seed + i}) ---")
        print(text[-6000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
