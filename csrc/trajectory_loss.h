// Argument checks and helpers shared by the CPU and CUDA kernels of trajectory_loss.
#pragma once

#include <ATen/ATen.h>

#include "common.h"

namespace pydistill {
namespace trajectory_loss_common {

// Lists `na` and `nb` of equal length, pairwise equal shapes, one dtype and one device.
inline void check_lists(const char* op, at::TensorList a, const char* na, at::TensorList b, const char* nb) {
  TORCH_CHECK(a.size() == b.size(), op, ": ", na, " and ", nb, " must have the same length, got ", a.size(),
              " and ", b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    TORCH_CHECK(a[i].sizes() == b[i].sizes(), op, ": ", na, "[", i, "] and ", nb, "[", i,
                "] must have the same shape, got ", a[i].sizes(), " and ", b[i].sizes());
    TORCH_CHECK(a[i].scalar_type() == a[0].scalar_type() && b[i].scalar_type() == a[0].scalar_type(), op,
                ": all tensors must share one dtype, got ", a[i].scalar_type(), " / ", b[i].scalar_type(),
                " vs ", a[0].scalar_type());
    TORCH_CHECK(a[i].device() == a[0].device() && b[i].device() == a[0].device(), op,
                ": all tensors must be on one device");
  }
}

}  // namespace trajectory_loss_common
}  // namespace pydistill
