"""Every bad argument gets a TypeError/ValueError naming the argument and the value seen.

One row of CASES per bad argument; docs/errors.md holds the same table for users, and
test_docs_table_matches_cases keeps the two in sync (ids, functions, error type, message).
A case with `open_defect` is a bad input the package does not reject yet: it runs as a strict
xfail, so fixing the defect makes the suite say so.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import rmsnorm_triton as rt
from rmsnorm_triton.config import MAX_N

N = 32
ROWS = 4
FP8 = getattr(torch, "float8_e4m3fn", None)
DOCS_TABLE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"

RMS, REF, FUSED = "rms_norm", "rms_norm_reference", "fused_add_rms_norm"
ALL = (RMS, REF, FUSED)
NORM = (RMS, REF)          # the functions with accumulate= and without residual
FUNCTIONS = {RMS: rt.rms_norm, REF: rt.rms_norm_reference, FUSED: rt.fused_add_rms_norm}


def other_device(device):
    """A second device: the CPU next to a GPU; on a CPU-only machine, the meta device."""
    return "cpu" if torch.device(device).type == "cuda" else "meta"


@dataclass(frozen=True)
class Case:
    id: str
    fns: tuple            # which public functions take this argument
    make: Callable        # (device) -> the arguments that replace the valid baseline's
    error: type
    says: tuple           # fragments of the message; {other} and {device} are filled in
    open_defect: str = ""  # non-empty: not rejected yet; the test is a strict xfail
    open_for: tuple = ()   # the functions the defect affects, when not all of `fns`


def _t(dtype, shape=(ROWS, N)):
    def make(d):
        if dtype == torch.int32:
            return torch.ones(shape, dtype=dtype, device=d)
        return torch.randn(shape, device=d).to(dtype)
    return make


def _arg(name, value_fn):
    return lambda d: {name: value_fn(d)}


def _overlap_out_x(d):
    buf = torch.randn(ROWS + 1, N, device=d)
    return {"x": buf[:-1], "out": buf[1:]}


def _out_shares_a_column_with_x(d):
    # Column views of one buffer: out's first column is x's last in every row.
    buf = torch.randn(ROWS, 2 * N - 1, device=d)
    return {"x": buf[:, :N], "out": buf[:, N - 1:]}


def _residual_shares_a_column_with_x(d):
    buf = torch.randn(ROWS, 2 * N - 1, device=d)
    return {"x": buf[:, :N], "residual": buf[:, N - 1:]}


def _out_aliases_x_as_bf16(d):
    x = torch.randn(ROWS, N, device=d).half()
    return {"x": x, "out": x.view(torch.bfloat16)}


def _overlap_residual_x(d):
    buf = torch.randn(ROWS + 1, N, device=d)
    return {"x": buf[:-1], "residual": buf[1:]}


def _out_is_residual(d):
    res = torch.randn(ROWS, N, device=d)
    return {"residual": res, "out": res}


def _out_holds(name):
    # `name` is row 1 of out's storage: rows written first change it before later rows read it.
    def make(d):
        buf = torch.randn(ROWS, N, device=d)
        return {"out": buf, name: buf[1]}
    return make


def _residual_holds_weight(d):
    res = torch.randn(ROWS, N, device=d)
    return {"residual": res, "weight": res[1]}


def _type_cases(name, fns, make_shape=(ROWS, N)):
    rows = [Case(f"{name}-int32", fns, _arg(name, _t(torch.int32, make_shape)), TypeError,
                 (f"{name} must be float16, bfloat16 or float32", "got torch.int32")),
            Case(f"{name}-float64", fns, _arg(name, _t(torch.float64, make_shape)), TypeError,
                 (f"{name} must be float16, bfloat16 or float32", "got torch.float64"))]
    if FP8 is not None:
        rows.append(Case(f"{name}-float8", fns, _arg(name, _t(FP8, make_shape)), TypeError,
                         (f"{name} must be float16, bfloat16 or float32",
                          "got torch.float8_e4m3fn")))
    return rows


CASES = [
    # -- dtypes and types ---------------------------------------------------------------------
    *_type_cases("x", ALL),
    *_type_cases("weight", ALL, (N,)),
    *_type_cases("bias", ALL, (N,)),
    *_type_cases("out", ALL),
    *_type_cases("residual", (FUSED,)),
    Case("x-list", ALL, _arg("x", lambda d: [[1.0] * N] * ROWS), TypeError,
         ("x must be a torch.Tensor", "got list")),
    Case("weight-list", ALL, _arg("weight", lambda d: [1.0] * N), TypeError,
         ("weight must be a torch.Tensor", "got list")),
    Case("residual-none", (FUSED,), _arg("residual", lambda d: None), TypeError,
         ("residual must be a torch.Tensor", "got NoneType")),
    # -- layouts: the kernels read dense memory through strides ---------------------------------
    Case("x-sparse", ALL, _arg("x", lambda d: torch.randn(ROWS, N, device=d).to_sparse()),
         TypeError, ("x must be a dense tensor", "got a torch.sparse_coo tensor")),
    Case("x-sparse-csr", ALL,
         _arg("x", lambda d: torch.randn(ROWS, N, device=d).to_sparse_csr()), TypeError,
         ("x must be a dense tensor", "got a torch.sparse_csr tensor")),
    Case("x-nested", ALL, _arg("x", lambda d: torch.nested.nested_tensor(
        [torch.randn(2, N, device=d), torch.randn(3, N, device=d)], layout=torch.jagged)),
        TypeError, ("x must be a dense tensor", "got a nested tensor")),
    Case("weight-sparse", ALL, _arg("weight", lambda d: torch.randn(N, device=d).to_sparse()),
         TypeError, ("weight must be a dense tensor", "got a torch.sparse_coo tensor")),
    Case("out-sparse", ALL, _arg("out", lambda d: torch.zeros(ROWS, N, device=d).to_sparse()),
         TypeError, ("out must be a dense tensor", "got a torch.sparse_coo tensor")),
    Case("residual-sparse", (FUSED,),
         _arg("residual", lambda d: torch.randn(ROWS, N, device=d).to_sparse()), TypeError,
         ("residual must be a dense tensor", "got a torch.sparse_coo tensor")),
    Case("x-lazy-zero", ALL, _arg("x", lambda d: torch._efficientzerotensor((ROWS, N), device=d)),
         TypeError, ("x must be a dense tensor with memory", "lazy zero tensor")),
    Case("weight-lazy-zero", ALL,
         _arg("weight", lambda d: torch._efficientzerotensor((N,), device=d)), TypeError,
         ("weight must be a dense tensor with memory", "lazy zero tensor")),
    # -- shapes ----------------------------------------------------------------------------------
    Case("weight-shape", ALL, _arg("weight", _t(torch.float32, (N - 1,))), ValueError,
         (f"weight must have shape ({N},)", f"got ({N - 1},)")),
    Case("weight-2d", ALL, _arg("weight", _t(torch.float32, (1, N))), ValueError,
         (f"weight must have shape ({N},)", f"got (1, {N})")),
    Case("bias-shape", ALL, _arg("bias", _t(torch.float32, (N + 1,))), ValueError,
         (f"bias must have shape ({N},)", f"got ({N + 1},)")),
    Case("out-shape", ALL, _arg("out", _t(torch.float32, (ROWS, N - 1))), ValueError,
         (f"out must have x's shape ({ROWS}, {N})", f"got ({ROWS}, {N - 1})")),
    Case("out-shape-same-numel", ALL, _arg("out", _t(torch.float32, (ROWS // 2, 2 * N))),
         ValueError, (f"out must have x's shape ({ROWS}, {N})", f"got ({ROWS // 2}, {2 * N})")),
    Case("residual-shape", (FUSED,), _arg("residual", _t(torch.float32, (ROWS, N + 1))),
         ValueError, (f"residual must have x's shape ({ROWS}, {N})", f"got ({ROWS}, {N + 1})")),
    Case("x-0d", ALL, lambda d: {"x": torch.tensor(1.0, device=d)}, ValueError,
         ("x must have at least one dimension", "got a scalar")),
    Case("n-zero", ALL, lambda d: {"x": torch.randn(ROWS, 0, device=d), "weight": None},
         ValueError, ("hidden size", f"got 0 (x.shape=({ROWS}, 0))")),
    # A zero-stride view: the size check must come before anything touches the data.
    Case("n-above-max", ALL,
         lambda d: {"x": torch.empty(1, device=d).expand(1, MAX_N + 1), "weight": None},
         ValueError, (f"must be in [1, {MAX_N}]", f"got {MAX_N + 1}")),
    # -- devices ---------------------------------------------------------------------------------
    *[Case(f"{name}-device", fns, _arg(name, lambda d, s=shape: torch.empty(
        s, device=other_device(d))), ValueError, (f"{name} is on {{other}}", "x is on {device}"))
      for name, fns, shape in (("weight", ALL, (N,)), ("bias", ALL, (N,)),
                               ("out", ALL, (ROWS, N)), ("residual", (FUSED,), (ROWS, N)))],
    # -- aliasing --------------------------------------------------------------------------------
    Case("out-overlaps-x", ALL, _overlap_out_x, ValueError, ("out overlaps x",)),
    Case("out-shares-a-column-with-x", ALL, _out_shares_a_column_with_x, ValueError,
         ("out overlaps x",)),
    Case("residual-shares-a-column-with-x", (FUSED,), _residual_shares_a_column_with_x,
         ValueError, ("residual overlaps x",)),
    Case("out-aliases-x-as-other-dtype", ALL, _out_aliases_x_as_bf16, ValueError,
         ("out overlaps x",)),
    Case("out-overlaps-residual", (FUSED,), _out_is_residual, ValueError,
         ("out overlaps residual",)),
    Case("residual-overlaps-x", (FUSED,), _overlap_residual_x, ValueError,
         ("residual overlaps x",)),
    Case("out-overlaps-weight", ALL, _out_holds("weight"), ValueError, ("out overlaps weight",)),
    Case("out-overlaps-bias", ALL, _out_holds("bias"), ValueError, ("out overlaps bias",)),
    Case("residual-overlaps-weight", (FUSED,), _residual_holds_weight, ValueError,
         ("residual overlaps weight",)),
    Case("out-self-overlapping", ALL,
         _arg("out", lambda d: torch.empty(N, device=d).expand(ROWS, N)), ValueError,
         ("out", "overlapping elements")),
    Case("residual-self-overlapping", (FUSED,),
         _arg("residual", lambda d: torch.zeros(N, device=d).expand(ROWS, N)), ValueError,
         ("residual", "overlapping elements")),
    # Rows N/2 apart: no stride is 0, yet every element but the first rows' shares memory.
    Case("out-rows-overlapping", ALL,
         _arg("out", lambda d: torch.empty(ROWS * N, device=d).as_strided((ROWS, N),
                                                                           (N // 2, 1))),
         ValueError, ("out", "overlapping elements")),
    Case("residual-rows-overlapping", (FUSED,),
         _arg("residual", lambda d: torch.zeros(ROWS * N, device=d).as_strided((ROWS, N),
                                                                                (N // 2, 1))),
         ValueError, ("residual", "overlapping elements")),
    # -- eps and weight_offset -------------------------------------------------------------------
    Case("eps-negative", ALL, _arg("eps", lambda d: -1e-6), ValueError,
         ("eps must be a finite number >= 0", "got -1e-06")),
    Case("eps-nan", ALL, _arg("eps", lambda d: float("nan")), ValueError,
         ("eps must be a finite number >= 0", "got nan")),
    Case("eps-inf", ALL, _arg("eps", lambda d: float("inf")), ValueError,
         ("eps must be a finite number >= 0", "got inf")),
    Case("eps-huge-int", ALL, _arg("eps", lambda d: 10 ** 400), ValueError,
         ("eps must be a finite number >= 0",)),
    Case("eps-string", ALL, _arg("eps", lambda d: "1e-6"), TypeError,
         ("eps must be a float", "got str ('1e-6')")),
    Case("eps-tensor", ALL, _arg("eps", lambda d: torch.tensor(1e-6, device=d)), TypeError,
         ("eps must be a float", "got Tensor")),
    Case("eps-none", ALL, _arg("eps", lambda d: None), TypeError,
         ("eps must be a float", "got NoneType")),
    Case("eps-bool", ALL, _arg("eps", lambda d: True), TypeError,
         ("eps must be a float", "got bool (True)")),
    Case("weight_offset-nan", ALL, _arg("weight_offset", lambda d: float("nan")), ValueError,
         ("weight_offset must be finite", "got nan")),
    Case("weight_offset-string", ALL, _arg("weight_offset", lambda d: "1"), TypeError,
         ("weight_offset must be a float", "got str")),
    # -- output options --------------------------------------------------------------------------
    Case("out_dtype-int32", ALL, _arg("out_dtype", lambda d: torch.int32), TypeError,
         ("out_dtype must be float16, bfloat16 or float32 or None", "got torch.int32")),
    Case("out_dtype-float64", ALL, _arg("out_dtype", lambda d: torch.float64), TypeError,
         ("out_dtype must be float16, bfloat16 or float32 or None", "got torch.float64")),
    Case("out_dtype-string", ALL, _arg("out_dtype", lambda d: "float16"), TypeError,
         ("out_dtype must be", "got float16")),
    Case("out-and-out_dtype-disagree", ALL,
         lambda d: {"out": torch.empty(ROWS, N, device=d), "out_dtype": torch.float16},
         ValueError, ("out has dtype torch.float32", "out_dtype=torch.float16")),
    Case("accumulate-without-out", NORM, _arg("accumulate", lambda d: True), ValueError,
         ("accumulate=True", "pass out=")),
    # -- flags: read as bools, never by the truthiness of another type ------------------------
    Case("accumulate-string", NORM,
         lambda d: {"out": torch.zeros(ROWS, N, device=d), "accumulate": "False"}, TypeError,
         ("accumulate must be a bool", "got str ('False')")),
    Case("accumulate-none", NORM,
         lambda d: {"out": torch.zeros(ROWS, N, device=d), "accumulate": None}, TypeError,
         ("accumulate must be a bool", "got NoneType")),
    Case("clamp_fp16_input-string", NORM, _arg("clamp_fp16_input", lambda d: "no"), TypeError,
         ("clamp_fp16_input must be a bool", "got str ('no')")),
    Case("clamp_fp16_input-float", NORM, _arg("clamp_fp16_input", lambda d: 1.0), TypeError,
         ("clamp_fp16_input must be a bool", "got float (1.0)")),
    Case("accumulate-tensor", NORM,
         lambda d: {"out": torch.zeros(ROWS, N, device=d),
                    "accumulate": torch.tensor(True, device=d)}, TypeError,
         ("accumulate must be a bool", "got Tensor")),
]


def call(fn_name, device, overrides):
    """The function on valid baseline arguments, with the case's bad ones swapped in."""
    args = {"x": torch.randn(ROWS, N, device=device), "weight": torch.randn(N, device=device)}
    if fn_name == FUSED:
        args["residual"] = torch.randn(ROWS, N, device=device)
    args.update(overrides)
    x = args.pop("x")
    if fn_name == FUSED:
        return rt.fused_add_rms_norm(x, args.pop("residual"), **args)
    return FUNCTIONS[fn_name](x, **args)


def _params():
    for case in CASES:
        for fn_name in case.fns:
            open_here = case.open_defect and fn_name in (case.open_for or case.fns)
            marks = [pytest.mark.xfail(strict=True, reason=case.open_defect)] if open_here else []
            yield pytest.param(case, fn_name, id=f"{fn_name}-{case.id}", marks=marks)


@pytest.mark.parametrize("case,fn_name", list(_params()))
def test_bad_argument_is_rejected(device, case, fn_name):
    overrides = case.make(device)
    with pytest.raises(case.error) as info:
        call(fn_name, device, overrides)
    message = str(info.value)
    fill = {"other": other_device(device), "device": torch.device(device)}
    for fragment in case.says:
        assert fragment.format(**fill) in message, f"{fragment!r} not in {message!r}"


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def _docs_rows():
    """{id: (functions, error, fragments, status)} from the markdown table of docs/errors.md."""
    rows = {}
    for line in DOCS_TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 6 or not cells[0].startswith("`"):
            continue      # header, separator and prose
        case_id, fns, _bad, error, message, status = cells
        fns = ALL if fns == "all" else tuple(f.strip() for f in fns.split(","))
        rows[case_id.strip("`")] = (fns, error, tuple(re.findall(r"`([^`]*)`", message)), status)
    return rows


def test_docs_table_matches_cases():
    docs = _docs_rows()
    documented = set(docs) if FP8 is not None else {i for i in docs if not i.endswith("float8")}
    assert documented == {c.id for c in CASES}, "docs/errors.md and CASES list different ids"
    for case in CASES:
        fns, error, says, status = docs[case.id]
        assert set(fns) == set(case.fns), f"{case.id}: functions differ"
        assert error == case.error.__name__, f"{case.id}: error type differs"
        assert says == case.says, f"{case.id}: message fragments differ: {says} vs {case.says}"
        assert status.startswith("open") == bool(case.open_defect), f"{case.id}: status differs"
