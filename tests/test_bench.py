"""The benchmark's bookkeeping on CPU: plans, correctness gate, ratios, targets, markdown.
Timers are stubbed (they need CUDA events); the providers really run. One GPU test checks
that the eager timer leaves the host out."""
import types

import pytest
import torch

from rmsnorm_triton import benchmark as B
from rmsnorm_triton import ops
from rmsnorm_triton import providers as P
from rmsnorm_triton.report import markdown, targets
from rmsnorm_triton.timing import rmsnorm_bytes

BF16, FP32 = torch.bfloat16, torch.float32
EMPTY = {"eager": 2.0, "host": 4.0, "graph": 0.8}


def _args(**kw):
    base = dict(variants=None, full=False, shapes=None, warmup=1, rep=1)
    return types.SimpleNamespace(**{**base, **kw})


def test_plans():
    quick = B.plan(_args())
    assert {s for v, s in quick if v == "bf16"} == set(B.KEY_SHAPES)
    full = B.plan(_args(full=True))
    assert set(B.KEY_SHAPES) <= {s for v, s in full if v == "bf16"}
    assert all(rmsnorm_bytes(m, n, B.VARIANTS[v].x, None, B.VARIANTS[v].out, B.VARIANTS[v].res)
               <= B.MAX_TRAFFIC for v, (m, n) in full)
    assert (16384, 262144) not in {s for _, s in full}
    assert B.plan(_args(shapes=[(8, 4096)], variants=["add-fp32"])) == [("add-fp32", (8, 4096))]
    # fp32 weights run when named; the full grid keeps the weight in x's dtype
    assert {v for v, _ in full} == set(B.FULL_VARIANTS)
    assert all(B.VARIANTS[v].w is None for v in B.FULL_VARIANTS)
    assert B.plan(_args(shapes=[(1, 32768)], variants=["bf16-w32"])) == [("bf16-w32", (1, 32768))]


def test_bytes_model():
    assert rmsnorm_bytes(2, 8, BF16, BF16, FP32) == 2 * 8 * 6 + 16
    assert rmsnorm_bytes(2, 8, BF16, None, BF16, FP32) == 2 * 8 * (4 + 8)


@pytest.fixture
def stub_timers(monkeypatch):
    monkeypatch.setattr(B, "eager_us", lambda calls, w, r: 10.0)
    monkeypatch.setattr(B, "graph_us", lambda calls: 4.0)
    # The host loops of a case run together: ours 20 us, torch 25, the empty launch 16.
    monkeypatch.setattr(B, "host_rounds_us",
                        lambda sets: {k: {"ours": 20.0, "torch": 25.0}.get(k, 16.0) for k in sets})
    monkeypatch.setattr(B, "empty_launch_calls", lambda: [lambda: None])
    monkeypatch.setattr(B, "scrub_l2", lambda: None)        # a GPU kernel; the timers are stubs


@pytest.mark.skipif(not ops.INTERPRET, reason="runs the providers on CPU tensors")
@pytest.mark.parametrize("vname", ["bf16-fp32", "add-fp32", "bf16-w32", "add-bf16-w32"])
def test_measure_checks_and_ratios(stub_timers, vname):
    v = B.VARIANTS[vname]
    case = B.Case(v, 8, 256, device="cpu")
    rows = []
    for name in ("ours", "torch"):
        rows += B.measure(case, name, P.PROVIDERS[name]()(v), 3000.0, _args())

    def wrong(x, w, r):             # a provider that forgets the weight
        return lambda: (torch.nn.functional.rms_norm(x.float(), x.shape[-1:]), r)
    bad = B.measure(case, "wrong", wrong, 3000.0, _args())
    assert all(r.us is None for r in rows if r.mode == "host")     # not yet: time_host
    B.time_host(case, rows + bad, 3000.0)
    B.fill_ratios(rows + bad)
    assert [r.mode for r in rows[:3]] == ["eager", "graph", "host"]
    assert all(r.us is not None and not r.note for r in rows), [B.fmt(r) for r in rows]
    assert all(r.us is None and r.note.startswith("wrong") for r in bad)
    assert [r.ratio for r in rows if r.provider == "ours"] == [1.0, 1.0, 1.25]
    assert [r.floor_us for r in rows if r.mode == "host"] == [16.0, 16.0]


def test_host_loops_take_turns(monkeypatch):
    """Providers compared in the host loop are timed in the same rounds, each round starting
    at the next one: a drift of the host's speed reaches all of them alike."""
    from rmsnorm_triton import timing

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    order = []
    sets = {name: [lambda name=name: order.append(name)] for name in "abc"}
    got = timing.host_rounds_us(sets, n=2, repeats=3)
    assert sorted(got) == ["a", "b", "c"] and all(us > 0 for us in got.values())
    warm, timed = order[:6], order[6:]
    assert warm == list("aabbcc")
    assert timed == list("aabbcc" "bbccaa" "ccaabb")


def _row(provider, M, N, mode, us, pct=None, ratio=None):
    return B.Row(provider, M, N, "bf16->bf16", "rms_norm", mode, us, None, pct, ratio)


def test_targets_verdicts():
    rows = [_row("ours", 4096, 4096, "eager", 20.0, pct=98.0, ratio=1.1),
            _row("compile", 4096, 4096, "eager", 30.0, pct=65.0),
            _row("ours", 1024, 8192, "graph", 9.0, pct=79.0, ratio=0.99),
            _row("compile", 1024, 8192, "graph", 8.9, pct=80.0),
            _row("ours", 8, 4096, "graph", 1.5, ratio=1.0),
            _row("ours", 8, 4096, "eager", 2.4)]
    text = "\n".join(targets(rows, EMPTY))
    assert "PASS  >= 97% of ceiling" in text
    assert "MISS  >= 80% at M=1024" in text and "79.0%" in text
    assert "PASS  decode (M <= 64) graph <= 2 us" in text
    assert "PASS  decode (M <= 64) eager <= 1.25 x" in text
    assert "MISS  at least as fast as the fastest peer" in text and "within 2%" in text
    assert "MISS  geometric mean >= 1.25x torch.compile: 1.22x over 2 rows" in text


def test_host_target_uses_the_floor_of_its_own_rounds():
    slow_round = _row("ours", 8, 4096, "host", 12.0)
    slow_round.floor_us = 10.0          # 1.2x the empty launch timed beside it
    fast_round = _row("ours", 1, 4096, "host", 12.0)    # no floor of its own: the header's 4.0
    text = "\n".join(targets([slow_round], EMPTY))
    assert "PASS  decode (M <= 64) host loop" in text and "1.20x of 10.0" in text
    text = "\n".join(targets([slow_round, fast_round], EMPTY))
    assert "MISS  decode (M <= 64) host loop" in text
    assert "1x4096" in text and "3.00x of 4.0" in text


def test_markdown_table():
    rows = [_row("ours", 4096, 4096, "eager", 20.0, pct=98.0, ratio=1.1),
            _row("torch", 4096, 4096, "eager", 30.0, pct=65.0),
            B.Row("liger", 4096, 4096, "bf16->bf16", "rms_norm", "eager",
                  note="Unsupported: no output dtype option")]
    md = markdown(rows, ["GPU: test"], ["Targets"])
    assert "| op | dtypes | M x N | mode | ours | torch | liger | ours/best |" in md
    assert "| rms_norm | bf16->bf16 | 4096 x 4096 | eager | 20.0 us, 98% | 30.0 us, 65% | n/a |" \
           " 1.10 |" in md


def test_timers_keep_each_output_until_its_call_comes_round():
    """Outputs rotate over as many buffers as there are input sets, as inputs do; a result
    dropped at once would give every call the same freed (L2-resident) block."""
    import weakref

    from rmsnorm_triton.timing import _cycle

    made, order = [], []
    by_slot = {i: [] for i in range(3)}

    def make(i):
        def call():
            # The result this call made last time is let go before it runs: one buffer a slot.
            assert all(r() is None for r in by_slot[i])
            order.append(i)
            t = torch.empty(4)
            made.append(weakref.ref(t))
            by_slot[i].append(made[-1])
            return t
        return call
    fn = _cycle([make(i) for i in range(3)])
    for _ in range(7):
        fn()
    assert order == [0, 1, 2, 0, 1, 2, 0]
    alive = [r() is not None for r in made]
    # Results 4-6 (the latest of each slot) are held; the earlier ones were let go.
    assert alive == [False, False, False, False, True, True, True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="times with CUDA events")
def test_eager_timer_leaves_out_a_slow_host_path():
    """A call that spends 2 ms on the host before a tiny kernel gets the kernel's device time:
    the GPU is held after the flush until the call is queued (do_bench alone counts the host's
    time once it outlasts the flush)."""
    import time

    from rmsnorm_triton.timing import eager_us

    x = torch.ones(1024, device="cuda")

    def slow_host():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 2e-3:
            pass
        return x + 1
    assert eager_us([slow_host], warmup=1, rep=20) < 500
