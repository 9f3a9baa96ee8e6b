"""The tuned-config cache, `tune` and `bench` without a GPU, and the tuner's own launches."""
import dataclasses
import json
import multiprocessing
import sys
import warnings

import pytest
import torch

from rmsnorm_triton import config, ops, tune_space, tuning
from rmsnorm_triton.cli import main
from rmsnorm_triton.config import (LaunchConfig, cache_path, check_config, heuristic_config,
                                   load_table, pick_config, row_bucket, save_table, table_key)
from helpers import assert_close, assert_guard_intact, poisoned, rand_w, rand_x, rmsnorm_ref

ON_GPU = torch.cuda.is_available()
FP32, BF16 = torch.float32, torch.bfloat16


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, and no memoized table or pick from another test."""
    monkeypatch.setenv("RMSNORM_TRITON_CACHE", str(tmp_path))
    config.clear_caches()
    yield tmp_path
    config.clear_caches()


def _table(n: int, tag: int) -> dict:
    return {table_key(1024 - i, 64, BF16, FP32, bool(i % 2)): LaunchConfig(1 << tag, 1024, 4, False)
            for i in range(n)}


def test_cache_round_trip(cache):
    table = _table(20, 0)
    table[table_key(65536, 1, BF16, BF16, False)] = LaunchConfig(1, 4096, 4, False, splits=16)
    save_table(cache_path("cpu"), "cpu", table)
    assert load_table(cache_path("cpu"), "cpu") == table


FOREIGN = {
    "corrupt": lambda: "{ not json",
    "truncated": lambda: json.dumps({"version": 1, "gpu": "cpu"})[:-5],
    "other-gpu": lambda: json.dumps({"version": 1, "gpu": "NVIDIA H100 80GB HBM3",
                                     "triton": config.triton.__version__, "configs": {}}),
    "other-triton": lambda: json.dumps({"version": 1, "gpu": "cpu", "triton": "0.0.1",
                                        "configs": {}}),
    "bad-entry": lambda: json.dumps({"version": 1, "gpu": "cpu",
                                     "triton": config.triton.__version__,
                                     "configs": {"4096|1|bfloat16|bfloat16|0": {"warps": 4}}}),
    # Well-formed, but its tile covers half the row: using it would leave outputs unwritten.
    "short-tile": lambda: json.dumps({"version": 1, "gpu": "cpu",
                                      "triton": config.triton.__version__,
                                      "configs": {"64|1|float32|float32|0": {
                                          "block_m": 1, "block_n": 32, "num_warps": 4,
                                          "looped": False, "splits": 1}}}),
    "odd-block-m": lambda: json.dumps({"version": 1, "gpu": "cpu",
                                       "triton": config.triton.__version__,
                                       "configs": {"64|1|float32|float32|0": {
                                           "block_m": 3, "block_n": 64, "num_warps": 4,
                                           "looped": False, "splits": 1}}}),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_corrupt_or_foreign_cache_ignored_with_one_warning(cache, kind):
    path = cache_path("cpu")
    path.write_text(FOREIGN[kind]())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        picks = [pick_config(n, 1, FP32, FP32, False, -1) for n in (300, 4096, 5000)]
    ours = [str(w.message) for w in caught if "rmsnorm_triton" in str(w.message)]
    assert len(ours) == 1 and "ignoring tuned-config cache" in ours[0]
    assert picks == [heuristic_config(n, 1, 4, False) for n in (300, 4096, 5000)]


def _write_repeatedly(path, tag, started):
    table = _table(200, tag)
    started.set()
    for _ in range(100):
        save_table(path, "cpu", table)


def test_atomic_write_under_two_writers(cache):
    """Two processes rewrite one file while this one reads it: always a whole table."""
    path = cache_path("cpu")
    want = [_table(200, 0), _table(200, 1)]
    # fork: the writers need no fresh interpreter (they run no torch op), so they start at once.
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    started = [ctx.Event(), ctx.Event()]
    procs = [ctx.Process(target=_write_repeatedly, args=(path, tag, started[tag]))
             for tag in (0, 1)]
    for p in procs:
        p.start()
    for e in started:
        assert e.wait(60)
    reads = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            data = json.loads(path.read_text())      # a partial file would not parse
            assert {k: LaunchConfig(**v) for k, v in data["configs"].items()} in want
            reads += 1
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert reads > 0 and load_table(path, "cpu") in want
    assert not list(cache.glob("*.tmp")), "a temporary file was left behind"


def test_pick_config_uses_tuned_entry_else_heuristic(cache):
    tuned = LaunchConfig(2, 64, 4, True)
    save_table(cache_path("cpu"), "cpu", {table_key(300, row_bucket(5), FP32, FP32, False): tuned})
    assert pick_config(300, row_bucket(5), FP32, FP32, False, -1) == tuned
    # The fused add takes the plain norm's entry of its residual's dtype, so that it equals the
    # unfused two steps bit for bit; an fp32 residual under bf16 x is normalized as fp32.
    assert pick_config(300, row_bucket(5), FP32, FP32, True, -1) == tuned
    assert pick_config(300, row_bucket(5), BF16, FP32, True, -1, FP32) == tuned
    assert pick_config(300, row_bucket(5), BF16, FP32, True, -1) == heuristic_config(300, 8, 2,
                                                                                     False, 4)
    assert pick_config(300, row_bucket(100), FP32, FP32, False, -1) == heuristic_config(
        300, 128, 4, False)


class _Spy:
    """Records the meta-parameters each launch of the wrapped kernel gets."""

    def __init__(self, kernel):
        self.kernel, self.meta = kernel, []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.meta.append(meta)
            return self.kernel[grid](*args, **meta)
        return run


@pytest.mark.skipif(not ops.INTERPRET, reason="CPU tensors run the kernel only in the interpreter")
@pytest.mark.parametrize("fused", [False, True], ids=["norm", "fused-add"])
def test_rms_norm_launches_the_tuned_config(cache, monkeypatch, fused):
    M, N = 5, 300
    tuned = LaunchConfig(2, 64, 4, True)          # 2 rows a program, 5 chunks of 64: not a default
    # One entry, the plain norm's: the fused add takes it too.
    save_table(cache_path("cpu"), "cpu", {table_key(N, row_bucket(M), FP32, FP32, False): tuned})
    spy = _Spy(ops._launch_rows.fn)
    monkeypatch.setattr(ops._launch_rows, "fn", spy)
    x, w = rand_x((M, N), FP32, "cpu"), rand_w(N, FP32, "cpu")
    if fused:
        r = rand_x((M, N), FP32, "cpu")
        want = rmsnorm_ref(x + r, w)
        y, _ = ops.fused_add_rms_norm(x, r, w)
    else:
        want = rmsnorm_ref(x, w)
        y = ops.rms_norm(x, w)
    assert [(m["BLOCK_M"], m["BLOCK_N"], m["LOOPED"], m["num_warps"]) for m in spy.meta] == [
        (2, 64, True, 4)]
    assert_close(y, want)


def test_looped_rows_of_two_lengths_get_their_own_kernels(monkeypatch):
    """The looped kernel's bound is the constexpr LOOP_N: two row lengths that Triton
    specializes alike (both divisible by 16) must not share a cached kernel or a plan. Each is
    called twice (the second time through its plan), and once more into a poisoned buffer."""
    dev = "cuda" if ON_GPU else "cpu"
    looped = LaunchConfig(1, 16, 4, True)
    monkeypatch.setattr(ops, "pick_config", lambda *args: looped)
    config.clear_caches()       # no plan made under another config may answer these shapes
    try:
        w = {n: rand_w(n, FP32, dev) for n in (48, 64)}
        for _ in range(2):
            for n in (64, 48):
                x = rand_x((3, n), FP32, dev)
                assert_close(ops.rms_norm(x, w[n]), rmsnorm_ref(x, w[n]))
                buf, out = poisoned(3, n, FP32, dev)
                ops.rms_norm(x, w[n], out=out)
                assert_close(out, rmsnorm_ref(x, w[n]))
                assert_guard_intact(buf, n)
        if ON_GPU:
            cached = {dict(k[2]).get("LOOP_N") for k in ops._launch_rows.kernels}
            assert {48, 64} <= cached, cached
    finally:
        config.clear_caches()


def test_candidates_are_legal_and_start_with_the_heuristic():
    for n in (1000, 4096, 5120, 32768, 65536, 262144):
        for bucket in (1, 64, 16384):
            cands = tune_space.candidates(n, bucket, 2, on_gpu=True)
            assert cands[0] == heuristic_config(n, bucket, 2, True)
            assert len(set(cands)) == len(cands)
            for c in cands[1:]:
                assert c.block_m <= bucket
                if c.splits > 1:
                    assert not c.looped and c.splits == -(-n // c.block_n) and c.block_m == 1
                elif c.looped:
                    assert c.block_n < n and c.block_m == 1
                else:
                    assert c.block_n == config.triton.next_power_of_2(n)
                    assert c.block_m * c.block_n <= tune_space.MAX_TILE_ELEMS
                per_thread = c.block_m * c.block_n / (32 * c.num_warps)
                assert tune_space.MIN_PER_THREAD <= per_thread <= tune_space.MAX_PER_THREAD
    assert all(c.splits == 1 for c in tune_space.candidates(65536, 1, 2, on_gpu=False))


def test_candidates_offer_every_looped_warp_count_the_heuristic_uses():
    # The heuristic loops 18432-wide rows on 32 warps; the tuner must be able to find that
    # config at other sizes too, and to try its neighbours where the heuristic picked it.
    looped = {(c.block_n, c.num_warps) for c in tune_space.candidates(65536, 16384, 2)
              if c.looped}
    assert {(4096, 32), (8192, 32), (8192, 16), (2048, 8)} <= looped
    pick = heuristic_config(18432, 4096, 2, True, 4)
    assert pick.looped and pick.num_warps == 32
    cands = tune_space.candidates(18432, 4096, 2, on_gpu=True, out_itemsize=4)
    assert cands[0] == pick and LaunchConfig(1, 8192, 16, looped=True) in cands


@pytest.mark.skipif(not ops.INTERPRET, reason="runs the candidates through the interpreter")
@pytest.mark.parametrize("pair,fused", [((BF16, BF16), True), ((torch.float16, FP32), False),
                                        ((FP32, FP32), True)], ids=["bf16-add", "fp16-fp32",
                                                                    "fp32-add"])
def test_every_candidate_of_a_small_case_verifies(pair, fused):
    """The tuner's launch gives the reference's answer for every config it would time."""
    case = tune_space.Case(1000, 4, *pair, fused)
    work = tune_space.Workload(case, torch.device("cpu"))
    cands = case.candidates()
    assert len(cands) > 3
    assert {tune_space.cfg_str(c): work.verify(c) for c in cands} == {
        tune_space.cfg_str(c): None for c in cands}


class _FakeKernel:
    """Records how a kernel is compiled (warmup) and launched ([grid](...))."""

    def __init__(self):
        self.warm, self.ran = [], []

    def warmup(self, *args, grid, **meta):
        self.warm.append((args, grid, meta))

    def __getitem__(self, grid):
        return lambda *args, **meta: self.ran.append((args, grid, meta))


_TUNED_CASE = tune_space.Case(3000, 64, BF16, FP32, True)


@pytest.mark.parametrize("case,cfg,launcher", [
    (_TUNED_CASE, LaunchConfig(1, 4096, 8, False), "_launch_rows"),
    (_TUNED_CASE, LaunchConfig(2, 4096, 8, False), "_launch_rows"),
    (_TUNED_CASE, LaunchConfig(1, 2048, 4, False, splits=2), "_launch_split"),
    (tune_space.Case(16384, 512, BF16, BF16, False),
     LaunchConfig(1, config.SPLIT_SLICE_N_16BIT, config.SPLIT_WARPS, False, splits=2),
     "_launch_split_capped"),
], ids=["tile", "two-rows", "split", "split-capped"])
def test_worker_compiles_what_the_tuner_launches(monkeypatch, case, cfg, launcher):
    """Ahead-of-time compiles must hit the kernel the timed launch runs: same kernel, same
    non-tensor arguments and meta-parameters (compile options included), tensors of the same
    dtypes."""
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    names = ("_launch_rows", "_launch_split", "_launch_split_capped")
    fakes = {name: _FakeKernel() for name in names}
    for name, fake in fakes.items():
        monkeypatch.setattr(getattr(ops, name), "fn", fake)
        monkeypatch.setattr(getattr(ops, name), "enabled", False)
    assert tuning._compile_in_worker(case, cfg) is None
    assert all(isinstance(getattr(ops, name).fn, _FakeKernel) for name in names)
    p, w = tune_space.make_inputs(case, "cpu")
    tune_space.launch(p, w, cfg)
    assert [name for name, f in fakes.items() if f.warm] == [launcher]
    (w_args, w_grid, w_meta), = fakes[launcher].warm
    (r_args, r_grid, r_meta), = fakes[launcher].ran
    as_dtypes = [a.dtype if isinstance(a, torch.Tensor) else a for a in r_args]
    assert (list(w_args), w_grid, w_meta) == (as_dtypes, r_grid, r_meta)
    assert ("maxnreg" in r_meta) is (launcher == "_launch_split_capped")


def test_a_capped_and_an_uncapped_split_launch_are_compiled_apart(monkeypatch):
    """The tuner's ahead-of-time compiles count the register cap as part of the kernel."""
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    cfg = LaunchConfig(1, config.SPLIT_SLICE_N_16BIT, config.SPLIT_WARPS, False, splits=8)
    small, large = (tune_space.Case(65536, rows, BF16, BF16, False) for rows in (64, 1024))
    assert tuning._spec(small, cfg) != tuning._spec(large, cfg)
    assert tuning._spec(large, cfg) == tuning._spec(tune_space.Case(65536, 16384, BF16, BF16,
                                                                    False), cfg)


def test_compile_ahead_keys_follow_the_32_register_cap_and_the_row_length(monkeypatch):
    """The tuner's compile-ahead keys tell a capped launch from an uncapped one as ops._launch
    does: fp16 -> fp32 split rows from 64 rows capped at 32, a row length off 16 uncapped."""
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    cfg = LaunchConfig(1, config.SPLIT_SLICE_N, config.SPLIT_WARPS, False, splits=16)
    fp16 = torch.float16
    capped = tune_space.Case(65536, 64, fp16, FP32, False)
    assert tuning._spec(capped, cfg)[-1] == config.SPLIT_WIDE_OUT_MAX_REGISTERS
    assert tuning._spec(tune_space.Case(65536, 32, fp16, FP32, False), cfg)[-1] is None
    assert tuning._spec(tune_space.Case(65528, 64, fp16, FP32, False), cfg)[-1] is None
    assert tuning._spec(tune_space.Case(65536, 64, fp16, FP32, True), cfg)[-1] is None


def test_tune_dry_run_prints_the_plan(capsys):
    assert main(["tune", "--dry-run", "--sizes", "4096,65536", "--rows", "1", "1024",
                 "--pairs", "bf16:bf16", "--fused", "off"]) == 0
    out = capsys.readouterr().out
    assert "plan: 4 cases" in out and "N=   4096" in out and "N=  65536" in out
    assert "total:" in out and "kernels" in out


@pytest.mark.skipif(not ON_GPU, reason="times candidates on a GPU")
def test_tune_case_scrubs_l2_before_each_candidate(monkeypatch):
    """Candidates share one set of inputs: each is timed after an L2 scrub, so none reads what
    a looped one before it left evict_last in L2; every candidate verifies and gets a time."""
    scrubs = []
    real = tune_space.scrub_l2
    monkeypatch.setattr(tune_space, "scrub_l2", lambda: (scrubs.append(1), real()))
    case = tune_space.Case(4096, 64, BF16, BF16, False)
    result = tune_space.tune_case(case, torch.device("cuda"), min_gain=0.02)
    assert result.dropped == {} and result.timed == len(case.candidates()) == len(scrubs)
    assert result.heuristic_us > 0 and result.best_us <= result.heuristic_us


@pytest.mark.skipif(ON_GPU, reason="checks the message a machine without CUDA gets")
def test_tune_without_cuda_exits_2(capsys, cache):
    assert main(["tune", "--sizes", "4096"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not list(cache.iterdir())


@pytest.mark.skipif(ON_GPU, reason="checks the message a machine without CUDA gets")
def test_bench_without_cuda_exits_with_a_message(capsys):
    assert main(["bench", "--quick"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_tuning_launch_matches_fp64_on_any_device(device):
    """tune_space.launch is ops._launch with an explicit config: the oracle's answer."""
    case = tune_space.Case(513, 8, torch.float16, FP32, False)
    p, w = tune_space.make_inputs(case, device)
    tune_space.launch(p, w, LaunchConfig(2, 1024, 4, False))
    assert_close(p.out, rmsnorm_ref(p.x, w))


def test_results_summary_and_speedup(capsys):
    case = tune_space.Case(4096, 64, BF16, BF16, False)
    heur, best = LaunchConfig(1, 4096, 8, False), LaunchConfig(2, 4096, 8, False)
    kept = tune_space.Result(case, heur, 10.0, best, 9.9, None, 5, {})
    tuned = tune_space.Result(case, heur, 10.0, best, 8.0, best, 5, {})
    assert kept.speedup == 1.0 and tuned.speedup == pytest.approx(1.25)
    tuning.print_summary([kept, tuned])
    out = capsys.readouterr().out
    assert "heuristic kept" in out and "1.25x" in out and "geometric mean" in out


@pytest.mark.parametrize("cmd", ["tune", "bench"])
def test_cli_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "--max-seconds" in capsys.readouterr().out


# ---- the heuristic's rules (bench/RESULTS.md, "Launch heuristic") ----------------------------

def _cfg(m, n, w, looped=False, splits=1):
    return LaunchConfig(m, n, w, looped, splits)


@pytest.mark.parametrize("args,want", [
    # From 512 rows, one 16K row a program: 16 warps, not 32 (one program an SM: 89%).
    ((16384, 16384, 2), _cfg(1, 16384, 16)),
    ((16384, 64, 2), _cfg(1, 16384, 32)),               # decode: latency first, one tile
    ((8192, 8, 2), _cfg(1, 8192, 16)),
    # 512-1024 rows moving >= 40 KB a row loop in chunks of 16 KB moved (x read + out written).
    ((16384, 512, 2), _cfg(1, 4096, 16, looped=True)),
    ((12288, 1024, 2), _cfg(1, 4096, 16, looped=True)),
    ((16384, 1024, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    # To a 4-byte output from 24 KB a row (4096 elements) from 512 rows, up to 8192 columns
    # past 1024 rows; not below 4096 columns, nor 512 rows.
    ((8192, 1024, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((5120, 1024, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((5120, 512, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((4096, 1024, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((4096, 512, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((8192, 4096, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((5120, 16384, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((8192, 2048, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((4095, 1024, 2, True, 4), _cfg(1, 4096, 8)),
    ((2048, 2048, 2, True, 4), _cfg(1, 2048, 4)),
    ((5120, 256, 2, True, 4), _cfg(1, 8192, 16)),
    ((16384, 4096, 2, True, 4), _cfg(1, 16384, 16)),
    # 16-bit x to a 4-byte output, one 4096-wide tile, 512-row bucket: 16 warps; 16-bit out: 8.
    ((3072, 512, 2, True, 4), _cfg(1, 4096, 16)),
    ((3072, 1024, 2, True, 4), _cfg(1, 4096, 8)),
    ((4096, 512, 2), _cfg(1, 4096, 8)),
    ((4096, 256, 2, True, 4), _cfg(1, 4096, 8)),
    ((8192, 4096, 4, True, 4), _cfg(1, 8192, 16)),     # fp32 x: 8 elements a thread anyway
    # 16-bit out in the 1024-row bucket past 16 KB a row, up to 24 KB: 4096-element chunks
    # on 8 warps; 512 rows, 4096 and 6145+ columns keep one tile (6145+ on 4 warps, below).
    ((5120, 1024, 2), _cfg(1, 4096, 8, looped=True)),
    ((6144, 1024, 2), _cfg(1, 4096, 8, looped=True)),
    ((4097, 1024, 2), _cfg(1, 4096, 8, looped=True)),
    ((5120, 512, 2), _cfg(1, 8192, 8)),
    ((8192, 512, 2), _cfg(1, 8192, 8)),                 # 32 KB a row: one tile
    ((16384, 512, 4, True, 4), _cfg(1, 16384, 16)),     # fp32 x: not measured, tiles kept
    # 32 elements a thread from 8K: 5120 and 8192 take 8 warps (512-row bucket), 4096 keeps 8.
    ((4096, 1024, 2), _cfg(1, 4096, 8)),
    # From the 2048-row bucket (1025 rows), 16-bit rows of 4096-8192 to a 16-bit output loop
    # in 4096-element chunks on 8 warps; shorter and longer rows and 4-byte x keep their
    # tiles, 4-byte outputs their own loop (2048-element chunks on 16 warps).
    ((5120, 2048, 2), _cfg(1, 4096, 8, looped=True)),
    ((5120, 4096, 2), _cfg(1, 4096, 8, looped=True)),
    ((8192, 16384, 2), _cfg(1, 4096, 8, looped=True)),
    ((4096, 65536, 2), _cfg(1, 4096, 8, looped=True)),
    ((4095, 4096, 2), _cfg(1, 4096, 8)),
    ((3072, 16384, 2), _cfg(1, 4096, 8)),
    ((4096, 2048, 2), _cfg(1, 4096, 8, looped=True)),
    ((2048, 4096, 2), _cfg(2, 2048, 4)),
    ((12288, 4096, 2), _cfg(1, 16384, 16)),
    ((5120, 4096, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    ((8192, 4096, 4), _cfg(1, 8192, 16)),
    # Rows of 512-2048: packed several a program only from 4096 rows; 256 and shorter always.
    ((2048, 8, 2), _cfg(1, 2048, 4)),
    ((2048, 16384, 2), _cfg(2, 2048, 4)),
    ((1024, 4096, 2), _cfg(4, 1024, 4)),
    ((896, 1024, 2), _cfg(1, 1024, 4)),
    # ... on 8 warps to a 4-byte output, up to 1024 rows
    ((896, 1024, 2, True, 4), _cfg(1, 1024, 8)),
    ((768, 64, 2, True, 4), _cfg(1, 1024, 8)),
    ((896, 2048, 2, True, 4), _cfg(1, 1024, 4)),
    ((513, 1, 2, True, 4), _cfg(1, 1024, 8)),
    ((512, 1, 2, True, 4), _cfg(1, 512, 4)),
    ((512, 512, 2, True, 4), _cfg(1, 512, 4)),
    ((896, 1024, 4, True, 4), _cfg(1, 1024, 4)),
    ((768, 64, 2), _cfg(1, 1024, 4)),
    ((512, 512, 2), _cfg(1, 512, 4)),
    ((512, 4096, 2), _cfg(8, 512, 4)),
    ((256, 64, 2), _cfg(32, 256, 4)),
    ((128, 1024, 2), _cfg(64, 128, 4)),
    # A 16-bit row filling at most 9/16 of a 16K or 32K tile loops from 512 rows; fuller rows
    # of a 16K tile, decode-sized calls and 4-byte x keep the tile.
    ((18432, 512, 2), _cfg(1, 4096, 16, looped=True)),
    ((18432, 1024, 2), _cfg(1, 4096, 16, looped=True)),
    ((9216, 4096, 2), _cfg(1, 4096, 16, looped=True)),
    ((8193, 2048, 2), _cfg(1, 4096, 16, looped=True)),
    ((9216, 4096, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    # ... and a 32K tile's rows on 32 warps: to a 4-byte output from 512 rows, to 16 bits from
    # 2048 rows.
    ((18432, 2048, 2), _cfg(1, 8192, 32, looped=True)),
    ((18432, 16384, 2), _cfg(1, 8192, 32, looped=True)),
    ((16385, 4096, 2), _cfg(1, 8192, 32, looped=True)),
    ((18432, 512, 2, True, 4), _cfg(1, 4096, 32, looped=True)),
    ((18432, 4096, 2, True, 4), _cfg(1, 4096, 32, looped=True)),
    ((18432, 256, 2, True, 4), _cfg(1, 32768, 32)),
    # Other rows of the 32K tile loop the same way past decode-sized calls; decode-sized calls
    # keep it.
    ((18433, 4096, 2), _cfg(1, 8192, 32, looped=True)),
    ((24576, 512, 2), _cfg(1, 8192, 32, looped=True)),
    ((24576, 16384, 2), _cfg(1, 8192, 32, looped=True)),
    ((24576, 512, 2, True, 4), _cfg(1, 4096, 32, looped=True)),
    ((24577, 4096, 2), _cfg(1, 8192, 32, looped=True)),
    ((32768, 512, 2), _cfg(1, 8192, 32, looped=True)),
    ((32768, 16384, 2, True, 4), _cfg(1, 4096, 32, looped=True)),
    ((32768, 256, 2), _cfg(1, 32768, 32)),
    ((24576, 256, 2), _cfg(1, 32768, 32)),
    ((24576, 256, 2, True, 4), _cfg(1, 32768, 32)),
    ((9217, 4096, 2), _cfg(1, 16384, 16)),
    ((18432, 256, 2), _cfg(1, 32768, 32)),
    ((9216, 4096, 4, True, 4), _cfg(1, 16384, 16)),
    # A 4-byte normalized tensor (the fused add's fp32 residual) at 32K: split on a GPU up to
    # 512 rows, else looped in 16K chunks; 16-bit loops in 8K chunks on 32 warps.
    ((32768, 512, 4, True, 2), _cfg(1, 4096, 4, splits=8)),
    ((32768, 512, 4, False, 2), _cfg(1, 16384, 16, looped=True)),
    ((32768, 4096, 4, True, 2), _cfg(1, 16384, 16, looped=True)),
    ((32768, 4096, 2), _cfg(1, 8192, 32, looped=True)),
    # Long rows: up to 512K elements a call as many slices as allowed, none under 2048, on 8
    # warps; more: 16-bit to 16-bit 8192-element slices on 8 warps, else 4096-8192 slices on 8
    # warps to a 4-byte output and 4 to a 16-bit one.
    ((65536, 1, 2), _cfg(1, 2048, 8, splits=32)),
    ((65536, 8, 2), _cfg(1, 2048, 8, splits=32)),
    ((262144, 2, 2, True, 4), _cfg(1, 4096, 8, splits=64)),
    ((262144, 8, 2, True, 4), _cfg(1, 8192, 16, splits=32)),
    ((262144, 4, 2), _cfg(1, 8192, 8, splits=32)),
    ((262144, 256, 2, True, 4), _cfg(1, 8192, 16, splits=32)),   # 16-bit x to 4 bytes
    ((131072, 256, 2, True, 4), _cfg(1, 4096, 8, splits=32)),
    ((262144, 256, 4), _cfg(1, 8192, 8, splits=32)),                # 4-byte x keeps 8
    ((65536, 1024, 2), _cfg(1, 8192, 8, splits=8)),
    # From 2048 rows a 16-bit row of 49152-65536 to 16 bits is held by one program on 32 warps,
    # unless the call has a bias, accumulates or clamps (plain=False).
    ((65536, 2048, 2), _cfg(1, 65536, 32)),
    ((49152, 4096, 2), _cfg(1, 65536, 32)),
    ((49151, 4096, 2), _cfg(1, 8192, 8, splits=6)),
    ((65536, 2048, 2, True, 2, False), _cfg(1, 8192, 8, splits=8)),
    ((65536, 2048, 2, True, 4), _cfg(1, 4096, 8, splits=16)),
    ((65536, 1024, 2, True, 4), _cfg(1, 4096, 8, splits=16)),
    ((65536, 1024, 4, True, 2), _cfg(1, 4096, 4, splits=16)),
    ((262144, 1024, 4, True, 2), _cfg(1, 8192, 4, splits=32)),
    ((1 << 20, 1, 2), _cfg(1, 16384, 8, splits=64)),
    ((131072, 4, 2), _cfg(1, 4096, 8, splits=32)),      # 512K elements: still a small call
    ((131072, 4, 2, True, 4), _cfg(1, 2048, 8, splits=64)),     # 4-byte outputs: 64 slices
    ((131072, 1, 2), _cfg(1, 4096, 8, splits=32)),      # at most 32 slices a row, 16 bits out,
    ((262144, 1, 2), _cfg(1, 4096, 8, splits=64)),      # in slices no wider than 4096
    ((262144, 1, 2, True, 4), _cfg(1, 4096, 8, splits=64)),
    ((40000, 8, 2), _cfg(1, 2048, 8, splits=20)),
    ((131072, 8, 2), _cfg(1, 8192, 8, splits=16)),
    ((65537, 8, 2), _cfg(1, 8192, 8, splits=9)),        # one element past 512K
    ((65536, 1, 4), _cfg(1, 2048, 8, splits=32)),       # a 4-byte x (or residual) alike
    # 16-bit x to a 4-byte output, 5121-8192 columns, up to 32 rows: 4096-element chunks on 32
    # warps; 5120 columns, 64 rows and a 16-bit output keep the 8192 tile.
    ((8192, 1, 2, True, 4), _cfg(1, 4096, 32, looped=True)),
    ((5121, 32, 2, True, 4), _cfg(1, 4096, 32, looped=True)),
    ((5120, 8, 2, True, 4), _cfg(1, 8192, 16)),
    ((8192, 64, 2, True, 4), _cfg(1, 8192, 16)),
    ((8192, 8, 2), _cfg(1, 8192, 16)),
    # A 4-byte x (or the fused add's fp32 residual) in a decode-sized call: 16 elements a
    # thread, as 16-bit x; past 256 rows 8 (a 4096 tile on 16 warps).
    ((8192, 8, 4), _cfg(1, 8192, 16)),
    ((5120, 1, 4), _cfg(1, 8192, 16)),
    ((4096, 256, 4), _cfg(1, 4096, 8)),
    ((2048, 64, 4, True, 2), _cfg(1, 2048, 4)),
    ((16384, 1, 4), _cfg(1, 16384, 32)),
    ((4096, 512, 4), _cfg(1, 4096, 16)),
    # 16-bit rows of 6145-8192 to 16 bits in the 1024-row bucket: the 8192 tile on 4 warps;
    # 512 rows, shorter rows (which loop) and fp32 outputs keep their configs; 2048 rows loop.
    ((7168, 1024, 2), _cfg(1, 8192, 4)),
    ((6145, 1024, 2), _cfg(1, 8192, 4)),
    ((8192, 1024, 2), _cfg(1, 8192, 4)),
    ((8192, 512, 2), _cfg(1, 8192, 8)),
    ((8192, 2048, 2), _cfg(1, 4096, 8, looped=True)),
    ((8192, 1024, 2, True, 4), _cfg(1, 2048, 16, looped=True)),
    # 16-bit rows of 1025-2048 to a 4-byte output in the 512- and 1024-row buckets: 8 warps;
    # 2048 rows, decode-sized calls and 16-bit outputs keep 4.
    ((2048, 1024, 2, True, 4), _cfg(1, 2048, 8)),
    ((1025, 512, 2, True, 4), _cfg(1, 2048, 8)),
    ((2048, 2048, 2, True, 4), _cfg(1, 2048, 4)),
    ((2048, 256, 2, True, 4), _cfg(1, 2048, 4)),
    ((2048, 1024, 2), _cfg(1, 2048, 4)),
])
def test_heuristic_rules(monkeypatch, args, want):
    monkeypatch.setattr(config, "INTERPRET", False)     # the rules as a GPU process sees them
    monkeypatch.setattr(config, "HELD_ROW_HERE", True)  # ... with a Triton that holds rows
    assert heuristic_config(*args) == want


@pytest.mark.parametrize("cfg,n_rows,want", [
    (_cfg(1, 8192, 16), 1, True),                       # decode: overlap the weight with x
    (_cfg(1, 4096, 8), 256, True),
    (_cfg(1, 4096, 8), 1024, False),                    # mid-sized 4K tiles: after the sum
    (_cfg(1, 8192, 8), 4096, True),                     # wide tiles: first
    (_cfg(1, 1024, 4), 512, True),                      # one 1024-tile row a program,
    (_cfg(1, 1024, 8), 1024, True),                     # up to 1024 rows
    (_cfg(1, 512, 4), 1000, False),                     # 512 tiles: not timed, late
    (_cfg(1, 1024, 4), 1025, False),                    # larger calls: within noise at 2048, late
    (_cfg(4, 1024, 4), 1024, False),                    # packed rows keep the late fetch
    (_cfg(1, 2048, 4), 1024, False),
    (_cfg(1, 4096, 16, looped=True), 1, False),         # the looped path has no such choice
    (_cfg(1, 2048, 8, splits=32), 1, False),            # nor the split-row kernel
])
def test_weight_fetch_rule(cfg, n_rows, want):
    assert config.preload_weight(cfg, n_rows, BF16, 2, False) is want


_LATE_TILE = _cfg(1, *config.LATE_WEIGHT_TILE)


@pytest.mark.parametrize("x_dtype,out_itemsize,fused,cfg,here,want", [
    (BF16, 4, False, _LATE_TILE, True, False),          # spilled with the weight first
    (BF16, 4, False, _LATE_TILE, False, True),          # another Triton: no spill, first
    (torch.float16, 4, False, _LATE_TILE, True, True),  # fp16: no spill; late lost
    (BF16, 2, False, _LATE_TILE, True, True),           # a 16-bit output: no spill
    (BF16, 4, True, _LATE_TILE, True, True),            # the fused add: no spill
    (BF16, 4, False, _cfg(1, 16384, 32), True, True),   # the 32-warp tile: no spill
])
def test_weight_fetch_late_where_fetching_first_spilled(monkeypatch, x_dtype, out_itemsize,
                                                        fused, cfg, here, want):
    monkeypatch.setattr(config, "LATE_WEIGHT_HERE", here)
    assert config.preload_weight(cfg, 4096, x_dtype, out_itemsize, fused) is want


def test_the_heuristics_bf16_tiles_to_fp32_fetch_late(monkeypatch):
    """The late-fetch rule matches the tile the heuristic picks for the rows it was measured on."""
    monkeypatch.setattr(config, "INTERPRET", False)
    monkeypatch.setattr(config, "LATE_WEIGHT_HERE", True)
    for n_rows, n_cols in ((2048, 16384), (16384, 16384), (4096, 12288)):
        cfg = heuristic_config(n_cols, config.row_bucket(n_rows), 2, True, 4)
        assert (cfg.block_n, cfg.num_warps) == config.LATE_WEIGHT_TILE, (n_rows, n_cols, cfg)
        assert not config.preload_weight(cfg, n_rows, BF16, 4, False)


@pytest.mark.parametrize("n_rows,n_cols", [(1, 18433), (64, 24576), (256, 24576), (1, 32768),
                                            (200, 24577), (256, 32768)])
@pytest.mark.parametrize("x_dtype,out_itemsize,fused", [
    (BF16, 2, False), (torch.float16, 4, False), (BF16, 2, True)])
def test_wide_params_in_the_widest_tiles_are_fetched_late(monkeypatch, n_rows, n_cols,
                                                         x_dtype, out_itemsize, fused):
    """The heuristic's single tile for 16385-32768 columns (32 warps, 64 registers a thread)
    spilled with 4 or more bytes a column of weight and bias fetched first, on every Triton; a
    16-bit weight alone keeps the early fetch, and so do narrower tiles, packed ones too."""
    monkeypatch.setattr(config, "INTERPRET", False)
    cfg = heuristic_config(n_cols, config.row_bucket(n_rows), 2, True, out_itemsize)
    assert (cfg.block_n, cfg.looped, cfg.splits) == (config.LATE_PARAMS_TILE_N, False, 1)
    for param_bytes, early in ((4, False), (6, False), (8, False), (2, True), (0, True)):
        assert config.preload_weight(cfg, n_rows, x_dtype, out_itemsize, fused, 0,
                                     param_bytes) is early, param_bytes
    for narrower in (_cfg(1, 16384, 32), _cfg(2, 16384, 32), _cfg(4, 8192, 32)):
        assert config.preload_weight(narrower, n_rows, x_dtype, out_itemsize, fused, 0, 8)


_SPLIT_16 = _cfg(1, config.SPLIT_SLICE_N_16BIT, config.SPLIT_WARPS, splits=8)


_SPLIT_WIDE, _SPLIT_WIDE_LONG = (_cfg(1, n, w, splits=16)
                                 for n, w in config.SPLIT_WIDE_OUT_CAPPED_FORMS)
_CAP, _CAP_WIDE = config.SPLIT_MAX_REGISTERS, config.SPLIT_WIDE_OUT_MAX_REGISTERS


FP16 = torch.float16


@pytest.mark.parametrize("cfg,n_rows,x_dtype,out_itemsize,res_dtype,w_dtype,plain,want", [
    (_SPLIT_16, 512, BF16, 2, BF16, BF16, True, _CAP),      # 16-bit, from 512 rows
    (_SPLIT_16, 4096, FP16, 2, None, None, True, _CAP),     # (None: the weight in x's dtype)
    (_SPLIT_16, 511, BF16, 2, BF16, BF16, True, None),      # smaller calls lost up to 1.8%
    (_SPLIT_16, 300, BF16, 2, None, BF16, True, None),
    (_SPLIT_16, 512, BF16, 4, BF16, BF16, True, None),      # a 4-byte output: 48 lost
    (_SPLIT_16, 512, BF16, 2, FP32, BF16, True, None),      # a 4-byte residual: not measured
    (_SPLIT_16, 512, FP32, 2, None, FP32, True, None),      # fp32 x: not measured
    (_SPLIT_16, 512, BF16, 2, None, BF16, False, None),     # a bias or accumulate: not measured
    (_SPLIT_16, 512, BF16, 2, None, FP32, True, None),      # an fp32 weight spilled capped
    (_SPLIT_16, 512, BF16, 2, BF16, FP32, True, None),
    (_SPLIT_16, 512, FP16, 2, BF16, FP16, True, None),      # a residual of another dtype too
    (_cfg(1, 4096, 8, splits=16), 512, BF16, 2, None, BF16, True, None),   # other slices or
    (_cfg(1, 4096, 4, splits=16), 512, BF16, 2, None, BF16, True, None),   # warps: not measured
    (_cfg(1, 8192, 16, splits=8), 512, BF16, 2, None, BF16, True, None),
    (_cfg(1, 8192, 8), 512, BF16, 2, None, BF16, True, None),  # not split
    # fp16 to a 4-byte output: 34-35 registers uncapped, 32 capped
    (_SPLIT_WIDE, 64, FP16, 4, None, FP16, True, _CAP_WIDE),
    (_SPLIT_WIDE_LONG, 4096, FP16, 4, None, FP16, True, _CAP_WIDE),
    (_SPLIT_WIDE, 63, FP16, 4, None, FP16, True, None),       # not measured under 64 rows
    (_SPLIT_WIDE, 512, BF16, 4, None, BF16, True, None),      # bf16: 32 already, level
    (_SPLIT_WIDE, 512, FP16, 4, None, FP16, False, None),     # a bias spills capped
    (_SPLIT_WIDE, 512, FP16, 4, None, FP32, True, None),      # an fp32 weight spills capped
    (_SPLIT_WIDE, 512, FP16, 4, FP16, FP16, True, None),      # the fused add: not taken
    (_SPLIT_WIDE, 512, FP16, 2, None, FP16, True, None),      # a 16-bit output
    (_cfg(1, 2048, 8, splits=32), 512, FP16, 4, None, FP16, True, None),  # other slices
    # slices a row not a power of two: spilled capped in some forms, none measured
    (_cfg(1, config.SPLIT_SLICE_N_16BIT, config.SPLIT_WARPS, splits=6), 512, BF16, 2, BF16,
     BF16, True, None),
    (_cfg(1, config.SPLIT_SLICE_N_16BIT, config.SPLIT_WARPS, splits=6), 512, BF16, 2, None,
     BF16, True, None),
    (_cfg(1, 8192, 16, splits=48), 512, FP16, 4, None, FP16, True, None),
])
def test_register_cap_rule(monkeypatch, cfg, n_rows, x_dtype, out_itemsize, res_dtype, w_dtype,
                           plain, want):
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    assert config.split_register_cap(cfg, n_rows, x_dtype, out_itemsize, res_dtype, w_dtype,
                                     plain=plain) == want


@pytest.mark.parametrize("major,want", [(9, True), (8, False), (10, False), (12, False)])
def test_register_rules_only_on_the_architecture_they_were_read_on(monkeypatch, major, want):
    """Caps and the late weight were read off sm_90 compiles; other GPUs spilled under caps."""
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    monkeypatch.setattr(config, "LATE_WEIGHT_HERE", True)
    monkeypatch.setattr(config.torch.cuda, "get_device_capability", lambda i: (major, 0))
    config.capability_major.cache_clear()
    try:
        assert config.register_rules_on(0) is want
        assert (config.split_register_cap(_SPLIT_16, 512, BF16, 2, device_index=0)
                == _CAP) is want
        assert (config.split_register_cap(_SPLIT_WIDE, 512, FP16, 4, device_index=0)
                == _CAP_WIDE) is want
        assert config.preload_weight(_LATE_TILE, 4096, BF16, 4, False, 0) is not want
        assert config.register_rules_on(-1)         # no GPU to ask: the rules' own forms
    finally:
        config.capability_major.cache_clear()


def test_no_register_cap_with_another_triton_or_backend(monkeypatch):
    """The cap was measured with one Triton's compiler on CUDA; elsewhere nothing is capped."""
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", False)
    assert config.split_register_cap(_SPLIT_16, 4096, BF16, 2) is None
    assert config.split_register_cap(_SPLIT_WIDE, 4096, torch.float16, 4) is None
    assert config.SPLIT_CAP_TRITON == (3, 6)
    for version, here in (("3.6.0", True), ("3.6.1+git1234", True), ("3.9.0", False),
                          ("4.0", False), ("main", False)):
        monkeypatch.setattr(config.triton, "__version__", version)
        assert (config._triton_minor() == config.SPLIT_CAP_TRITON) is here, version


def test_the_heuristics_long_16bit_rows_take_the_capped_form(monkeypatch):
    """The rule matches what the heuristic picks on a GPU for the rows it was measured on."""
    monkeypatch.setattr(config, "INTERPRET", False)
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    for n_rows, n_cols in ((512, 262144), (1024, 65536), (1024, 131072)):
        cfg = heuristic_config(n_cols, config.row_bucket(n_rows), 2, True, 2)
        assert config.split_register_cap(cfg, n_rows, BF16, 2) == _CAP, (n_rows, n_cols, cfg)
    cfg = heuristic_config(65536, 256, 2, True, 2)
    assert cfg.splits > 1 and config.split_register_cap(cfg, 256, BF16, 2) is None


def test_the_heuristics_fp16_rows_to_fp32_take_the_32_register_form(monkeypatch):
    """The fp16 -> fp32 cap covers the split rows the heuristic picks for the rows it was
    measured on (64-4096 x 65536-262144)."""
    monkeypatch.setattr(config, "INTERPRET", False)
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    for n_rows, n_cols in ((64, 262144), (512, 65536), (2048, 65536), (4096, 65536),
                           (1024, 131072), (1024, 262144)):
        cfg = heuristic_config(n_cols, config.row_bucket(n_rows), 2, True, 4)
        assert config.split_register_cap(cfg, n_rows, torch.float16, 4) == _CAP_WIDE, \
            (n_rows, n_cols, cfg)


def test_heuristic_configs_are_legal(monkeypatch):
    """Every answer covers its row exactly once within what the kernels compile."""
    for interpret in (False, True):
        monkeypatch.setattr(config, "INTERPRET", interpret)
        for n in (1, 100, 384, 896, 1000, 2048, 3000, 5120, 8192, 8193, 9216, 10240, 12288,
                  16384, 18432, 20000, 32768, 65536, 131072, 262144, 1 << 21, 1 << 24):
            for bucket in (1, 8, 64, 256, 512, 1024, 4096, 65536):
                for x_size, out_size in ((2, 2), (2, 4), (4, 4), (4, 2)):
                    for on_gpu in (False, True):
                        cfg = heuristic_config(n, bucket, x_size, on_gpu, out_size)
                        config.check_config(n, cfg)
                        assert cfg.block_m <= max(1, bucket)


def test_pick_config_uses_the_residual_dtype(cache):
    """The fused add takes the config of the norm of its residual (an fp32 residual at 32K
    loops), tuned entry included: the plain norm's entry of the residual's dtype, so a bf16
    entry is not applied to an fp32 residual; a residual of unknown dtype is taken to be x's."""
    args = (32768, 256, BF16, BF16, True, -1)
    assert pick_config(*args, FP32) == pick_config(32768, 256, FP32, BF16, False, -1)
    assert pick_config(*args, FP32).looped
    assert not pick_config(*args, BF16).looped and pick_config(*args) == pick_config(*args, BF16)
    tuned = LaunchConfig(1, 32768, 16, False)
    save_table(cache_path("cpu"), "cpu", {table_key(32768, 256, BF16, BF16, False): tuned})
    assert pick_config(*args, BF16) == tuned and pick_config(*args) == tuned
    assert pick_config(*args, FP32) == heuristic_config(32768, 256, 4, False, 2)


def test_fused_add_takes_the_config_of_the_norm_of_its_residual(cache):
    """Without a tuned table, every fused-add config is the one the unfused norm of the
    residual gets, whatever the dtypes: the two are equal bit for bit (DESIGN.md)."""
    dtypes = (BF16, torch.float16, FP32)
    for n in (896, 1000, 2048, 4096, 5120, 8192, 9216, 10240, 16384, 18432, 32768, 65536):
        for bucket in (1, 64, 256, 512, 1024, 4096):
            for x in dtypes:
                for res in dtypes:
                    for out in dtypes:
                        assert pick_config(n, bucket, x, out, True, -1, res) == \
                            pick_config(n, bucket, res, out, False, -1), (n, bucket, x, res, out)


@pytest.mark.parametrize("shape,x_dtype,res_dtype", [
    pytest.param((300, 10240), BF16, BF16, marks=pytest.mark.skipif(
        not ON_GPU, reason="300 rows of 10K take ~35 s in the interpreter; "
        "test_fused_add_takes_the_config_of_the_norm_of_its_residual checks the choice")),
    ((4, 32768), BF16, FP32),       # a 4-byte residual at 32K: looped, as the norm of fp32
    ((3, 4096), BF16, FP32),        # warps follow the residual's size, as the unfused norm's
    # 16-bit rows of 18K loop (a 9/16-full tile), a 4-byte residual's norm does not
    pytest.param((300, 18432), BF16, FP32, marks=pytest.mark.skipif(
        not ON_GPU, reason="300 rows of 18K take ~40 s in the interpreter")),
], ids=["loop-10k", "fp32-residual-32k", "fp32-residual-4k", "loop-sparse-32k"])
def test_fused_add_equals_unfused_where_the_rules_differ_by_dtype(device, shape, x_dtype,
                                                                   res_dtype):
    """Where a rule depends on the normalized tensor, the fused add picks what the norm of its
    updated residual picks: equal bit for bit (DESIGN.md)."""
    x, w = rand_x(shape, x_dtype, device), rand_w(shape[1], x_dtype, device)
    r = rand_x(shape, res_dtype, device)
    y, _ = ops.fused_add_rms_norm(x, r, w)
    torch.testing.assert_close(y, ops.rms_norm(r.clone(), w, out_dtype=x_dtype), rtol=0, atol=0)
    assert_close(y, rmsnorm_ref(r, w))


_GPU_ONLY = pytest.mark.skipif(not ON_GPU, reason="hundreds of rows of 9K-18K take 15-40 s in "
                               "the interpreter; the looped kernel itself runs on the CPU in "
                               "test_looped_chunks_with_another_output_dtype")


@pytest.mark.parametrize("shape,x_dtype,out_dtype,res_dtype", [
    pytest.param((512, 16384), BF16, FP32, None, marks=_GPU_ONLY),
    ((3, 32768), BF16, BF16, FP32),             # a 4-byte residual at 32K
    pytest.param((300, 9216), BF16, BF16, None, marks=_GPU_ONLY),      # a sparse 16K tile loops
    pytest.param((600, 18432), torch.float16, FP32, None, marks=_GPU_ONLY),
    pytest.param((300, 18432), BF16, BF16, BF16, marks=_GPU_ONLY),
    pytest.param((2048, 18432), BF16, BF16, BF16, marks=_GPU_ONLY),   # 32 warps, 8K chunks
    pytest.param((1500, 18000), BF16, FP32, BF16, marks=_GPU_ONLY),   # 32 warps, 4K chunks
    ((40, 896), BF16, BF16, None),              # short rows: one a program below 4096 rows
    ((40, 896), BF16, FP32, None),              # ... on 8 warps to fp32
    ((30, 1000), torch.float16, FP32, torch.float16),
    ((70, 512), torch.float16, FP32, FP32),
    ((8, 6144), BF16, FP32, None),              # decode rows to fp32: 4K chunks on 32 warps
    ((5, 8000), torch.float16, FP32, torch.float16),
    ((4, 5120), BF16, BF16, FP32),              # a 4-byte residual at decode size: 16 warps
    ((2, 4000), FP32, BF16, None),              # ... an fp32 x: 8 warps
    pytest.param((600, 7000), BF16, BF16, BF16, marks=_GPU_ONLY),      # 8K tile, 1K rows: 4 warps
    pytest.param((1000, 8192), torch.float16, torch.float16, None, marks=_GPU_ONLY),
    pytest.param((2048, 5000), BF16, BF16, None, marks=_GPU_ONLY),     # 4K chunks on 8 warps
    pytest.param((3000, 8192), torch.float16, torch.float16, torch.float16, marks=_GPU_ONLY),
    pytest.param((300, 30000), BF16, BF16, None, marks=_GPU_ONLY),     # a full 32K tile loops
    pytest.param((600, 32768), BF16, FP32, BF16, marks=_GPU_ONLY),     # ... to fp32 in 4K chunks
], ids=["loop-16k-fp32-out", "add-fp32-residual-32k", "loop-sparse-16k", "loop-sparse-32k-fp32",
        "add-loop-sparse-32k", "add-loop-sparse-32k-wide", "add-loop-sparse-32k-wide-fp32",
        "unpacked-896", "unpacked-896-fp32", "add-unpacked-1000-fp32", "add-unpacked-512",
        "decode-loop-6k-fp32", "add-decode-loop-8k-fp32",
        "add-fp32-residual-decode", "fp32-x-decode", "add-tile-8k-1k-rows-4-warps",
        "tile-8k-1k-rows-4-warps", "loop-large-5k", "add-loop-large-8k", "loop-full-32k",
        "add-loop-full-32k-fp32"])
def test_new_heuristic_paths_match_fp64(device, shape, x_dtype, out_dtype, res_dtype):
    x, w = rand_x(shape, x_dtype, device), rand_w(shape[1], x_dtype, device)
    out = torch.full(shape, float("nan"), dtype=out_dtype, device=device)
    if res_dtype is None:
        ops.rms_norm(x, w, out=out)
        want = rmsnorm_ref(x, w)
    else:
        r = rand_x(shape, res_dtype, device)
        s = (x.double() + r.double()).to(res_dtype)
        ops.fused_add_rms_norm(x, r, w, out=out)
        assert torch.equal(r, s)
        want = rmsnorm_ref(s, w)
    assert_close(out, want)


@pytest.mark.parametrize("cfg", [_cfg(1, 2048, 16, looped=True), _cfg(2, 4096, 8, looped=True),
                                 _cfg(1, 4096, 32, looped=True)],
                         ids=tune_space.cfg_str)
def test_looped_chunks_with_another_output_dtype(device, cfg):
    """The looped kernel (eviction hints on both passes) with fp32 out, as the 16K rule runs it."""
    case = tune_space.Case(16384, 4, BF16, FP32, False)
    p, w = tune_space.make_inputs(case, device)
    p.out.fill_(float("nan"))
    tune_space.launch(p, w, cfg)
    assert_close(p.out, rmsnorm_ref(p.x, w))


def test_a_fused_table_entry_does_not_part_the_fused_add_from_the_norm(cache):
    """An entry under the fused key (older tables have them) is not used: the fused add and the
    norm of its residual must take one config."""
    save_table(cache_path("cpu"), "cpu",
               {table_key(300, row_bucket(5), FP32, FP32, True): LaunchConfig(2, 64, 4, True)})
    assert pick_config(300, row_bucket(5), FP32, FP32, True, -1) == \
        pick_config(300, row_bucket(5), FP32, FP32, False, -1) == heuristic_config(300, 8, 4, False)


def test_split_configs_give_way_where_they_cannot_run(cache, monkeypatch):
    """A split row's programs wait for each other: never on the CPU or in the interpreter (a
    tuned entry included), and on a GPU only if every program of a row can be resident."""
    split = LaunchConfig(1, 4096, 4, False, splits=16)
    looped = heuristic_config(65536, 64, 2, False)
    assert looped.looped and looped.splits == 1
    save_table(cache_path("cpu"), "cpu", {table_key(65536, 64, BF16, BF16, False): split})
    assert pick_config(65536, 64, BF16, BF16, False, -1) == looped
    assert not config.runnable_here(split, -1)
    monkeypatch.setattr(config, "INTERPRET", False)
    monkeypatch.setattr(config, "device_name", lambda i: "cpu")
    for sms, want in ((132, True), (16, True), (15, False)):
        monkeypatch.setattr(config, "sm_count", lambda i, sms=sms: sms)
        assert config.runnable_here(split, 0) is want
    monkeypatch.setattr(config, "sm_count", lambda i: 14)        # an A100 MIG 1g slice
    config.pick_config.cache_clear()
    assert pick_config(65536, 64, BF16, BF16, False, 0) == looped
    heur = heuristic_config(1 << 20, 64, 2, True)
    assert heur.splits == 64
    assert pick_config(1 << 20, 64, BF16, BF16, False, 0) == heuristic_config(1 << 20, 64, 2,
                                                                               False)


def test_the_cache_dir_needs_no_home_when_the_variable_is_set(monkeypatch, tmp_path):
    monkeypatch.setenv("RMSNORM_TRITON_CACHE", str(tmp_path))
    monkeypatch.setattr(config.Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(
        RuntimeError("Could not determine home directory."))))
    assert config.cache_dir() == tmp_path
    monkeypatch.delenv("RMSNORM_TRITON_CACHE")
    config.clear_caches()
    with pytest.warns(UserWarning, match="no tuned-config cache"):
        assert config.tuned_table("cpu") == {}
    config.clear_caches()


def test_an_unreadable_cache_file_is_ignored_with_a_warning(cache):
    cache_path("cpu").mkdir()           # a directory where the JSON file should be
    with pytest.warns(UserWarning, match="ignoring tuned-config cache"):
        assert load_table(cache_path("cpu"), "cpu") == {}


@pytest.mark.parametrize("field,value", [("num_warps", True), ("num_warps", 4.0),
                                         ("splits", True)])
def test_check_config_takes_ints_only(field, value):
    cfg = LaunchConfig(1, 1024, 4, False)
    with pytest.raises(ValueError, match="not a launch config"):
        check_config(1000, dataclasses.replace(cfg, **{field: value}))


def test_the_tuner_writes_one_entry_for_the_norm_and_the_fused_add():
    plain = tune_space.Case(4096, 64, BF16, BF16, False)
    fused = tune_space.Case(4096, 64, BF16, BF16, True)
    assert fused.key == plain.key == table_key(4096, 64, BF16, BF16, False)


def test_tuner_candidates_keep_within_the_split_limit():
    for n in (65536, 262144, 1 << 20):
        cands = tune_space.candidates(n, 1, 2, True, 2)
        assert any(c.splits > 1 for c in cands)
        for c in cands:
            check_config(n, c)


@pytest.mark.parametrize("fused_first", [False, True], ids=["norm-first", "fused-first"])
def test_run_tune_writes_the_plain_norms_pick_for_both_forms(cache, monkeypatch, capsys,
                                                            fused_first):
    """The norm and the fused add share an entry: where both are tuned, the norm's pick is
    written, whichever form comes first; the fused add's is reported only."""
    norm_pick, fused_pick = LaunchConfig(1, 4096, 8, False), LaunchConfig(1, 4096, 16, False)

    def fake_tune_case(case, device, min_gain):
        chosen = fused_pick if case.fused else norm_pick
        return tune_space.Result(case, heuristic_config(4096, 64, 2), 10.0, chosen, 8.0,
                                 chosen, 3, {})

    def plan(args):
        cases = real_plan(args)
        return sorted(cases, key=lambda c: c.fused != fused_first)

    real_plan = tuning.plan_cases
    monkeypatch.setattr(tuning, "plan_cases", plan)
    monkeypatch.setattr(tuning, "tune_case", fake_tune_case)
    monkeypatch.setattr(tuning.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tuning.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(tuning, "device_name", lambda i: "cpu")
    assert main(["tune", "--sizes", "4096", "--rows", "64", "--pairs", "bf16:bf16",
                 "--fused", "both", "--workers", "1"]) == 0
    assert load_table(cache_path("cpu"), "cpu") == {table_key(4096, 64, BF16, BF16, False):
                                                    norm_pick}
    assert "reported; the norm's entry applies" in capsys.readouterr().out
