// Runs the kernels of ../pact_loss_kernel.cu on the CPU, for tests on machines
// without a GPU (tests/kernels/test_cuda_emulated.py). Not part of the build
// (setup.py compiles csrc/*.cu and csrc/*.cpp only).
//
// Compiled by the host compiler with the CUDA toolkit's headers (for the
// bfloat16 / float16 types and their host conversions). Each block runs as
// PACT_KERNEL_THREADS std::threads: __syncthreads is a std::barrier over the
// block, warp shuffles exchange through per-warp slots between two per-warp
// barriers, __shared__ arrays are statics (blocks run one after another).
// Fast-math intrinsics become their precise std:: counterparts.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(n)

#ifndef PACT_KERNEL_THREADS
#define PACT_KERNEL_THREADS 64
#endif
#define PACT_HOST_EMULATION 1

namespace emu {
struct Index {
  unsigned int x = 0, y = 0, z = 0;
};
thread_local Index thread_index;
Index block_index;
std::barrier<>* block_barrier = nullptr;
std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
double warp_slots[PACT_KERNEL_THREADS / 32][32];
std::atomic<int> vote{0};
}  // namespace emu

#define threadIdx (emu::thread_index)
#define blockIdx (emu::block_index)

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline int __syncthreads_or(int predicate) {
  if (predicate) emu::vote.fetch_or(1);
  __syncthreads();
  const int out = emu::vote.load();
  __syncthreads();
  if (threadIdx.x == 0) emu::vote.store(0);
  __syncthreads();
  return out;
}


template <typename V>
inline V shfl(V v, int src, bool keep_own) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  emu::warp_slots[warp][lane] = static_cast<double>(v);
  emu::warp_barriers[warp]->arrive_and_wait();
  const V out = keep_own ? v : static_cast<V>(emu::warp_slots[warp][src]);
  emu::warp_barriers[warp]->arrive_and_wait();
  return out;
}

inline float __shfl_xor_sync(unsigned, float v, int off) { return shfl(v, (threadIdx.x & 31) ^ off, false); }

template <typename V>
inline V __shfl_up_sync(unsigned, V v, int off) {
  const int lane = threadIdx.x & 31;
  return shfl(v, lane - off, lane < off);
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline uint4 __ldcs(const uint4* p) { return *p; }
inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline void __stcs(uint4* p, uint4 v) { *p = v; }

#include "../pact_loss_kernel.cu"

namespace {

template <typename K>
void run_blocks(K kernel, const pact::PactParams& p) {
  constexpr int threads = PACT_KERNEL_THREADS;
  for (int64_t row = 0; row < p.rows; ++row) {
    std::barrier<> block(threads);
    emu::block_barrier = &block;
    emu::warp_barriers.clear();
    for (int w = 0; w < threads / 32; ++w) emu::warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    emu::block_index.x = static_cast<unsigned int>(row);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        emu::thread_index.x = static_cast<unsigned int>(t);
        kernel(p);
      });
    }
    for (auto& th : pool) th.join();
  }
}

template <typename T, typename R>
void run_typed(const pact::PactParams& p) {
  if (p.full_vocab) {
    run_blocks(pact::pact_full_vocab_kernel<T, R>, p);
  } else {
    run_blocks(pact::pact_safety_set_kernel<T, R>, p);
  }
}

template <typename T>
void run_ref(const pact::PactParams& p, int ref_dtype) {
  switch (ref_dtype) {
    case 0: run_typed<T, float>(p); break;
    case 1: run_typed<T, __nv_bfloat16>(p); break;
    default: run_typed<T, __half>(p); break;
  }
}

}  // namespace

// Flat C entry point for ctypes: dtypes 0 float32, 1 bfloat16, 2 float16.
extern "C" int pact_emulate(const void* z, void* g, int64_t stride_z_row, int64_t stride_g_row, const int64_t* labels,
                            const int64_t* ids, const float* weights, const void* r_full, int64_t stride_rf_row,
                            const void* r_post, int64_t stride_rp_row, const int64_t* pos, const float* inv_n,
                            float* ce, float* kl, float* gate, int64_t rows, int64_t vocab, int64_t k,
                            int64_t ignore_index, const float* hyper, const int* flags, int z_dtype, int ref_dtype) {
  pact::PactParams p{};
  p.z = z;
  p.g = g;
  p.stride_z_row = stride_z_row;
  p.stride_g_row = stride_g_row;
  p.labels = labels;
  p.ids = ids;
  p.weights = weights;
  p.r_full = r_full;
  p.stride_rf_row = stride_rf_row;
  p.r_post = r_post;
  p.stride_rp_row = stride_rp_row;
  p.pos = pos;
  p.inv_n = inv_n;
  p.ce = ce;
  p.kl = kl;
  p.gate = gate;
  p.rows = rows;
  p.vocab = vocab;
  p.k = k;
  p.ignore_index = ignore_index;
  p.lambda_kl = hyper[0];
  p.mass_threshold = hyper[1];
  p.gate_scale = hyper[2];
  p.gate_bias = hyper[3];
  p.gate_temperature = hyper[4];
  p.decay_start = hyper[5];
  p.decay_tau = hyper[6];
  p.kl_temperature = hyper[7];
  p.rf_gather = flags[0] != 0;
  p.rp_gather = flags[1] != 0;
  p.use_gate = flags[2] != 0;
  p.use_decay = flags[3] != 0;
  p.full_vocab = flags[4] != 0;
  if (!p.full_vocab && (k < 1 || k > pact::kMaxK)) return 1;
  switch (z_dtype) {
    case 0: run_ref<float>(p, ref_dtype); break;
    case 1: run_ref<__nv_bfloat16>(p, ref_dtype); break;
    default: run_ref<__half>(p, ref_dtype); break;
  }
  return 0;
}
