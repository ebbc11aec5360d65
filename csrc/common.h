// Helpers shared by the CPU and CUDA kernels of every op: the accumulation type and contiguous copies of lists.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pydistill {

// Accumulation type of a kernel reading T: double for double, float for float, half and bfloat16.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// The same as a dtype: float64 for float64 inputs, else float32.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Contiguous versions of the tensors of a list (the tensors themselves when already contiguous).
inline std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

}  // namespace pydistill
