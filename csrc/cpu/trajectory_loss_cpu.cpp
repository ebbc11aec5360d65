// MTT normalized parameter-matching loss: schemas + CPU kernels.
//
//   loss = sum_i ||student_i - target_i||^2 / sum_i ||start_i - target_i||^2
//
// trajectory_loss_fwd(student[], start[], target[]) -> (loss, den)
//   loss: 0-dim, dtype of the inputs; den: 0-dim, accumulation dtype (fp32, fp64 for fp64 inputs).
//   One pass reads every element of the three lists once. The work is cut into fixed tiles across the
//   whole list; each tile's partial sums land in their own slot and are added in tile order, so the
//   result does not depend on the number of threads.
// trajectory_loss_bwd(grad, student[], target[], den) -> grads[]
//   grads_i = grad * 2 * (student_i - target_i) / den, one pass, shapes of student_i (contiguous).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "trajectory_loss.h"

#include <vector>

namespace pydistill {
namespace {

using trajectory_loss_common::check_lists;

constexpr int64_t kCpuTile = 16384;  // elements per tile (one partial-sum slot per tile)

// One tile = a contiguous range of one tensor of the list.
struct Tile {
  int64_t tensor;
  int64_t begin;
  int64_t len;
};

std::vector<Tile> make_tiles(const std::vector<int64_t>& numels) {
  std::vector<Tile> tiles;
  for (int64_t i = 0; i < static_cast<int64_t>(numels.size()); ++i) {
    for (int64_t b = 0; b < numels[i]; b += kCpuTile) {
      tiles.push_back({i, b, std::min(kCpuTile, numels[i] - b)});
    }
  }
  return tiles;
}

// sum (s-t)^2 and sum (a-t)^2 over one tile -> out[0], out[1]; vectorized (omp simd reduction).
template <typename T, typename A>
void tile_sums(const T* __restrict__ xs, const T* __restrict__ xa, const T* __restrict__ xt, int64_t len, A* out) {
  A num = 0, den = 0;
#pragma omp simd reduction(+ : num, den)
  for (int64_t j = 0; j < len; ++j) {
    const A vt = static_cast<A>(xt[j]);
    const A ds = static_cast<A>(xs[j]) - vt;
    const A da = static_cast<A>(xa[j]) - vt;
    num += ds * ds;
    den += da * da;
  }
  out[0] = num;
  out[1] = den;
}

// xo = scale * (xs - xt) over one tile.
template <typename T, typename A>
void tile_grad(const T* __restrict__ xs, const T* __restrict__ xt, T* __restrict__ xo, int64_t len, A scale) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    xo[j] = static_cast<T>(scale * (static_cast<A>(xs[j]) - static_cast<A>(xt[j])));
  }
}

std::tuple<at::Tensor, at::Tensor> trajectory_loss_fwd_cpu(at::TensorList student, at::TensorList start,
                                                           at::TensorList target) {
  TORCH_CHECK(!student.empty(), "trajectory_loss_fwd: student must be a non-empty list");
  check_lists("trajectory_loss_fwd", student, "student", start, "start");
  check_lists("trajectory_loss_fwd", student, "student", target, "target");
  TORCH_CHECK(student[0].device().is_cpu(), "trajectory_loss_fwd (CPU): tensors must be on the CPU");
  const auto s = contiguous_all(student);
  const auto a = contiguous_all(start);
  const auto t = contiguous_all(target);
  std::vector<int64_t> numels;
  for (const auto& x : s) numels.push_back(x.numel());
  const auto tiles = make_tiles(numels);
  const auto dtype = s[0].scalar_type();
  const auto acc_dtype = acc_type(dtype);
  at::Tensor loss = at::empty({}, s[0].options());
  at::Tensor den_out = at::empty({}, s[0].options().dtype(acc_dtype));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "trajectory_loss_fwd_cpu", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const int64_t n_tiles = static_cast<int64_t>(tiles.size());
    std::vector<acc_t> part(2 * n_tiles, acc_t(0));
    std::vector<const scalar_t*> ps, pa, pt;
    for (size_t i = 0; i < s.size(); ++i) {
      ps.push_back(s[i].const_data_ptr<scalar_t>());
      pa.push_back(a[i].const_data_ptr<scalar_t>());
      pt.push_back(t[i].const_data_ptr<scalar_t>());
    }
    at::parallel_for(0, n_tiles, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        const Tile& tl = tiles[k];
        tile_sums<scalar_t, acc_t>(ps[tl.tensor] + tl.begin, pa[tl.tensor] + tl.begin, pt[tl.tensor] + tl.begin,
                                   tl.len, &part[2 * k]);
      }
    });
    acc_t num = 0, den = 0;
    for (int64_t k = 0; k < n_tiles; ++k) {  // fixed order: deterministic
      num += part[2 * k];
      den += part[2 * k + 1];
    }
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(num / den);
    *den_out.mutable_data_ptr<acc_t>() = den;
  });
  return {loss, den_out};
}

std::vector<at::Tensor> trajectory_loss_bwd_cpu(const at::Tensor& grad, at::TensorList student,
                                                at::TensorList target, const at::Tensor& den) {
  TORCH_CHECK(!student.empty(), "trajectory_loss_bwd: student must be a non-empty list");
  check_lists("trajectory_loss_bwd", student, "student", target, "target");
  TORCH_CHECK(student[0].device().is_cpu(), "trajectory_loss_bwd (CPU): tensors must be on the CPU");
  TORCH_CHECK(grad.numel() == 1 && den.numel() == 1, "trajectory_loss_bwd: grad and den must hold one element");
  const auto dtype = student[0].scalar_type();
  const auto acc_dtype = acc_type(dtype);
  TORCH_CHECK(den.scalar_type() == acc_dtype, "trajectory_loss_bwd: den must be ", acc_dtype, ", got ",
              den.scalar_type());
  const auto s = contiguous_all(student);
  const auto t = contiguous_all(target);
  std::vector<at::Tensor> out;
  std::vector<int64_t> numels;
  for (const auto& x : s) {
    out.push_back(at::empty(x.sizes(), x.options()));
    numels.push_back(x.numel());
  }
  const auto tiles = make_tiles(numels);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "trajectory_loss_bwd_cpu", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const acc_t g = grad.to(acc_dtype).item<acc_t>();  // CPU tensors: no device sync involved
    const acc_t scale = acc_t(2) * g / den.item<acc_t>();
    std::vector<const scalar_t*> ps, pt;
    std::vector<scalar_t*> po;
    for (size_t i = 0; i < s.size(); ++i) {
      ps.push_back(s[i].const_data_ptr<scalar_t>());
      pt.push_back(t[i].const_data_ptr<scalar_t>());
      po.push_back(out[i].mutable_data_ptr<scalar_t>());
    }
    at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        const Tile& tl = tiles[k];
        tile_grad<scalar_t, acc_t>(ps[tl.tensor] + tl.begin, pt[tl.tensor] + tl.begin, po[tl.tensor] + tl.begin,
                                   tl.len, scale);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace pydistill

TORCH_LIBRARY_FRAGMENT(pydistill, m) {
  m.def("trajectory_loss_fwd(Tensor[] student, Tensor[] start, Tensor[] target) -> (Tensor, Tensor)");
  m.def("trajectory_loss_bwd(Tensor grad, Tensor[] student, Tensor[] target, Tensor den) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(pydistill, CPU, m) {
  m.impl("trajectory_loss_fwd", &pydistill::trajectory_loss_fwd_cpu);
  m.impl("trajectory_loss_bwd", &pydistill::trajectory_loss_bwd_cpu);
}
