"""Every launch decision: block shapes, warps, looped or single-tile rows.

`pick_config` answers from the tuned table that `rmsnorm-triton tune` writes (one JSON file per
GPU name and Triton version) and falls back to an analytical heuristic. Answers are memoized, so a
forward call pays one dict lookup; nothing here times or tunes anything.
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import triton

from .atomic import write_text_atomic

# Thresholds below were read off bench/sweep_configs.py on an H100 (bench/RESULTS.md).
# A row of up to this many elements is held in registers by one program and read once
# (97.8% of the copy ceiling at 4096 x 32768 on an H100, before such calls looped,
# SPARSE_WIDE_*; one program per 65536-row: 68%, spilling).
MAX_SINGLE_TILE_N = 32768
# Past it, on a GPU, the row is split over programs of one slice each (the split-row kernel):
# 4096-element slices on 4 warps were fastest up to 131072 (90.7% at 2048 x 65536, against 68%
# for one looped program per row), 8192 beyond (87.8% at 512 x 262144), among slices on 4 warps;
# 16-bit rows to a 16-bit output, in calls past 512K elements, now take SPLIT_SLICE_N_16BIT on 8
# warps (below).
SPLIT_SLICE_N = 4096
SPLIT_SLICE_N_LONG = 8192
# A row's programs wait for each other, so all of them must fit on the GPU at once, also beside
# other kernels: at most 64 a row (an H100 holds ~2000 such programs). Longer rows get wider
# slices, up to 32768 elements (2M-element rows); rows longer still take the looped path.
MAX_SPLITS = 64
MAX_SPLIT_SLICE_N = 32768
# A call of long rows with up to SPLIT_FEW_ELEMS elements (its row bucket, M rounded up to a
# power of two, times N) is latency-bound: each row is cut into as many slices as it may
# (MAX_SPLITS), none narrower than SPLIT_SLICE_N_FEW (1-8 x 65536 on 32 slices of 2048:
# 1.10-1.29x against 16 of 4096 on 4 warps; 1-2 x 262144 on 64 of 4096: 1.04-1.55x; past
# 512K elements narrower slices lost: 4 x 262144 bf16 7.09 against 6.56 us). Those slices, and
# any slice written to a 4-byte output, run on SPLIT_WARPS. (An earlier run had 8192-wide slices
# of 16-256 x 262144 to fp32 on 8 warps 1.18-1.21x ahead of 4; a later one found 4 ahead of 8
# there by 1.05-1.17x, and 16 ahead of both: 16-bit x there takes SPLIT_WIDE_OUT_WARPS, below.)
# Larger calls of 16-bit x (or residual) to a 16-bit output hold SPLIT_SLICE_N_16BIT elements a
# program on SPLIT_WARPS. That is the same 32 elements a thread as 4096 on 4 warps, with half the
# programs of a row waiting on each other. Against the earlier 4096 (to 131072 columns) and
# 8192 on 4 warps, on an H100, interleaved:
# - eager after an L2 flush: 256-4096 x 65536 1.020-1.045x, 128-1024 x 131072 1.034-1.058x,
#   64-2048 x 262144 1.007-1.046x;
# - in a graph: 16-64 x 65536 1.012-1.026x, 8-64 x 262144 1.013-1.023x;
# - the fused add of a 16-bit residual, which must follow: 0.990-1.002x.
# (bench/RESULTS.md, "Long rows: a cluster barrier instead of polling, tried; 8192-element
# slices on 8 warps".) Other calls keep SPLIT_SLICE_N slices up to 131072 columns and
# SPLIT_SLICE_N_LONG beyond, on 8 warps to a 4-byte output (16 for 16-bit x in 8192 slices,
# next) and 4 to a 16-bit one.
# 16-bit x to a 4-byte output in 8192-element slices (rows past 131072 columns, larger calls)
# runs on SPLIT_WIDE_OUT_WARPS, 16 elements a thread: against 8 warps, 16-1024 x 262144 bf16 ->
# fp32 1.069-1.169x eager after an L2 flush, 1.062-1.112x in a graph at 16-64 rows (4 warps:
# 1.049-1.174x, but 0.77x at 512 x 131072 in 8192 slices). The fused add of a 16-bit residual to
# fp32 follows: 1.008-1.011x (bench/RESULTS.md, "Long rows to fp32 on 16 warps; small calls of
# long rows").
# In small calls (up to SPLIT_FEW_ELEMS), 16-bit rows to a 16-bit output take slices sized for
# SPLIT_FEW_MAX_SPLITS_16BIT a row, kept between 2048 and SPLIT_SLICE_N wide: 64 a row left too
# many programs waiting. In a graph on an H100, 32 slices of 4096 against 64 of 2048: 1-4 x
# 131072 1.053-1.158x, the fused add 1.135-1.138x at 4 x 131072; eager 2 x 131072 1.051x.
# At 262144, 8192-wide slices gained on the norm (1 x 262144 1.006-1.011x, 2 x 262144
# 1.10-1.13x in a graph, level eager). They lost on the fused add at 1 row (0.92-0.96x), so
# 262144 keeps 64 slices of 4096. Other small calls keep up to 64 slices, none under 2048
# (1 x 262144 to fp32: 64 of 4096 best) (bench/RESULTS.md, "Long rows to fp32 on 16 warps;
# small calls of long rows").
SPLIT_FEW_ELEMS = 1 << 19
SPLIT_SLICE_N_FEW = 2048
SPLIT_FEW_MAX_SPLITS_16BIT = 32
SPLIT_SLICE_N_16BIT = 8192
SPLIT_WARPS = 8
SPLIT_WIDE_OUT_WARPS = 16
# 16-bit rows to a 16-bit output in SPLIT_SLICE_N_16BIT slices on SPLIT_WARPS, in calls of
# SPLIT_CAP_MIN_ROWS rows and more, with a weight and neither bias nor accumulate, compile with
# at most SPLIT_MAX_REGISTERS registers a thread (`split_register_cap`). Uncapped the kernel
# takes 58-61, allocated as 64: four programs an SM, 50% occupancy (Nsight Compute, bf16: DRAM
# at 81% of its peak at 2048 x 65536 and 78% at 512 x 262144; of the warps' stall cycles, loads
# took 42% and 38%, the polling loop's barriers 34% and 41%). At 48 five fit, with no spills.
# On an H100, against uncapped, in a graph and eager: bf16 and fp16 at 1024-4096 x 65536,
# 512-2048 x 131072 and 512-1024 x 262144 1.009-1.018x, 512 x 65536 0.998-1.011x; the fused
# add of a bf16 residual 0.997-1.018x; 256-300 x 65536 and 64 x 262144 0.982-0.997x, so smaller
# calls stay uncapped. A cap of 40 spills (0.60-0.95x); caps of 48-56 lost on 16-bit x to fp32
# (other slices and warps; 0.78-0.98x: they raised bf16's 32 registers to 41-43), which takes
# the cap below instead, for fp16 only (bench/RESULTS.md, "Split rows capped at 48 registers").
# Measured with Triton 3.6 on CUDA only. Triton 3.9's compiler spills up to 16 bytes a thread under
# the same cap (more with a bias or accumulate), and ROCm's launcher takes no `maxnreg`: other
# Tritons and backends compile uncapped (SPLIT_CAP_HERE).
SPLIT_MAX_REGISTERS = 48
SPLIT_CAP_MIN_ROWS = 512
SPLIT_CAP_TRITON = (3, 6)
# fp16 rows to a 4-byte output in the split row's SPLIT_WIDE_OUT_CAPPED_FORMS (slice, warps)
# compile to 34-35 registers a thread with Triton 3.6 (bf16: 32), which the SM allocates as 40:
# six 8-warp programs an SM instead of eight, three 16-warp ones instead of four. Capped at
# SPLIT_WIDE_OUT_MAX_REGISTERS they spill nothing and run as many programs as bf16. On an H100,
# against uncapped, in a graph and eager, in calls of SPLIT_WIDE_OUT_CAP_MIN_ROWS rows and more
# (64 x 262144 to 4096 x 65536): 1.024-1.066x, e.g. 512 x 262144 85.6% -> 91.0% of the copy
# ceiling eager, 2048 x 65536 91.0% -> 93.5%, level with bf16 (bench/RESULTS.md, "fp16 split
# rows to fp32 capped at 32 registers"). bf16, already at 32, measured 0.991-1.005x capped and
# stays uncapped. With a bias the capped form spills, so it stays uncapped (`plain`).
# The register rules were read off compiles for compute capability 9 (`register_rules_on`).
REGISTER_RULES_ARCH = 9
SPLIT_WIDE_OUT_MAX_REGISTERS = 32
SPLIT_WIDE_OUT_CAP_MIN_ROWS = 64
SPLIT_WIDE_OUT_CAPPED_FORMS = ((SPLIT_SLICE_N, SPLIT_WARPS),
                               (SPLIT_SLICE_N_LONG, SPLIT_WIDE_OUT_WARPS))
# 16-bit rows of HELD_ROW_MIN_N to HELD_ROW_N elements to a 16-bit output, in calls of
# HELD_ROW_MIN_ROWS rows or more (the bucket), take one program a row on HELD_ROW_WARPS warps
# instead of the split row: the program holds its row as loaded, two values to a 32-bit
# register (32 a thread), and widens them again after the reduction (`hold_row`). No program
# waits for another. Against the split row, in a graph / eager after an L2 flush, medians of 3
# interleaved rounds (bench/ab_row_held.py; bench/RESULTS.md, "One program a 64K-element row"):
# - H100: 2048-4096 x 65536 bf16 and fp16 1.025-1.033x (4096 x 65536 bf16 98.7% / 98.2% of
#   the copy ceiling), 1024 rows 1.018-1.024x, 512 rows 0.990-1.016x, 256-300 rows
#   0.967-0.992x; 4096 x 49152 1.03-1.04x;
# - H200: 2048-4096 rows 1.11-1.14x, 1024 rows 1.05-1.06x, 512 rows 0.99-1.01x.
# The fused add of a 16-bit residual, which must follow to equal the norm, writes its updated
# residual in HELD_ADD_CHUNK_N-wide chunks first and reads it back whole (8192: 0.94-0.98x of
# 16384, 32768: 0.99-1.01x): against the split row 0.990-1.003x on the H100 from 1024 rows,
# 0.96-0.98x on the H200 at 1024 and 0.99-1.01x from 2048, so the rule starts at 2048. Rows of
# 40000 columns (a 64K tile two-fifths idle) were level or lost at 512 rows (0.96x eager) and
# keep the split. Held, the weight is fetched after the reduction (`preload_weight`); fetched
# first it spilled (0.71-0.98x). The held kernel spilled to a 4-byte output (0.72-0.84x), with
# the fp16 clamp (10 registers a thread, 0.83-0.86x), with a bias (6, 0.95-1.06x), so those
# calls keep the split row (`pick_config`'s `plain`); an fp32 weight gained (1.04-1.11x).
# Held, a row is loaded in 16-byte vectors; Triton vectorizes only pointers it specialized as
# 16-byte aligned and row strides and lengths it specialized as multiples of 16, and without
# vectors the held kernel spills (x: 472 bytes a thread with Triton 3.6, the fused add's
# residual 120, a row length off 16 480; with Triton 3.9 an fp16 weight 48-80, an fp32 one in
# the fused add 304), so those calls keep the split row (`row_vectors`,
# `plans.misaligned`; an unaligned output or fused add's x spills nothing). Compiled for sm_90
# with those specializations, the held forms spill nothing with Triton 3.6, 3.7 and 3.9
# (55-61 registers) and 32-40 bytes with 3.8 (bf16; `scripts/compile_kernels.py
# --registers`); for sm_80-89 and sm_120 they spill 32-88 bytes. Held rows are for
# HELD_ROW_TRITONS on CUDA (HELD_ROW_HERE) and GPUs of compute capability HELD_ROW_ARCH
# (`held_rows_on`), timed on 3.6 only, on an H100 and an H200.
HELD_ROW_TRITONS = ((3, 6), (3, 7), (3, 9))
HELD_ROW_ARCH = 9
HELD_ROW_N = 65536
HELD_ROW_MIN_N = 49152
HELD_ROW_WARPS = 32
HELD_ROW_MIN_ROWS = 2048
HELD_ADD_CHUNK_N = 16384
# Every package kernel compiles with floating-point contraction on (x * w + b, the sum of
# squares: one fma, one rounding), which Triton 3.6-3.9 do by default and Triton 3.10 turns off
# by default. Pinned, the results (and the tests against fp64) do not move with the Triton
# version, and Triton 3.9 has no unset default to warn about in the user's process.
COMPILE_OPTIONS = {"enable_fp_fusion": True}
# The interpreter cannot run the split-row kernel (its programs wait on each other): it streams
# long rows twice in chunks instead.
LOOP_CHUNK_N = 8192
# The fused add with a 4-byte residual cannot hold a tile this wide or wider: up to
# SPLIT_MAX_ROWS rows the row is split (4096-element slices: 96.6% at 512 x 32768), past it
# looped in 16K chunks. The norm of a 4-byte x takes the same configs (not measured on its own).
WIDE_4BYTE_MIN_N = 32768
SPLIT_MAX_ROWS = 512
LOOP_CHUNK_N_WIDE = 16384
# In a bucket of 512-1024 rows, rows of 16-bit x (or residual) that move at least this many
# bytes (x read + out written: 10K-16K elements to 16-bit out) loop over chunks of
# LOOP_CHUNK_BYTES moved (4096 elements bf16 -> bf16, 2048 bf16 -> fp32). Measured at 16K (and
# 12K for the fused add) to 16-bit out; fp32 x keeps tiles.
# To a 4-byte output the loop starts at 24 KB a row (4096 elements) and holds in every bucket
# from 512 rows, up to LOOP_4BYTE_OUT_MAX_N columns past 1024 rows: bf16 -> fp32 looped in
# 2048-element chunks on 16 warps was level or ahead of the tile at 512-16384 x 4096-8192, in a
# graph and after an L2 flush (2048 x 5120 1.05x / 1.08x, 4096 x 5120 1.03x / 1.05x, 1024 x 4096
# 0.99x / 1.01x; fp16 1024 x 4096 1.06x / 1.11x), L2 scrubbed before each config; three rows
# rerun with a rotation long enough that no evict_last line outlives it kept the same lead.
# 2048-wide rows lost (0.86-0.97x) and keep tiles (bench/RESULTS.md, "An eager timer that holds
# the GPU"; an earlier, unscrubbed A/B had favoured 16-warp tiles from 2048 rows).
# In the 1024-row bucket (513-1024 rows) rows of 16-bit x to a 16-bit output loop from past 16 KB
# a row up to 24 KB (4097-6144 elements), on 8 warps: against the 8192-wide tile, eager after an
# L2 flush / in a graph, 1024 x 5120 1.12x / 1.05x, 6144 1.14x / 1.08x, 600 x 5120 1.11x /
# 1.02x, fp16 alike (16 warps did worse). The fused add of a 16-bit residual follows, as it must
# to equal the norm: 1024 x 5120 1.03x / 1.03x. 7168-8192 columns would give the norm 1.10x
# / 1.05-1.09x but the fused add 0.96x / 0.98x, so the tile keeps them; 512 rows and
# 12288-16384 columns keep their configs; 2048 rows (1-4% then) now loop, LARGE_LOOP_*
# (bench/RESULTS.md, "The 1024-row bucket loops").
LOOP_MID_ROW_BYTES = 40960
LOOP_MID_ROW_BYTES_4BYTE_OUT = 24576
LOOP_1K_ROW_BYTES = (16384, 24576)      # (exclusive, inclusive): bytes moved a row
LOOP_1K_WARPS = 8
LOOP_MID_ROWS = (512, 1024)
LOOP_MID_MAX_N = 16384
LOOP_4BYTE_OUT_MAX_N = 8192
LOOP_CHUNK_BYTES = 16384
# From the LARGE_LOOP_MIN_ROWS-row bucket (from 1025 rows), rows of LARGE_LOOP_N columns of
# 16-bit x to a 16-bit output loop too, in 4096-element chunks on 8 warps: the second read
# comes from L2, and the registers that held the row let more programs share an SM. Eager (3
# interleaved rounds, L2 flushed before each call), against the tile on 8 warps:
# - H200: 2048-16384 x 4096 1.002-1.039x, 2048-16384 x 5120 1.029-1.075x, 4096-16384 x 7168
#   1.018-1.020x, 2048-16384 x 8192 1.025-1.036x (fp16 1.033x), with an fp32 weight 1.004x at
#   8192 and 1.159x at 5120; the fused add of a bf16 residual, which follows, 1.001-1.032x
#   (0.993x with an fp32 weight at 4096 x 8192);
# - H100: 4096 x 7168 1.023x, 16384 x 7168-8192 1.004-1.010x, the fused add at 16384 x 4096
#   1.004x.
# 1025-2047 rows were not timed and follow.
# Shorter rows keep their tiles: 2304 columns lost (0.961x at 16384 rows), 3072 was mixed
# (0.987-1.011x), 2048-wide tiles lost (0.966-0.979x). 16384-wide tiles gain 1.02-1.03x on an
# H200 in 8192 chunks on 16 warps but were not timed on an H100, so they keep theirs too
# (bench/RESULTS.md, "Large calls on an H200").
LARGE_LOOP_MIN_ROWS = 2048
LARGE_LOOP_N = (4096, 8192)             # columns, inclusive
LARGE_LOOP_CHUNK = 4096
LARGE_LOOP_WARPS = 8
# 16-bit x to a 4-byte output, tiles of 4096 (rows of 2049-4095 elements) in the 512-row
# bucket: one row a program on 16 warps, 2.2-2.6% faster than the elements-a-thread rule below
# at 512 x 3072 (one process, before the L2 scrub; the 4096-column rows it was taken for now
# loop). The fused add of a 16-bit residual to fp32 follows (not timed).
# 16-bit x to a 4-byte output, one row of 1025-2048 elements (a 2048 tile) a program, in the
# 512- and 1024-row buckets (257-1024 rows): 8 warps instead of 4. On an H100, medians of 5
# interleaved rounds, eager / graph: 1024 x 2048 bf16 1.011x / 1.047x, fp16 1.043x / 1.065x;
# 513-768 x 2048 1.000-1.035x / 1.010-1.046x; 1024 x 1536 1.008x / 1.033x; 512 x 2048 fp16
# 1.051x / 1.043x; 300-384 x 2048, 300 and 1024 x 1152, 600 x 1536: 1.004-1.055x /
# 1.009-1.045x. The fused add of a bf16 residual to fp32 follows: 0.999-1.000x /
# 0.995-1.002x. At 2048 rows 8 warps lost (0.92x eager, an earlier A/B of 3 rounds), so larger
# calls keep 4; decode-sized calls (up to 256 rows) were not timed and keep 4
# (bench/RESULTS.md, "2048-wide rows to fp32 on 8 warps").
# 16-bit x to a 16-bit output, one 8192-wide tile a row (6145-8192 columns: shorter rows of this
# bucket loop, LOOP_1K_ROW_BYTES) in the 1024-row bucket: 4 warps instead of the 8 that the
# elements-a-thread rule gives. On an H100, each A/B one process of 3 rounds, graph / eager:
# 1024 x 7168 bf16 1.053x / 1.038x, 1024 x 8192 fp16 1.021x / 1.015x, the fused add of a bf16
# residual at 1024 x 7168-8192 1.009-1.019x / 1.007x; 600 rows 1.07-1.09x in a graph. The
# 512-row bucket was mixed (0.980-1.022x, 512 x 7168 0.994x / 0.980x) and keeps 8; at
# 2048-4096 rows 1.002-1.018x, at 16384 level: those loop now (LARGE_LOOP_*)
# (bench/RESULTS.md, "8192-wide tiles of the 1024-row bucket on 4 warps").
# Those three rules: one 16-bit row a program, (4-byte output, tile, smallest and largest row
# bucket) -> warps, in place of the elements-a-thread rule (heuristic_config).
TILE_WARPS = {
    (True, 4096, 512, 512): 16,
    (True, 2048, 512, 1024): 8,
    (False, 8192, 1024, 1024): 4,
}
# 16-bit x to a 4-byte output, rows of DECODE_WIDE_OUT_MIN_N+1 to 8192 elements, in calls of up
# to DECODE_WIDE_OUT_MAX_ROWS rows: looped in 4096-element chunks on 32 warps, against the
# 8192-wide tile on 16 warps, in a CUDA graph on an H100 (bench/ab_mid_rows.py):
# 1 x 8192 1.07x, 4-16 x 8192 1.04-1.14x, 32 x 8192 1.03x, 8 x 7168 1.07x, 16 x 6144 1.05x;
# 8 x 5120 1.02x and 1 x 5120 1.00x (so 5120 keeps the tile), 64 x 8192 1.00x; to a 16-bit
# output it loses (8 x 8192 bf16 0.90x). The fused add of a 16-bit residual to fp32 follows, as
# it must to equal the norm, at a cost: 8 x 8192 0.95x of the 16-warp tile (bench/RESULTS.md,
# "Decode rows to fp32 loop", "Decode rows of 4-byte x").
DECODE_WIDE_OUT_MIN_N = 5120
DECODE_WIDE_OUT_MAX_ROWS = 32
DECODE_WIDE_OUT_CHUNK = 4096
# Rows of 257-2048 elements (tiles of 512-2048) are packed several a program only from this many
# rows: fewer rows want every program they can get (8 x 2048: 1.48 against 1.61 us in a graph,
# 64 x 2048: 1.90 against 2.00; one row a program against four at 64-1024 x 768-1024 and 512 x
# 512: 1.07-1.13x in a graph, 1.02-1.06x eager). From 4096 rows packing was level or ahead
# (4096 x 2048 16.74 / 16.69 us; 4096 x 768-1024: one row a program 3-10% slower). Rows of up to
# 256 elements are packed at any count (bench/RESULTS.md, "Rows of real models' hidden sizes").
PACK_MIN_ROWS = 4096
PACK_ALWAYS_MAX_N = 256
# A 16-bit row that fills at most 9/16 of its power-of-two tile (8193-9216 of 16384,
# 16385-18432 of 32768 columns), from 512 rows, loops instead: the tile's empty half still holds
# registers. Against the tile, loop4096 on 16 warps: 9216 columns 1.06-1.15x at 512-4096 rows,
# 18432 1.14-1.26x at 512-16384; to fp32, in 2048-element chunks (past 1024 rows, unlike full
# tiles, which keep LOOP_4BYTE_OUT_MAX_N): 1.02-1.22x at 512-4096 rows of 9216 and 18432. The
# fused add of a 16-bit residual, which must follow, 0.975-1.06x (bench/RESULTS.md, "Rows of
# real models' hidden sizes").
SPARSE_TILE_MIN_N = 16384
SPARSE_TILE_FILL = (9, 16)
# Of those, the 32K tiles' rows (16385-18432 columns) loop on 32 warps: half as many rows in
# flight, whose first pass L2 then keeps for the second (Nsight Compute at 4096 x 18432 fp16 ->
# fp32: 164.8 MB read from DRAM on 16 warps, 151.3 MB on 32, where x is 151.0). To a 4-byte
# output in 4096-element chunks from the 512-row bucket (1.04-1.12x at 512-16384 rows, graph
# and eager); to a 16-bit one in 8192-element chunks from the 2048-row bucket, i.e. from 1025
# rows (1.02-1.03x at 2048-16384 rows; 0.92-1.00x at 512-1024, which keep 16 warps). The fused
# add of a 16-bit residual follows: 1.022x at 4096 x 18432 to 16 bits; to fp32 not timed
# (bench/RESULTS.md, "Rows still behind, profiled").
SPARSE_WIDE_WARPS = 32
SPARSE_WIDE_CHUNK = (8192, 4096)        # (16-bit output, 4-byte output)
SPARSE_WIDE_MIN_ROWS = (2048, 512)
# Every other 16-bit row of a 32K tile (18433-32768 columns) loops the same way past
# decode-sized calls: a 1024-thread program holding a row takes a whole SM's registers, so its
# loads stop while it reduces, and rows that leave the tile partly empty waste registers on
# top. Eager, SPARSE_WIDE_CHUNK on 32 warps against the tile:
# - H100, with a bf16 weight (and an fp32 one at 1024-16384 x 24576, 1.056-1.084x): to 16 bits
#   1.035-1.166x at 512-16384 x 20480-24576 (4096 x 24576 92.7% -> 97% of the copy ceiling),
#   4096 x 28672 1.02x; to fp32 1.04-1.21x at 512 x 24576, 1024 x 20480 and 4096 x 24576;
# - H200, full tiles: to 16 bits 1.07-1.14x at 512-16384 x 32768 (4096 x 32768 bf16 85.8% ->
#   96.4%), 4096 x 28672 1.18x, in a graph 1.10-1.13x at 512-1024 rows; to fp32 1.11x at
#   1024-4096 x 32768;
# - the fused add of a bf16 residual, which must follow: 0.991-0.996x at 24576 (H100),
#   1.012-1.015x at 512-16384 x 32768 (H200).
# 24577-32768 columns were taken on every GPU untimed on an H100, where the tile had reached
# 97.4% at 4096 x 32768 and the nearest A/B (28672) favoured the loop; nor was the loop timed
# against the late-fetched tile with an fp32 weight (bench/RESULTS.md, "Rows of 18433-24576
# columns loop", "Large calls on an H200").
# One 16-bit row of 513-1024 elements a program (a 1024 tile), to a 4-byte output, in calls of
# up to WIDE_OUT_1K_MAX_ROWS rows: 8 warps, half the stores a thread. Measured at 64-1024 x
# 768-1024 to fp32: 1.00-1.04x in a graph, 1.01-1.03x eager against 4; 2048 x 896: 0.89x /
# 0.96x, so larger calls keep 4. Calls under 33 rows and 513-767 columns were not measured and
# follow.
WIDE_OUT_1K_WARPS = 8
WIDE_OUT_1K_MAX_ROWS = 1024
# One-row programs of a 1024 tile fetch the weight first in calls of up to this many rows
# (`preload_weight`); at 2048 x 896 fetching first measured 1.009x, within the noise, so
# larger calls keep the late fetch.
PRELOAD_1K_MAX_ROWS = 1024
# The norm of bf16 x to a 4-byte output in LATE_WEIGHT_TILE (a 16384-wide tile on 16 warps, rows
# of 8193-16384 elements from 2048 rows) fetches the weight after the reduction with Triton
# LATE_WEIGHT_TRITON: fetched first, that compiler spills 8 bytes a thread there (64 registers);
# fetched late, 63 and no spill. fp16 x and the fused add spill neither way, nor do Triton
# 3.7-3.9. On an H100, late against first, in a graph and eager: 2048-16384 x 12288-16384
# 1.009-1.020x (16384 x 16384 96.7% -> 98.2% of the copy ceiling eager); fp16 x lost late
# (0.98-0.99x) and keeps the early fetch (bench/RESULTS.md, "fp16 split rows to fp32 capped at
# 32 registers; ...").
LATE_WEIGHT_TILE = (16384, 16)
LATE_WEIGHT_TRITON = (3, 6)
# A weight and bias of LATE_PARAMS_MIN_BYTES a column or more together (an fp32 weight; a
# 16-bit weight with a bias) in tiles LATE_PARAMS_TILE_N wide are fetched after the reduction,
# by every Triton and GPU: a 1024-thread program may keep 64 registers a thread, and fetched
# first they hold 32 or more of them across the reduction (sm_90, Triton 3.6-3.9: an fp32
# weight 32-88 bytes a thread spilled, a bf16 weight and bias 64-72, a bf16 weight and an fp32
# bias 144-184; late, none; a 16-bit weight alone spills nothing and keeps the early fetch). On an
# H100, late against first with an fp32 weight, at 1-4096 x 24576-32768, the norm of bf16 x and
# of fp16 x to fp32 and the fused add of a bf16 residual: 1.02-1.40x in a graph and eager (4096
# x 32768 bf16 85.7% -> 97.8% of the copy ceiling; the fused add 72.5% -> 98.6%); the bias forms
# follow, not timed (bench/RESULTS.md, "An fp32 weight in 32768-wide tiles fetched late"). Past
# decode-sized calls 16-bit rows of that tile now loop (SPARSE_WIDE_*), so the rule holds for
# calls of up to 256 rows and for tuned tables' tiles.
LATE_PARAMS_TILE_N = 32768
LATE_PARAMS_MIN_BYTES = 4
# The tensor-parallel fanout kernel holds every copy's weight and bias: in the same tile, with
# LATE_PARAMS_MIN_BYTES a column or more over all copies, fetched first they spill 56-1712 bytes a
# thread (sm_90, 1-8 copies, Triton 3.6-3.9), late 0-152 (scripts/fanout_registers.py). It fetches
# them late only in calls of up to FANOUT_LATE_MAX_ROWS rows: on 2 x H200, 32768 columns bf16 with
# two bf16 weights, in a graph, late against first 1.16x at 1 row (9.44 against 10.95 us) but
# 0.95x at 64 (31.2 against 29.6), a peer's weight being an NVLink round trip away once the sum is
# known; rows between were not timed (bench/RESULTS.md, "The fanout's weights fetched late").
FANOUT_LATE_MAX_ROWS = 1
# Row buckets up to this are decode-sized: their launch config favours latency.
DECODE_MAX_ROWS = 256
# A single-tile row of 4-byte x (the fused add's fp32 residual, or an fp32 norm) in a
# decode-sized call: this many elements a thread, half the warps that 8 gave. In a CUDA graph on
# an H100, the fused add of an fp32 residual at 1-64 x 4096-8192: 1.05-1.11x; at 2048 columns,
# and at 256 rows, 1.005-1.02x; the fp32 norm 1.00-1.04x; eager 1.01-1.03x. One row lost: the
# fused add to an fp32 output at 1 x 4096, 0.964x (bench/RESULTS.md, "Decode rows of 4-byte
# x"). Larger calls keep 8.
DECODE_4BYTE_PER_THREAD = 16
# Short rows are packed several to a program so that a tile carries >= this many elements:
# a 128-wide row alone would leave most of a warp's 16-byte lanes idle (65536 x 128: 64 rows
# a program, 73%; 4 rows, 41%). Rows of 256 or fewer want twice that.
MIN_TILE_ELEMS = 4096
MAX_BLOCK_M = 64
# The most elements one program's tile may hold (rows x columns); the tuner stays within it too.
MAX_TILE_ELEMS = 1 << 16
# Hidden sizes past this are refused: beyond every model we know of, and the looped path's
# fp32 sum of squares over more terms would lose precision it does not need to.
MAX_N = 1 << 24

CACHE_VERSION = 1

# Read once: Triton itself decides interpreter mode when the kernel module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int      # rows per program
    block_n: int      # tile width: next_power_of_2(N) for single-tile rows, else the chunk/slice
    num_warps: int
    looped: bool      # stream the row twice in block_n chunks (one program per row)
    splits: int = 1   # > 1: that many programs share a row, one block_n slice each (GPU only)


def next_pow2(n: int) -> int:
    """triton.next_power_of_2, minus its cost (microseconds) on the launch path."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def row_bucket(n_rows: int) -> int:
    """Row counts are tuned per power-of-two bucket, capped at 65536."""
    return min(next_pow2(n_rows), 65536)


def heuristic_config(n_cols: int, n_rows: int, x_itemsize: int, on_gpu: bool = True,
                     out_itemsize: int = 0, plain: bool = True) -> LaunchConfig:
    """The launch config for rows of n_cols elements, n_rows = the row bucket. x_itemsize: the
    element size of the tensor normalized (x, or the fused add's residual: the fused add then
    takes the config of the unfused norm of its updated residual, and equals it bit for bit);
    out_itemsize: the output's (0: the same); plain: the call has no bias, no accumulate and no
    fp16 clamp (the only calls whose rows are held, HELD_ROW_*).
    The rules and the measurements behind them: bench/RESULTS.md, "Launch heuristic"."""
    out_itemsize = out_itemsize or x_itemsize
    block_n = next_pow2(n_cols)
    if block_n > MAX_SINGLE_TILE_N:
        return _long_row_config(n_cols, n_rows, x_itemsize, out_itemsize, on_gpu, plain)
    if x_itemsize >= 4 and block_n >= WIDE_4BYTE_MIN_N:
        # The fused add's x, 4-byte residual and sum do not fit one 32K-element tile in
        # registers (spills: 71% at 4096 x 32768): few rows split the row, more loop over it
        # (99%). The unfused norm of a 4-byte tensor follows, to stay equal to it.
        if on_gpu and not INTERPRET and n_rows <= SPLIT_MAX_ROWS:
            return _split(n_cols, SPLIT_SLICE_N)
        return LaunchConfig(block_m=1, block_n=LOOP_CHUNK_N_WIDE, num_warps=16, looped=True)
    row_bytes = n_cols * (x_itemsize + out_itemsize)
    if out_itemsize >= 4:
        loop = row_bytes >= LOOP_MID_ROW_BYTES_4BYTE_OUT and n_rows >= LOOP_MID_ROWS[0] and (
            n_rows <= LOOP_MID_ROWS[1] or block_n <= LOOP_4BYTE_OUT_MAX_N)
        loop_1k = False
    else:
        loop = row_bytes >= LOOP_MID_ROW_BYTES and LOOP_MID_ROWS[0] <= n_rows <= LOOP_MID_ROWS[1]
        loop_1k = n_rows == LOOP_MID_ROWS[1] and \
            LOOP_1K_ROW_BYTES[0] < row_bytes <= LOOP_1K_ROW_BYTES[1]
    sparse = block_n >= SPARSE_TILE_MIN_N and n_rows > DECODE_MAX_ROWS and \
        n_cols * SPARSE_TILE_FILL[1] <= block_n * SPARSE_TILE_FILL[0]
    if x_itemsize == 2 and block_n > SPARSE_TILE_MIN_N and n_rows > DECODE_MAX_ROWS and (
            not sparse or n_rows >= SPARSE_WIDE_MIN_ROWS[out_itemsize >= 4]):
        return LaunchConfig(block_m=1, block_n=SPARSE_WIDE_CHUNK[out_itemsize >= 4],
                            num_warps=SPARSE_WIDE_WARPS, looped=True)
    if x_itemsize == 2 and out_itemsize == 2 and n_rows >= LARGE_LOOP_MIN_ROWS and \
            LARGE_LOOP_N[0] <= n_cols <= LARGE_LOOP_N[1]:
        return LaunchConfig(block_m=1, block_n=LARGE_LOOP_CHUNK, num_warps=LARGE_LOOP_WARPS,
                            looped=True)
    if x_itemsize == 2 and ((block_n <= LOOP_MID_MAX_N and (loop or loop_1k)) or sparse):
        # A whole wide row a program holds registers that several looping programs share, and
        # the second read comes from L2 (evict_last on the first).
        chunk = 1 << ((LOOP_CHUNK_BYTES // (x_itemsize + out_itemsize)).bit_length() - 1)
        return LaunchConfig(block_m=1, block_n=chunk, num_warps=LOOP_1K_WARPS if loop_1k else 16,
                            looped=True)
    if x_itemsize == 2 and out_itemsize >= 4 and block_n == 8192 and \
            n_cols > DECODE_WIDE_OUT_MIN_N and n_rows <= DECODE_WIDE_OUT_MAX_ROWS:
        return LaunchConfig(block_m=1, block_n=DECODE_WIDE_OUT_CHUNK, num_warps=32, looped=True)
    block_m = 1
    min_tile = MIN_TILE_ELEMS * (2 if block_n <= 256 else 1)
    while block_m * block_n < min_tile and block_m < MAX_BLOCK_M and block_m < n_rows and \
            (block_n <= PACK_ALWAYS_MAX_N or n_rows >= PACK_MIN_ROWS):
        block_m *= 2
    if block_n <= 1024:
        # Packed short rows: 4 warps won at N = 128..1024 (73-82%), 8 lost by 3-9 points.
        # One 16-bit row of 513-1024 to a 4-byte output, in smaller calls: WIDE_OUT_1K_WARPS.
        wide_out = block_n == 1024 and block_m == 1 and x_itemsize == 2 and \
            out_itemsize >= 4 and n_rows <= WIDE_OUT_1K_MAX_ROWS
        return LaunchConfig(block_m=block_m, block_n=block_n,
                            num_warps=WIDE_OUT_1K_WARPS if wide_out else 4, looped=False)
    # Elements a thread holds: 16 (16-bit x; 4-byte x 8, or DECODE_4BYTE_PER_THREAD in a
    # decode-sized call) for one row of up to 4K, and for any row of a decode-sized call (up to
    # 256 rows: latency-bound, more threads a row won: 64 x 16384 on 32 warps 4.05 us against
    # 4.18 on 16). From 512 rows twice that for tiles of 8K or more, so that two or more
    # programs share an SM (32 warps for a 16K row left one, and 89% of the ceiling at 16384
    # rows); packed rows too. Tiles of 32K keep 32 warps.
    tile = block_m * block_n
    wide = tile >= 8192 and n_rows > DECODE_MAX_ROWS
    if x_itemsize <= 2:
        per_thread = 16
    else:
        per_thread = DECODE_4BYTE_PER_THREAD if n_rows <= DECODE_MAX_ROWS else 8
    if wide or block_m > 1:
        per_thread *= 2
    max_warps = 16 if wide and tile <= 16384 else 32
    num_warps = max(4, min(max_warps, tile // (32 * per_thread)))
    if x_itemsize == 2 and block_m == 1:
        for (wide_out, t, lo, hi), warps in TILE_WARPS.items():
            if wide_out == (out_itemsize >= 4) and t == tile and lo <= n_rows <= hi:
                num_warps = warps
    return LaunchConfig(block_m=block_m, block_n=block_n, num_warps=num_warps, looped=False)


def _long_row_config(n_cols: int, n_rows: int, x_itemsize: int, out_itemsize: int,
                     on_gpu: bool, plain: bool = True) -> LaunchConfig:
    """Rows past MAX_SINGLE_TILE_N: held by one program each (HELD_ROW_*) or split over
    programs of one slice each on a GPU, streamed twice in chunks in the interpreter (or past
    MAX_SPLIT_SLICE_N-wide slices)."""
    narrow = x_itemsize <= 2 and out_itemsize <= 2         # 16-bit x to a 16-bit output
    if narrow and plain and on_gpu and not INTERPRET and HELD_ROW_HERE and \
            HELD_ROW_MIN_N <= n_cols <= HELD_ROW_N and n_rows >= HELD_ROW_MIN_ROWS:
        return LaunchConfig(block_m=1, block_n=HELD_ROW_N, num_warps=HELD_ROW_WARPS,
                            looped=False)
    few = n_rows * n_cols <= SPLIT_FEW_ELEMS
    if few:
        slice_n, warps = SPLIT_SLICE_N_FEW, SPLIT_WARPS
        if narrow:
            fewer = next_pow2(triton.cdiv(n_cols, SPLIT_FEW_MAX_SPLITS_16BIT))
            slice_n = max(slice_n, min(fewer, SPLIT_SLICE_N))
    elif narrow:
        slice_n, warps = SPLIT_SLICE_N_16BIT, SPLIT_WARPS
    else:
        slice_n = SPLIT_SLICE_N if n_cols <= 131072 else SPLIT_SLICE_N_LONG
        warps = SPLIT_WARPS if out_itemsize >= 4 else 4
    slice_n = max(slice_n, next_pow2(triton.cdiv(n_cols, MAX_SPLITS)))
    if x_itemsize <= 2 < out_itemsize and not few and \
            slice_n == SPLIT_SLICE_N_LONG:      # measured on 8192 slices only
        warps = SPLIT_WIDE_OUT_WARPS
    if on_gpu and not INTERPRET and slice_n <= MAX_SPLIT_SLICE_N:
        return _split(n_cols, slice_n, warps)
    return LaunchConfig(block_m=1, block_n=LOOP_CHUNK_N, num_warps=16, looped=True)


def _split(n_cols: int, slice_n: int, min_warps: int = 4) -> LaunchConfig:
    return LaunchConfig(block_m=1, block_n=slice_n, num_warps=max(min_warps, slice_n // 2048),
                        looped=False, splits=triton.cdiv(n_cols, slice_n))


def _triton_minor() -> tuple:
    """(major, minor) of this Triton; () for a version string of another form."""
    parts = triton.__version__.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return ()


SPLIT_CAP_HERE = torch.version.hip is None and _triton_minor() == SPLIT_CAP_TRITON
HELD_ROW_HERE = torch.version.hip is None and _triton_minor() in HELD_ROW_TRITONS
LATE_WEIGHT_HERE = torch.version.hip is None and _triton_minor() == LATE_WEIGHT_TRITON


def split_register_cap(cfg: LaunchConfig, n_rows: int, x_dtype: torch.dtype, out_itemsize: int,
                       residual_dtype: Optional[torch.dtype] = None,
                       weight_dtype: Optional[torch.dtype] = None, device_index: int = -1,
                       plain: bool = True) -> Optional[int]:
    """The registers a thread that a split-row launch compiles with at most (Triton's
    `maxnreg`), or None: uncapped. `residual_dtype`: the fused add's residual's, None without
    one; `weight_dtype`: None for x's; `plain`: a weight, no bias, no accumulate. The capped
    forms need 16-byte vectors (`row_vectors`); ops.py checks them per call.

    Only the forms measured are capped, since others spilled under a cap (compiled for sm_90
    with Triton 3.6; scripts/audit_registers.py): a power-of-two number of slices a row (8-32
    measured; the fused add spilled 8 bytes a thread at 3-24 others under 48, fp16 -> fp32 at
    48 slices under 32); the weight and the residual in x's dtype (an fp32 weight spilled 8-16
    bytes, fp16 x with a bf16 residual 8); a GPU of compute capability REGISTER_RULES_ARCH
    (`register_rules_on`; sm_80-89, sm_100 and sm_120 spilled 8-32 bytes in some capped
    forms). device_index -1: no GPU to ask (the tuner's compile-ahead on meta tensors)."""
    if not (SPLIT_CAP_HERE and plain and cfg.splits > 1 and _is_pow2(cfg.splits)
            and weight_dtype in (None, x_dtype) and residual_dtype in (None, x_dtype)
            and register_rules_on(device_index)):
        return None
    if cfg.block_n == SPLIT_SLICE_N_16BIT and cfg.num_warps == SPLIT_WARPS and \
            x_dtype.itemsize <= 2 and out_itemsize <= 2 and n_rows >= SPLIT_CAP_MIN_ROWS:
        return SPLIT_MAX_REGISTERS
    if x_dtype == torch.float16 and residual_dtype is None and out_itemsize == 4 and \
            (cfg.block_n, cfg.num_warps) in SPLIT_WIDE_OUT_CAPPED_FORMS and \
            n_rows >= SPLIT_WIDE_OUT_CAP_MIN_ROWS:
        return SPLIT_WIDE_OUT_MAX_REGISTERS
    return None


def hold_row(cfg: LaunchConfig, itemsize: int) -> bool:
    """Whether a single-tile program holds its values in their own 16 bits across the reduction
    (HOLD_X), not as fp32: a tile past MAX_SINGLE_TILE_N elements, whose fp32 values would fill
    the registers and spill. `itemsize`: of the tensor normalized (x, or the fused add's
    residual)."""
    return (cfg.splits == 1 and not cfg.looped and itemsize == 2
            and cfg.block_m * cfg.block_n > MAX_SINGLE_TILE_N)


def row_vectors(n_cols: int, *row_strides: int) -> bool:
    """Whether a launch's signature lets its rows load and store 16-byte vectors: the row length
    and the given row strides are multiples of 16 elements, what Triton specializes integers on
    (a multiple of 8 alone, a 16-byte vector, left the held kernel spilling). With the pointers
    16-byte aligned too (plans.misaligned, checked per call) they are vectors.

    Two launches rest on it, and spill without it:
    - a held row (`hold_row`): the strides of the tensor it holds (x, or the fused add's
      residual). The fused add's x and the output may be unaligned: compiled so, they spill
      nothing, and the fused add and the unfused norm of its residual, which share the rest,
      decide alike.
    - a register-capped split row (`split_register_cap`): the strides of the output and the
      residual (Triton 3.6 for sm_90: 56-704 bytes a thread off vectors; uncapped, none). x's
      own alignment changes nothing there, but a plan is keyed on the alignment of the tensor
      normalized (plans.misaligned: x for the norm), so a norm of unaligned x runs uncapped."""
    return not any(v % 16 for v in (n_cols, *row_strides))


def params_fetched_late(cfg: LaunchConfig, param_bytes: int) -> bool:
    """Whether a single tile holding weights and biases of `param_bytes` a column fetches them
    after the row reduction, as LATE_PARAMS_* say: fetched first they would not fit in
    registers beside the row."""
    return param_bytes >= LATE_PARAMS_MIN_BYTES and cfg.block_n >= LATE_PARAMS_TILE_N


def fanout_params_late(cfg: LaunchConfig, n_rows: int, param_bytes: int) -> bool:
    """The fanout kernel's single tile: `param_bytes` a column over every copy's weight and
    bias; late only up to FANOUT_LATE_MAX_ROWS rows (its looped path has no such choice)."""
    return not cfg.looped and n_rows <= FANOUT_LATE_MAX_ROWS and \
        params_fetched_late(cfg, param_bytes)


def preload_weight(cfg: LaunchConfig, n_rows: int, x_dtype: torch.dtype, out_itemsize: int,
                   fused: bool, device_index: int = -1, param_bytes: int = 0) -> bool:
    """Whether a single-tile program fetches weight and bias before the row reduction
    (`param_bytes`: the element sizes of the weight and the bias added, 0 for neither).

    Early, their load overlaps x's; late, it costs a second memory latency once the sum is
    known, which shows when they are not in L2. bench/ab_preload.py on an H100: early wins at
    decode sizes (1 x 8192: 1.92 against 2.10 us in a graph, 4.8 against 6.4 us eager; 64 x
    8192: 2.94 against 3.50 us) and up to 256 rows, and at N >= 8192 (1024 x 8192: 4%); late
    wins at 1024 x 4096 (9%, graph); large shapes are level (16384 x 8192: 97.9 / 97.5%).
    One row of 513-1024 elements a program (a 1024 tile), in calls of up to
    PRELOAD_1K_MAX_ROWS rows, fetches early too: at 512-1024 x 768-1024 in a graph 1.2-1.6%
    on an H100 (to fp32 0.3-2.5%), 0.0-1.4% on an H200, the fused add 0.4-0.5%
    (bench/RESULTS.md, "Short rows fetch the weight first"); 513-767 columns follow, not timed.
    The split-row kernel always fetches late (a comment there says why), and so do tiles past
    MAX_SINGLE_TILE_N: held 64K-element rows spilled with the weight fetched early (30-36
    registers a thread, 0.71-0.98x of the split row on an H200, "One program a 64K-element
    row"). bf16 x to a 4-byte output in LATE_WEIGHT_TILE fetches late with LATE_WEIGHT_TRITON
    on a GPU of `register_rules_on` (it spilled early), and so do weight and bias of
    LATE_PARAMS_MIN_BYTES a column in a LATE_PARAMS_TILE_N-wide tile (they spilled early)."""
    if params_fetched_late(cfg, param_bytes):
        return False
    if LATE_WEIGHT_HERE and not fused and x_dtype == torch.bfloat16 and out_itemsize == 4 and \
            cfg.block_m == 1 and (cfg.block_n, cfg.num_warps) == LATE_WEIGHT_TILE and \
            register_rules_on(device_index):
        return False
    return cfg.splits == 1 and not cfg.looped and cfg.block_m * cfg.block_n <= MAX_SINGLE_TILE_N \
        and (n_rows <= 256 or cfg.block_n >= 8192
        or (cfg.block_m == 1 and cfg.block_n == 1024 and n_rows <= PRELOAD_1K_MAX_ROWS))


def row_mask(cfg: LaunchConfig) -> bool:
    """Whether rmsnorm_fwd_kernel masks rows past the row count (it is passed n_rows only then).

    One row a program covers a row that exists, so it needs no mask. Measured in a graph,
    dropping it gained up to 2.5% for tiles and chunks up to 4096 wide (64-1024 x 896
    1.005-1.025x, 8-64 x 4096 1.02x, 4096-element loop chunks 1.02x); 8192-wide tiles on 16
    warps lost 1-1.8% at 16-64 rows, so those keep it (bench/RESULTS.md, "Rows still behind,
    profiled"). Wider tiles and loop chunks (16K-32K tiles, 8K-16K chunks) keep it too, not
    timed without it."""
    return cfg.block_m > 1 or cfg.block_n > 4096


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def check_config(n_cols: int, cfg: LaunchConfig) -> None:
    """Raise ValueError unless cfg covers every column of an n_cols row, within what the kernels
    compile: a table entry is data from disk, and a wrong one would leave output unwritten."""
    if not (_is_pow2(cfg.block_m) and _is_pow2(cfg.block_n) and type(cfg.num_warps) is int
            and cfg.num_warps in (1, 2, 4, 8, 16, 32) and type(cfg.splits) is int
            and 1 <= cfg.splits <= MAX_SPLITS
            and isinstance(cfg.looped, bool) and cfg.block_m * cfg.block_n <= MAX_TILE_ELEMS):
        raise ValueError(f"not a launch config the kernels compile: {cfg}")
    covered = cfg.looped or cfg.block_n * cfg.splits >= n_cols
    if not covered or (cfg.splits > 1 and (cfg.looped or cfg.block_m != 1
                                            or cfg.block_n * (cfg.splits - 1) >= n_cols)):
        raise ValueError(f"{cfg} does not cover a row of {n_cols} elements exactly once")


def cache_dir() -> Path:
    """$RMSNORM_TRITON_CACHE, else ~/.cache/rmsnorm_triton (RuntimeError where no home is
    known and the variable is unset)."""
    return Path(os.environ.get("RMSNORM_TRITON_CACHE") or
                Path.home() / ".cache" / "rmsnorm_triton")


def cache_path(gpu_name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu_name)
    return cache_dir() / f"{safe}__triton-{triton.__version__}.json"


def table_key(n_cols: int, bucket: int, x_dtype, out_dtype, has_residual: bool) -> str:
    return f"{n_cols}|{bucket}|{str(x_dtype)[6:]}|{str(out_dtype)[6:]}|{int(has_residual)}"


def load_table(path: Path, gpu_name: str) -> dict[str, LaunchConfig]:
    """The tuned table at `path`, or {} (with one warning) if it is unreadable or foreign."""
    try:
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION or data.get("gpu") != gpu_name \
                or data.get("triton") != triton.__version__:
            raise ValueError("written for another GPU, Triton or cache version")
        table = {k: LaunchConfig(**v) for k, v in data["configs"].items()}
        for key, cfg in table.items():
            check_config(int(key.split("|")[0]), cfg)
        return table
    except (ValueError, TypeError, KeyError, AttributeError, OSError, RecursionError) as e:
        warnings.warn(f"rmsnorm_triton: ignoring tuned-config cache {path}: {e}", stacklevel=2)
        return {}


def save_table(path: Path, gpu_name: str, configs: dict[str, LaunchConfig]) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    data = {"version": CACHE_VERSION, "gpu": gpu_name, "triton": triton.__version__,
            "configs": {k: asdict(v) for k, v in sorted(configs.items())}}
    write_text_atomic(path, json.dumps(data, indent=1))
    clear_caches()


# Called by clear_caches: memos built on pick_config's answers (plans.py) register here.
_cache_listeners: list = []
# Bumped by clear_caches, so that a memo begun before a clear can tell it is stale.
_generation = [0]


def config_generation() -> int:
    return _generation[0]


def clear_caches() -> None:
    """Forget memoized tables and configs, e.g. after a new tuned table was written."""
    _generation[0] += 1
    tuned_table.cache_clear()
    pick_config.cache_clear()
    for listener in _cache_listeners:
        listener()


@functools.lru_cache(maxsize=None)
def device_name(device_index: int) -> str:
    """One query per device per process; never on the hot path after the first call."""
    if device_index < 0:
        return "cpu"
    return torch.cuda.get_device_name(device_index)


@functools.lru_cache(maxsize=None)
def tuned_table(gpu_name: str) -> dict[str, LaunchConfig]:
    try:
        path = cache_path(gpu_name)
    except RuntimeError as e:       # no home directory, and no RMSNORM_TRITON_CACHE
        warnings.warn(f"rmsnorm_triton: no tuned-config cache ({e}); set "
                      "RMSNORM_TRITON_CACHE to use one", stacklevel=2)
        return {}
    return load_table(path, gpu_name)


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    """Streaming multiprocessors of a GPU; queried once per device, never on the hot path after
    the first call."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def capability_major(device_index: int) -> int:
    """A GPU's compute capability, major part; queried once per device."""
    return torch.cuda.get_device_capability(device_index)[0]


def register_rules_on(device_index: int) -> bool:
    """Whether the register rules (`split_register_cap`, the late weight of LATE_WEIGHT_TILE),
    read off sm_90 compiles, hold for this device: a GPU of compute capability
    REGISTER_RULES_ARCH, or none to ask (-1: the CPU, where split rows never run, and the
    tuner's compile-ahead on meta tensors)."""
    return device_index < 0 or capability_major(device_index) == REGISTER_RULES_ARCH


@functools.lru_cache(maxsize=None)
def held_rows_on(device_index: int) -> bool:
    """Whether this device runs held rows (`hold_row`): a GPU of compute capability
    HELD_ROW_ARCH, with a Triton of HELD_ROW_TRITONS, not interpreted. Queried once per
    device, through pick_config's memo."""
    return (device_index >= 0 and not INTERPRET and HELD_ROW_HERE
            and capability_major(device_index) == HELD_ROW_ARCH)


def runnable_here(cfg: LaunchConfig, device_index: int) -> bool:
    """Whether this device can run cfg. The programs of a split row wait for each other, so
    they must all be resident at once: the interpreter (one program at a time) and the CPU
    cannot, and a GPU must hold one program of the row per SM (MIG slices and small GPUs may
    not; the heuristic's split configs assume a full H100-class GPU)."""
    if cfg.splits == 1:
        return True
    return device_index >= 0 and not INTERPRET and cfg.splits <= sm_count(device_index)


@functools.lru_cache(maxsize=4096)
def pick_config(n_cols: int, bucket: int, x_dtype: torch.dtype, out_dtype: torch.dtype,
                has_residual: bool, device_index: int,
                residual_dtype: Optional[torch.dtype] = None, plain: bool = True
                ) -> LaunchConfig:
    """The launch config for rows of `n_cols` elements, `bucket` = row_bucket(n_rows).
    residual_dtype: the fused add's residual, where known (default: x's). plain: no bias, no
    accumulate, no fp16 clamp; a held row (`hold_row`) is for such calls only (the others
    spilled, HELD_ROW_*), and for the devices and Tritons of `held_rows_on`, so any other call
    takes the heuristic's config without one, a tuned held entry too.

    The fused add takes the config of the plain norm of its updated residual (tuned entry or
    heuristic), so that it equals the unfused two steps bit for bit. A split-row config this
    device cannot run (`runnable_here`) gives way to the heuristic's config without split rows
    (the looped path for rows past 32K elements)."""
    normalized = (residual_dtype or x_dtype) if has_residual else x_dtype
    cfg = tuned_table(device_name(device_index)).get(
        table_key(n_cols, bucket, normalized, out_dtype, False))
    if cfg is None:
        cfg = heuristic_config(n_cols, bucket, normalized.itemsize, device_index >= 0,
                               out_dtype.itemsize)
    if hold_row(cfg, normalized.itemsize) and not (plain and held_rows_on(device_index)):
        cfg = heuristic_config(n_cols, bucket, normalized.itemsize, device_index >= 0,
                               out_dtype.itemsize, plain=False)
    if not runnable_here(cfg, device_index):
        cfg = heuristic_config(n_cols, bucket, normalized.itemsize, False, out_dtype.itemsize)
    return cfg
