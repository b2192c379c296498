"""Triton backend: the kernels of kernels/ (snnsparse.triton_kernels) as torch.library ops.

Ops (namespace snnsparse_triton), each with a fake kernel and autograd:
    spike_linear_fwd / spike_linear_bwd, spike_conv2d_fwd / spike_conv2d_bwd, lif_fwd / lif_bwd.

Registration: on a GPU the ops are torch.library.triton_op and every launch goes through
wrap_triton, so torch.compile / export trace into the op and see the Triton kernels. Under
TRITON_INTERPRET=1 (CPU tensors, the kernels run in Triton's interpreter) they are
torch.library.custom_op instead, because with triton 3.9 + torch 2.13 opcheck of a triton_op
fails there: test_faketensor runs the op body under FakeTensorMode, where the interpreter
reads the data pointers of meta-backed fake tensors ("meta vs cpu storage"), and even with a
register_fake, test_aot_dispatch_dynamic traces the body and the interpreter touches "the data
pointer on an invalid python storage". A custom_op is opaque to those tracers (they use the
fake kernel), so opcheck passes; the kernels, fake kernels and autograd are the same in both
modes. TRITON_INTERPRET is read when triton is imported, so the mode is fixed per process.

The backend runs on CUDA tensors, or on CPU tensors only when TRITON_INTERPRET=1 was set
before triton was imported (and only when asked for: backends.resolve never picks triton
for CPU tensors on its own).

Weight preparation (per call, on the device, no host sync): W with pruned entries zeroed (reference
masked_weight: torch.where, not W*mask, so a pruned NaN or inf weight is absent) transposed to the kernels'
weight-stationary layout plus per-block kept-synapse counts (bflag) and per-column counts
(mcnt) used for skipping and counting. It is O(weight) work, small next to the GEMM for
T*B >> 1, and is redone every call: a cache keyed on tensor versions was tried and dropped,
because writes through `.data` (gradcheck, pruning code) change a weight without bumping its
version and the cache then served a stale weight.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch

from snnsparse.ops import conv2d as _conv2d_glue
from snnsparse.ops import linear as _linear_glue
from snnsparse.ops import lif as _lif_glue
from snnsparse.ops.conv2d import output_size as conv2d_output_size
from snnsparse.ops.reference import masked_weight

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
NS = "snnsparse_triton"

try:
    import triton
    from triton import cdiv
    _IMPORT_ERROR: Optional[str] = None
except ImportError as e:  # reported by unavailable_reason()
    triton = None
    _IMPORT_ERROR = f"triton cannot be imported ({e}); pip install triton"

# Ops are registered (and the kernels imported) only where they can run. A process that imported
# this module with neither CUDA nor the interpreter has registered nothing, so it can set
# TRITON_INTERPRET=1 and importlib.reload() this module (tests/test_triton_ops.py does).
ENABLED = _IMPORT_ERROR is None and (INTERPRET or torch.cuda.is_available())
if ENABLED:
    from snnsparse.triton_kernels import lif as _klif
    from snnsparse.triton_kernels import spike_conv2d as _kconv
    from snnsparse.triton_kernels import spike_linear as _klin
    from snnsparse.triton_kernels import spike_pack as _kpack


def unavailable_reason() -> Optional[str]:
    """None when this backend can run here, else why not."""
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    if not INTERPRET and not torch.cuda.is_available():
        return ("no CUDA device; the Triton kernels run on CPU only in the interpreter "
                "(set TRITON_INTERPRET=1 before triton is imported)")
    return None


def supports(device: torch.device):
    """True when the Triton backend can run ops on tensors of `device`, else the reason."""
    device = torch.device(device)
    if _IMPORT_ERROR:
        return _IMPORT_ERROR
    if device.type == "cuda":
        if INTERPRET:
            return "TRITON_INTERPRET=1 is set: the Triton kernels run in the interpreter on CPU tensors only"
        return True
    if device.type == "cpu":
        if INTERPRET:
            return True
        return ("Triton runs on CPU tensors only in the interpreter: set TRITON_INTERPRET=1 before "
                "triton is imported (tests only; slow)")
    return f"the Triton backend does not support {device.type} tensors"


# ---------------------------------------------------------------------------------------------
# registration helpers

def _launch(kernel):
    """A kernel launcher: wrap_triton (traceable) for triton_op, the plain kernel for custom_op."""
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


def _define(name: str):
    def deco(fn):
        if not ENABLED:  # no CUDA and no interpreter: the op is not registered in this process
            return fn
        if INTERPRET:
            return torch.library.custom_op(f"{NS}::{name}", mutates_args=())(fn)
        return torch.library.triton_op(f"{NS}::{name}", mutates_args=())(fn)
    return deco


# Floating dtypes the kernels compute correctly in this process. Triton's interpreter has no
# bfloat16 (numpy has none): it stores bf16 as raw uint16, so only its fp32<->bf16 casts see
# the bits as a float (and they truncate instead of rounding to nearest), while tl.dot, the
# arithmetic, comparisons and int->bf16 casts act on the integers: linear/conv results came out
# off by up to 1e6. Under the interpreter bf16 is therefore refused, never computed.
_FLOATS = ((torch.float16, torch.float32, torch.float64) if INTERPRET
           else (torch.float16, torch.bfloat16, torch.float32, torch.float64))


def _check_dtypes(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """TypeError naming the argument when a floating tensor has a dtype the kernels cannot compute here."""
    for name, t in tensors.items():
        if t is None or not t.is_floating_point() or t.dtype in _FLOATS:
            continue
        if INTERPRET and t.dtype == torch.bfloat16:
            raise TypeError(f"{op}: {name} is torch.bfloat16, which the Triton backend cannot compute under "
                            f"TRITON_INTERPRET=1 (the interpreter stores bfloat16 as raw uint16: numpy has no "
                            f"bfloat16, so its dots and arithmetic are wrong); use float16, float32 or float64 "
                            f"here, or bfloat16 on a CUDA device")
        raise TypeError(f"{op}: {name} must be one of {', '.join(map(str, _FLOATS))} for the Triton backend, "
                        f"got {t.dtype}")


def _split(dtype: torch.dtype) -> bool:
    # fp32 GEMMs run on TF32 tensor cores with a hi/lo split (kernels/common.py: mma).
    return dtype == torch.float32


def _f64(dtype: torch.dtype) -> bool:
    return dtype == torch.float64


def _zero_count(device) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=device)


def _pad_to(t: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    size = t.shape[dim]
    extra = (-size) % multiple
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim=dim)



# Tile sizes. The interpreter gets small tiles so tiny test shapes still span several blocks.
# GPU values are starting points for the measured sweep in bench/bench_gpu.py, not tuned numbers;
# SNNSPARSE_TRITON_{LINEAR,CONV}_TILES="a,b,c" overrides them (read per call, for sweeps).
def _env_tiles(name: str, tiles: dict) -> dict:
    v = os.environ.get(f"SNNSPARSE_TRITON_{name}_TILES")
    if not v:
        return tiles
    return dict(zip(tiles, (int(t) for t in v.split(","))))


def _skip_zero_tiles() -> bool:
    """Test spike tiles for all-zero words and skip them (SNNSPARSE_TRITON_SKIP_ZERO_TILES=0: don't).
    The branch stops software pipelining; at random rates above ~1% no 32x32 tile is empty."""
    return os.environ.get("SNNSPARSE_TRITON_SKIP_ZERO_TILES", "1") not in ("", "0")


_LINEAR_GPU_TILES = {  # (BLOCK_N, BLOCK_M, BLOCK_K) per kernel; >= 64 rows lets Triton use Hopper's wgmma
    "fwd": {"half": (64, 128, 64), torch.float32: (64, 64, 32), torch.float64: (32, 64, 32)},
    "grad_in": {"half": (128, 64, 128), torch.float32: (64, 32, 64), torch.float64: (32, 32, 64)},
    "grad_w": {"half": (64, 128, 128), torch.float32: (32, 64, 64), torch.float64: (32, 64, 32)},
}


def _linear_tiles(dtype, kernel: str = "fwd"):
    """Tiles of the spike_linear kernels: BLOCK_N rows of x, BLOCK_M outputs, BLOCK_K inputs.
    Override: SNNSPARSE_TRITON_LINEAR_TILES (fwd), _LINEAR_GRAD_IN_TILES, _LINEAR_GRAD_W_TILES."""
    env = "LINEAR" if kernel == "fwd" else f"LINEAR_{kernel.upper()}"
    if INTERPRET:
        return _env_tiles(env, dict(BLOCK_N=16, BLOCK_M=32, BLOCK_K=32))
    key = "half" if dtype in (torch.float16, torch.bfloat16) else dtype
    return _env_tiles(env, dict(zip(("BLOCK_N", "BLOCK_M", "BLOCK_K"), _LINEAR_GPU_TILES[kernel][key])))


def _conv_tiles(dtype, cin_g, cout_g):
    if INTERPRET:
        return _env_tiles("CONV", dict(BLOCK_P=32, BLOCK_CO=16, BLOCK_C=32))
    bco = 16 if cout_g <= 16 else (32 if cout_g <= 32 else (128 if dtype in (torch.float16, torch.bfloat16) else 64))
    return _env_tiles("CONV", dict(BLOCK_P=64, BLOCK_CO=bco, BLOCK_C=32 if cin_g <= 32 else 64))


def _lif_block() -> int:
    # 1024 neurons per program: 8 fp16 per thread (16-byte accesses) with 4 warps.
    return 64 if INTERPRET else int(os.environ.get("SNNSPARSE_TRITON_LIF_BLOCK", "1024"))


def _pack(x2: torch.Tensor, rows: int, chans: int, hw: int, groups: int, s_n: int, s_hw: int, s_c: int):
    """bits[rows, groups, ceil(chans/32)] int32 from x (see kernels/spike_pack.py)."""
    cw = cdiv(chans, 32)
    bits = torch.empty((rows, groups, cw), dtype=torch.int32, device=x2.device)
    block_r, block_w = 32, (1 if cw <= 1 else 2 if cw <= 2 else 4)  # plain comparisons: SymInt-safe
    grid = (cdiv(rows, block_r), groups * cdiv(cw, block_w))
    _launch(_kpack.pack_spikes_kernel)[grid](x2, bits, rows, chans, hw, groups, cw, s_n, s_hw, s_c,
                                              BLOCK_R=block_r, BLOCK_W=block_w)
    return bits


# ---------------------------------------------------------------------------------------------
# spike_linear

def _kept_per_column(mask, block_m):
    """mcnt[MB, K]: kept synapses of each column within each block of block_m weight rows."""
    k = mask.shape[1]
    return _pad_to(mask.to(torch.int32), 0, block_m).reshape(-1, block_m, k).sum(1, dtype=torch.int32)


def _kept_per_block(mask, block_m, block_k):
    """bflag[MB, KB]: kept synapses in each [block_m, block_k] weight block (0: skip the block)."""
    mcnt = _kept_per_column(mask, block_m)
    return _pad_to(mcnt, 1, block_k).reshape(mcnt.shape[0], -1, block_k).sum(2, dtype=torch.int32).contiguous()


@_define("spike_linear_fwd")
def spike_linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     mask: Optional[torch.Tensor], count: bool, dense_weight_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_dtypes("spike_linear", weight=weight, spikes=x, bias=bias)
    n, k = x.shape
    m = weight.shape[0]
    out = torch.empty((n, m), dtype=weight.dtype, device=x.device)
    if n == 0 or m == 0:
        return (out.zero_(), _zero_count(x.device))
    cfg = _linear_tiles(weight.dtype)
    bn, bm = cfg["BLOCK_N"], cfg["BLOCK_M"]
    x = x.contiguous()
    wt = masked_weight(weight, mask).t().contiguous()        # [K, M]: one spike column = one contiguous row
    mcnt = _kept_per_column(mask, bm).contiguous() if mask is not None else None
    kw = max(cdiv(k, 32), 1)
    bits = _pack(x, n, k, 1, 1, k, 0, 1) if k > 0 else torch.zeros((n, 1, 1), dtype=torch.int32,
                                                                     device=x.device)
    nb, mb = cdiv(n, bn), cdiv(m, bm)
    kidx = torch.empty((nb, max(k, 1)), dtype=torch.int32, device=x.device)
    kcnt = torch.empty((nb,), dtype=torch.int32, device=x.device)
    _launch(_kpack.compact_active_columns_kernel)[(nb,)](bits, kidx, kcnt, n, k, kw, BLOCK_N=bn, BLOCK_W=4)
    part = torch.empty((nb, mb) if count else (1,), dtype=torch.int64, device=x.device)
    b = bias.contiguous() if bias is not None else wt
    _launch(_klin.spike_linear_fwd_kernel)[(nb, mb)](
        bits, kidx, kcnt, wt, mcnt if mcnt is not None else kcnt, b, out, part, n, m, k, kw,
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, COUNT=count, SPLIT=_split(weight.dtype),
        IS_F64=_f64(weight.dtype), **cfg)
    return (out, part.sum() if count else _zero_count(x.device))


@_define("spike_linear_bwd")
def spike_linear_bwd(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor],
                     need_input_grad: bool, need_weight_grad: bool,
                     dense_weight_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_dtypes("spike_linear backward", weight=weight, grad_out=grad_out, spikes=x)
    n, k = x.shape
    m = weight.shape[0]
    gin = torch.zeros((n, k) if need_input_grad else (0,), dtype=weight.dtype, device=x.device)
    gw = torch.zeros(weight.shape if need_weight_grad else (0,), dtype=weight.dtype, device=x.device)
    if n == 0 or m == 0 or k == 0:
        return (gin, gw)
    g = grad_out.contiguous()
    wt = masked_weight(weight, mask).t().contiguous()
    common = dict(HAS_MASK=mask is not None, SPLIT=_split(weight.dtype), IS_F64=_f64(weight.dtype))
    if need_input_grad:
        cfg = _linear_tiles(weight.dtype, "grad_in")
        kb = cdiv(k, cfg["BLOCK_K"])
        flags = _kept_per_block(mask, cfg["BLOCK_M"], cfg["BLOCK_K"]) if mask is not None else wt
        _launch(_klin.spike_linear_grad_in_kernel)[(cdiv(n, cfg["BLOCK_N"]), kb)](
            g, wt, flags, gin, n, m, k, kb, **common, **cfg)
    if need_weight_grad:
        cfg = _linear_tiles(weight.dtype, "grad_w")
        kb = cdiv(k, cfg["BLOCK_K"])
        flags = _kept_per_block(mask, cfg["BLOCK_M"], cfg["BLOCK_K"]) if mask is not None else wt
        bits = _pack(x.contiguous(), n, k, 1, 1, k, 0, 1)
        mask_u8 = mask.contiguous().view(torch.uint8) if mask is not None else bits
        _launch(_klin.spike_linear_grad_w_kernel)[(cdiv(m, cfg["BLOCK_M"]), kb)](
            g, bits, mask_u8, flags, gw, n, m, k, cdiv(k, 32), kb, DENSE=dense_weight_grad,
            SKIP_ZERO_TILES=_skip_zero_tiles(), **common, **cfg)
    return (gin, gw)


# ---------------------------------------------------------------------------------------------
# spike_conv2d


def _conv_weight_prep(weight, mask, groups, block_co, block_c):
    """wt[G, KH*KW, Cin_g, Cout_g] = W, pruned entries 0; mcnt[G, COB, KH*KW, Cin_g]; bflag[G, COB, KH*KW, CIB]."""
    cout, cin_g, kh, kw = weight.shape
    cog = cout // groups
    wt = masked_weight(weight, mask).reshape(groups, cog, cin_g, kh * kw).permute(0, 3, 2, 1).contiguous()
    if mask is None:
        return wt, None, None
    mk = _pad_to(mask.to(torch.int32).reshape(groups, cog, cin_g, kh * kw), 1, block_co)
    mcnt = mk.reshape(groups, -1, block_co, cin_g, kh * kw).sum(2, dtype=torch.int32).permute(0, 1, 3, 2)
    mcnt = mcnt.contiguous()                                                     # [G, COB, KHW, Cin_g]
    bflag = _pad_to(mcnt, 3, block_c)
    bflag = bflag.reshape(*bflag.shape[:3], -1, block_c).sum(4, dtype=torch.int32).contiguous()
    return wt, mcnt, bflag


def _conv_consts(stride, padding, dilation, kh, kw):
    return dict(SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
                KH=kh, KW=kw)


def _conv_bits(x, groups):
    n, c, h, w = x.shape
    return _pack(x, n * h * w, c // groups, h * w, groups, c * h * w, 1, h * w)


@_define("spike_conv2d_fwd")
def spike_conv2d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     mask: Optional[torch.Tensor], stride: List[int], padding: List[int], dilation: List[int],
                     groups: int, count: bool, dense_weight_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_dtypes("spike_conv2d", weight=weight, spikes=x, bias=bias)
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    ho, wo = conv2d_output_size(h, w, (kh, kw), stride, padding, dilation)
    out = torch.empty((n, cout, ho, wo), dtype=weight.dtype, device=x.device)
    if out.numel() == 0 or cin_g == 0:
        if out.numel():
            out.copy_((bias if bias is not None else out.new_zeros(cout)).view(1, cout, 1, 1).expand_as(out))
        return (out, _zero_count(x.device))
    cog = cout // groups
    cfg = _conv_tiles(weight.dtype, cin_g, cog)
    wt, mcnt, bflag = _conv_weight_prep(weight, mask, groups, cfg["BLOCK_CO"], cfg["BLOCK_C"])
    bits = _conv_bits(x.contiguous(), groups)
    p = n * ho * wo
    grid = (cdiv(p, cfg["BLOCK_P"]), cdiv(cog, cfg["BLOCK_CO"]), groups)
    part = torch.empty((grid[0] * grid[1] * grid[2],) if count else (1,), dtype=torch.int64, device=x.device)
    b = bias.contiguous() if bias is not None else wt
    _launch(_kconv.spike_conv2d_fwd_kernel)[grid](
        bits, wt, bflag if bflag is not None else wt, mcnt if mcnt is not None else wt, b, out, part,
        p, h, w, ho, wo, groups, cin_g, cog, cdiv(cin_g, 32), cdiv(cin_g, cfg["BLOCK_C"]),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, COUNT=count, SPLIT=_split(weight.dtype),
        IS_F64=_f64(weight.dtype), SKIP_ZERO_TILES=_skip_zero_tiles(), **_conv_consts(stride, padding, dilation, kh, kw),
        **cfg)
    return (out, part.sum() if count else _zero_count(x.device))


@_define("spike_conv2d_bwd")
def spike_conv2d_bwd(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor],
                     stride: List[int], padding: List[int], dilation: List[int], groups: int,
                     need_input_grad: bool, need_weight_grad: bool,
                     dense_weight_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_dtypes("spike_conv2d backward", weight=weight, grad_out=grad_out, spikes=x)
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    gin = torch.zeros(x.shape if need_input_grad else (0,), dtype=weight.dtype, device=x.device)
    gw = torch.zeros(weight.shape if need_weight_grad else (0,), dtype=weight.dtype, device=x.device)
    if grad_out.numel() == 0 or x.numel() == 0 or weight.numel() == 0:
        return (gin, gw)
    cog = cout // groups
    cfg = _conv_tiles(weight.dtype, cin_g, cog)
    bco, bc = cfg["BLOCK_CO"], cfg["BLOCK_C"]
    wt, _, bflag = _conv_weight_prep(weight, mask, groups, bco, bc)
    flags = bflag if bflag is not None else wt
    g = grad_out.contiguous()
    consts = _conv_consts(stride, padding, dilation, kh, kw)
    common = dict(HAS_MASK=mask is not None, SPLIT=_split(weight.dtype), IS_F64=_f64(weight.dtype), **consts, **cfg)
    cib, cob = cdiv(cin_g, bc), cdiv(cog, bco)
    if need_input_grad:
        _launch(_kconv.spike_conv2d_grad_in_kernel)[(cdiv(n * h * w, cfg["BLOCK_P"]), cib, groups)](
            g, wt, flags, gin, n * h * w, h, w, ho, wo, groups, cin_g, cog, cib, cob, **common)
    if need_weight_grad:
        bits = _conv_bits(x.contiguous(), groups)
        mask_u8 = mask.contiguous().view(torch.uint8) if mask is not None else bits
        _launch(_kconv.spike_conv2d_grad_w_kernel)[(cob, cib, groups * kh * kw)](
            g, bits, mask_u8, flags, gw, n * ho * wo, h, w, ho, wo, groups, cin_g, cog, cdiv(cin_g, 32), cib,
            DENSE=dense_weight_grad, SKIP_ZERO_TILES=_skip_zero_tiles(), **common)
    return (gin, gw)


# ---------------------------------------------------------------------------------------------
# lif

@_define("lif_fwd")
def lif_fwd(x_seq: torch.Tensor, v0: torch.Tensor, tau: float, v_threshold: float, v_reset: Optional[float],
            decay_input: bool, detach_reset: bool, surrogate: str, alpha: float,
            save_h: bool, charge: str = "lif",
            k: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_seq [T, N], v0 [N] -> spikes [T, N], v_last [N], h_seq [T, N] (empty [0] unless save_h).
    charge "lif" | "if" | "plif" (k: 0-dim, x_seq's dtype; see csrc/registration.cpp)."""
    _check_dtypes("lif", x_seq=x_seq, v0=v0, k=k)
    ch = _lif_glue.check_charge("snnsparse_triton::lif_fwd", charge, tau, k, x_seq)
    t, n = x_seq.shape
    x = x_seq.contiguous()
    s = x.new_empty(x.shape)                       # every output contiguous, as the kernels write them
    v_last = x.new_empty(v0.shape)
    h = x.new_empty(x.shape if save_h else (0,))
    if t == 0 or n == 0:
        v_last.copy_(v0)
        return (s, v_last, h)
    block = _lif_block()
    _launch(_klif.lif_fwd_kernel)[(cdiv(n, block),)](
        x, v0.contiguous(), s, v_last, h if save_h else s, s, s, k if k is not None else s, t, n, 1, float(tau),
        float(v_threshold), 0.0 if v_reset is None else float(v_reset),
        CHARGE=ch, DECAY_INPUT=decay_input, HARD_RESET=v_reset is not None, SAVE_H=save_h, EMIT_BITS=False,
        ROUND=x.dtype in (torch.float16, torch.bfloat16), EXACT_MUL=not INTERPRET, BLOCK=block)
    return (s, v_last, h)


@_define("lif_bwd")
def lif_bwd(grad_spikes: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_h: Optional[torch.Tensor],
            h_seq: torch.Tensor, tau: float, v_threshold: float, v_reset: Optional[float], decay_input: bool,
            detach_reset: bool, surrogate: str, alpha: float, charge: str = "lif", k: Optional[torch.Tensor] = None,
            x_seq: Optional[torch.Tensor] = None,
            v0: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grads of x_seq, v0 and k from those of spikes, v_last (None: 0) and h_seq (None: 0; h_seq is an output).
    grad_k (0-dim) only when x_seq and v0 are given (charge "plif"), else an empty tensor."""
    _check_dtypes("lif backward", grad_spikes=grad_spikes, grad_v_last=grad_v_last, grad_h=grad_h, h_seq=h_seq,
                  k=k, x_seq=x_seq, v0=v0)
    op = "snnsparse_triton::lif_bwd"
    ch = _lif_glue.check_charge(op, charge, tau, k, h_seq)
    want_k = _lif_glue.check_k_grad_inputs(op, charge, x_seq, v0, h_seq)
    t, n = h_seq.shape
    gx = h_seq.new_empty(h_seq.shape)
    gv0 = h_seq.new_empty((n,))
    gk = h_seq.new_zeros(()) if want_k else h_seq.new_empty((0,))
    if t == 0 or n == 0:
        if grad_v_last is not None:
            gv0.copy_(grad_v_last)          # v_last is v0 when there is no step
        else:
            gv0.zero_()
        return (gx, gv0, gk)
    gs = grad_spikes.contiguous()
    # per-neuron sums of dL/dk in the kernels' accumulation dtype, summed over neurons here
    gkn = h_seq.new_empty((n,), dtype=torch.float64 if h_seq.dtype == torch.float64 else torch.float32) \
        if want_k else gs
    block = _lif_block()
    _launch(_klif.lif_bwd_kernel)[(cdiv(n, block),)](
        gs, grad_v_last.contiguous() if grad_v_last is not None else gs,
        grad_h.contiguous() if grad_h is not None else gs, h_seq.contiguous(), gx, gv0,
        k if k is not None else gs, x_seq.contiguous() if want_k and decay_input else gs,
        v0.contiguous() if want_k else gs, gkn, t, n,
        float(tau), float(v_threshold), 0.0 if v_reset is None else float(v_reset), float(alpha),
        HAS_GV=grad_v_last is not None, HAS_GH=grad_h is not None, CHARGE=ch, DECAY_INPUT=decay_input,
        HARD_RESET=v_reset is not None, DETACH_RESET=detach_reset, SURROGATE=_klif.SURROGATES.index(surrogate),
        GRAD_K=want_k, ROUND=h_seq.dtype in (torch.float16, torch.bfloat16), BLOCK=block)
    if want_k:
        gk = gkn.sum().to(h_seq.dtype)
    return (gx, gv0, gk)


# One schema per op, identical to snnsparse::'s (csrc/registration.cpp): the fakes and the one backward
# body of each op live with the op (snnsparse/ops/linear.py, conv2d.py, lif.py) for both namespaces.
if ENABLED:  # the ops exist in this process (a GPU, or the interpreter)
    for _glue in (_linear_glue, _conv2d_glue, _lif_glue):
        _glue.register(NS)


# ---------------------------------------------------------------------------------------------
# backend contract (snnsparse/backends.py)

def spike_linear(x, weight, bias, mask, *, count=False, dense_weight_grad=False):
    return _linear_glue.forward(x, weight, bias, mask, count=count, dense_weight_grad=dense_weight_grad, ns=NS)


def spike_conv2d(x, weight, bias, mask, stride, padding, dilation, groups, *, count=False, dense_weight_grad=False):
    return _conv2d_glue.forward(x, weight, bias, mask, stride, padding, dilation, groups, count=count,
                                dense_weight_grad=dense_weight_grad, ns=NS)


def lif(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, return_h=False,
        charge="lif", k=None):
    return _lif_glue.run(x_seq, v0, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha,
                         return_h, ns=NS, charge=charge, k=k)


def lif_packed(x_seq: torch.Tensor, v0: torch.Tensor, tau: float = 2.0, v_threshold: float = 1.0,
               v_reset: Optional[float] = 0.0, decay_input: bool = True):
    """LIF forward that also emits bit-packed spikes bits[T, ceil(N/32)] (bit n%32 of word n//32)
    and per-tile spike counts cnt[T, cdiv(N, BLOCK)], for a following spike layer (no autograd)."""
    _check_dtypes("lif_packed", x_seq=x_seq, v0=v0)
    t, n = x_seq.shape
    x = x_seq.contiguous()
    s, v_last = x.new_empty(x.shape), x.new_empty(v0.shape)
    nw = cdiv(n, 32)
    block = _lif_block()
    nb = cdiv(n, block)
    bits = torch.zeros((t, nw), dtype=torch.int32, device=x.device)
    cnt = torch.zeros((t, nb), dtype=torch.int32, device=x.device)
    if t and n:
        _klif.lif_fwd_kernel[(nb,)](x, v0.contiguous(), s, v_last, s, bits, cnt, s, t, n, nw, float(tau),
                                    float(v_threshold), 0.0 if v_reset is None else float(v_reset),
                                    CHARGE=0, DECAY_INPUT=decay_input, HARD_RESET=v_reset is not None, SAVE_H=False,
                                    EMIT_BITS=True, ROUND=x.dtype in (torch.float16, torch.bfloat16),
                                    EXACT_MUL=not INTERPRET, BLOCK=block)
    return s, v_last, bits, cnt
