// Torch binding of the fused PACT kernel: pact_kernels._cuda.forward.
//
// Checks shapes, dtypes and devices, fills PactParams and launches on the
// current CUDA stream. Returns (ce_rows, kl_rows, gate, grad): float32 [rows]
// per-row terms (0 on unlabelled rows) and the gradient buffer it was given
// (already scaled by 1/n; float32 for float16 logits, else the logits' dtype). pact_kernels/backends/cuda_extension.py prepares the inputs.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "pact_loss.h"

namespace {

pact::DType to_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return pact::DType::Float32;
    case at::kBFloat16: return pact::DType::BFloat16;
    case at::kHalf: return pact::DType::Float16;
    default: TORCH_CHECK(false, "pact_kernels._cuda: ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

void check_rows(const at::Tensor& t, const char* name, const at::Tensor& z) {
  TORCH_CHECK(t.is_cuda() && t.device() == z.device(), "pact_kernels._cuda: ", name, " must be on ", z.device());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == z.size(0), "pact_kernels._cuda: ", name, " must be [rows, *]");
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, "pact_kernels._cuda: ", name, " needs a unit column stride");
}

void check_vector(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t size, const at::Tensor& z) {
  TORCH_CHECK(t.is_cuda() && t.device() == z.device(), "pact_kernels._cuda: ", name, " must be on ", z.device());
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == 1 && t.size(0) == size && t.is_contiguous(),
              "pact_kernels._cuda: ", name, " must be a contiguous [", size, "] ", dtype, " tensor");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& z, at::Tensor grad, const at::Tensor& labels, const at::Tensor& ids, const at::Tensor& weights,
    const at::Tensor& r_full, const at::Tensor& r_post, const at::Tensor& pos, const at::Tensor& inv_n,
    bool rf_gather, bool rp_gather, bool use_gate, bool use_decay, bool full_vocab, int64_t ignore_index,
    double lambda_kl, double mass_threshold, double gate_scale, double gate_bias, double gate_temperature,
    double decay_start, double decay_tau, double kl_temperature) {
  TORCH_CHECK(z.is_cuda() && z.dim() == 2, "pact_kernels._cuda: logits must be a CUDA [rows, V] tensor");
  TORCH_CHECK(z.size(1) <= 1 || z.stride(1) == 1, "pact_kernels._cuda: logits need a unit column stride");
  const int64_t rows = z.size(0), vocab = z.size(1);
  // float16 logits get a float32 gradient (HeldGrad in pact_loss_kernel.cu), the others their own dtype.
  const at::ScalarType grad_type = z.scalar_type() == at::kHalf ? at::kFloat : z.scalar_type();
  TORCH_CHECK(grad.sizes() == z.sizes() && grad.scalar_type() == grad_type && grad.device() == z.device() &&
                  (vocab <= 1 || grad.stride(1) == 1),
              "pact_kernels._cuda: grad must be a ", grad_type, " tensor of the logits' shape (unit column stride)");
  check_rows(r_full, "r_full", z);
  check_rows(r_post, "r_post", z);
  TORCH_CHECK(r_full.scalar_type() == r_post.scalar_type(), "pact_kernels._cuda: r_full and r_post must share a dtype");
  const int64_t k = ids.numel();
  check_vector(labels, "labels", at::kLong, rows, z);
  check_vector(pos, "answer_pos", at::kLong, rows, z);
  check_vector(ids, "safety_ids", at::kLong, k, z);
  check_vector(weights, "safety_weights", at::kFloat, k, z);
  check_vector(inv_n, "inv_n", at::kFloat, 1, z);
  if (!full_vocab) {
    TORCH_CHECK(k >= 1 && k <= pact::kMaxK, "pact_kernels._cuda: needs 1 <= K <= ", pact::kMaxK, ", got K = ", k);
    TORCH_CHECK(r_full.size(1) == (rf_gather ? vocab : k), "pact_kernels._cuda: r_full must be [rows, K] or [rows, V]");
    TORCH_CHECK(!use_gate || r_post.size(1) == (rp_gather ? vocab : k),
                "pact_kernels._cuda: r_post must be [rows, K] or [rows, V]");
  } else {
    TORCH_CHECK(r_full.size(1) == vocab, "pact_kernels._cuda: full_vocab needs r_full [rows, V]");
  }

  const c10::cuda::CUDAGuard guard(z.device());
  auto opts = z.options().dtype(at::kFloat);
  at::Tensor ce = at::empty({rows}, opts);
  at::Tensor kl = at::empty({rows}, opts);
  at::Tensor gate = at::empty({rows}, opts);

  pact::PactParams p{};
  p.z = z.data_ptr();
  p.g = grad.data_ptr();
  p.stride_z_row = z.stride(0);
  p.stride_g_row = grad.stride(0);
  p.labels = labels.data_ptr<int64_t>();
  p.ids = ids.data_ptr<int64_t>();
  p.weights = weights.data_ptr<float>();
  p.r_full = r_full.data_ptr();
  p.stride_rf_row = r_full.stride(0);
  p.r_post = r_post.data_ptr();
  p.stride_rp_row = r_post.stride(0);
  p.pos = pos.data_ptr<int64_t>();
  p.inv_n = inv_n.data_ptr<float>();
  p.ce = ce.data_ptr<float>();
  p.kl = kl.data_ptr<float>();
  p.gate = gate.data_ptr<float>();
  p.rows = rows;
  p.vocab = vocab;
  p.k = k;
  p.ignore_index = ignore_index;
  p.lambda_kl = static_cast<float>(lambda_kl);
  p.mass_threshold = static_cast<float>(mass_threshold);
  p.gate_scale = static_cast<float>(gate_scale);
  p.gate_bias = static_cast<float>(gate_bias);
  p.gate_temperature = static_cast<float>(gate_temperature);
  p.decay_start = static_cast<float>(decay_start);
  p.decay_tau = static_cast<float>(decay_tau);
  p.kl_temperature = static_cast<float>(kl_temperature);
  p.rf_gather = rf_gather;
  p.rp_gather = rp_gather;
  p.use_gate = use_gate;
  p.use_decay = use_decay;
  p.full_vocab = full_vocab;

  const cudaError_t err = pact::launch_pact_loss(p, to_dtype(z, "logits"), to_dtype(r_full, "r_full"),
                                                 c10::cuda::getCurrentCUDAStream(z.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "pact_kernels._cuda: kernel launch failed: ", cudaGetErrorString(err));
  return {ce, kl, gate, grad};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused PACT loss (SPEC §3, §5): per-row CE, KL, gate and d loss / d logits in one CUDA launch.";
  m.def("forward", &forward,
        "forward(z, grad, labels, ids, weights, r_full, r_post, pos, inv_n, rf_gather, rp_gather, use_gate, "
        "use_decay, full_vocab, ignore_index, lambda_kl, mass_threshold, gate_scale, gate_bias, gate_temperature, "
        "decay_start, decay_tau, kl_temperature) -> (ce_rows, kl_rows, gate, grad)");
}
