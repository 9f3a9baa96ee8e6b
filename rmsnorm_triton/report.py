"""What `bench` makes of its rows: the Performance targets, a markdown table, a plot."""
from __future__ import annotations

import math

from .atomic import write_atomic

BIG_ELEMS = 1 << 24           # "M*N >= 16M elements": where a kernel should sit at the ceiling
MODES = ("eager", "graph", "host")


def _where(r) -> str:
    return f"{r.M}x{r.N} {r.dtypes} {r.op} {r.mode}"


def targets(rows, empty) -> list[str]:
    """PASS/MISS per target of the issue, with the numbers behind each verdict."""
    ours = [r for r in rows if r.provider == "ours" and r.us is not None]
    out = ["Targets"]

    def verdict(name, sel, ok, value, fmt):
        if not sel:
            out.append(f"  n/a   {name}: no rows measured")
            return
        misses = [r for r in sel if not ok(r)]
        worst = min(sel, key=value)
        detail = f"{len(sel)} rows, worst {fmt(worst)} at {_where(worst)}"
        out.append(f"  {'MISS' if misses else 'PASS'}  {name}: {detail}")
        for r in misses[:8]:
            out.append(f"          {_where(r)}: {fmt(r)}")
        if len(misses) > 8:
            out.append(f"          ... and {len(misses) - 8} more")

    verdict(">= 97% of ceiling where M*N >= 16M (eager)",
            [r for r in ours if r.mode == "eager" and r.M * r.N >= BIG_ELEMS],
            lambda r: r.pct >= 97, lambda r: r.pct, lambda r: f"{r.pct:.1f}%")
    verdict(">= 80% at M=1024, N=4096..8192 (graph)",
            [r for r in ours if r.mode == "graph" and r.M == 1024 and 4096 <= r.N <= 8192],
            lambda r: r.pct >= 80, lambda r: r.pct, lambda r: f"{r.pct:.1f}%")
    decode = [r for r in ours if r.M <= 64]
    verdict("decode (M <= 64) graph <= 2 us", [r for r in decode if r.mode == "graph"],
            lambda r: r.us <= 2.0, lambda r: -r.us, lambda r: f"{r.us:.2f} us")
    floor = empty["eager"]
    verdict(f"decode (M <= 64) eager <= 1.25 x empty Triton kernel ({floor:.2f} us)",
            [r for r in decode if r.mode == "eager"], lambda r: r.us <= 1.25 * floor,
            lambda r: -r.us, lambda r: f"{r.us:.2f} us = {r.us / floor:.2f}x")
    with_peer = [r for r in ours if r.ratio is not None]
    verdict("at least as fast as the fastest peer, every row", with_peer,
            lambda r: r.ratio >= 1.0, lambda r: r.ratio, lambda r: f"{r.ratio:.2f}x")
    noise = [r for r in with_peer if 0.98 <= r.ratio < 1.0]
    if noise:
        out.append(f"          ({len(noise)} of those misses are within 2%, about the noise)")

    comp = {(r.M, r.N, r.dtypes, r.op, r.mode): r.us for r in rows
            if r.provider == "compile" and r.us is not None}
    ratios = [comp[k] / r.us for r in ours if (k := (r.M, r.N, r.dtypes, r.op, r.mode)) in comp]
    if ratios:
        g = math.exp(sum(map(math.log, ratios)) / len(ratios))
        out.append(f"  {'PASS' if g >= 1.25 else 'MISS'}  geometric mean >= 1.25x torch.compile:"
                   f" {g:.2f}x over {len(ratios)} rows (min {min(ratios):.2f}x, "
                   f"max {max(ratios):.2f}x)")
    else:
        out.append("  n/a   geometric mean >= 1.25x torch.compile: no torch.compile rows")
    # Against the empty launch timed in the same rounds as the row (the header's otherwise).
    def host_floor(r):
        return r.floor_us or empty["host"]
    verdict("decode (M <= 64) host loop <= 1.25 x empty Triton launch (same rounds; header "
            f"{empty['host']:.1f} us)",
            [r for r in decode if r.mode == "host"], lambda r: r.us <= 1.25 * host_floor(r),
            lambda r: -r.us / host_floor(r),
            lambda r: f"{r.us:.1f} us = {r.us / host_floor(r):.2f}x of {host_floor(r):.1f}")
    return out


def _cell(r) -> str:
    if r is None:
        return "-"
    if r.us is None:
        return "n/a" if "Unsupported" in r.note else "fails"
    if r.M * r.N < BIG_ELEMS // 16:      # latency-bound: % of bandwidth says nothing
        return f"{r.us:.2f} us"
    return f"{r.us:.1f} us, {r.pct:.0f}%"


def markdown(rows, head, summary) -> str:
    """One line per (op, dtypes, shape, mode), one column per provider, for bench/RESULTS.md."""
    provs = list(dict.fromkeys(r.provider for r in rows))
    keys = list(dict.fromkeys((r.op, r.dtypes, r.M, r.N, r.mode) for r in rows))
    at = {(r.op, r.dtypes, r.M, r.N, r.mode, r.provider): r for r in rows}
    lines = [f"- {h}" for h in head] + [
        "",
        "Cells: microseconds per call and % of the copy ceiling (bytes read + written / time);"
        " rows under 1M elements show time only. ours/best: fastest peer's time / ours (> 1: ours"
        " faster). n/a: the peer has no such option; fails: it raised or gave a wrong result.",
        "",
        "| op | dtypes | M x N | mode | " + " | ".join(provs) + " | ours/best |",
        "|" + "---|" * (len(provs) + 5),
    ]
    for op, dt, M, N, mode in keys:
        cells = [_cell(at.get((op, dt, M, N, mode, p))) for p in provs]
        ours = at.get((op, dt, M, N, mode, "ours"))
        ratio = f"{ours.ratio:.2f}" if ours is not None and ours.ratio is not None else "-"
        lines.append(f"| {op} | {dt} | {M} x {N} | {mode} | " + " | ".join(cells)
                     + f" | {ratio} |")
    return "\n".join(lines + ["", "```", *summary, "```", ""])


def plot(rows, path, title) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    modes = [m for m in ("eager", "graph") if any(r.mode == m for r in rows)]
    if not modes:
        return "plot skipped: no rows"
    provs = list(dict.fromkeys(r.provider for r in rows))
    fig, axes = plt.subplots(len(modes), 1, squeeze=False,
                             figsize=(12, 3.8 * len(modes)))
    for ax, mode in zip(axes[:, 0], modes):
        keys = list(dict.fromkeys((r.M, r.N, r.dtypes, r.op) for r in rows if r.mode == mode))
        pct = {(r.M, r.N, r.dtypes, r.op, r.provider): r.pct for r in rows if r.mode == mode}
        for p in provs:
            ys = [pct.get((*k, p)) for k in keys]
            ax.plot(range(len(keys)), [math.nan if y is None else y for y in ys], "o-",
                    label=p, markersize=4, linewidth=0.8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{M}x{N} {d}" for M, N, d, _ in keys], rotation=60, ha="right",
                           fontsize=7)
        ax.set_ylabel("% of copy ceiling")
        ax.set_title(f"{mode} - {title}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=len(provs))
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return f"plot: {path}"
