// Event-driven dual-sparse conv2d on CPU: out = conv2d(spikes, W*M, b, stride, padding, dilation, groups)
// for binary spikes, forward and backward.
//
// Weight formats, chosen by mask density (kConvDenseMin below, measured; snnsparse/ops/packed.py names them):
//  * dense slabs [Wp (Cin x kh*kw x Cout/groups, masked), tapnnz]: channels-last inside the kernel.
//    Each fired input pixel (n, ci, y, x) adds, for every tap, the contiguous Cout/groups vector
//    Wp[ci, tap, :] (SIMD adds, no multiplies) into a channels-last accumulator of frame n
//    ([Ho*Wo, Cout], L2-resident), which is transposed into the NCHW output at the end.
//    Input channels are walked in order, so the 9 slabs of channel ci stay in L1 across the
//    whole spike plane of ci.
//  * compressed rows [rowptr (Cin+1), idx = tap*(Cout/groups)+co (int16 when it fits, else int32),
//    val, tapnnz]: per input channel the list of kept (tap, co) synapses. A fired pixel adds each
//    kept weight straight into the NCHW output; for stride 1 and interior pixels the output offset
//    of every synapse is precomputed once per call, so the inner loop is load-add-store only.
//    Input channels without kept synapses are only checked for binarity (no bit building, no adds).
//  * dense 64-channel blocks (groups 1) and compressed rows per OUTPUT channel (float32, stride 1,
//    rows of <= 64 pixels; avx512 and avx2 variants): conv_kernels.h.
// This file is the op (checks, packing, format choice, registration), compiled for the baseline
// target; the SIMD kernels are in conv_kernels.h, run through kernels() (the variant selected at
// load time).
#include "common.h"
#include "kernels.h"

namespace snnsparse {
namespace cpu {
namespace {

ConvGeom make_geom(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, int64_t groups, const char* op) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 values");
  TORCH_CHECK(w.dim() == 4, op, ": weight must be [Cout, Cin/groups, kh, kw], got ", w.sizes());
  TORCH_CHECK(x.dim() == 4, op, ": spikes must be [N, Cin, H, W], got ", x.sizes());
  TORCH_CHECK(groups >= 1 && w.size(0) % groups == 0, op, ": Cout ", w.size(0), " not divisible by groups ", groups);
  TORCH_CHECK(x.size(1) == w.size(1) * groups, op, ": spikes has ", x.size(1), " channels, weight expects ",
              w.size(1) * groups);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 &&
                  padding[1] >= 0,
              op, ": bad stride/padding/dilation");
  ConvGeom g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  g.O = w.size(0); g.G = groups; g.Cg = w.size(1); g.Og = g.O / groups;
  g.kh = w.size(2); g.kw = w.size(3); g.KK = g.kh * g.kw;
  g.sh = stride[0]; g.sw = stride[1]; g.ph = padding[0]; g.pw = padding[1]; g.dh = dilation[0]; g.dw = dilation[1];
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, op, ": input ", g.H, "x", g.W, " is smaller than the dilated kernel");
  return g;
}

void check_conv_inputs(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& mask, const char* op) {
  check_cpu(x, op, "spikes");
  check_cpu(w, op, "weight");
  check_float(w, op, "weight");
  check_spikes_dtype(x, w, op);
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_same_dtype(*bias, w, op, "bias", "weight");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == w.size(0), op, ": bias must be [", w.size(0), "], got ",
                bias->sizes());
  }
  check_mask(mask, w, op);
}

// Output-channel rows (format 4) exist in the avx512 and avx2 variants (conv_kernels.h) and apply to
// fp32, stride 1, input and output rows of <= 64 pixels (one 64-bit word per row). Asks the
// variant selected at load time, not how this file was compiled: a portable build on an older CPU,
// or SNNSPARSE_CPU_ISA=generic, refuses format 4 cleanly instead of calling a null kernel.
// Widths of 0 mean "unknown" (a pack() without geometry) or an empty image: never format 4, whose rows
// are 64-bit words of width >= 1 (a 0 width divided by zero in the kernel).
bool outrows_ok(at::ScalarType dt, bool stride1, int64_t in_width, int64_t out_width) {
  return kernels().f32.spikes.conv_outrows16 != nullptr && dt == at::kFloat && stride1 && in_width >= 1 &&
         in_width <= 64 && out_width >= 1 && out_width <= 64;
}

}  // namespace

// Packs (weight, mask). format 1: dense channels-last slabs; 2: compressed rows per input channel.
std::vector<at::Tensor> conv_pack(const at::Tensor& weight, const c10::optional<at::Tensor>& mask, int64_t groups,
                                  int64_t format) {
  const int64_t O = weight.size(0), Cg = weight.size(1), KK = weight.size(2) * weight.size(3);
  const int64_t Og = O / groups, C = Cg * groups;
  at::Tensor m = mask.has_value() ? *mask : at::ones_like(weight, weight.options().dtype(at::kBool));
  auto to_slabs = [&](const at::Tensor& t) {
    return t.reshape({groups, Og, Cg, KK}).permute({0, 2, 3, 1}).contiguous().reshape({C, KK, Og});
  };
  at::Tensor ms = to_slabs(m);  // contiguous
  at::Tensor tapnnz = row_counts(ms, C * KK, Og).reshape({C, KK});  // common.h: torch's bool sums were slow
  if (format == 1) {
    at::Tensor wp = to_slabs(masked_weight(weight, mask));
    return {wp, tapnnz};
  }
  if (format == 3) {  // groups == 1: [nch][KK][C][64], zero-padded Cout
    const int64_t nch = (O + 63) / 64;
    at::Tensor wm = masked_weight(weight, mask).reshape({O, C, KK});
    at::Tensor pad = at::zeros({nch * 64, C, KK}, weight.options());
    pad.slice(0, 0, O).copy_(wm);
    return {pad.reshape({nch, 64, C, KK}).permute({0, 3, 2, 1}).contiguous(), tapnnz};
  }
  if (format == 4) {  // CSR of the weight viewed as [Cout, Cin/g * kh*kw]
    std::vector<at::Tensor> rows = compressed_rows(weight.reshape({O, Cg * KK}).contiguous(),
                                                   m.reshape({O, Cg * KK}).contiguous(), O, Cg * KK, Cg * KK <= 32768);
    rows.push_back(tapnnz);
    return rows;
  }
  std::vector<at::Tensor> rows = compressed_rows(to_slabs(weight).reshape({C, KK * Og}), ms, C, KK * Og,
                                                 KK * Og <= 32768);
  rows.push_back(tapnnz);
  return rows;
}

// The [nch][kh*kw][Cin][64] weights of format 3 (dense 64-channel blocks), checked against the geometry.
at::Tensor blocked_weights(at::TensorList packed, const ConvGeom& g, const at::Tensor& weight, const char* op) {
  const at::Tensor wq = packed[0].contiguous();
  TORCH_CHECK(g.G == 1 && g.C <= 65535 && wq.scalar_type() == weight.scalar_type() && wq.dim() == 4 &&
                  wq.size(0) == (g.O + kCh - 1) / kCh && wq.size(1) == g.KK && wq.size(2) == g.C && wq.size(3) == kCh,
              op, ": bad packed blocked weights (groups must be 1)");
  return wq;
}

std::tuple<at::Tensor, at::Tensor> conv_fwd_packed(const at::Tensor& spikes, const at::Tensor& weight,
                                                   const c10::optional<at::Tensor>& bias,
                                                   const c10::optional<at::Tensor>& mask, int64_t format,
                                                   at::TensorList packed, at::IntArrayRef stride,
                                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                                   bool count, bool /*dense_weight_grad*/) {
  const char* op = "snnsparse::spike_conv2d_fwd";
  check_conv_inputs(spikes, weight, bias, mask, op);
  const ConvGeom g = make_geom(spikes, weight, stride, padding, dilation, groups, op);
  TORCH_CHECK(format >= 1 && format <= 4 && packed.size() == ((format == 1 || format == 3) ? 2u : 4u), op,
              ": packed weight of format 1 or 3 (dense) has 2 tensors, of format 2 or 4 (compressed) 4; got format ",
              format, " with ", packed.size());
  at::Tensor x = spikes.contiguous();
  at::Tensor out = empty_output({g.N, g.O, g.Ho, g.Wo}, weight.options());
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor tapnnz = packed.back().contiguous();
  TORCH_CHECK(tapnnz.scalar_type() == at::kLong && tapnnz.numel() == g.C * g.KK, op, ": bad packed tapnnz");
  int64_t nacc = 0;
  const Kernels& kern = kernels();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_conv2d_fwd", [&] {
    const TypedKernels<scalar_t>& kt = kern.of<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (g.N == 0) return;
    if (format == 3) {
      const at::Tensor wq = blocked_weights(packed, g, weight, op);
      nacc = with_spikes(kt, x, [&](const auto& ks, const auto* xp) {
        return ks.conv_blocks(g, xp, wq.data_ptr<scalar_t>(), tapnnz.data_ptr<int64_t>(), bp, out.data_ptr<scalar_t>(),
                              count);
      });
    } else if (format == 1) {
      const at::Tensor wp = packed[0].contiguous();
      TORCH_CHECK(wp.scalar_type() == weight.scalar_type() && wp.numel() == g.C * g.KK * g.Og, op,
                  ": bad packed dense slabs");
      nacc = with_spikes(kt, x, [&](const auto& ks, const auto* xp) {
        return ks.conv_dense_slabs(g, xp, wp.data_ptr<scalar_t>(), tapnnz.data_ptr<int64_t>(), bp,
                                   out.data_ptr<scalar_t>(), count);
      });
    } else if (format == 4) {
      const at::Tensor rowptr = packed[0].contiguous(), idx = packed[1].contiguous(), val = packed[2].contiguous();
      TORCH_CHECK(rowptr.scalar_type() == at::kLong && rowptr.numel() == g.O + 1 &&
                      val.scalar_type() == weight.scalar_type() && idx.numel() == val.numel() &&
                      rowptr[g.O].item<int64_t>() == val.numel(),
                  op, ": bad packed output-channel rows");
      TORCH_CHECK(outrows_ok(weight.scalar_type(), g.sh == 1 && g.sw == 1, g.W, g.Wo), op,
                  ": output-channel rows need float32, stride 1, width <= 64 and the avx512 or avx2 kernels (cpu_isa() = ",
                  kern.name, ")");
      const bool i16 = idx.scalar_type() == at::kShort;
      TORCH_CHECK(i16 || idx.scalar_type() == at::kInt, op, ": packed indices must be int16 or int32");
      nacc = with_spikes(kt, x, [&](const auto& ks, const auto* xp) {
        if (i16)
          return ks.conv_outrows16(g, xp, rowptr.data_ptr<int64_t>(), idx.data_ptr<int16_t>(), val.data_ptr<scalar_t>(),
                                   bp, out.data_ptr<scalar_t>(), count);
        return ks.conv_outrows32(g, xp, rowptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(), val.data_ptr<scalar_t>(),
                                 bp, out.data_ptr<scalar_t>(), count);
      });
    } else {
      const at::Tensor rowptr = packed[0].contiguous(), idx = packed[1].contiguous(), val = packed[2].contiguous();
      TORCH_CHECK(rowptr.scalar_type() == at::kLong && rowptr.numel() == g.C + 1 &&
                      val.scalar_type() == weight.scalar_type() && idx.numel() == val.numel() &&
                      rowptr[g.C].item<int64_t>() == val.numel(),
                  op, ": bad packed compressed rows");
      const bool i16 = idx.scalar_type() == at::kShort;
      TORCH_CHECK(i16 || idx.scalar_type() == at::kInt, op, ": packed indices must be int16 or int32");
      nacc = with_spikes(kt, x, [&](const auto& ks, const auto* xp) {
        if (i16)
          return ks.conv_csr16(g, xp, rowptr.data_ptr<int64_t>(), idx.data_ptr<int16_t>(), val.data_ptr<scalar_t>(),
                               tapnnz.data_ptr<int64_t>(), bp, out.data_ptr<scalar_t>(), count);
        return ks.conv_csr32(g, xp, rowptr.data_ptr<int64_t>(), idx.data_ptr<int32_t>(), val.data_ptr<scalar_t>(),
                             tapnnz.data_ptr<int64_t>(), bp, out.data_ptr<scalar_t>(), count);
      });
    }
  });
  return {out, scalar_count(count ? nacc : 0)};
}

// Inference on spike COUNTS (small non-negative integers, e.g. SEW ADD's sum of spike tensors; float of the
// weight's dtype, bool or uint8) with a format-3 packing: each count adds its weight row count times, in
// one pass (conv_kernels.h conv_fwd_blocked<..., true>). A nonzero value that is not an integer 1..15
// raises ValueError ("spike counts must be"); no autograd, no operation count (inference only).
at::Tensor conv_counts_packed(const at::Tensor& counts, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              int64_t format, at::TensorList packed, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation) {
  const char* op = "snnsparse::spike_conv2d_counts_packed";
  check_conv_inputs(counts, weight, bias, c10::nullopt, op);
  const ConvGeom g = make_geom(counts, weight, stride, padding, dilation, 1, op);
  TORCH_CHECK(format == 3 && packed.size() == 2u, op, ": needs a format-3 packing (dense blocks, 2 tensors); got format ",
              format, " with ", packed.size());
  const at::Tensor wq = blocked_weights(packed, g, weight, op);
  const at::Tensor tapnnz = packed.back().contiguous();
  TORCH_CHECK(tapnnz.scalar_type() == at::kLong && tapnnz.numel() == g.C * g.KK, op, ": bad packed tapnnz");
  at::Tensor x = counts.contiguous();
  at::Tensor out = empty_output({g.N, g.O, g.Ho, g.Wo}, weight.options());
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (g.N == 0) return out;
  const Kernels& kern = kernels();
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_conv2d_counts_packed", [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    with_spikes(kern.of<scalar_t>(), x, [&](const auto& ks, const auto* xp) {
      return ks.conv_blocks_counts(g, xp, wq.data_ptr<scalar_t>(), tapnnz.data_ptr<int64_t>(), bp,
                                   out.data_ptr<scalar_t>(), false);
    });
  });
  return out;
}

// Density at or above which the dense formats (blocks / slabs) are used: the measured crossover
// (bench/RESULTS.md, "format crossover"). The only place this number lives.
constexpr double kConvDenseMin = 0.05;

// The format the core op uses for (weight, mask, geometry): dense blocks (groups 1) or slabs above
// kConvDenseMin; below it output-channel rows where that kernel exists in this build and applies
// (fp32, stride 1, rows of <= 64 pixels), else compressed rows per input channel.
int64_t conv_auto_format(const at::Tensor& weight, const c10::optional<at::Tensor>& mask, int64_t groups,
                         bool stride1, int64_t in_width, int64_t out_width) {
  if (mask_density(mask) >= kConvDenseMin) return groups == 1 && weight.size(1) <= 65535 ? 3 : 1;
  return outrows_ok(weight.scalar_type(), stride1, in_width, out_width) ? 4 : 2;
}

std::tuple<int64_t, std::vector<at::Tensor>> conv_pack_op(const at::Tensor& weight,
                                                          const c10::optional<at::Tensor>& mask, int64_t groups,
                                                          at::IntArrayRef stride, int64_t in_width, int64_t out_width,
                                                          int64_t format) {
  const char* op = "snnsparse::spike_conv2d_pack";
  check_cpu(weight, op, "weight");
  check_float(weight, op, "weight");
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be [Cout, Cin/groups, kh, kw], got ", weight.sizes());
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0, op, ": Cout ", weight.size(0), " not divisible by groups ",
              groups);
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 values");
  TORCH_CHECK(in_width >= 0 && out_width >= 0, op, ": in_width and out_width must be >= 0 (0: unknown), got ",
              in_width, " and ", out_width);
  check_mask(mask, weight, op);
  TORCH_CHECK(format >= 0 && format <= 4, op, ": format must be 0 (auto) or 1-4, got ", format);
  const bool s1 = stride[0] == 1 && stride[1] == 1;
  if (format == 0) format = conv_auto_format(weight, mask, groups, s1, in_width, out_width);
  TORCH_CHECK(format != 3 || (groups == 1 && weight.size(1) <= 65535), op, ": format 3 (blocks) needs groups 1");
  TORCH_CHECK(format != 4 || outrows_ok(weight.scalar_type(), s1, in_width, out_width), op,
              ": format 4 (output-channel rows) needs float32, stride 1, widths <= 64 and the avx512 or avx2 kernels "
              "(cpu_isa() = ", kernels().name, ")");
  return {format, conv_pack(weight.contiguous(), mask, groups, format)};
}

// Core op: packs per call, so it can never serve a packing of other weights (no cache anywhere).
std::tuple<at::Tensor, at::Tensor> conv_fwd(const at::Tensor& spikes, const at::Tensor& weight,
                                            const c10::optional<at::Tensor>& bias,
                                            const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                            bool count, bool dense_weight_grad) {
  const char* op = "snnsparse::spike_conv2d_fwd";
  check_conv_inputs(spikes, weight, bias, mask, op);
  const ConvGeom g = make_geom(spikes, weight, stride, padding, dilation, groups, op);
  auto [format, packed] = conv_pack_op(weight, mask, groups, stride, g.W, g.Wo, 0);
  return conv_fwd_packed(spikes, weight, bias, mask, format, packed, stride, padding, dilation, groups, count,
                         dense_weight_grad);
}

std::tuple<at::Tensor, at::Tensor> conv_bwd(const at::Tensor& grad_out, const at::Tensor& spikes,
                                            const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                            int64_t groups, bool need_input_grad, bool need_weight_grad,
                                            bool dense_weight_grad) {
  const char* op = "snnsparse::spike_conv2d_bwd";
  check_conv_inputs(spikes, weight, c10::nullopt, mask, op);
  check_cpu(grad_out, op, "grad_out");
  check_same_dtype(grad_out, weight, op, "grad_out", "weight");
  const ConvGeom g = make_geom(spikes, weight, stride, padding, dilation, groups, op);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.N && grad_out.size(1) == g.O && grad_out.size(2) == g.Ho &&
                  grad_out.size(3) == g.Wo,
              op, ": grad_out must be [", g.N, ", ", g.O, ", ", g.Ho, ", ", g.Wo, "], got ", grad_out.sizes());
  at::Tensor grad_in, grad_w;
  if (need_input_grad) {
    TORCH_CHECK(spikes.is_floating_point(), op, ": bool / uint8 spikes have no gradient (need_input_grad must be false)");
    // Dense grad_out: the transposed conv with the masked weight (oneDNN).
    at::Tensor wm = masked_weight(weight, mask);
    grad_in = std::get<0>(at::convolution_backward(grad_out.contiguous(), spikes.contiguous(), wm, c10::nullopt,
                                                   stride, padding, dilation, false, {0, 0}, groups,
                                                   {true, false, false}));
  } else {
    grad_in = at::empty({0}, weight.options());
  }
  if (need_weight_grad) {
    // Event-driven: gwp[ci, tap, :] += grad_out_cl[n, oy, ox, group(ci)] for every fired (n, ci, y, x).
    at::Tensor gcl = grad_out.permute({0, 2, 3, 1}).contiguous();
    at::Tensor gwp = at::zeros({g.C, g.KK, g.Og}, weight.options());
    at::Tensor x = spikes.contiguous();
    const Kernels& kern = kernels();
    AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spike_conv2d_bwd", [&] {
      with_spikes(kern.of<scalar_t>(), x, [&](const auto& ks, const auto* xp) {
        ks.conv_grad_weight(g, xp, gcl.data_ptr<scalar_t>(), gwp.data_ptr<scalar_t>());
      });
    });
    grad_w = gwp.reshape({g.G, g.Cg, g.KK, g.Og}).permute({0, 3, 1, 2}).reshape({g.O, g.Cg, g.kh, g.kw}).contiguous();
    if (mask.has_value() && !dense_weight_grad) grad_w.masked_fill_(mask->logical_not(), 0);
  } else {
    grad_w = at::empty({0}, weight.options());
  }
  return {grad_in, grad_w};
}

}  // namespace cpu
}  // namespace snnsparse

TORCH_LIBRARY_IMPL(snnsparse, CPU, m) {
  m.impl("spike_conv2d_fwd", &snnsparse::cpu::conv_fwd);
  m.impl("spike_conv2d_fwd_packed", &snnsparse::cpu::conv_fwd_packed);
  m.impl("spike_conv2d_counts_packed", &snnsparse::cpu::conv_counts_packed);
  m.impl("spike_conv2d_bwd", &snnsparse::cpu::conv_bwd);
  m.impl("spike_conv2d_pack", &snnsparse::cpu::conv_pack_op);
}
