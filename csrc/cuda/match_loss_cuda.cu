// Gradient-matching distance of Dataset Condensation (match_loss): CUDA kernels.
// Schemas, metric definitions and the work decomposition are documented in csrc/cpu/match_loss_cpu.cpp.
//
// One launch per direction for the whole list of tensors: a device table (int64, copied host->device
// without synchronisation from pinned memory) holds per tensor the data pointers, row count, row length,
// chunks per row, first chunk and first stats row. Forward: one block per chunk of <= kChunk elements
// reduces (<a,b>, |a|^2, |b|^2) (or sum (a-b)^2) with warp shuffles in fp32 (fp64 for fp64), writes the
// chunk partials, and the last block to finish (atomic ticket in the table) combines them per row in a
// fixed order (deterministic), writes the per-row stats and the loss. Backward: one block per chunk
// writes alpha*b + beta*a with per-row coefficients from the stats and grad_output read on the device.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "match_loss.h"

#include <string>
#include <vector>

namespace pydistill {
namespace match_loss_cuda {

using match_loss_common::metric_code;
using match_loss_common::num_rows;

// The shared checks, plus: the tensors are on a CUDA device.
void check_lists(at::TensorList syn, at::TensorList real, const char* op) {
  match_loss_common::check_lists(syn, real, op);
  TORCH_CHECK(syn[0].device().is_cuda(), op, " (CUDA kernel): tensors must be on a CUDA device, got ",
              syn[0].device());
}

constexpr int64_t kChunk = 4096;
constexpr int kThreads = 256;
constexpr int kFields = 9;  // a, b, g, rows, row_len, cpr, chunk_start, seg, active
constexpr int kHeader = 1;  // meta[0]: ticket counter of the forward (0 on upload)

enum Field { F_A = 0, F_B, F_G, F_ROWS, F_LEN, F_CPR, F_CS, F_SEG, F_ACTIVE };

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block (result valid in thread 0). `sh` holds kThreads/32 values.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? sh[lane] : acc_t(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// Last tensor index t in [0, T) with meta field `f` <= key (fields are non-decreasing over t).
__device__ __forceinline__ int find_tensor(const int64_t* meta, int T, int f, int64_t key) {
  int lo = 0, hi = T - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (meta[kHeader + mid * kFields + f] <= key) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename scalar_t, typename acc_t, int METRIC>
__global__ void __launch_bounds__(kThreads) fwd_kernel(int64_t* meta, int T, int64_t W, int64_t R,
                                                       acc_t* __restrict__ part, acc_t* __restrict__ stats,
                                                       scalar_t* __restrict__ loss) {
  __shared__ acc_t sh[3][kThreads / 32];
  __shared__ bool is_last;
  const int64_t c = blockIdx.x;
  if (c < W) {
    const int t = find_tensor(meta, T, F_CS, c);
    const int64_t* m = meta + kHeader + t * kFields;
    const scalar_t* a = reinterpret_cast<const scalar_t*>(m[F_A]);
    const scalar_t* b = reinterpret_cast<const scalar_t*>(m[F_B]);
    const int64_t cpr = m[F_CPR], row_len = m[F_LEN];
    const int64_t local = c - m[F_CS];
    const int64_t row = local / cpr, k = local - row * cpr;
    const int64_t start = row * row_len + k * kChunk;
    const int64_t len = min(kChunk, row_len - k * kChunk);
    a += start;
    b += start;
    acc_t s0 = 0, s1 = 0, s2 = 0;
    for (int64_t j = threadIdx.x; j < len; j += kThreads) {
      const acc_t x = static_cast<acc_t>(a[j]);
      const acc_t y = static_cast<acc_t>(b[j]);
      if (METRIC == 1) {
        const acc_t d = x - y;
        s0 += d * d;
      } else {
        s0 += x * y;
        s1 += x * x;
        s2 += y * y;
      }
    }
    s0 = block_sum(s0, sh[0]);
    if (METRIC != 1) {
      s1 = block_sum(s1, sh[1]);
      s2 = block_sum(s2, sh[2]);
    }
    if (threadIdx.x == 0) {
      part[3 * c] = s0;
      part[3 * c + 1] = s1;
      part[3 * c + 2] = s2;
    }
  }
  // Last-block finalisation (ticket pattern).
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned long long ticket =
        atomicAdd(reinterpret_cast<unsigned long long*>(meta), 1ull);
    is_last = (ticket == static_cast<unsigned long long>(gridDim.x) - 1ull);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const volatile acc_t* vp = part;
  const acc_t eps = static_cast<acc_t>(1e-6);
  if (METRIC == 0) {
    acc_t total = 0;
    for (int64_t r = threadIdx.x; r < R; r += kThreads) {
      const int t = find_tensor(meta, T, F_SEG, r);
      const int64_t* m = meta + kHeader + t * kFields;
      const int64_t cpr = m[F_CPR];
      const int64_t cb = m[F_CS] + (r - m[F_SEG]) * cpr;
      acc_t d = 0, aa = 0, bb = 0;
      for (int64_t k = 0; k < cpr; ++k) {
        d += vp[3 * (cb + k)];
        aa += vp[3 * (cb + k) + 1];
        bb += vp[3 * (cb + k) + 2];
      }
      stats[3 * r] = d;
      stats[3 * r + 1] = aa;
      stats[3 * r + 2] = bb;
      total += acc_t(1) - d / (sqrt(aa) * sqrt(bb) + eps);
    }
    total = block_sum(total, sh[0]);
    if (threadIdx.x == 0) *loss = static_cast<scalar_t>(total);
  } else {
    acc_t s0 = 0, s1 = 0, s2 = 0;
    for (int64_t i = threadIdx.x; i < W; i += kThreads) {
      s0 += vp[3 * i];
      if (METRIC == 2) {
        s1 += vp[3 * i + 1];
        s2 += vp[3 * i + 2];
      }
    }
    s0 = block_sum(s0, sh[0]);
    if (METRIC == 2) {
      s1 = block_sum(s1, sh[1]);
      s2 = block_sum(s2, sh[2]);
    }
    if (threadIdx.x == 0) {
      if (METRIC == 1) {
        *loss = static_cast<scalar_t>(s0);
      } else {
        stats[0] = s0;
        stats[1] = s1;
        stats[2] = s2;
        *loss = static_cast<scalar_t>(acc_t(1) - s0 / (sqrt(s1) * sqrt(s2) + eps));
      }
    }
  }
}

template <typename scalar_t, typename acc_t, int METRIC>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const int64_t* __restrict__ meta, int T,
                                                       const acc_t* __restrict__ stats,
                                                       const scalar_t* __restrict__ grad) {
  __shared__ acc_t coef[2];
  __shared__ int64_t geo[3];  // tensor index, start, len
  const int64_t c = blockIdx.x;
  if (threadIdx.x == 0) {
    const int t = find_tensor(meta, T, F_CS, c);
    const int64_t* m = meta + kHeader + t * kFields;
    const int64_t cpr = m[F_CPR], row_len = m[F_LEN];
    const int64_t local = c - m[F_CS];
    const int64_t row = local / cpr, k = local - row * cpr;
    geo[0] = t;
    geo[1] = row * row_len + k * kChunk;
    geo[2] = min(kChunk, row_len - k * kChunk);
    const acc_t s = static_cast<acc_t>(*grad);
    acc_t alpha = 0, beta = 0;
    if (m[F_ACTIVE]) {
      if (METRIC == 1) {
        alpha = acc_t(2) * s;  // g = alpha * (a - b)
      } else {
        const acc_t* rs = stats + 3 * (m[F_SEG] + row);
        const acc_t na = sqrt(rs[1]), nb = sqrt(rs[2]);
        const acc_t den = na * nb + static_cast<acc_t>(1e-6);
        alpha = -s / den;
        beta = na > acc_t(0) ? s * rs[0] * nb / (na * den * den) : acc_t(0);
      }
    }
    coef[0] = alpha;
    coef[1] = beta;
  }
  __syncthreads();
  const int64_t* m = meta + kHeader + geo[0] * kFields;
  const int64_t start = geo[1], len = geo[2];
  const scalar_t* a = reinterpret_cast<const scalar_t*>(m[F_A]) + start;
  const scalar_t* b = reinterpret_cast<const scalar_t*>(m[F_B]) + start;
  scalar_t* g = reinterpret_cast<scalar_t*>(m[F_G]) + start;
  const acc_t alpha = coef[0], beta = coef[1];
  const bool active = m[F_ACTIVE] != 0;
  for (int64_t j = threadIdx.x; j < len; j += kThreads) {
    acc_t v;
    if (!active) {
      v = 0;
    } else if (METRIC == 1) {
      v = alpha * (static_cast<acc_t>(a[j]) - static_cast<acc_t>(b[j]));
    } else {
      v = alpha * static_cast<acc_t>(b[j]) + beta * static_cast<acc_t>(a[j]);
    }
    g[j] = static_cast<scalar_t>(v);
  }
}

// Builds the device table (uploaded without host synchronisation); returns it and the chunk count.
at::Tensor build_meta(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                      const std::vector<at::Tensor>* g, int metric, bool backward, int64_t* n_chunks) {
  const int64_t T = static_cast<int64_t>(a.size());
  auto host = at::empty({kHeader + T * kFields}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  h[0] = 0;
  int64_t cs = 0, seg = 0;
  for (int64_t i = 0; i < T; ++i) {
    int64_t* m = h + kHeader + i * kFields;
    const int64_t n = a[i].numel();
    int64_t rows, row_len, active = 1;
    if (metric == 0) {
      if (a[i].dim() >= 2) {
        rows = a[i].size(0);
        row_len = rows > 0 ? n / rows : 0;
      } else {
        active = 0;
        rows = backward ? 1 : 0;
        row_len = n;
      }
    } else {
      rows = 1;
      row_len = n;
    }
    const int64_t cpr = (row_len + kChunk - 1) / kChunk;
    m[F_A] = reinterpret_cast<int64_t>(a[i].data_ptr());
    m[F_B] = reinterpret_cast<int64_t>(b[i].data_ptr());
    m[F_G] = g ? reinterpret_cast<int64_t>((*g)[i].data_ptr()) : 0;
    m[F_ROWS] = rows;
    m[F_LEN] = row_len;
    m[F_CPR] = cpr;
    m[F_CS] = cs;
    m[F_SEG] = metric == 0 ? seg : 0;
    m[F_ACTIVE] = active;
    cs += rows * cpr;
    if (metric == 0 && active) seg += rows;
  }
  *n_chunks = cs;
  return host.to(a[0].device(), /*non_blocking=*/true);
}

void fwd_out(at::TensorList gw_syn, at::TensorList gw_real, const std::string& metric_s, const at::Tensor& loss,
             const at::Tensor& stats) {
  check_lists(gw_syn, gw_real, "match_loss_fwd");
  const int metric = metric_code(metric_s);
  const auto dtype = gw_syn[0].scalar_type();
  const auto device = gw_syn[0].device();
  const int64_t R = num_rows(gw_syn, metric);
  TORCH_CHECK(loss.dim() == 0 && loss.scalar_type() == dtype && loss.device() == device,
              "match_loss_fwd: loss must be a 0-dim tensor of dtype ", dtype, " on ", device);
  TORCH_CHECK(stats.is_contiguous() && stats.dim() == 2 && stats.size(0) == R && stats.size(1) == 3 &&
                  stats.scalar_type() == acc_type(dtype) && stats.device() == device,
              "match_loss_fwd: stats must be a contiguous [", R, ", 3] tensor of dtype ", acc_type(dtype), " on ",
              device);
  const c10::cuda::CUDAGuard guard(device);
  auto a = contiguous_all(gw_syn);
  auto b = contiguous_all(gw_real);
  int64_t W = 0;
  auto meta = build_meta(a, b, nullptr, metric, /*backward=*/false, &W);
  const int64_t grid = W > 0 ? W : 1;
  TORCH_CHECK(grid < (int64_t(1) << 31), "match_loss_fwd: too many chunks (", grid, ")");
  auto part = at::empty({grid * 3}, stats.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int T = static_cast<int>(a.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "match_loss_fwd_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    auto launch = [&](auto kernel) {
      kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
          meta.data_ptr<int64_t>(), T, W, R, part.data_ptr<acc_t>(), stats.data_ptr<acc_t>(),
          loss.data_ptr<scalar_t>());
    };
    if (metric == 0) launch(fwd_kernel<scalar_t, acc_t, 0>);
    else if (metric == 1) launch(fwd_kernel<scalar_t, acc_t, 1>);
    else launch(fwd_kernel<scalar_t, acc_t, 2>);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void bwd_out(const at::Tensor& grad, at::TensorList gw_syn, at::TensorList gw_real, const at::Tensor& stats,
             const std::string& metric_s, at::TensorList grad_syn) {
  check_lists(gw_syn, gw_real, "match_loss_bwd");
  const int metric = metric_code(metric_s);
  const auto dtype = gw_syn[0].scalar_type();
  const auto device = gw_syn[0].device();
  const int64_t R = num_rows(gw_syn, metric);
  TORCH_CHECK(grad.numel() == 1 && grad.device() == device, "match_loss_bwd: grad must be a one-element tensor on ",
              device);
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == R && stats.size(1) == 3 && stats.scalar_type() == acc_type(dtype) &&
                  stats.device() == device,
              "match_loss_bwd: stats must be [", R, ", 3] of dtype ", acc_type(dtype), " on ", device);
  TORCH_CHECK(grad_syn.size() == gw_syn.size(), "match_loss_bwd: grad_syn must have ", gw_syn.size(), " tensors");
  for (size_t i = 0; i < grad_syn.size(); ++i)
    TORCH_CHECK(grad_syn[i].sizes() == gw_syn[i].sizes() && grad_syn[i].is_contiguous() &&
                    grad_syn[i].scalar_type() == dtype && grad_syn[i].device() == device,
                "match_loss_bwd: grad_syn[", i, "] must be a contiguous tensor of shape ", gw_syn[i].sizes(),
                ", dtype ", dtype, " on ", device);
  const c10::cuda::CUDAGuard guard(device);
  auto a = contiguous_all(gw_syn);
  auto b = contiguous_all(gw_real);
  std::vector<at::Tensor> g(grad_syn.begin(), grad_syn.end());
  auto st = stats.contiguous();
  auto gr = grad.reshape({}).to(dtype).contiguous();
  int64_t W = 0;
  auto meta = build_meta(a, b, &g, metric, /*backward=*/true, &W);
  if (W == 0) return;
  TORCH_CHECK(W < (int64_t(1) << 31), "match_loss_bwd: too many chunks (", W, ")");
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int T = static_cast<int>(a.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "match_loss_bwd_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const acc_t* sp = R > 0 ? st.data_ptr<acc_t>() : nullptr;
    auto launch = [&](auto kernel) {
      kernel<<<static_cast<unsigned>(W), kThreads, 0, stream>>>(meta.data_ptr<int64_t>(), T, sp,
                                                                  gr.data_ptr<scalar_t>());
    };
    if (metric == 0) launch(bwd_kernel<scalar_t, acc_t, 0>);
    else if (metric == 1) launch(bwd_kernel<scalar_t, acc_t, 1>);
    else launch(bwd_kernel<scalar_t, acc_t, 2>);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace match_loss_cuda
}  // namespace pydistill

TORCH_LIBRARY_IMPL(pydistill, CUDA, m) {
  m.impl("match_loss_fwd", &pydistill::match_loss_common::fwd<&pydistill::match_loss_cuda::fwd_out>);
  m.impl("match_loss_fwd_out", &pydistill::match_loss_cuda::fwd_out);
  m.impl("match_loss_bwd", &pydistill::match_loss_common::bwd<&pydistill::match_loss_cuda::bwd_out>);
  m.impl("match_loss_bwd_out", &pydistill::match_loss_cuda::bwd_out);
}
