// Runs Forge's CUDA kernels on the CPU, for tests on machines without a GPU.
//
// Each CUDA thread of a block is a fiber (ucontext) on one OS thread; __syncthreads, __syncwarp
// and warp shuffles are barriers at which a fiber yields until every thread of its block (or
// warp) has arrived. Blocks run one after another, so __shared__ variables become function
// statics. This checks indexing, masking, reductions and barrier placement against the torch
// reference; it says nothing about speed, occupancy or the hardware memory model.
#pragma once
#define FORGE_EMULATOR 1

#include <ucontext.h>

#include <algorithm>
#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

using std::max;
using std::min;

struct alignas(16) uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
struct dim3 { unsigned x = 0, y = 0, z = 0; };

#define FORGE_INLINE inline
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline float __expf(float x) { return std::exp(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }

namespace emu {

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;  // uninitialised: a launch may run 1,024 fibers
  dim3 thread;
  bool done = false;
};

struct Barrier {  // counts arrivals; a generation number tells waiters that everyone came
  int arrived = 0;
  long generation = 0;
};

struct Launch {
  dim3 block_index, grid_dim, block_dim;
  std::vector<Fiber> fibers;
  std::vector<Barrier> warp_barriers;
  std::vector<std::uint64_t> warp_slots;  // one exchange slot per thread for shuffles
  Barrier block_barrier;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  std::function<void()> body;
};

inline Launch*& active() {
  static Launch* launch = nullptr;
  return launch;
}

inline void yield() {
  Launch& l = *active();
  swapcontext(&l.current->context, &l.scheduler);
}

inline void wait(Barrier& barrier, int participants) {
  const long generation = barrier.generation;
  if (++barrier.arrived == participants) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  while (barrier.generation == generation) yield();
}

inline int thread_rank() { return static_cast<int>(active()->current->thread.x); }

inline void sync_warp() { wait(active()->warp_barriers[thread_rank() / 32], 32); }

template <typename T> T shuffle(T value, int source_lane) {
  static_assert(sizeof(T) <= 8, "shuffle of a scalar");
  Launch& l = *active();
  const int rank = thread_rank(), warp_base = rank - rank % 32;
  std::uint64_t slot = 0;
  std::memcpy(&slot, &value, sizeof(T));
  l.warp_slots[rank] = slot;
  sync_warp();
  std::memcpy(&value, &l.warp_slots[warp_base + source_lane], sizeof(T));
  sync_warp();
  return value;
}

inline void fiber_entry() {
  Launch& l = *active();
  l.body();
  l.current->done = true;
  swapcontext(&l.current->context, &l.scheduler);
}

// Runs body() once per CUDA thread of every block of the grid (1-D blocks).
inline void launch(dim3 grid, unsigned threads, std::function<void()> body) {
  Launch l;
  l.grid_dim = grid;
  l.block_dim = {threads, 1, 1};
  l.fibers.resize(threads);
  l.warp_barriers.resize((threads + 31) / 32);
  l.warp_slots.resize(threads);
  l.body = std::move(body);
  constexpr std::size_t stack_bytes = 64 * 1024;
  for (Fiber& f : l.fibers) f.stack.reset(new char[stack_bytes]);
  active() = &l;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        l.block_index = {x, y, z};
        for (unsigned t = 0; t < threads; ++t) {
          Fiber& f = l.fibers[t];
          f.thread = {t, 0, 0};
          f.done = false;
          getcontext(&f.context);
          f.context.uc_stack.ss_sp = f.stack.get();
          f.context.uc_stack.ss_size = stack_bytes;
          f.context.uc_link = nullptr;
          makecontext(&f.context, fiber_entry, 0);
        }
        for (bool running = true; running;) {
          running = false;
          for (Fiber& f : l.fibers) {
            if (f.done) continue;
            running = true;
            l.current = &f;
            swapcontext(&l.scheduler, &f.context);
          }
        }
      }
  active() = nullptr;
}

// Calls a kernel with arguments given as an array of pointers to their values (CUDA's convention).
template <typename... Args, std::size_t... I>
void call(void (*kernel)(Args...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_reference_t<Args>*>(args[I])...);
}

template <typename... Args> void call(void (*kernel)(Args...), void** args) {
  call(kernel, args, std::index_sequence_for<Args...>{});
}

}  // namespace emu

#define threadIdx (emu::active()->current->thread)
#define blockIdx (emu::active()->block_index)
#define blockDim (emu::active()->block_dim)
#define gridDim (emu::active()->grid_dim)

inline void __syncthreads() {
  emu::wait(emu::active()->block_barrier, static_cast<int>(emu::active()->block_dim.x));
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }
template <typename T> T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  return emu::shuffle(value, (emu::thread_rank() % 32) ^ lane_mask);
}
inline unsigned atomicAdd(unsigned* address, unsigned value) { const unsigned old = *address; *address += value; return old; }
inline float atomicAdd(float* address, float value) { const float old = *address; *address += value; return old; }
inline int atomicAdd(int* address, int value) { const int old = *address; *address += value; return old; }

// One exported entry point per kernel: emu_<name>(grid x, y, z, threads, argument pointers).
#define EMU_EXPORT(kernel)                                                                      \
  extern "C" void emu_##kernel(unsigned gx, unsigned gy, unsigned gz, unsigned threads, void** args) { \
    emu::launch({gx, gy, gz}, threads, [args] { emu::call(kernel, args); });                    \
  }
