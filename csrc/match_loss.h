// Argument checks and helpers shared by the CPU and CUDA kernels of match_loss.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace pydistill {
namespace match_loss_common {

// "ours" -> 0, "mse" -> 1, "cos" -> 2.
inline int metric_code(const std::string& metric) {
  if (metric == "ours") return 0;
  if (metric == "mse") return 1;
  if (metric == "cos") return 2;
  TORCH_CHECK(false, "match_loss: metric must be one of 'ours', 'mse', 'cos', got '", metric, "'");
}

// Accumulation dtype: float64 for float64 inputs, else float32.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Number of rows of the stats output for a list of shapes.
inline int64_t num_rows(at::TensorList syn, int metric) {
  if (metric == 1) return 0;
  if (metric == 2) return 1;
  int64_t r = 0;
  for (const auto& t : syn)
    if (t.dim() >= 2) r += t.size(0);
  return r;
}

// Equal non-empty lists, pairwise equal shapes, one floating dtype and one device.
inline void check_lists(at::TensorList syn, at::TensorList real, const char* op) {
  TORCH_CHECK(!syn.empty(), op, ": gw_syn must be a non-empty list of tensors");
  TORCH_CHECK(syn.size() == real.size(), op, ": gw_syn and gw_real must have the same length, got ", syn.size(),
              " and ", real.size());
  const auto dtype = syn[0].scalar_type();
  const auto device = syn[0].device();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": expected float32/float64/float16/bfloat16 tensors, got ", dtype);
  for (size_t i = 0; i < syn.size(); ++i) {
    TORCH_CHECK(syn[i].sizes() == real[i].sizes(), op, ": gw_syn[", i, "] has shape ", syn[i].sizes(),
                " but gw_real[", i, "] has shape ", real[i].sizes());
    TORCH_CHECK(syn[i].scalar_type() == dtype && real[i].scalar_type() == dtype, op,
                ": all tensors must have dtype ", dtype, " (index ", i, ")");
    TORCH_CHECK(syn[i].device() == device && real[i].device() == device, op,
                ": all tensors must be on ", device, " (index ", i, ")");
  }
}

}  // namespace match_loss_common
}  // namespace pydistill
