"""compute-sanitizer memcheck, racecheck and initcheck over every kernel path.

    python scripts/sanitize.py [--tools memcheck,racecheck,initcheck] [--quick] [--timeout S]

Runs scripts/sanitize_driver.py once plainly (compiles and caches every kernel, checks the
numbers), then once under each tool with --error-exitcode 1, and prints one line per tool.
PyTorch's caching allocator is switched off for the tool runs: it carves tensors out of larger
blocks, so an out-of-bounds access inside a block would be invisible to memcheck, and memory
it recycles looks initialized to initcheck. Exit status: 0 all clean; 1 a tool reported errors
or the driver failed; 0 with "skipped" when there is no GPU.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DRIVER = Path(__file__).resolve().parent / "sanitize_driver.py"
TOOLS = ("memcheck", "racecheck", "initcheck")


def find_sanitizer():
    for candidate in (shutil.which("compute-sanitizer"),
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin",
                                   "compute-sanitizer")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def summary_line(output):
    """The tool's own summary ("ERROR SUMMARY: 0 errors", "RACECHECK SUMMARY: ...")."""
    lines = [ln.strip("= ").strip() for ln in output.splitlines() if "SUMMARY" in ln]
    return lines[-1] if lines else "no summary printed"


def run(cmd, env, timeout):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--quick", action="store_true", help="the driver's short case list")
    ap.add_argument("--timeout", type=float, default=150, help="seconds per tool run")
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available():
        print("sanitize: skipped, no CUDA GPU")
        return 0
    sanitizer = find_sanitizer()
    if sanitizer is None:
        print("sanitize: compute-sanitizer not found on PATH or in $CUDA_HOME/bin")
        return 1
    driver = [sys.executable, str(DRIVER)] + (["--quick"] if args.quick else [])

    rc, out, secs = run(driver, dict(os.environ), args.timeout)
    print(f"plain run: rc={rc} {out.strip().splitlines()[-1] if out.strip() else ''} "
          f"({secs:.0f}s)")
    if rc != 0:
        print(out[-4000:])
        return 1

    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    failed = False
    for tool in args.tools.split(","):
        cmd = [sanitizer, "--tool", tool, "--error-exitcode", "1", *driver]
        rc, out, secs = run(cmd, env, args.timeout)
        driver_line = next((ln for ln in reversed(out.splitlines())
                            if ln.startswith("sanitize_driver:")), "driver printed nothing")
        verdict = "clean" if rc == 0 else ("TIMEOUT" if rc is None else f"FAILED rc={rc}")
        print(f"{tool}: {verdict}; {summary_line(out)}; {driver_line} ({secs:.0f}s)")
        if rc != 0:
            failed = True
            errors = [ln for ln in out.splitlines() if re.search(r"=+ +(Invalid|Race|Uninit|"
                                                                  r"Error|Warning|Address)", ln)]
            print("\n".join(errors[:40]) or out[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
