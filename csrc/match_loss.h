// Argument checks, helpers and the allocating wrappers shared by the CPU and CUDA kernels of match_loss.
#pragma once

#include <ATen/ATen.h>

#include "common.h"

#include <string>
#include <tuple>
#include <vector>

namespace pydistill {
namespace match_loss_common {

// "ours" -> 0, "mse" -> 1, "cos" -> 2.
inline int metric_code(const std::string& metric) {
  if (metric == "ours") return 0;
  if (metric == "mse") return 1;
  if (metric == "cos") return 2;
  TORCH_CHECK(false, "match_loss: metric must be one of 'ours', 'mse', 'cos', got '", metric, "'");
}

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

// match_loss_fwd: allocates loss (0-dim, input dtype) and stats ([R, 3], accumulation dtype) on the device of
// gw_syn and fills them with the backend's match_loss_fwd_out kernel `FwdOut` (CPU or CUDA).
template <void (*FwdOut)(at::TensorList, at::TensorList, const std::string&, const at::Tensor&, const at::Tensor&)>
std::tuple<at::Tensor, at::Tensor> fwd(at::TensorList gw_syn, at::TensorList gw_real, const std::string& metric_s) {
  check_lists(gw_syn, gw_real, "match_loss_fwd");
  const int metric = metric_code(metric_s);
  const auto dtype = gw_syn[0].scalar_type();
  auto loss = at::empty({}, gw_syn[0].options());
  auto stats = at::empty({num_rows(gw_syn, metric), 3}, gw_syn[0].options().dtype(acc_type(dtype)));
  FwdOut(gw_syn, gw_real, metric_s, loss, stats);
  return {loss, stats};
}

// match_loss_bwd: allocates one contiguous gradient per tensor of gw_syn (its shape, dtype and device) and fills
// them with the backend's match_loss_bwd_out kernel `BwdOut` (CPU or CUDA).
template <void (*BwdOut)(const at::Tensor&, at::TensorList, at::TensorList, const at::Tensor&, const std::string&,
                         at::TensorList)>
std::vector<at::Tensor> bwd(const at::Tensor& grad, at::TensorList gw_syn, at::TensorList gw_real,
                            const at::Tensor& stats, const std::string& metric_s) {
  std::vector<at::Tensor> out;
  out.reserve(gw_syn.size());
  for (const auto& t : gw_syn)
    out.push_back(at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous)));
  BwdOut(grad, gw_syn, gw_real, stats, metric_s, out);
  return out;
}

}  // namespace match_loss_common
}  // namespace pydistill
