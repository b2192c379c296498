// Every snnsparse op schema, declared once. Backends register implementations in
// csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(snnsparse, CPU, ...)) and csrc/cuda/*.cu
// (TORCH_LIBRARY_IMPL(snnsparse, CUDA, ...)). Fake kernels and autograd live in Python
// (snnsparse/ops/cpp.py), as in pytorch/extension-cpp.
//
// Conventions shared by all kernels:
//   spikes are binary (0/1) of the weight's dtype (the CPU kernels also read bool / uint8 spikes as
//   they are, one byte per spike; the output has the weight's dtype), already flattened over time:
//   linear [N, K] with N = T*B rows; conv [N, Cin, H, W].
//   mask is None (keep all) or bool of the weight's shape.
//   n_acc is an int64 0-dim tensor: the number of weight accumulations the kernel
//   executed (the "counting mode"); 0 when count=false.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace {
std::string build_info() {
#ifdef SNNSPARSE_WITH_CUDA
  return "cpu,cuda";
#else
  return "cpu";
#endif
}
std::string cpu_isa() { return snnsparse::cpu::kernels().name; }
std::string cpu_isa_compiled() { return snnsparse::cpu::cpu_isa_compiled(); }
std::string cpu_march() { return snnsparse::cpu::cpu_march(); }
}  // namespace

extern "C" {
// Importing snnsparse._C (an empty Python module) runs the static registrations below, then
// selects the CPU kernel variant (csrc/cpu/isa.cpp): a bad SNNSPARSE_CPU_ISA fails the import
// with the reason (the ops registered meanwhile raise the same error instead of running).
PyObject* PyInit__C(void) {
  const std::string& err = snnsparse::cpu::isa_selection_error();
  if (!err.empty()) {
    PyErr_SetString(PyExc_ImportError, err.c_str());
    return nullptr;
  }
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(snnsparse, m) {
  // Build information: which dispatch keys were compiled in ("cpu", "cpu,cuda").
  m.def("build_info() -> str", &build_info);

  // dense_weight_grad selects the weight gradient of the autograd formula (Grad R trains pruned
  // synapses too); it is an argument of the op itself so that no path (eager, torch.compile, any
  // backend) can drop it.
  m.def("spike_linear_fwd(Tensor spikes, Tensor weight, Tensor? bias, Tensor? mask, bool count,"
        " bool dense_weight_grad) -> (Tensor out, Tensor n_acc)");
  // grad_in = grad_out @ (W*M); grad_w = grad_out^T @ spikes, masked unless dense_weight_grad.
  m.def("spike_linear_bwd(Tensor grad_out, Tensor spikes, Tensor weight, Tensor? mask,"
        " bool need_input_grad, bool need_weight_grad, bool dense_weight_grad)"
        " -> (Tensor grad_in, Tensor grad_weight)");

  m.def("spike_conv2d_fwd(Tensor spikes, Tensor weight, Tensor? bias, Tensor? mask,"
        " int[2] stride, int[2] padding, int[2] dilation, int groups, bool count, bool dense_weight_grad)"
        " -> (Tensor out, Tensor n_acc)");
  m.def("spike_conv2d_bwd(Tensor grad_out, Tensor spikes, Tensor weight, Tensor? mask,"
        " int[2] stride, int[2] padding, int[2] dilation, int groups,"
        " bool need_input_grad, bool need_weight_grad, bool dense_weight_grad)"
        " -> (Tensor grad_in, Tensor grad_weight)");

  // Multi-step neuron of the LIF family (SpikingJelly LIFNode, IFNode, ParametricLIFNode). x_seq [T, N];
  // v0 [N]. v_reset None = soft reset. The surrogate (name and alpha) and detach_reset are arguments of
  // the forward too, so its autograd knows them (one schema for every backend: snnsparse_triton declares
  // the same). Returns spikes [T, N], v_last [N], h_seq [T, N] (the pre-fire potential, for backward; an
  // empty tensor when save_h is false).
  // surrogate: "sigmoid", "atan", "piecewise_quadratic", "soft_sign", "erf".
  // charge: how H[t] is computed from X[t] and V[t-1] (vr = v_reset, 0 when None), in SpikingJelly's
  // float operation order:
  //   "lif"  (LIFNode)            decay_input: V + (X - (V - vr)) / tau;  else V - (V - vr) / tau + X
  //   "if"   (IFNode)             V + X                      (tau and decay_input are not read)
  //   "plif" (ParametricLIFNode)  decay_input: V + (X - (V - vr)) * k;    else V - (V - vr) * k + X
  // k is required for "plif" (a 0-dim tensor of x_seq's dtype and device: sigmoid(w), the module's
  // learnable parameter) and must be None otherwise; tau is read only by "lif" (> 1).
  // spike_dtype: None (spikes of x_seq's dtype) or bool / uint8: spikes written one byte each, for the
  // event kernels that read bytes (csrc/cpu: no float spike tensor between layers of an optimized model);
  // byte spikes have no gradient (inference only).
  m.def("lif_fwd(Tensor x_seq, Tensor v0, float tau, float v_threshold, float? v_reset, bool decay_input,"
        " bool detach_reset, str surrogate, float alpha, bool save_h, str charge=\"lif\", Tensor? k=None,"
        " ScalarType? spike_dtype=None)"
        " -> (Tensor spikes, Tensor v_last, Tensor h_seq)");
  // Gradients of x_seq, v0 and k from those of spikes, v_last and h_seq (None: zero). grad_k is the
  // 0-dim gradient of k when x_seq and v0 (the forward's inputs, from which V[t-1] is recomputed) are
  // given (charge "plif" only), else an empty tensor.
  m.def("lif_bwd(Tensor grad_spikes, Tensor? grad_v_last, Tensor? grad_h, Tensor h_seq, float tau,"
        " float v_threshold, float? v_reset, bool decay_input, bool detach_reset, str surrogate, float alpha,"
        " str charge=\"lif\", Tensor? k=None, Tensor? x_seq=None, Tensor? v0=None)"
        " -> (Tensor grad_x, Tensor grad_v0, Tensor grad_k)");

  // Products where one or both operands are spikes (spiking transformers' attention), per batch entry:
  // a [Bt, M, K] @ b [Bt, K, N] -> out [Bt, M, N] of the floating operand's dtype (a binary operand may be
  // bool/uint8 where a backend reads those; both compact: float32). binary names the spike operands:
  // "both" (out holds coincidence counts: AND + popcount, no float arithmetic), "a" or "b" (event-driven
  // adds of the other operand's values). The CPU kernels refuse a binary operand that is not 0/1
  // (CUDA/Triton: snnsparse.functional checks it). n_acc = additions executed
  // (snnsparse/ops/reference.py spike_matmul_count). Autograd: snnsparse/ops/matmul.py.
  m.def("spike_matmul_fwd(Tensor a, Tensor b, str binary, bool count) -> (Tensor out, Tensor n_acc)");

  // ---- CPU weight packing (impls on CPU only) ----
  // The core forward ops above pack (weight, mask) on every call, so they can never read a stale
  // packing. Packing once is for owners of an immutable snapshot of the weights (the benchmarks'
  // kernel timings, an inference-only model: snnsparse.ops.packed.PackedWeight). spike_*_pack
  // returns the format it chose (format 0 = by density and geometry, exactly as the core ops choose;
  // 1-4 force one) and the packed tensors; spike_*_fwd_packed runs on them, told the format
  // explicitly. Formats (snnsparse/ops/packed.py LinearFormat / ConvFormat):
  //   linear 1 dense rows [W^T masked (K x M), colnnz]; 2 compressed rows [rowptr, idx, val, colnnz]
  //   conv   1 dense slabs [Cin x kh*kw x Cout/g, tapnnz]; 2 compressed rows per input channel
  //          [rowptr, idx, val, tapnnz]; 3 dense 64-channel blocks (groups 1) [blocks, tapnnz];
  //          4 compressed rows per output channel [rowptr, idx, val, tapnnz] (avx512 and avx2 kernels).
  // weight and mask give the shapes, the dtype, autograd and the fake kernels.
  m.def("spike_linear_pack(Tensor weight, Tensor? mask, int format) -> (int format, Tensor[] packed)");
  m.def("spike_conv2d_pack(Tensor weight, Tensor? mask, int groups, int[2] stride, int in_width, int out_width,"
        " int format) -> (int format, Tensor[] packed)");
  m.def("spike_linear_fwd_packed(Tensor spikes, Tensor weight, Tensor? bias, Tensor? mask, int format,"
        " Tensor[] packed, bool count, bool dense_weight_grad) -> (Tensor out, Tensor n_acc)");
  m.def("spike_conv2d_fwd_packed(Tensor spikes, Tensor weight, Tensor? bias, Tensor? mask, int format,"
        " Tensor[] packed, int[2] stride, int[2] padding, int[2] dilation, int groups, bool count,"
        " bool dense_weight_grad) -> (Tensor out, Tensor n_acc)");
  // Inference on spike COUNTS (integers 0..15 as float, bool or uint8: SEW ADD's sum of spike tensors) with a
  // format-3 packing, each count adding its weight row count times in one pass; another nonzero value
  // raises ValueError. No autograd, no operation count (optimize_for_inference only; CPU).
  m.def("spike_conv2d_counts_packed(Tensor counts, Tensor weight, Tensor? bias, int format, Tensor[] packed,"
        " int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // Inference max-pool (CPU): torch's max_pool2d of x [N, C, H, W] (float32/64, bool or uint8; same
  // dtype out), without the argmax indices torch's CPU kernel always computes. Of spikes it is the OR
  // of each window. Values and NaN propagation equal torch's; no autograd (optimize_for_inference only).
  m.def("max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode)"
        " -> Tensor");
  // The CPU kernel variant selected when snnsparse._C was imported: "avx512", "avx2" or "generic"
  // (the widest the CPU runs, or SNNSPARSE_CPU_ISA; csrc/cpu/isa.cpp).
  m.def("cpu_isa() -> str", &cpu_isa);
  // The variants compiled into this build, widest first: "avx512,avx2,generic" for the portable
  // default x86-64 build, one variant for an SNNSPARSE_MARCH build, "generic" elsewhere.
  m.def("cpu_isa_compiled() -> str", &cpu_isa_compiled);
  // The -march the whole extension was compiled with (SNNSPARSE_MARCH, e.g. "native"); "" for the
  // portable default build (baseline target, no -march).
  m.def("cpu_march() -> str", &cpu_march);
}
