"""Compile every Triton kernel for a GPU target without a GPU (ahead of time, through ptxas).

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python on CPU and accepts code that the
GPU compiler rejects (an fp64 operand to div_rn, a non-constexpr branch around a return...).
This compiles each kernel and its dtype / option variants for sm_90 (H100/H200) with the
ptxas bundled in the triton wheel, so such errors show up on machines with no GPU. It runs
nothing. Must run without TRITON_INTERPRET (interpreted kernels cannot be compiled).

    python -m snnsparse.triton_kernels.aot_check [--arch 90] [--quick]

Exit status 0 when every variant compiled, 1 otherwise; one line per variant, with the shared
memory it asks for and its count of tensor-core instructions in the PTX (wgmma: Hopper's
warpgroup MMA; mma.sync: the Ampere-style one Triton falls back to for tiles under 64 rows).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

TORCH_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}


def _tiles(dt: str, kernel: str) -> dict:
    """The GPU tile sizes snnsparse/ops/triton.py launches with (one source of truth)."""
    import torch

    from snnsparse.ops import triton as ops
    dtype = getattr(torch, TORCH_DTYPE[dt])
    if kernel == "conv":
        return ops._conv_tiles(dtype, 256, 256)
    return ops._linear_tiles(dtype, kernel)


def variants(quick: bool):
    """(label, kernel, pointer/scalar types, constexprs)."""
    from . import lif as LF
    from . import spike_conv2d as C
    from . import spike_linear as L
    from . import spike_pack as P

    out = [("pack", P.pack_spikes_kernel, {"x_ptr": "*fp16", "bits_ptr": "*i32"}, dict(BLOCK_R=32, BLOCK_W=4)),
           ("compact", P.compact_active_columns_kernel, {"bits_ptr": "*i32", "kidx_ptr": "*i32", "kcnt_ptr": "*i32"},
            dict(BLOCK_N=32, BLOCK_W=4))]
    dtypes = ("fp16", "bf16", "fp32", "fp64")
    conv_c = dict(SH=1, SW=1, PH=1, PW=1, DH=1, DW=1, KH=3, KW=3)
    for dt in dtypes:
        split, f64 = dt == "fp32", dt == "fp64"
        if quick and dt == "bf16":
            continue
        lin = dict(SPLIT=split, IS_F64=f64)
        gemm = not quick or dt in ("fp16", "fp32")      # quick: the tensor-core and TF32-split paths
        conv = not quick or dt == "fp32"                # (fp16 conv compiles slowest; same code)
        out += [] if not gemm else [
            (f"linear_fwd {dt}", L.spike_linear_fwd_kernel,
             {"bits_ptr": "*i32", "kidx_ptr": "*i32", "kcnt_ptr": "*i32", "wt_ptr": f"*{dt}", "mcnt_ptr": "*i32",
              "b_ptr": f"*{dt}", "out_ptr": f"*{dt}", "part_ptr": "*i64"},
             dict(lin, HAS_BIAS=True, HAS_MASK=True, COUNT=True, **_tiles(dt, "fwd"))),
            (f"linear_grad_in {dt}", L.spike_linear_grad_in_kernel,
             {"g_ptr": f"*{dt}", "wt_ptr": f"*{dt}", "bflag_ptr": "*i32", "gin_ptr": f"*{dt}"},
             dict(lin, HAS_MASK=True, **_tiles(dt, "grad_in"))),
            (f"linear_grad_w {dt}", L.spike_linear_grad_w_kernel,
             {"g_ptr": f"*{dt}", "bits_ptr": "*i32", "mask_ptr": "*u8", "bflag_ptr": "*i32", "gw_ptr": f"*{dt}"},
             dict(lin, HAS_MASK=True, DENSE=False, SKIP_ZERO_TILES=True, **_tiles(dt, "grad_w"))),
        ]
        cv = dict(conv_c, SPLIT=split, IS_F64=f64, **_tiles(dt, "conv"))
        out += [] if not conv else [
            (f"conv_fwd {dt}", C.spike_conv2d_fwd_kernel,
             {"bits_ptr": "*i32", "wt_ptr": f"*{dt}", "bflag_ptr": "*i32", "mcnt_ptr": "*i32", "b_ptr": f"*{dt}",
              "out_ptr": f"*{dt}", "part_ptr": "*i64"},
             dict(cv, HAS_BIAS=True, HAS_MASK=True, COUNT=True, SKIP_ZERO_TILES=not quick or dt != "fp32")),
            (f"conv_grad_in {dt}", C.spike_conv2d_grad_in_kernel,
             {"g_ptr": f"*{dt}", "wt_ptr": f"*{dt}", "bflag_ptr": "*i32", "gin_ptr": f"*{dt}"}, dict(cv, HAS_MASK=True)),
            (f"conv_grad_w {dt}", C.spike_conv2d_grad_w_kernel,
             {"g_ptr": f"*{dt}", "bits_ptr": "*i32", "mask_ptr": "*u8", "bflag_ptr": "*i32", "gw_ptr": f"*{dt}"},
             dict(cv, HAS_MASK=True, DENSE=False, SKIP_ZERO_TILES=True)),
        ]
        scal = {"tau": "fp32", "v_th": "fp32", "v_reset": "fp32", "alpha": "fp32"}
        acc = "fp64" if dt == "fp64" else "fp32"
        for ch, charge in enumerate(LF.CHARGES):
            out.append((f"lif_fwd {dt} charge={charge}", LF.lif_fwd_kernel,
                        {"x_ptr": f"*{dt}", "v0_ptr": f"*{dt}", "s_ptr": f"*{dt}", "v_ptr": f"*{dt}", "h_ptr": f"*{dt}",
                         "bits_ptr": "*i32", "cnt_ptr": "*i32", "k_ptr": f"*{dt}", **scal},
                        dict(CHARGE=ch, DECAY_INPUT=True, HARD_RESET=True, SAVE_H=True, EMIT_BITS=True,
                             ROUND=dt in ("fp16", "bf16"), EXACT_MUL=True, BLOCK=256)))
        for sur in range(5):
            out.append((f"lif_bwd {dt} surrogate={LF.SURROGATES[sur]}", LF.lif_bwd_kernel,
                        {"gs_ptr": f"*{dt}", "gv_ptr": f"*{dt}", "gh_ptr": f"*{dt}", "h_ptr": f"*{dt}",
                         "gx_ptr": f"*{dt}", "gv0_ptr": f"*{dt}", "k_ptr": f"*{dt}", "x_ptr": f"*{dt}",
                         "v0_ptr": f"*{dt}", "gkn_ptr": f"*{acc}", **scal},
                        dict(HAS_GV=True, HAS_GH=True, CHARGE=sur % 3, DECAY_INPUT=sur % 2 == 0, HARD_RESET=sur < 3,
                             DETACH_RESET=sur == 3, SURROGATE=sur, GRAD_K=sur % 3 == 2,
                             ROUND=dt in ("fp16", "bf16"), BLOCK=256)))
            if quick:
                break
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true",
                    help="linear fp16+fp32, conv fp32, LIF fp16/fp32/fp64 with one surrogate (the CI subset)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_check: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)")
        return 1
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for label, fn, types, consts in variants(args.quick):
        sig = {name: ("constexpr" if name in consts else types.get(name, "i32")) for name in fn.arg_names}
        t0 = time.time()
        try:
            k = triton.compile(ASTSource(fn, sig, constexprs=dict(consts)), target=target,
                               options={"num_warps": 4})
            ptx = k.asm["ptx"]
            print(f"ok    sm_{args.arch} {label:40s} {time.time() - t0:5.1f}s  shared={k.metadata.shared:6d}  "
                  f"wgmma={ptx.count('wgmma.mma_async'):3d}  mma.sync={ptx.count('mma.sync'):3d}", flush=True)
        except Exception as e:  # noqa: BLE001  (report every variant, then fail)
            failed += 1
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            print(f"FAIL  sm_{args.arch} {label}: {type(e).__name__}: {str(e)[-1200:]}\n  cause: {cause!r}"[:3000],
                  flush=True)
    print(f"aot_check: {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
