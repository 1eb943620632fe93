// Interface between the torch binding (pact_binding.cpp) and the kernels
// (pact_loss_kernel.cu). Plain C++ and the CUDA runtime only: the kernel file
// compiles without torch's headers (CI compiles it with nvcc, no GPU).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace pact {

enum class DType : int { Float32 = 0, BFloat16 = 1, Float16 = 2 };

// Largest safety set the kernels hold in shared memory.
constexpr int kMaxK = 1024;

// The dispersion's tie rule (pact_kernels.formulas.DISPERSION_TIE_TOLERANCE): the cumulative mass
// counts as reaching tau_mass from tau_mass - 1e-6 on, so the summation order cannot change the count
// at exact ties.
constexpr float kDispersionTieTolerance = 1e-6f;

struct PactParams {
  // [rows, V] logits (unit column stride) and the gradient (may alias z).
  const void* z;
  void* g;
  int64_t stride_z_row;
  int64_t stride_g_row;
  // [rows] int64 labels, [K] int64 ids of S, [K] float32 weights.
  const int64_t* labels;
  const int64_t* ids;
  const float* weights;
  // References, unit column stride: [rows, K] or [rows, V] (rf_gather / rp_gather).
  const void* r_full;
  int64_t stride_rf_row;
  const void* r_post;
  int64_t stride_rp_row;
  const int64_t* pos;   // [rows] answer positions (read when use_decay)
  const float* inv_n;   // [1] 1 / max(n, 1)
  float* ce;            // [rows] outputs
  float* kl;
  float* gate;
  int64_t rows;
  int64_t vocab;
  int64_t k;
  int64_t ignore_index;
  float lambda_kl, mass_threshold, gate_scale, gate_bias, gate_temperature;
  float decay_start, decay_tau, kl_temperature;
  bool rf_gather, rp_gather, use_gate, use_decay;
  bool full_vocab;  // the full_vocab variant: KL over V against r_full [rows, V]
};

// Launch the fused kernel (one block per row) on `stream`.
cudaError_t launch_pact_loss(const PactParams& p, DType z_dtype, DType ref_dtype, cudaStream_t stream);

}  // namespace pact
