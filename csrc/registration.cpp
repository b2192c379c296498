// Every snnsparse op schema, declared once. Backends register implementations in
// csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(snnsparse, CPU, ...)) and csrc/cuda/*.cu
// (TORCH_LIBRARY_IMPL(snnsparse, CUDA, ...)). Fake kernels and autograd live in Python
// (snnsparse/ops/cpp.py), as in pytorch/extension-cpp.
//
// Conventions shared by all kernels:
//   spikes are binary (0/1) of the weight's dtype, already flattened over time:
//   linear [N, K] with N = T*B rows; conv [N, Cin, H, W].
//   mask is None (keep all) or bool of the weight's shape.
//   n_acc is an int64 0-dim tensor: the number of weight accumulations the kernel
//   executed (the "counting mode"); 0 when count=false.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/common.h"

namespace {
std::string build_info() {
#ifdef SNNSPARSE_WITH_CUDA
  return "cpu,cuda";
#else
  return "cpu";
#endif
}
std::string cpu_isa() { return snnsparse::cpu::cpu_isa_name(); }
}  // namespace

extern "C" {
// Importing snnsparse._C (an empty Python module) runs the static registrations below.
PyObject* PyInit__C(void) {
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

  // Multi-step LIF. x_seq [T, N]; v0 [N]. v_reset None = soft reset.
  // Returns spikes [T, N], v_last [N], h_seq [T, N] (pre-fire potential, for backward;
  // an empty tensor when save_h is false).
  m.def("lif_fwd(Tensor x_seq, Tensor v0, float tau, float v_threshold, float? v_reset,"
        " bool decay_input, bool save_h) -> (Tensor spikes, Tensor v_last, Tensor h_seq)");
  // surrogate: "sigmoid", "atan", "piecewise_quadratic", "soft_sign", "erf".
  m.def("lif_bwd(Tensor grad_spikes, Tensor? grad_v_last, Tensor h_seq, float tau,"
        " float v_threshold, float? v_reset, bool decay_input, bool detach_reset,"
        " str surrogate, float alpha) -> (Tensor grad_x, Tensor grad_v0)");

  // ---- added by the cpp backend (CPU impls only; the core schemas above are unchanged) ----
  // The core forward ops above pack (weight, mask) on every call, so they can never read a stale
  // packing. Packing once is for owners that hold an immutable snapshot of the weights (the
  // benchmarks' kernel timings, an inference-only model): spike_*_pack returns the packed tensors
  // (format 0 = chosen by density and geometry, as the core ops choose), spike_*_fwd_packed runs
  // on them. packed: dense rows/slabs [W', nnz-per-column] or compressed rows
  // [rowptr, idx, val, nnz-per-column]; weight and mask give shapes, autograd and fake kernels.
  m.def("spike_linear_pack(Tensor weight, Tensor? mask, int format) -> Tensor[]");
  m.def("spike_conv2d_pack(Tensor weight, Tensor? mask, int groups, int[2] stride, int in_width, int out_width,"
        " int format) -> Tensor[]");
  // The SIMD level the CPU kernels were compiled for: "avx512", "avx2" or "generic".
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("spike_linear_fwd_packed(Tensor spikes, Tensor weight, Tensor? bias, Tensor? mask, Tensor[] packed,"
        " bool count, bool dense_weight_grad) -> (Tensor out, Tensor n_acc)");
  m.def("spike_conv2d_fwd_packed(Tensor spikes, Tensor weight, Tensor? bias, Tensor? mask, Tensor[] packed,"
        " int[2] stride, int[2] padding, int[2] dilation, int groups, bool count, bool dense_weight_grad)"
        " -> (Tensor out, Tensor n_acc)");
  // lif_fwd that carries the surrogate for autograd (always returns h_seq).
  m.def("lif_fwd_sg(Tensor x_seq, Tensor v0, float tau, float v_threshold, float? v_reset, bool decay_input,"
        " bool detach_reset, str surrogate, float alpha) -> (Tensor spikes, Tensor v_last, Tensor h_seq)");
  // lif_bwd with an optional gradient flowing into h_seq as well.
  m.def("lif_bwd_h(Tensor grad_spikes, Tensor? grad_v_last, Tensor? grad_h, Tensor h_seq, float tau,"
        " float v_threshold, float? v_reset, bool decay_input, bool detach_reset, str surrogate, float alpha)"
        " -> (Tensor grad_x, Tensor grad_v0)");
}
