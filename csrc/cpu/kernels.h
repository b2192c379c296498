// The table of SIMD kernels, one table per instruction-set variant, chosen once at load time.
//
// The kernels (csrc/cpu/*_kernels.h) exist once, as source, and are compiled several times: by
// isa_avx512.cpp, isa_avx2.cpp and isa_generic.cpp, each inside its own namespace
// (snnsparse::cpu::avx512 / avx2 / generic) and its own `#pragma GCC target` (see isa_variant.h).
// The op glue (linear.cpp, conv.cpp, lif.cpp: checks, packing, op registration) is compiled once,
// for the baseline target, and calls the kernels only through kernels(), the table of the variant
// isa.cpp selected from the CPU's features (or SNNSPARSE_CPU_ISA) when snnsparse._C was imported.
// No code compiled for a wider ISA runs before that check: the tables are constant-initialised
// data (constexpr), so building them executes nothing.
#pragma once

#include <cstdint>
#include <string>

namespace snnsparse {
namespace cpu {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

// Convolution geometry (output size from the conv formula; built by make_geom in conv.cpp).
struct ConvGeom {
  int64_t N, C, H, W, O, G, Cg, Og, kh, kw, KK, sh, sw, ph, pw, dh, dw, Ho, Wo;
};

// Output channels per dense 64-channel block (conv format 3): the packing (conv.cpp) and the kernel
// (conv_kernels.h) share it.
constexpr int64_t kCh = 64;

// Surrogate gradients of the LIF backward (names parsed in lif.cpp).
enum Surrogate { kSigmoid = 0, kAtan = 1, kPiecewiseQuadratic = 2, kSoftSign = 3, kErf = 4 };

// How the neuron charges (the op's `charge`, csrc/registration.cpp): LIFNode, IFNode, ParametricLIFNode.
enum Charge { kChargeLif = 0, kChargeIf = 1, kChargePlif = 2 };

template <typename T>
struct LifFwdArgs {
  const T* x;      // [Tn, N]
  const T* v0;     // [N]
  T* s;            // [Tn, N] spikes, or nullptr when written as bytes (s8)
  uint8_t* s8;     // [Tn, N] spikes as bytes (bool / uint8 spike_dtype), or nullptr
  T* vlast;        // [N]
  T* h;            // [Tn, N] pre-fire potential, or nullptr (not saved)
  int64_t Tn, N;
  T c;             // the charge's constant: tau (kChargeLif), k = sigmoid(w) (kChargePlif), unused (kChargeIf)
  T vth, vr;       // vr is 0 for a soft reset
  Charge charge;
  bool decay_input, hard;
};

template <typename T>
struct LifBwdArgs {
  const T* gs;   // [Tn, N] grad of the spikes
  const T* gvl;  // [N] grad of v_last, or nullptr (zero)
  const T* gh;   // [Tn, N] grad of h_seq, or nullptr (zero)
  const T* hs;   // [Tn, N] h_seq from the forward
  T* gx;         // [Tn, N]
  T* gv0;        // [N]
  int64_t Tn, N;
  T dhdx, dhdv;  // dH[t]/dX[t] and dH[t]/dV[t-1] of the charge (constants for every charge)
  T vth, vr, alpha;
  bool hard, detach_reset;
  Surrogate surrogate;
  // Gradient of the charge constant k (kChargePlif): per-neuron sums over t of dL/dH[t] * dH[t]/dk,
  // written to gk [N] when gk is not nullptr. V[t-1] is recomputed from h_seq (V[-1] = v0); x is read
  // only when decay_input (dH/dk = X - (V - vr); else -(V - vr)).
  T* gk;         // [N] or nullptr
  const T* x;    // [Tn, N] the forward's input (gk only)
  const T* v0;   // [N] the forward's v0 (gk only)
  bool decay_input;
};

// Kernels that read spikes: T is the weight's dtype, S the spikes' element type (T itself for float
// spikes, uint8_t for bool / uint8 spikes, which are read as they are: no float copy of the input).
// Every kernel returning int64_t returns the number of weight accumulations it executed when `count`
// is true (0 otherwise). Spikes are scanned (and refused when non-binary: ValueError) inside the
// kernels. Layouts are those of the packed formats (linear.cpp / conv.cpp).
template <typename T, typename S>
struct SpikeKernels {
  // linear, spikes x [N, K], out [N, M]
  int64_t (*linear_dense_rows)(const S* x, int64_t N, int64_t K, int64_t M, const T* wt, const T* bias,
                               const int64_t* colnnz, bool count, T* out);
  int64_t (*linear_csr16)(const S* x, int64_t N, int64_t K, int64_t M, const int64_t* rowptr, const uint16_t* idx,
                          const T* val, const T* bias, const int64_t* colnnz, bool count, T* out);
  int64_t (*linear_csr32)(const S* x, int64_t N, int64_t K, int64_t M, const int64_t* rowptr, const int32_t* idx,
                          const T* val, const T* bias, const int64_t* colnnz, bool count, T* out);
  // gwT [K, M] += grad_out[n, :] for every fired (n, k)
  void (*linear_grad_weight_t)(const S* x, const T* g, T* gwt, int64_t N, int64_t K, int64_t M);
  // conv, spikes [N, C, H, W], out [N, O, Ho, Wo]
  int64_t (*conv_dense_slabs)(const ConvGeom& g, const S* x, const T* wp, const int64_t* tapnnz, const T* bias,
                              T* out, bool count);
  int64_t (*conv_blocks)(const ConvGeom& g, const S* x, const T* wq, const int64_t* tapnnz, const T* bias, T* out,
                         bool count);
  // conv_blocks on spike counts (integers 0..15: SEW ADD's sums of spike tensors), each added count times
  int64_t (*conv_blocks_counts)(const ConvGeom& g, const S* x, const T* wq, const int64_t* tapnnz, const T* bias,
                                T* out, bool count);
  int64_t (*conv_csr16)(const ConvGeom& g, const S* x, const int64_t* rowptr, const int16_t* idx, const T* val,
                        const int64_t* tapnnz, const T* bias, T* out, bool count);
  int64_t (*conv_csr32)(const ConvGeom& g, const S* x, const int64_t* rowptr, const int32_t* idx, const T* val,
                        const int64_t* tapnnz, const T* bias, T* out, bool count);
  // Output-channel rows (format 4): nullptr where the variant has no such kernel (generic, and every
  // dtype but float32); conv.cpp's outrows_ok asks exactly this.
  int64_t (*conv_outrows16)(const ConvGeom& g, const S* x, const int64_t* rowptr, const int16_t* idx, const T* val,
                            const T* bias, T* out, bool count);
  int64_t (*conv_outrows32)(const ConvGeom& g, const S* x, const int64_t* rowptr, const int32_t* idx, const T* val,
                            const T* bias, T* out, bool count);
  // gwp [C, kh*kw, O/groups] += grad_out_cl[n, oy, ox, group(ci)] for every fired (n, ci, y, x)
  void (*conv_grad_weight)(const ConvGeom& g, const S* x, const T* gcl, T* gwp);
};

// Kernels of one dtype.
template <typename T>
struct TypedKernels {
  SpikeKernels<T, T> spikes;           // float spikes of the weight's dtype
  SpikeKernels<T, uint8_t> u8_spikes;  // bool / uint8 spikes
  void (*lif_fwd)(const LifFwdArgs<T>& a);
  // spike_matmul over Bt batch entries, a [Bt, M, K] @ b [Bt, K, N] -> out [Bt, M, N], every operand contiguous
  // (matmul_kernels.h); the binary operands are T or uint8 (_u8) and are scanned (ValueError if not 0/1).
  // binary x binary (coincidence counts), binary a x dense b, dense a x binary b:
  int64_t (*matmul_bb)(const T* a, const T* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count, T* out);
  int64_t (*matmul_bb_u8)(const uint8_t* a, const uint8_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N,
                          bool count, T* out);
  int64_t (*matmul_sd)(const T* a, const T* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count, T* out);
  int64_t (*matmul_sd_u8)(const uint8_t* a, const T* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                          T* out);
  int64_t (*matmul_ds)(const T* a, const T* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count, T* out);
  int64_t (*matmul_ds_u8)(const T* a, const uint8_t* b, int64_t Bt, int64_t M, int64_t K, int64_t N, bool count,
                          T* out);
  void (*lif_bwd)(const LifBwdArgs<T>& a);
};

struct Kernels {
  const char* name;  // "avx512", "avx2", "generic"
  Isa isa;
  TypedKernels<float> f32;
  TypedKernels<double> f64;

  template <typename T>
  const TypedKernels<T>& of() const;
};
template <>
inline const TypedKernels<float>& Kernels::of<float>() const { return f32; }
template <>
inline const TypedKernels<double>& Kernels::of<double>() const { return f64; }

// The compiled variants (isa_*.cpp); nullptr for a variant this build does not contain.
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
const Kernels* kernels_generic();

// The variant selected at load time (isa.cpp). Raises the selection error (a bad SNNSPARSE_CPU_ISA)
// instead of running anything when the selection failed.
const Kernels& kernels();
// "" when the selection succeeded, else why it failed (snnsparse._C's PyInit raises it as ImportError).
const std::string& isa_selection_error();
// Name of the selected variant ("" when the selection failed).
const char* cpu_isa_selected();
// Comma list of the variants compiled into this build, widest first ("avx512,avx2,generic").
std::string cpu_isa_compiled();
// The -march this build was compiled with (SNNSPARSE_MARCH), "" for the portable default build.
const char* cpu_march();

}  // namespace cpu
}  // namespace snnsparse
