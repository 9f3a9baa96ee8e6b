"""Which kernel config torch.compile's autotuner picks for our reference RMSNorm, per shape.

    python bench/inductor_choice.py [MxN,...] [bf16|fp16] [fp32|same] [source]

Compiles the 16-bit -> fp32 (or same-dtype) norm the benchmark times for torch.compile, runs
each shape once, then prints every CachingAutotuner's size hints and chosen launcher config
(block sizes, warps, stages, registers, spills). Read against `bench/ab_mid_rows.py`. With
`source`, also the Inductor settings that change how its kernels launch (programmatic dependent
launch, the launcher) and each kernel's Triton source and compile options.
"""
import gc
import sys

import torch

from rmsnorm_triton import providers as P

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def main():
    shapes = [tuple(map(int, s.split("x"))) for s in (sys.argv[1] if len(sys.argv) > 1
                                                     else "4096x8192,16384x8192").split(",")]
    x_dtype = DTYPES[sys.argv[2] if len(sys.argv) > 2 else "bf16"]
    out_dtype = torch.float32 if (sys.argv[3] if len(sys.argv) > 3 else "fp32") == "fp32" \
        else x_dtype
    show_source = len(sys.argv) > 4 and sys.argv[4] == "source"
    P.prepare_compile()
    if show_source:
        cfg = torch._inductor.config
        for name in ("triton.enable_pdl", "use_static_cuda_launcher", "triton.cudagraphs"):
            obj = cfg
            for part in name.split("."):
                obj = getattr(obj, part, "absent")
            print(f"inductor config {name} = {obj}")
    norm = torch.compile(P._rms_norm_fp32, dynamic=False)
    for M, N in shapes:
        x = (0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
        norm(x, w, 1e-6, out_dtype)
    torch.cuda.synchronize()
    seen = set()
    for o in gc.get_objects():
        if type(o).__name__ != "CachingAutotuner" or id(o) in seen:
            continue
        seen.add(id(o))
        for launcher in getattr(o, "launchers", None) or []:
            print(o.size_hints, launcher.config, "registers", getattr(launcher, "n_regs", None),
                  "spills", getattr(launcher, "n_spills", None))
        # An autotuner without launchers repeats the source of one that has them.
        if show_source and getattr(o, "launchers", None):
            meta = getattr(o, "triton_meta", {}) or {}
            print("triton_meta:", {k: v for k, v in meta.items() if k not in ("signature",)})
            print("inductor_meta:", getattr(o, "inductor_meta", None))
            print(getattr(getattr(o, "fn", None), "src", "(no source)"))


if __name__ == "__main__":
    main()
