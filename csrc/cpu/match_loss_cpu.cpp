// Gradient-matching distance of Dataset Condensation (match_loss): schemas and CPU kernels.
//
// Inputs are two equal-length lists of gradient tensors (gw_syn, gw_real), pairwise the same shape,
// all of one floating dtype and device. Metrics (code in brackets):
//   "ours" [0]: per tensor with dim >= 2, rows = size(0), row length = numel / size(0);
//               sum over rows of 1 - <a,b> / (|a| |b| + 1e-6). Tensors with dim < 2 contribute 0.
//   "mse"  [1]: sum over all tensors of sum((a - b)^2).
//   "cos"  [2]: one cosine distance 1 - <a,b> / (|a| |b| + 1e-6) over the concatenation of all tensors.
//
// Work decomposition (shared with the CUDA and Triton kernels): every tensor is split into rows
// ("ours": size(0) rows; "mse"/"cos": one row = the whole tensor) and every row into chunks of at most
// CHUNK elements. A chunk yields partial sums (<a,b>, |a|^2, |b|^2) or sum (a-b)^2; a fixed-order
// finalisation combines them per row, so results do not depend on the number of threads.
//
// Outputs of the forward: loss (0-dim, input dtype) and stats [R, 3] in the accumulation dtype
// (float64 for float64 inputs, else float32): per row (<a,b>, |a|^2, |b|^2); R = number of rows for
// "ours", 1 for "cos", 0 for "mse". The backward uses stats instead of re-reading the inputs twice.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "match_loss.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace pydistill {
namespace match_loss_cpu {

using match_loss_common::check_lists;
using match_loss_common::metric_code;
using match_loss_common::num_rows;

constexpr int64_t kChunk = 16384;
constexpr double kEps = 1e-6;

struct Item {
  const void* a;
  const void* b;
  void* g;
  int64_t rows, row_len, cpr, chunk_start, seg;
  bool active;  // false: "ours" tensor with dim < 2 (contributes 0, gradient 0)
};

// Builds the work list; `backward` includes inactive ("ours", dim < 2) tensors so their gradient is written.
std::vector<Item> build(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                        const std::vector<at::Tensor>* g, int metric, bool backward, int64_t chunk,
                        int64_t* n_chunks) {
  std::vector<Item> items;
  items.reserve(a.size());
  int64_t cs = 0, seg = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    Item it{};
    it.a = a[i].data_ptr();
    it.b = b[i].data_ptr();
    it.g = g ? (*g)[i].data_ptr() : nullptr;
    const int64_t n = a[i].numel();
    it.active = true;
    if (metric == 0) {
      if (a[i].dim() >= 2) {
        it.rows = a[i].size(0);
        it.row_len = it.rows > 0 ? n / it.rows : 0;
      } else {
        it.active = false;
        it.rows = backward ? 1 : 0;
        it.row_len = n;
      }
    } else {
      it.rows = 1;
      it.row_len = n;
    }
    it.cpr = (it.row_len + chunk - 1) / chunk;
    it.chunk_start = cs;
    it.seg = metric == 0 ? seg : 0;
    cs += it.rows * it.cpr;
    if (metric == 0 && it.active) seg += it.rows;
    items.push_back(it);
  }
  *n_chunks = cs;
  return items;
}

// Index of the item holding chunk c (last item whose chunk_start <= c).
inline size_t find_item(const std::vector<Item>& items, int64_t c) {
  size_t lo = 0, hi = items.size() - 1;
  while (lo < hi) {
    size_t mid = (lo + hi + 1) / 2;
    if (items[mid].chunk_start <= c) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename scalar_t, typename acc_t>
void forward_impl(const std::vector<Item>& items, int64_t W, int metric, int64_t R, const at::Tensor& loss,
                  const at::Tensor& stats) {
  std::vector<acc_t> part(static_cast<size_t>(std::max<int64_t>(W, 1)) * 3, acc_t(0));
  at::parallel_for(0, W, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Item& it = items[find_item(items, c)];
      const int64_t local = c - it.chunk_start;
      const int64_t row = local / it.cpr, k = local - row * it.cpr;
      const int64_t start = row * it.row_len + k * kChunk;
      const int64_t len = std::min<int64_t>(kChunk, it.row_len - k * kChunk);
      const scalar_t* pa = static_cast<const scalar_t*>(it.a) + start;
      const scalar_t* pb = static_cast<const scalar_t*>(it.b) + start;
      if (metric == 1) {
        acc_t s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < len; ++j) {
          const acc_t d = static_cast<acc_t>(pa[j]) - static_cast<acc_t>(pb[j]);
          s += d * d;
        }
        part[3 * c] = s;
      } else {
        acc_t d = 0, aa = 0, bb = 0;
#pragma omp simd reduction(+ : d, aa, bb)
        for (int64_t j = 0; j < len; ++j) {
          const acc_t x = static_cast<acc_t>(pa[j]);
          const acc_t y = static_cast<acc_t>(pb[j]);
          d += x * y;
          aa += x * x;
          bb += y * y;
        }
        part[3 * c] = d;
        part[3 * c + 1] = aa;
        part[3 * c + 2] = bb;
      }
    }
  });
  // Fixed-order finalisation.
  acc_t total = 0;
  const acc_t eps = static_cast<acc_t>(kEps);
  if (metric == 0) {
    acc_t* st = stats.data_ptr<acc_t>();
    for (const Item& it : items) {
      if (!it.active) continue;
      for (int64_t r = 0; r < it.rows; ++r) {
        acc_t d = 0, aa = 0, bb = 0;
        const int64_t cb = it.chunk_start + r * it.cpr;
        for (int64_t k = 0; k < it.cpr; ++k) {
          d += part[3 * (cb + k)];
          aa += part[3 * (cb + k) + 1];
          bb += part[3 * (cb + k) + 2];
        }
        const int64_t s = it.seg + r;
        st[3 * s] = d;
        st[3 * s + 1] = aa;
        st[3 * s + 2] = bb;
        total += acc_t(1) - d / (std::sqrt(aa) * std::sqrt(bb) + eps);
      }
    }
  } else if (metric == 1) {
    for (int64_t c = 0; c < W; ++c) total += part[3 * c];
  } else {
    acc_t d = 0, aa = 0, bb = 0;
    for (int64_t c = 0; c < W; ++c) {
      d += part[3 * c];
      aa += part[3 * c + 1];
      bb += part[3 * c + 2];
    }
    acc_t* st = stats.data_ptr<acc_t>();
    st[0] = d;
    st[1] = aa;
    st[2] = bb;
    total = acc_t(1) - d / (std::sqrt(aa) * std::sqrt(bb) + eps);
  }
  (void)R;
  loss.fill_(static_cast<double>(total));
}

template <typename scalar_t, typename acc_t>
void backward_impl(const std::vector<Item>& items, int64_t W, int metric, acc_t s, const acc_t* st) {
  const acc_t eps = static_cast<acc_t>(kEps);
  at::parallel_for(0, W, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Item& it = items[find_item(items, c)];
      const int64_t local = c - it.chunk_start;
      const int64_t row = local / it.cpr, k = local - row * it.cpr;
      const int64_t start = row * it.row_len + k * kChunk;
      const int64_t len = std::min<int64_t>(kChunk, it.row_len - k * kChunk);
      const scalar_t* pa = static_cast<const scalar_t*>(it.a) + start;
      const scalar_t* pb = static_cast<const scalar_t*>(it.b) + start;
      scalar_t* pg = static_cast<scalar_t*>(it.g) + start;
      if (!it.active) {
        for (int64_t j = 0; j < len; ++j) pg[j] = scalar_t(0);
        continue;
      }
      if (metric == 1) {
        const acc_t two_s = acc_t(2) * s;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j)
          pg[j] = static_cast<scalar_t>(two_s * (static_cast<acc_t>(pa[j]) - static_cast<acc_t>(pb[j])));
        continue;
      }
      const acc_t* rs = st + 3 * (it.seg + row);
      const acc_t na = std::sqrt(rs[1]), nb = std::sqrt(rs[2]);
      const acc_t den = na * nb + eps;
      // d/da [1 - <a,b>/(|a||b|+eps)] = -b/den + <a,b>|b| a / (|a| den^2)   (second term 0 when |a| = 0)
      const acc_t alpha = -s / den;
      const acc_t beta = na > acc_t(0) ? s * rs[0] * nb / (na * den * den) : acc_t(0);
#pragma omp simd
      for (int64_t j = 0; j < len; ++j)
        pg[j] = static_cast<scalar_t>(alpha * static_cast<acc_t>(pb[j]) + beta * static_cast<acc_t>(pa[j]));
    }
  });
}

void fwd_out(at::TensorList gw_syn, at::TensorList gw_real, const std::string& metric_s, const at::Tensor& loss,
             const at::Tensor& stats) {
  check_lists(gw_syn, gw_real, "match_loss_fwd");
  const int metric = metric_code(metric_s);
  const auto dtype = gw_syn[0].scalar_type();
  const int64_t R = num_rows(gw_syn, metric);
  TORCH_CHECK(gw_syn[0].device().is_cpu(), "match_loss_fwd (CPU kernel): tensors must be on the CPU");
  TORCH_CHECK(loss.dim() == 0 && loss.scalar_type() == dtype && loss.device().is_cpu(),
              "match_loss_fwd: loss must be a 0-dim CPU tensor of dtype ", dtype);
  TORCH_CHECK(stats.is_contiguous() && stats.dim() == 2 && stats.size(0) == R && stats.size(1) == 3 &&
                  stats.scalar_type() == acc_type(dtype) && stats.device().is_cpu(),
              "match_loss_fwd: stats must be a contiguous [", R, ", 3] CPU tensor of dtype ", acc_type(dtype));
  auto a = contiguous_all(gw_syn);
  auto b = contiguous_all(gw_real);
  int64_t W = 0;
  auto items = build(a, b, nullptr, metric, /*backward=*/false, kChunk, &W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "match_loss_fwd_cpu", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    forward_impl<scalar_t, acc_t>(items, W, metric, R, loss, stats);
  });
}

void bwd_out(const at::Tensor& grad, at::TensorList gw_syn, at::TensorList gw_real, const at::Tensor& stats,
             const std::string& metric_s, at::TensorList grad_syn) {
  check_lists(gw_syn, gw_real, "match_loss_bwd");
  const int metric = metric_code(metric_s);
  const auto dtype = gw_syn[0].scalar_type();
  const int64_t R = num_rows(gw_syn, metric);
  TORCH_CHECK(gw_syn[0].device().is_cpu(), "match_loss_bwd (CPU kernel): tensors must be on the CPU");
  TORCH_CHECK(grad.numel() == 1 && grad.device().is_cpu(), "match_loss_bwd: grad must be a one-element CPU tensor");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == R && stats.size(1) == 3 && stats.scalar_type() == acc_type(dtype),
              "match_loss_bwd: stats must be [", R, ", 3] of dtype ", acc_type(dtype), ", got ", stats.sizes(), " ",
              stats.scalar_type());
  TORCH_CHECK(grad_syn.size() == gw_syn.size(), "match_loss_bwd: grad_syn must have ", gw_syn.size(), " tensors");
  for (size_t i = 0; i < grad_syn.size(); ++i)
    TORCH_CHECK(grad_syn[i].sizes() == gw_syn[i].sizes() && grad_syn[i].is_contiguous() &&
                    grad_syn[i].scalar_type() == dtype && grad_syn[i].device().is_cpu(),
                "match_loss_bwd: grad_syn[", i, "] must be a contiguous CPU tensor of shape ", gw_syn[i].sizes(),
                " and dtype ", dtype);
  auto a = contiguous_all(gw_syn);
  auto b = contiguous_all(gw_real);
  std::vector<at::Tensor> g(grad_syn.begin(), grad_syn.end());
  auto st = stats.contiguous();
  int64_t W = 0;
  auto items = build(a, b, &g, metric, /*backward=*/true, kChunk, &W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "match_loss_bwd_cpu", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const acc_t s = static_cast<acc_t>(grad.item<double>());
    backward_impl<scalar_t, acc_t>(items, W, metric, s, R > 0 ? st.data_ptr<acc_t>() : nullptr);
  });
}

}  // namespace match_loss_cpu
}  // namespace pydistill

TORCH_LIBRARY_FRAGMENT(pydistill, m) {
  m.def("match_loss_fwd(Tensor[] gw_syn, Tensor[] gw_real, str metric) -> (Tensor, Tensor)");
  m.def("match_loss_fwd_out(Tensor[] gw_syn, Tensor[] gw_real, str metric, Tensor(a!) loss, Tensor(b!) stats) -> ()");
  m.def("match_loss_bwd(Tensor grad, Tensor[] gw_syn, Tensor[] gw_real, Tensor stats, str metric) -> Tensor[]");
  m.def(
      "match_loss_bwd_out(Tensor grad, Tensor[] gw_syn, Tensor[] gw_real, Tensor stats, str metric, "
      "Tensor(a!)[] grad_syn) -> ()");
}

TORCH_LIBRARY_IMPL(pydistill, CPU, m) {
  m.impl("match_loss_fwd", &pydistill::match_loss_common::fwd<&pydistill::match_loss_cpu::fwd_out>);
  m.impl("match_loss_fwd_out", &pydistill::match_loss_cpu::fwd_out);
  m.impl("match_loss_bwd", &pydistill::match_loss_common::bwd<&pydistill::match_loss_cpu::bwd_out>);
  m.impl("match_loss_bwd_out", &pydistill::match_loss_cpu::bwd_out);
}
