// A CPU stand-in for the CUDA built-ins that the device code of spike_kernels.cuh and
// lif_kernels.cuh uses, so that the same kernel source can be compiled by g++ and run on a
// machine without a GPU (tests/cuda_emu.cpp, driven by tests/test_cuda_ops.py).
//
// Each CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks run one after
// another, so a `__shared__` variable (a function-level static here) is the block's shared
// memory. __syncthreads switches to the next fiber: a block advances barrier by barrier, every
// thread running alone from one barrier to the next (an order that exposes a missing barrier
// between a write and a read by a lower-numbered thread). A block whose threads do not all
// reach the same barriers aborts. It checks the logic of the kernels (indexing, tiling, bit
// packing, barrier placement), not their speed, and not races that only real hardware timing
// would expose (compute-sanitizer's racecheck on a GPU does that).
//
// Only compiled when SNNSPARSE_CUDA_EMULATE is defined; never part of the extension.
#pragma once
#ifndef SNNSPARSE_CUDA_EMULATE
#error "emulate.cuh is for the CPU emulation harness only"
#endif

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace snnsparse_emu {
struct Fiber {
  ucontext_t ctx;
  dim3 tid;
  bool waiting = false, done = false;
};
constexpr size_t kStack = 256 * 1024;
inline std::vector<Fiber> g_fibers;
inline std::vector<char> g_stacks;
inline ucontext_t g_sched;
inline int g_cur = 0;
inline dim3 g_block_idx, g_block_dim, g_grid_dim;
inline std::function<void()> g_body;
inline int g_vote[2] = {0, 0};
inline unsigned g_vote_calls[2048];

inline void fiber_main(int i) {
  g_body();
  g_fibers[i].done = true;  // returns to uc_link = g_sched
}

// Runs kernel(args...) over grid x block.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > 2048) std::abort();
  g_block_dim = block;
  g_grid_dim = grid;
  g_body = [=] { kernel(args...); };
  g_fibers.assign(n, Fiber{});
  if (g_stacks.size() < n * kStack) g_stacks.assign(n * kStack, 0);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        g_block_idx = dim3(bx, by, bz);
        g_vote[0] = g_vote[1] = 0;
        for (unsigned t = 0; t < n; ++t) {
          Fiber& f = g_fibers[t];
          f.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          f.waiting = f.done = false;
          g_vote_calls[t] = 0;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = g_stacks.data() + t * kStack;
          f.ctx.uc_stack.ss_size = kStack;
          f.ctx.uc_link = &g_sched;
          makecontext(&f.ctx, (void (*)())fiber_main, 1, (int)t);
        }
        for (;;) {  // one round: every live thread runs up to its next barrier or its end
          for (unsigned t = 0; t < n; ++t) {
            if (g_fibers[t].done) continue;
            g_cur = (int)t;
            g_fibers[t].waiting = false;
            swapcontext(&g_sched, &g_fibers[t].ctx);
          }
          unsigned done = 0;
          for (unsigned t = 0; t < n; ++t) done += g_fibers[t].done;
          if (done == n) break;
          if (done != 0) {
            std::fprintf(stderr, "emulate.cuh: barrier divergence in block (%u,%u,%u): %u of %u threads exited\n",
                         bx, by, bz, done, n);
            std::abort();
          }
        }
      }
}

inline void barrier() {
  Fiber& f = g_fibers[g_cur];
  f.waiting = true;
  swapcontext(&f.ctx, &g_sched);
}
}  // namespace snnsparse_emu

#define threadIdx (snnsparse_emu::g_fibers[snnsparse_emu::g_cur].tid)
#define blockIdx (snnsparse_emu::g_block_idx)
#define blockDim (snnsparse_emu::g_block_dim)
#define gridDim (snnsparse_emu::g_grid_dim)

inline void __syncthreads() { snnsparse_emu::barrier(); }

// Block-wide OR vote. Two alternating slots: slot k is cleared by thread 0 after the second
// barrier of call k, and reused only by call k+2, which starts after call k+1's barriers.
inline int __syncthreads_or(int pred) {
  const int me = snnsparse_emu::g_cur;
  const unsigned k = snnsparse_emu::g_vote_calls[me]++ & 1u;
  if (pred) snnsparse_emu::g_vote[k] = 1;
  snnsparse_emu::barrier();
  const int r = snnsparse_emu::g_vote[k];
  snnsparse_emu::barrier();
  if (me == 0) snnsparse_emu::g_vote[k] = 0;
  return r;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;  // one OS thread: plain read-modify-write is atomic here
  *p = old + v;
  return old;
}
// Compiled with -ffp-contract=off, so these round once per op as the intrinsics do.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
using std::exp;
using std::fabs;
