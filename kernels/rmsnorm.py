"""RMSNorm forward, one kernel family for every feature.

    h   = fp32(x)                   (or fp32(round(res, x + residual)) with the fused add)
    r   = 1 / sqrt(sum(h*h) / N + eps)
    y   = h * r * (fp32(w) + WEIGHT_OFFSET) [+ fp32(b)]
    out = round(out, y)             (or round(out, fp32(out) + y) when ACCUMULATE)

Features are constexpr flags, so a disabled one costs no instruction. Three ways to cover a row:
- rmsnorm_fwd_kernel, LOOPED=False: a program owns BLOCK_M whole rows, each read once and held
  in registers (rows up to 32K elements; with HOLD_X, a 64K-element row of 16-bit values held
  as loaded, two to a register).
- rmsnorm_fwd_kernel, LOOPED=True: the row is streamed twice in BLOCK_N chunks, once for the sum
  of squares and once to normalize (the second read from L2), its length LOOP_N a constant.
  Never spills; the interpreter's path for long rows, and the GPU's for wide rows in a single
  wave of 512-1024 rows.
- rmsnorm_fwd_split_kernel: SPLITS programs share a row, each holding one BLOCK_N slice in
  registers; they publish partial sums and wait for each other, so x is read once at any N.
- rmsnorm_fwd_fanout_kernel: rmsnorm_fwd_kernel's single-tile or looped path writing COPIES
  outputs, each with its own weight and bias (tensor parallelism: one launch on the source GPU
  fills every GPU's copy over peer access).

An operand a launch does not use (the residual, weight or bias its flags leave out, the row
count of a kernel that masks no rows, a fanout's unused outputs) arrives as None: Triton compiles
a None argument out of the kernel, and each unused one passed as a value cost time in a CUDA
graph (0.07-0.09 us for two pointers at 512 x 896 on an H100; bench/RESULTS.md, "Unused
operands passed as None"). Such an operand is only touched under its flag.
"""
import triton
import triton.language as tl

FP16_MAX = tl.constexpr(65504.0)


@triton.jit
def _load_h(
    x_rows, r_rows, cols, mask,
    HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr, CLAMP_FP16: tl.constexpr,
    EVICT: tl.constexpr,
):
    """fp32 values that the norm sees for one [BLOCK_M, BLOCK_N] tile; EVICT is the loads'
    eviction policy ("" for the default)."""
    h = tl.load(x_rows + cols, mask=mask, other=0.0, eviction_policy=EVICT).to(tl.float32)
    if HAS_RESIDUAL:
        s = h + tl.load(r_rows + cols, mask=mask, other=0.0,
                        eviction_policy=EVICT).to(tl.float32)
        s = s.to(r_rows.dtype.element_ty)
        if STORE_RESIDUAL:
            tl.store(r_rows + cols, s, mask=mask)
        # The norm sees the rounded residual, so fused == unfused bit for bit.
        h = s.to(tl.float32)
    return _clamp_fp16(h, CLAMP_FP16)


@triton.jit
def _clamp_fp16(h, CLAMP_FP16: tl.constexpr):
    if CLAMP_FP16:
        # exllamav2's guard against fp16 overflow: +-inf become +-65504; NaN stays NaN.
        c = tl.minimum(tl.maximum(h, -FP16_MAX), FP16_MAX)
        h = tl.where(h != h, h, c)
    return h


@triton.jit
def _load_held(x_rows, r_rows, cols, row_mask, mask, n_cols,
               HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, ADD_CHUNK_N: tl.constexpr):
    """The 16-bit values a HOLD_X program normalizes, as loaded (two to a register).

    The fused add first writes the updated residual in ADD_CHUNK_N-wide pieces (x and the
    residual in flight together would need the registers the held row takes), then reads it
    back whole, from L2: the values the unfused norm would read, so the rest of the program is
    that norm's, bit for bit."""
    if HAS_RESIDUAL:
        chunk = tl.arange(0, ADD_CHUNK_N)[None, :]
        for start in range(0, BLOCK_N, ADD_CHUNK_N):
            _load_h(x_rows + start, r_rows + start, chunk,
                    row_mask & (start + chunk < n_cols), True, True, False, "")
        # Every thread's stores before any thread reads them back.
        tl.debug_barrier()
        rows = r_rows
    else:
        rows = x_rows
    # One return: Triton 3.6 checks every return's type, also in a branch a constexpr skips.
    return tl.load(rows + cols, mask=mask, other=0.0)


@triton.jit
def _widen_again(v):
    """16-bit v as fp32 a second time, by instructions the compiler cannot merge with the first
    widening. Merged, it would keep the fp32 values live across the reduction instead of v: at
    64K elements that is an SM's whole register file (spills: 40% of the copy ceiling)."""
    if v.dtype == tl.bfloat16:
        # bf16 is fp32's upper half.
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        # -0.0 + 0.0 is +0.0, so the add is no identity the compiler may drop (and a zero's
        # sign is all it changes).
        return (v + 0.0).to(tl.float32)


@triton.jit
def _load_cols(ptr, cols, col_mask, PRESENT: tl.constexpr):
    """A weight or bias slice in its own dtype (converted where used), or 0 when absent (ptr
    is then None: callers pass offsets in cols, never an offset pointer).

    Loaded once per tile and broadcast over its rows, and kept in L2 (`evict_last`): every row
    of the launch reads the same weight, and such lines outlive traffic that evicts normal ones
    (do_bench's L2 flush among it), so a later launch may find the weight there. On an H100
    after that flush: 1.017-1.064x at the rows where torch.compile, which loads its weights so,
    had led (1024-4096 x 2048 to fp32, 512 x 7168-8192), 0.993-1.043x on 21 other rows, mostly
    bf16; in a CUDA graph 0.988-1.020x (bench/RESULTS.md, "The eager rows behind, located; the
    weight kept in L2")."""
    if PRESENT:
        return tl.load(ptr + cols, mask=col_mask, other=0.0, eviction_policy="evict_last")
    else:
        return 0.0


@triton.jit
def _normalize_store(
    y_rows, w, b, cols, mask, h, rstd,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,
):
    """y = h * rstd * (w + WEIGHT_OFFSET) [+ b] [+ out], stored with one rounding.

    w and b come from _load_cols: the caller decides when they are fetched."""
    y = h * rstd
    if HAS_WEIGHT:
        y = y * (w.to(tl.float32) + WEIGHT_OFFSET)      # the offset is added in fp32
    elif WEIGHT_OFFSET != 0.0:
        y = y * (1.0 + WEIGHT_OFFSET)
    if HAS_BIAS:
        y = y + b.to(tl.float32)
    if ACCUMULATE:
        y = y + tl.load(y_rows + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_rows + cols, y.to(y_rows.dtype.element_ty), mask=mask)


@triton.jit
def _looped_rstd(
    x_rows, r_rows, cols, row_mask, inv_n, eps,
    HAS_RESIDUAL: tl.constexpr, CLAMP_FP16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOOP_N: tl.constexpr,
):
    """The looped path's first pass: 1 / rms of each row, read in BLOCK_N chunks up to LOOP_N
    (with the fused add, the updated residual is stored on the way)."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, LOOP_N, BLOCK_N):
        mask = row_mask & (start + cols < LOOP_N)
        # Kept in L2 for the second pass, which reads x (or the updated residual) once more and
        # lets it go. With the fused add x itself is not read again.
        h = _load_h(x_rows + start, r_rows + start, cols, mask,
                    HAS_RESIDUAL, True, CLAMP_FP16, "evict_last")
        acc += h * h
    return tl.rsqrt(tl.sum(acc, axis=1) * inv_n + eps)[:, None]


@triton.jit
def _nth(i: tl.constexpr, a0, a1, a2, a3, a4, a5, a6, a7):
    """The i-th of eight arguments; i is a constexpr, so only its branch is compiled."""
    if i == 0:
        return a0
    elif i == 1:
        return a1
    elif i == 2:
        return a2
    elif i == 3:
        return a3
    elif i == 4:
        return a4
    elif i == 5:
        return a5
    elif i == 6:
        return a6
    else:
        return a7


@triton.jit
def _copy_cols(i: tl.constexpr, COPIES: tl.constexpr, ptr, cols, col_mask, PRESENT: tl.constexpr):
    """Copy i's weight or bias slice (_load_cols), or 0 for a copy past COPIES: never loaded."""
    if i < COPIES:
        return _load_cols(ptr, cols, col_mask, PRESENT)
    else:
        return 0.0


@triton.jit
def _nth_cols(i: tl.constexpr, a0, a1, a2, a3, a4, a5, a6, a7, cols, col_mask,
              PRESENT: tl.constexpr):
    """_load_cols of the i-th of eight pointers. Absent, they are all None, and _nth is not
    called: Triton 3.6 does not compile a helper that returns None."""
    if PRESENT:
        return _load_cols(_nth(i, a0, a1, a2, a3, a4, a5, a6, a7), cols, col_mask, True)
    else:
        return 0.0


@triton.jit
def rmsnorm_fwd_kernel(
    x_ptr,                        # [M, N] input; rows stride_x_row apart, columns contiguous
    r_ptr,                        # [M, N] residual, updated in place (HAS_RESIDUAL), else None
    w_ptr,                        # [N] weight (HAS_WEIGHT, else None), any float dtype
    b_ptr,                        # [N] bias (HAS_BIAS, else None)
    y_ptr,                        # [M, N] output; its dtype decides the store cast
    n_rows,                       # ROW_MASK, else None
    n_cols,
    stride_x_row, stride_r_row, stride_y_row,
    eps,                          # a Python float, so Triton types it fp32 (never fp64)
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACCUMULATE: tl.constexpr,     # out += norm(x): the post-norm residual form
    CLAMP_FP16: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,  # 0.0 Llama, 1.0 Gemma; constexpr so the add folds away
    BLOCK_M: tl.constexpr,        # rows per program: >1 only for short rows
    BLOCK_N: tl.constexpr,        # columns per tile: next_power_of_2(N), or the chunk when LOOPED
    LOOPED: tl.constexpr,
    LOOP_N: tl.constexpr,         # LOOPED: n_cols as a constant (a kernel per hidden size), else 0
    PRELOAD_W: tl.constexpr,      # fetch weight/bias before the reduction, not after it
    ROW_MASK: tl.constexpr,       # mask rows past n_rows (config.row_mask says when)
    HOLD_X: tl.constexpr,         # single tile: hold 16-bit values as loaded (config.hold_row)
    ADD_CHUNK_N: tl.constexpr,    # HOLD_X with the fused add: its first pass's chunk, else 0
):
    # int64 row offsets: M * stride can pass 2**31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    if ROW_MASK:
        row_mask = (rows < n_rows)[:, None]
    else:
        row_mask = tl.full([1, 1], 1, tl.int1)
    x_rows = x_ptr + rows[:, None] * stride_x_row
    if HAS_RESIDUAL:
        r_rows = r_ptr + rows[:, None] * stride_r_row
    else:
        r_rows = x_rows           # never read (_load_h reads it under HAS_RESIDUAL only)
    y_rows = y_ptr + rows[:, None] * stride_y_row
    cols = tl.arange(0, BLOCK_N)[None, :]
    inv_n = 1.0 / n_cols          # n_cols may arrive as the constexpr 1 (Triton specializes it)

    if not LOOPED:
        col_mask = cols < n_cols
        mask = row_mask & col_mask
        if PRELOAD_W:
            # In flight together with x: when the weight is not in L2 (a decode step), its
            # DRAM latency is not paid a second time after the reduction.
            w = _load_cols(w_ptr, cols, col_mask, HAS_WEIGHT)
            b = _load_cols(b_ptr, cols, col_mask, HAS_BIAS)
        if HOLD_X:
            held = _load_held(x_rows, r_rows, cols, row_mask, mask, n_cols,
                              HAS_RESIDUAL, BLOCK_N, ADD_CHUNK_N)
            h = _clamp_fp16(held.to(tl.float32), CLAMP_FP16)
        else:
            h = _load_h(x_rows, r_rows, cols, mask, HAS_RESIDUAL, True, CLAMP_FP16, "")
        rstd = tl.rsqrt(tl.sum(h * h, axis=1) * inv_n + eps)[:, None]
        if not PRELOAD_W:
            w = _load_cols(w_ptr, cols, col_mask, HAS_WEIGHT)
            b = _load_cols(b_ptr, cols, col_mask, HAS_BIAS)
        if HOLD_X:
            h = _clamp_fp16(_widen_again(held), CLAMP_FP16)
        _normalize_store(y_rows, w, b, cols, mask, h, rstd,
                         HAS_WEIGHT, HAS_BIAS, ACCUMULATE, WEIGHT_OFFSET)
    else:
        # The chunk loops run to a constant (LOOP_N == n_cols, set by the launcher): with the
        # trip count known the compiler likely keeps several chunks' loads in flight (not
        # profiled); 1024 x 5120 bf16 -> fp32: 11.98 against 13.10 us with n_cols as the bound
        # (bench/RESULTS.md, "Loop bounds as constants").
        rstd = _looped_rstd(x_rows, r_rows, cols, row_mask, inv_n, eps,
                            HAS_RESIDUAL, CLAMP_FP16, BLOCK_M, BLOCK_N, LOOP_N)
        for start in range(0, LOOP_N, BLOCK_N):
            col_mask = start + cols < LOOP_N
            mask = row_mask & col_mask
            # Second pass: the updated residual already holds round(x + residual).
            if HAS_RESIDUAL:
                h = tl.load(r_rows + start + cols, mask=mask, other=0.0,
                            eviction_policy="evict_first").to(tl.float32)
            else:
                h = _load_h(x_rows + start, r_rows + start, cols, mask,
                            False, False, CLAMP_FP16, "evict_first")
            w = _load_cols(w_ptr, start + cols, col_mask, HAS_WEIGHT)
            b = _load_cols(b_ptr, start + cols, col_mask, HAS_BIAS)
            _normalize_store(y_rows + start, w, b, cols, mask, h, rstd,
                             HAS_WEIGHT, HAS_BIAS, ACCUMULATE, WEIGHT_OFFSET)


@triton.jit
def _split_program(part_ptr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr):
    """This split-row program's row, slice index, first column, its row's slots, and the round
    it publishes (its slot's round + 1; _row_rstd waits for every slot to reach it)."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // SPLITS
    part = pid % SPLITS
    start = part * BLOCK_N
    slot_row = part_ptr + row * SPLITS
    # Every thread reads the round; one thread publishes in _row_rstd. The block-wide reduction
    # of the partial in between (a barrier) keeps every read before the publish: keep them apart.
    this_round = (tl.load(slot_row + part) >> 32) + 1
    return row, part, start, slot_row, this_round


@triton.jit
def _row_rstd(slot_row, part, this_round, partial, n_cols, eps,
              SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr):
    """The split-row kernel's exchange: publish this program's partial sum of squares in slot
    `part` of its row with `this_round`, wait until every slot of the row holds this round, and
    return the row's 1 / rms."""
    low_bits = partial.to(tl.uint32, bitcast=True).to(tl.int64)      # zero-extended
    # One release atomic publishes the partial and its round together.
    tl.atomic_xchg(slot_row + part, (this_round << 32) | low_bits, sem="release")
    slots = tl.arange(0, SPLITS_P2)
    slot_ptrs = slot_row + slots
    slot_mask = slots < SPLITS
    # Polled with atomics. Measured against it on an H100 (bench/RESULTS.md): volatile-load
    # polls were 2-3% slower, and a nanosleep back-off between polls changed nothing. A slot
    # counts as behind while its round precedes this one (mod 2^32). Two launches sharing slots
    # at once (a misuse) could give wrong sums or wait forever.
    parts = tl.atomic_add(slot_ptrs, 0, mask=slot_mask, sem="acquire")
    behind = ((parts >> 32) - this_round).to(tl.int32) < 0
    waiting = tl.sum((slot_mask & behind).to(tl.int32), axis=0)
    while waiting > 0:
        parts = tl.atomic_add(slot_ptrs, 0, mask=slot_mask, sem="acquire")
        behind = ((parts >> 32) - this_round).to(tl.int32) < 0
        waiting = tl.sum((slot_mask & behind).to(tl.int32), axis=0)
    sums = parts.to(tl.int32).to(tl.float32, bitcast=True)      # the low 32 bits
    # Every program of the row adds the same partials in the same order: one rstd, bit for bit.
    total = tl.sum(tl.where(slot_mask, sums, 0.0), axis=0)
    return tl.rsqrt(total * (1.0 / n_cols) + eps)


@triton.jit
def rmsnorm_fwd_split_kernel(
    x_ptr, r_ptr, w_ptr, b_ptr, y_ptr,   # as in rmsnorm_fwd_kernel
    part_ptr,                     # [>= rows, SPLITS] int64 slots: (round << 32) | fp32 bits
    n_rows,                       # None: the grid covers the rows exactly (one signature for both)
    n_cols,
    stride_x_row, stride_r_row, stride_y_row,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    CLAMP_FP16: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,
    BLOCK_N: tl.constexpr,        # slice of a row per program
    SPLITS: tl.constexpr,         # cdiv(n_cols, BLOCK_N) programs per row
    SPLITS_P2: tl.constexpr,      # next_power_of_2(SPLITS), for the partials vector
):
    # Programs of one row have consecutive ids. The GPU dispatches blocks in id order, so every
    # program a waiting one depends on is resident or will be once earlier rows finish: the
    # wait cannot deadlock. (The interpreter runs programs one by one: it never takes this path.)
    #
    # A slot holds a partial sum and the round that wrote it. Every launch writes each slot of
    # the rows it covers once, so a row's slots always share a round, and the workspace needs
    # no reset between launches (a fill kernel per call cost ~2 us of GPU time at 256 x 65536,
    # and a launch of host time): a program reads its own slot's round before the launch's
    # writes, publishes round + 1, and waits until every slot of its row has reached it. That
    # needs launches on one set of slots to run one after another (rmsnorm_triton/split_slots.py
    # keeps a set per stream; programmatic dependent launch, which would let the next launch
    # start early, is never used here).
    row, part, start, slot_row, this_round = _split_program(part_ptr, BLOCK_N, SPLITS)
    x_rows = x_ptr + row * stride_x_row + start
    if HAS_RESIDUAL:
        r_rows = r_ptr + row * stride_r_row + start
    else:
        r_rows = x_rows           # never read
    y_rows = y_ptr + row * stride_y_row + start
    cols = tl.arange(0, BLOCK_N)[None, :]
    col_mask = start + cols < n_cols
    h = _load_h(x_rows, r_rows, cols, col_mask, HAS_RESIDUAL, True, CLAMP_FP16, "")
    partial = tl.sum(tl.sum(h * h, axis=1), axis=0)
    rstd = _row_rstd(slot_row, part, this_round, partial, n_cols, eps, SPLITS, SPLITS_P2)
    # Fetched after the wait: fetched before it, the extra registers lowered occupancy and
    # cost 4-7% at N = 65536-262144 (bench/ab_preload.py).
    w = _load_cols(w_ptr, start + cols, col_mask, HAS_WEIGHT)
    b = _load_cols(b_ptr, start + cols, col_mask, HAS_BIAS)
    _normalize_store(y_rows, w, b, cols, col_mask, h, rstd,
                     HAS_WEIGHT, HAS_BIAS, ACCUMULATE, WEIGHT_OFFSET)


@triton.jit
def rmsnorm_fwd_fanout_kernel(
    x_ptr,                        # [M, N] input, rows stride_x_row apart (on the launching GPU)
    y0_ptr, y1_ptr, y2_ptr, y3_ptr, y4_ptr, y5_ptr, y6_ptr, y7_ptr,   # None past COPIES
    w0_ptr, w1_ptr, w2_ptr, w3_ptr, w4_ptr, w5_ptr, w6_ptr, w7_ptr,   # also None without weight
    b0_ptr, b1_ptr, b2_ptr, b3_ptr, b4_ptr, b5_ptr, b6_ptr, b7_ptr,   # also None without bias
    n_rows, n_cols,
    stride_x_row, stride_y_row,   # every output has the same row stride
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CLAMP_FP16: tl.constexpr,
    WEIGHT_OFFSET: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,        # next_power_of_2(N), or the chunk when LOOPED
    LOOPED: tl.constexpr,
    LOOP_N: tl.constexpr,         # as in rmsnorm_fwd_kernel
    COPIES: tl.constexpr,         # outputs used: y0 .. y{COPIES - 1}, with w and b alike
    PRELOAD_W: tl.constexpr,      # single tile: every copy's weight/bias before the reduction
):
    # The math of rmsnorm_fwd_kernel's single-tile and looped paths, line for line: with the
    # same launch config, copy i equals rms_norm(x, w_i, bias=b_i) bit for bit.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = (rows < n_rows)[:, None]
    x_rows = x_ptr + rows[:, None] * stride_x_row
    y_offs = rows[:, None] * stride_y_row
    cols = tl.arange(0, BLOCK_N)[None, :]
    inv_n = 1.0 / n_cols
    if LOOPED:
        rstd = _looped_rstd(x_rows, x_rows, cols, row_mask, inv_n, eps,
                            False, CLAMP_FP16, BLOCK_M, BLOCK_N, LOOP_N)
        for start in range(0, LOOP_N, BLOCK_N):
            col_mask = start + cols < LOOP_N
            mask = row_mask & col_mask
            h = _load_h(x_rows + start, x_rows + start, cols, mask,
                        False, False, CLAMP_FP16, "evict_first")
            for i in tl.static_range(COPIES):
                # Copy i's weight and bias for this chunk, then its output.
                w = _nth_cols(i, w0_ptr, w1_ptr, w2_ptr, w3_ptr, w4_ptr, w5_ptr, w6_ptr, w7_ptr,
                              start + cols, col_mask, HAS_WEIGHT)
                b = _nth_cols(i, b0_ptr, b1_ptr, b2_ptr, b3_ptr, b4_ptr, b5_ptr, b6_ptr, b7_ptr,
                              start + cols, col_mask, HAS_BIAS)
                _normalize_store(_nth(i, y0_ptr, y1_ptr, y2_ptr, y3_ptr, y4_ptr, y5_ptr, y6_ptr,
                                      y7_ptr) + y_offs + start,
                                 w, b, cols, mask, h, rstd, HAS_WEIGHT, HAS_BIAS, False,
                                 WEIGHT_OFFSET)
    else:
        col_mask = cols < n_cols
        mask = row_mask & col_mask
        if PRELOAD_W:
            # Every copy's weight in flight beside x: a peer's weight is an NVLink round trip
            # away. Where all of them would not fit in registers beside the row, each copy's
            # is fetched once the sum is known (config.fanout_params_late).
            w0 = _copy_cols(0, COPIES, w0_ptr, cols, col_mask, HAS_WEIGHT)
            b0 = _copy_cols(0, COPIES, b0_ptr, cols, col_mask, HAS_BIAS)
            w1 = _copy_cols(1, COPIES, w1_ptr, cols, col_mask, HAS_WEIGHT)
            b1 = _copy_cols(1, COPIES, b1_ptr, cols, col_mask, HAS_BIAS)
            w2 = _copy_cols(2, COPIES, w2_ptr, cols, col_mask, HAS_WEIGHT)
            b2 = _copy_cols(2, COPIES, b2_ptr, cols, col_mask, HAS_BIAS)
            w3 = _copy_cols(3, COPIES, w3_ptr, cols, col_mask, HAS_WEIGHT)
            b3 = _copy_cols(3, COPIES, b3_ptr, cols, col_mask, HAS_BIAS)
            w4 = _copy_cols(4, COPIES, w4_ptr, cols, col_mask, HAS_WEIGHT)
            b4 = _copy_cols(4, COPIES, b4_ptr, cols, col_mask, HAS_BIAS)
            w5 = _copy_cols(5, COPIES, w5_ptr, cols, col_mask, HAS_WEIGHT)
            b5 = _copy_cols(5, COPIES, b5_ptr, cols, col_mask, HAS_BIAS)
            w6 = _copy_cols(6, COPIES, w6_ptr, cols, col_mask, HAS_WEIGHT)
            b6 = _copy_cols(6, COPIES, b6_ptr, cols, col_mask, HAS_BIAS)
            w7 = _copy_cols(7, COPIES, w7_ptr, cols, col_mask, HAS_WEIGHT)
            b7 = _copy_cols(7, COPIES, b7_ptr, cols, col_mask, HAS_BIAS)
        h = _load_h(x_rows, x_rows, cols, mask, False, False, CLAMP_FP16, "")
        rstd = tl.rsqrt(tl.sum(h * h, axis=1) * inv_n + eps)[:, None]
        for i in tl.static_range(COPIES):
            if PRELOAD_W:
                w = _nth(i, w0, w1, w2, w3, w4, w5, w6, w7)
                b = _nth(i, b0, b1, b2, b3, b4, b5, b6, b7)
            else:
                w = _nth_cols(i, w0_ptr, w1_ptr, w2_ptr, w3_ptr, w4_ptr, w5_ptr, w6_ptr, w7_ptr,
                              cols, col_mask, HAS_WEIGHT)
                b = _nth_cols(i, b0_ptr, b1_ptr, b2_ptr, b3_ptr, b4_ptr, b5_ptr, b6_ptr, b7_ptr,
                              cols, col_mask, HAS_BIAS)
            _normalize_store(_nth(i, y0_ptr, y1_ptr, y2_ptr, y3_ptr, y4_ptr, y5_ptr, y6_ptr,
                                  y7_ptr) + y_offs,
                             w, b, cols, mask, h, rstd, HAS_WEIGHT, HAS_BIAS, False, WEIGHT_OFFSET)
