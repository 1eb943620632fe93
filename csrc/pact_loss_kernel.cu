// Fused PACT loss (SPEC §3, §5): loss terms and d loss / d logits in one launch.
//
// One block per row of the logits z (the same algorithm as
// pact_kernels/backends/triton_kernels.py). Each block sweeps its row twice:
//
// 1. online max / sum of exp over V (16-byte vector loads, per-thread running
//    pairs folded with warp shuffles, then across warps in shared memory);
//    for full_vocab the reference row streams alongside (two streams) with a
//    running sum of exp(r/T − max)·(r/T − z/T), so the KL needs no stored
//    probabilities. The target and the K safety columns are then gathered and
//    the K-value work runs in shared memory: restricted softmax at T_g, a
//    bitonic sort and a warp-scan of the cumulative mass (dispersion), the
//    sigmoid gate, position decay, mixing, the weighted KL at T.
// 2. the gradient sweep, written once in the logits' dtype (float32 for
//    float16 logits, HeldGrad; fresh buffer or in place): softmax(z)/n over V; after a barrier the target column and
//    the S columns get their float32 totals (softmax − 1 at the target,
//    + λ·T·(p_ft − p_ref) on S, times 1/n), each rounded once.
//
// Inputs float32 / bfloat16 / float16, float32 accumulation, 64-bit row
// offsets. Unaligned rows (odd V, row strides) take a scalar head and tail
// around the vector body, or a scalar path when streams are misaligned to
// each other (or, for full_vocab, of different element sizes).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pact_loss.h"

namespace pact {
namespace {

#ifndef PACT_KERNEL_THREADS
#define PACT_KERNEL_THREADS 512  // threads per block (one block per row); a multiple of 32, at most 1024
#endif
constexpr int kThreads = PACT_KERNEL_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr float kNegInf = -__builtin_huge_valf();

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }

// (no float16 store: float16 logits get a float32 gradient, HeldGrad below)
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// The gradient's element type for logits of T (pact_kernels.precision.held_gradient_dtype): float16
// logits get a float32 gradient, so entries below float16's range survive until backward applies the
// loss scale; the others their own type.
template <typename T> struct HeldGrad { using type = T; };
template <> struct HeldGrad<__half> { using type = float; };

// Element j of a 16-byte vector of T, as float32 (bit extraction: no type-punned reads).
template <typename T> __device__ __forceinline__ float lane_f(const uint4& raw, int j);
__device__ __forceinline__ unsigned int word(const uint4& raw, int i) {
  return i == 0 ? raw.x : i == 1 ? raw.y : i == 2 ? raw.z : raw.w;
}
template <> __device__ __forceinline__ float lane_f<float>(const uint4& raw, int j) { return __uint_as_float(word(raw, j)); }
template <> __device__ __forceinline__ float lane_f<__nv_bfloat16>(const uint4& raw, int j) {
  return __uint_as_float(((word(raw, j >> 1) >> (16 * (j & 1))) & 0xffffu) << 16);
}
template <> __device__ __forceinline__ float lane_f<__half>(const uint4& raw, int j) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(word(raw, j >> 1) >> (16 * (j & 1)))));
}

// The bits of float32 x rounded to T (in the low bits).
template <typename T> __device__ __forceinline__ unsigned int bits_of(float x);
template <> __device__ __forceinline__ unsigned int bits_of<float>(float x) { return __float_as_uint(x); }
template <> __device__ __forceinline__ unsigned int bits_of<__nv_bfloat16>(float x) {
  return __bfloat16_as_ushort(__float2bfloat16(x));
}
template <> __device__ __forceinline__ unsigned int bits_of<__half>(float x) { return __half_as_ushort(__float2half(x)); }

// Set element j of a 16-byte vector of T (zero-initialised) to x rounded to T.
template <typename T>
__device__ __forceinline__ void set_lane(uint4& raw, int j, float x) {
  const unsigned int b = bits_of<T>(x);
  const int i = sizeof(T) == 4 ? j : j >> 1;
  const unsigned int v = sizeof(T) == 4 ? b : b << (16 * (j & 1));
  if (i == 0) raw.x |= v;
  else if (i == 1) raw.y |= v;
  else if (i == 2) raw.z |= v;
  else raw.w |= v;
}

// Elements before the first 16-byte boundary of a row (at most V).
template <typename T>
__device__ __forceinline__ int64_t head_elems(const void* row, int64_t vocab) {
  const int64_t misalign = static_cast<int64_t>(reinterpret_cast<uintptr_t>(row) & 15u);
  const int64_t head = ((16 - misalign) & 15) / static_cast<int64_t>(sizeof(T));
  return head < vocab ? head : vocab;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Block-wide sum / max; `red` holds kWarps + 1 floats. Every thread gets the result.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < kWarps ? red[lane] : 0.0f;
    w = warp_sum(w);
    if (lane == 0) red[kWarps] = w;
  }
  __syncthreads();
  const float out = red[kWarps];
  __syncthreads();
  return out;
}

__device__ float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < kWarps ? red[lane] : kNegInf;
    w = warp_max(w);
    if (lane == 0) red[kWarps] = w;
  }
  __syncthreads();
  const float out = red[kWarps];
  __syncthreads();
  return out;
}

// Running (max m, Σ exp(x − m) = d, Σ exp(x − m)·a_i = a) triples.
struct Lse {
  float m = kNegInf;
  float d = 0.0f;
  float a = 0.0f;
};

__device__ __forceinline__ Lse lse_merge(Lse x, Lse y) {
  Lse out;
  out.m = fmaxf(x.m, y.m);
  if (out.m == kNegInf) return Lse{};
  const float sx = __expf(x.m - out.m), sy = __expf(y.m - out.m);
  out.d = x.d * sx + y.d * sy;
  out.a = x.a * sx + y.a * sy;
  return out;
}

// Fold one value x (with its term `extra`, weighted like exp(x − m)) into s.
__device__ __forceinline__ void lse_add(Lse& s, float x, float extra) {
  if (x > s.m) {
    const float scale = __expf(s.m - x);
    s.d = s.d * scale + 1.0f;
    s.a = s.a * scale + extra;
    s.m = x;
  } else if (x != kNegInf) {
    const float e = __expf(x - s.m);
    s.d += e;
    s.a += e * extra;
  }
}

// Block-wide merge of Lse triples; `red` holds 3 * (kWarps + 1) floats.
__device__ Lse block_lse(Lse s, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Lse o;
    o.m = __shfl_xor_sync(0xffffffffu, s.m, off);
    o.d = __shfl_xor_sync(0xffffffffu, s.d, off);
    o.a = __shfl_xor_sync(0xffffffffu, s.a, off);
    s = lse_merge(s, o);
  }
  if (lane == 0) {
    red[warp] = s.m;
    red[kWarps + 1 + warp] = s.d;
    red[2 * (kWarps + 1) + warp] = s.a;
  }
  __syncthreads();
  if (warp == 0) {
    Lse w;
    if (lane < kWarps) {
      w.m = red[lane];
      w.d = red[kWarps + 1 + lane];
      w.a = red[2 * (kWarps + 1) + lane];
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      Lse o;
      o.m = __shfl_xor_sync(0xffffffffu, w.m, off);
      o.d = __shfl_xor_sync(0xffffffffu, w.d, off);
      o.a = __shfl_xor_sync(0xffffffffu, w.a, off);
      w = lse_merge(w, o);
    }
    if (lane == 0) {
      red[kWarps] = w.m;
      red[2 * kWarps + 1] = w.d;
      red[3 * kWarps + 2] = w.a;
    }
  }
  __syncthreads();
  Lse out;
  out.m = red[kWarps];
  out.d = red[2 * kWarps + 1];
  out.a = red[3 * kWarps + 2];
  __syncthreads();
  return out;
}

// Sweep 1 of a one-stream row: this thread's running (max, sum) over its columns.
template <typename T>
__device__ Lse row_lse_partial(const T* zr, int64_t vocab) {
  constexpr int kVec = 16 / sizeof(T);
  Lse s;
  const int64_t head = head_elems<T>(zr, vocab);
  for (int64_t c = threadIdx.x; c < head; c += kThreads) lse_add(s, to_f(zr[c]), 0.0f);
  const int64_t nvec = (vocab - head) / kVec;
  const uint4* body = reinterpret_cast<const uint4*>(zr + head);
  for (int64_t i = threadIdx.x; i < nvec; i += kThreads) {
    const uint4 raw = body[i];
    float x[kVec];
    float cmax = kNegInf;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      x[j] = lane_f<T>(raw, j);
      cmax = fmaxf(cmax, x[j]);
    }
    if (cmax > s.m) {
      s.d *= __expf(s.m - cmax);
      s.m = cmax;
    }
    if (s.m != kNegInf) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) s.d += __expf(x[j] - s.m);
    }
  }
  for (int64_t c = head + nvec * kVec + threadIdx.x; c < vocab; c += kThreads) lse_add(s, to_f(zr[c]), 0.0f);
  return s;
}

// Write g[c] = f(c, z[c], r[c]) over the row, from its end back (the columns
// sweep 1 read last are the likeliest still in L2); streaming loads/stores.
// TWO: whether the reference row r is read. g may alias z.
template <bool TWO, typename T, typename R, typename G, typename F>
__device__ void write_row(const T* zr, const R* rr, G* gr, int64_t vocab, F f) {
  constexpr int kVec = 16 / sizeof(T);
  const uintptr_t off_z = reinterpret_cast<uintptr_t>(zr) & 15u;
  // 16-byte vectors when g shares z's element size and alignment (a float32 g of float16 z: scalar)
  bool vec = sizeof(G) == sizeof(T) && (reinterpret_cast<uintptr_t>(gr) & 15u) == off_z;
  if (TWO) vec = vec && sizeof(R) == sizeof(T) && (reinterpret_cast<uintptr_t>(rr) & 15u) == off_z;
  int64_t head = vocab, nvec = 0;
  if (vec) {
    head = head_elems<T>(zr, vocab);
    nvec = (vocab - head) / kVec;
  }
  const int64_t tail = head + nvec * kVec;
  for (int64_t c = tail + threadIdx.x; c < vocab; c += kThreads) {
    gr[c] = from_f<G>(f(c, to_f(zr[c]), TWO ? to_f(rr[c]) : 0.0f));
  }
  if (nvec > 0) {
    const uint4* zb = reinterpret_cast<const uint4*>(zr + head);
    uint4* gb = reinterpret_cast<uint4*>(gr + head);
    for (int64_t i = threadIdx.x; i < nvec; i += kThreads) {
      const int64_t idx = nvec - 1 - i;
      const uint4 raw = __ldcs(zb + idx);
      uint4 rraw = make_uint4(0u, 0u, 0u, 0u);
      if (TWO) rraw = __ldcs(reinterpret_cast<const uint4*>(rr + head) + idx);
      uint4 out = make_uint4(0u, 0u, 0u, 0u);
      const int64_t c0 = head + idx * kVec;
#pragma unroll
      for (int j = 0; j < kVec; ++j) set_lane<T>(out, j, f(c0 + j, lane_f<T>(raw, j), TWO ? lane_f<R>(rraw, j) : 0.0f));
      __stcs(gb + idx, out);
    }
  }
  for (int64_t c = threadIdx.x; c < head; c += kThreads) {
    gr[c] = from_f<G>(f(c, to_f(zr[c]), TWO ? to_f(rr[c]) : 0.0f));
  }
}

// Call f(z[c], r[c]) for every column of a two-stream row (sweep 1 of
// full_vocab): 16-byte vector loads when both rows share their alignment and
// element size, scalar head and tail around them; a scalar loop otherwise.
template <typename T, typename R, typename F>
__device__ void read_rows(const T* zr, const R* rr, int64_t vocab, F f) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = sizeof(R) == sizeof(T) &&
                   (reinterpret_cast<uintptr_t>(rr) & 15u) == (reinterpret_cast<uintptr_t>(zr) & 15u);
  int64_t head = vocab, nvec = 0;
  if (vec) {
    head = head_elems<T>(zr, vocab);
    nvec = (vocab - head) / kVec;
  }
  for (int64_t c = threadIdx.x; c < head; c += kThreads) f(to_f(zr[c]), to_f(rr[c]));
  if (nvec > 0) {
    const uint4* zb = reinterpret_cast<const uint4*>(zr + head);
    const uint4* rb = reinterpret_cast<const uint4*>(rr + head);
    for (int64_t i = threadIdx.x; i < nvec; i += kThreads) {
      const uint4 zraw = zb[i];
      const uint4 rraw = rb[i];
#pragma unroll
      for (int j = 0; j < kVec; ++j) f(lane_f<T>(zraw, j), lane_f<R>(rraw, j));
    }
  }
  for (int64_t c = head + nvec * kVec + threadIdx.x; c < vocab; c += kThreads) f(to_f(zr[c]), to_f(rr[c]));
}

// Zero gradient row of an unlabelled row.
template <typename T>
__device__ void zero_row(T* gr, int64_t vocab) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t head = head_elems<T>(gr, vocab);
  const int64_t nvec = (vocab - head) / kVec;
  const T zero = from_f<T>(0.0f);
  for (int64_t c = threadIdx.x; c < head; c += kThreads) gr[c] = zero;
  uint4* body = reinterpret_cast<uint4*>(gr + head);
  for (int64_t i = threadIdx.x; i < nvec; i += kThreads) body[i] = make_uint4(0u, 0u, 0u, 0u);
  for (int64_t c = head + nvec * kVec + threadIdx.x; c < vocab; c += kThreads) gr[c] = zero;
}

// I(softmax(x / T_g)) over the K entries of x (shared): min{k : sum of the k
// largest ≥ τ_mass − 1e-6} / K (the tie rule, kDispersionTieTolerance), capped at K/K.
// `buf` holds k_pad floats (k_pad a power of two ≥ 32), `red` kWarps + 1 floats.
__device__ float dispersion(const float* x, int k, int k_pad, float temperature, float mass_threshold,
                            float* buf, float* red) {
  float local = kNegInf;
  for (int i = threadIdx.x; i < k; i += kThreads) local = fmaxf(local, x[i] / temperature);
  const float mx = block_max(local, red);
  local = 0.0f;
  for (int i = threadIdx.x; i < k_pad; i += kThreads) {
    const float e = i < k ? __expf(x[i] / temperature - mx) : 0.0f;
    buf[i] = e;
    local += e;
  }
  const float total = block_sum(local, red);  // its barriers order the writes above
  for (int i = threadIdx.x; i < k; i += kThreads) buf[i] = buf[i] / total;
  __syncthreads();
  // Bitonic sort, descending (the zero padding goes last).
  for (int size = 2; size <= k_pad; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < k_pad; i += kThreads) {
        const int j = i ^ stride;
        if (j > i) {
          const float a = buf[i], b = buf[j];
          const bool descending = (i & size) == 0;
          if (descending ? (a < b) : (a > b)) {
            buf[i] = b;
            buf[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  // Cumulative mass: warp 0, each lane a contiguous chunk, then a warp scan.
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int chunk = k_pad / 32;
    // In double (the tie rule, kDispersionTieTolerance): a float32 scan errs by ~1e-5 at K = 1000.
    double part = 0.0;
    for (int j = 0; j < chunk; ++j) part += buf[lane * chunk + j];
    double incl = part;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const double o = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += o;
    }
    double running = incl - part;
    const double threshold = static_cast<double>(mass_threshold) - static_cast<double>(kDispersionTieTolerance);
    float count = 0.0f;
    for (int j = 0; j < chunk; ++j) {
      running += buf[lane * chunk + j];
      count += running < threshold ? 1.0f : 0.0f;
    }
    count = warp_sum(count);
    if (lane == 0) red[kWarps] = count;
  }
  __syncthreads();
  const float count = fminf(red[kWarps] + 1.0f, static_cast<float>(k));
  __syncthreads();
  return count / static_cast<float>(k);
}

template <typename T, typename R>
__global__ void __launch_bounds__(kThreads) pact_safety_set_kernel(PactParams p) {
  __shared__ float s_z[kMaxK];
  __shared__ float s_rf[kMaxK];
  __shared__ float s_rp[kMaxK];
  __shared__ float s_buf[kMaxK];
  __shared__ int s_ids[kMaxK];
  __shared__ float s_red[3 * (kWarps + 1)];

  const int64_t row = blockIdx.x;
  const int64_t vocab = p.vocab;
  const T* zr = static_cast<const T*>(p.z) + row * p.stride_z_row;
  using G = typename HeldGrad<T>::type;
  G* gr = static_cast<G*>(p.g) + row * p.stride_g_row;
  const int64_t y = p.labels[row];
  if (y == p.ignore_index) {
    zero_row(gr, vocab);
    if (threadIdx.x == 0) {
      p.ce[row] = 0.0f;
      p.kl[row] = 0.0f;
      p.gate[row] = 0.0f;
    }
    return;
  }

  // Sweep 1.
  const Lse s = block_lse(row_lse_partial(zr, vocab), s_red);
  const float lse = s.m + __logf(s.d);
  const float z_y = to_f(zr[y]);

  // Gathers of S.
  const int k = static_cast<int>(p.k);
  int k_pad = 32;
  while (k_pad < k) k_pad <<= 1;
  const R* rf_row = static_cast<const R*>(p.r_full) + row * p.stride_rf_row;
  const R* rp_row = static_cast<const R*>(p.r_post) + row * p.stride_rp_row;
  bool y_in_s = false;
  for (int i = threadIdx.x; i < k; i += kThreads) {
    const int id = static_cast<int>(p.ids[i]);
    s_ids[i] = id;
    s_z[i] = to_f(zr[id]);
    s_rf[i] = to_f(rf_row[p.rf_gather ? id : i]);
    if (p.use_gate) s_rp[i] = to_f(rp_row[p.rp_gather ? id : i]);
    y_in_s = y_in_s || id == y;
  }
  y_in_s = __syncthreads_or(y_in_s) != 0;

  // Gate (constant for the gradient).
  float gate = 0.0f;
  if (p.use_gate) {
    const float i_ft = dispersion(s_z, k, k_pad, p.gate_temperature, p.mass_threshold, s_buf, s_red);
    const float i_post = dispersion(s_rp, k, k_pad, p.gate_temperature, p.mass_threshold, s_buf, s_red);
    gate = 1.0f / (1.0f + __expf(-p.gate_scale * (i_ft - i_post - p.gate_bias)));
    if (p.use_decay) {
      const float t = static_cast<float>(p.pos[row]);
      gate *= __expf(-fmaxf(t - p.decay_start, 0.0f) / p.decay_tau);
    }
  }

  // p_ref ∝ w·exp(m/T) over w > 0 (log-weights into s_buf); p_ft = softmax(z_S/T).
  const float temp = p.kl_temperature;
  float max_ref = kNegInf, max_ft = kNegInf;
  for (int i = threadIdx.x; i < k; i += kThreads) {
    const float mixed = p.use_gate ? (1.0f - gate) * s_rf[i] + gate * s_rp[i] : s_rf[i];
    const float w = p.weights[i];
    const float lu = w > 0.0f ? __logf(w) + mixed / temp : kNegInf;
    s_buf[i] = lu;
    max_ref = fmaxf(max_ref, lu);
    max_ft = fmaxf(max_ft, s_z[i] / temp);
  }
  max_ref = block_max(max_ref, s_red);
  max_ft = block_max(max_ft, s_red);
  float sum_ref = 0.0f, sum_ft = 0.0f;
  for (int i = threadIdx.x; i < k; i += kThreads) {
    sum_ref += __expf(s_buf[i] - max_ref);
    sum_ft += __expf(s_z[i] / temp - max_ft);
  }
  const float log_sum_ref = __logf(block_sum(sum_ref, s_red));
  const float log_sum_ft = __logf(block_sum(sum_ft, s_red));
  const float inv_n = *p.inv_n;
  const float kl_scale = p.lambda_kl * temp;
  float terms = 0.0f;
  for (int i = threadIdx.x; i < k; i += kThreads) {
    const float lu = s_buf[i];
    const float log_p_ft = s_z[i] / temp - max_ft - log_sum_ft;
    const float p_ft = __expf(log_p_ft);
    float p_ref = 0.0f;
    if (lu != kNegInf) {
      const float log_p_ref = lu - max_ref - log_sum_ref;
      p_ref = __expf(log_p_ref);
      terms += p_ref * (log_p_ref - log_p_ft);
    }
    const float onehot = s_ids[i] == y ? 1.0f : 0.0f;
    s_buf[i] = (__expf(s_z[i] - lse) - onehot + kl_scale * (p_ft - p_ref)) * inv_n;  // this thread's own entry
  }
  const float kl_row = temp * temp * block_sum(terms, s_red);  // also orders every read of z above
  if (threadIdx.x == 0) {
    p.ce[row] = lse - z_y;
    p.kl[row] = kl_row;
    p.gate[row] = gate;
  }

  // Sweep 2 (g may alias z: every read of z above is behind the barrier of block_sum).
  write_row<false, T, T, G>(zr, static_cast<const T*>(nullptr), gr, vocab,
                         [=](int64_t, float x, float) { return __expf(x - lse) * inv_n; });
  __syncthreads();
  // The target and S columns: float32 totals, rounded once, overwrite the sweep's values.
  if (threadIdx.x == 0 && !y_in_s) gr[y] = from_f<G>((__expf(z_y - lse) - 1.0f) * inv_n);
  for (int i = threadIdx.x; i < k; i += kThreads) gr[s_ids[i]] = from_f<G>(s_buf[i]);
}

template <typename T, typename R>
__global__ void __launch_bounds__(kThreads) pact_full_vocab_kernel(PactParams p) {
  __shared__ float s_red[3 * (kWarps + 1)];

  const int64_t row = blockIdx.x;
  const int64_t vocab = p.vocab;
  const T* zr = static_cast<const T*>(p.z) + row * p.stride_z_row;
  const R* rr = static_cast<const R*>(p.r_full) + row * p.stride_rf_row;
  using G = typename HeldGrad<T>::type;
  G* gr = static_cast<G*>(p.g) + row * p.stride_g_row;
  const int64_t y = p.labels[row];
  if (y == p.ignore_index) {
    zero_row(gr, vocab);
    if (threadIdx.x == 0) {
      p.ce[row] = 0.0f;
      p.kl[row] = 0.0f;
      p.gate[row] = 0.0f;
    }
    return;
  }

  // Sweep 1, two streams: (max, sum) of z, z/T, and of r/T with Σ exp(r/T − m)·(r/T − z/T).
  const float temp = p.kl_temperature;
  const bool unit = temp == 1.0f;
  Lse sz, szt, sr;
  read_rows(zr, rr, vocab, [&](float x, float r) {
    const float xt = unit ? x : x / temp;
    const float rt = r / temp;
    lse_add(sz, x, 0.0f);
    if (!unit) lse_add(szt, xt, 0.0f);
    lse_add(sr, rt, rt - xt);
  });
  sz = block_lse(sz, s_red);
  if (!unit) szt = block_lse(szt, s_red);
  sr = block_lse(sr, s_red);
  const float lse = sz.m + __logf(sz.d);
  const float lse_t = unit ? lse : szt.m + __logf(szt.d);
  const float lse_r = sr.m + __logf(sr.d);
  const float z_y = to_f(zr[y]);
  const float inv_n = *p.inv_n;
  if (threadIdx.x == 0) {
    p.ce[row] = lse - z_y;
    p.kl[row] = temp * temp * (sr.a / sr.d - lse_r + lse_t);
    p.gate[row] = 0.0f;
  }
  __syncthreads();  // z_y read by every thread before an in-place sweep overwrites it

  // Sweep 2: ((softmax(z) − onehot(y)) + λT·(softmax(z/T) − softmax(r/T))) / n, in float32 per column.
  const float kl_scale = p.lambda_kl * temp;
  write_row<true, T, R, G>(zr, rr, gr, vocab, [=](int64_t c, float x, float r) {
    const float prob = __expf(x - lse);
    const float prob_t = unit ? prob : __expf(x / temp - lse_t);
    const float onehot = c == y ? 1.0f : 0.0f;
    return (prob - onehot + kl_scale * (prob_t - __expf(r / temp - lse_r))) * inv_n;
  });
}

}  // namespace

#ifndef PACT_HOST_EMULATION  // csrc/host_emulation/ runs the kernels above on the CPU, launching them itself
namespace {

template <typename T, typename R>
cudaError_t launch_typed(const PactParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(p.rows));
  if (p.full_vocab) {
    pact_full_vocab_kernel<T, R><<<grid, kThreads, 0, stream>>>(p);
  } else {
    pact_safety_set_kernel<T, R><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ref(const PactParams& p, DType ref_dtype, cudaStream_t stream) {
  switch (ref_dtype) {
    case DType::Float32: return launch_typed<T, float>(p, stream);
    case DType::BFloat16: return launch_typed<T, __nv_bfloat16>(p, stream);
    case DType::Float16: return launch_typed<T, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_pact_loss(const PactParams& p, DType z_dtype, DType ref_dtype, cudaStream_t stream) {
  if (p.rows <= 0) return cudaSuccess;
  if (p.rows > 0x7fffffffLL || p.vocab <= 0 || p.vocab > 0x7fffffffLL || (!p.full_vocab && (p.k < 1 || p.k > kMaxK))) {
    return cudaErrorInvalidValue;
  }
  switch (z_dtype) {
    case DType::Float32: return launch_ref<float>(p, ref_dtype, stream);
    case DType::BFloat16: return launch_ref<__nv_bfloat16>(p, ref_dtype, stream);
    case DType::Float16: return launch_ref<__half>(p, ref_dtype, stream);
  }
  return cudaErrorInvalidValue;
}
#endif  // PACT_HOST_EMULATION

}  // namespace pact
