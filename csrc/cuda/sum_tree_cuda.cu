// SumTree: CUDA kernels (schemas and the tree layout: csrc/cpu/sum_tree_cpu.cpp).
//
// update: the indices are sorted stably once (at::sort); in sorted order the duplicates of a
// leaf are contiguous and the last of a run is the last write in input order, so it alone
// writes the leaf. The ancestors are then refreshed level by level: at level d element j owns
// node (P + idx_j) >> d unless its sorted predecessor maps to the same node (siblings share a
// parent), so each changed node is written by exactly one thread and untouched subtrees are
// never read or written. Small batches run all levels in one block (one launch, __syncthreads
// between levels); large batches use one launch per level.
// sample: one thread per draw, descending from the root; a zero-sum right child is never entered.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

namespace pydistill {

namespace {

constexpr int kSingleBlockThreads = 1024;
constexpr int64_t kSingleBlockMax = 16384;  // batches up to this size update in one launch
constexpr int kThreads = 256;

__device__ __forceinline__ bool valid_leaf(int64_t i, int64_t P) { return i >= 0 && i < P; }

// Leaf write for sorted element j: only the last of a run of equal indices writes.
__device__ __forceinline__ void write_leaf(double* __restrict__ s, double* __restrict__ m,
                                           const int64_t* __restrict__ sorted, const int64_t* __restrict__ perm,
                                           const double* __restrict__ pri, int64_t j, int64_t K, int64_t P) {
  const int64_t i = sorted[j];
  if (!valid_leaf(i, P)) return;
  if (j + 1 < K && sorted[j + 1] == i) return;
  const double p = pri[perm[j]];
  s[P + i] = p;
  m[P + i] = p;
}

// Ancestor refresh at level d (d >= 1) for sorted element j.
__device__ __forceinline__ void refresh_node(double* __restrict__ s, double* __restrict__ m,
                                             const int64_t* __restrict__ sorted, int64_t j, int d, int64_t P) {
  const int64_t i = sorted[j];
  if (!valid_leaf(i, P)) return;
  const int64_t v = (P + i) >> d;
  if (j > 0) {
    const int64_t ip = sorted[j - 1];
    if (valid_leaf(ip, P) && ((P + ip) >> d) == v) return;  // the predecessor owns this node
  }
  s[v] = s[2 * v] + s[2 * v + 1];
  m[v] = fmin(m[2 * v], m[2 * v + 1]);
}

__global__ void update_single_block_kernel(double* __restrict__ s, double* __restrict__ m,
                                           const int64_t* __restrict__ sorted, const int64_t* __restrict__ perm,
                                           const double* __restrict__ pri, int64_t K, int64_t P, int levels) {
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x) write_leaf(s, m, sorted, perm, pri, j, K, P);
  __syncthreads();
  for (int d = 1; d <= levels; ++d) {
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) refresh_node(s, m, sorted, j, d, P);
    __syncthreads();
  }
}

__global__ void update_leaves_kernel(double* __restrict__ s, double* __restrict__ m,
                                     const int64_t* __restrict__ sorted, const int64_t* __restrict__ perm,
                                     const double* __restrict__ pri, int64_t K, int64_t P) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < K; j += (int64_t)gridDim.x * blockDim.x)
    write_leaf(s, m, sorted, perm, pri, j, K, P);
}

__global__ void update_level_kernel(double* __restrict__ s, double* __restrict__ m,
                                    const int64_t* __restrict__ sorted, int64_t K, int64_t P, int d) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < K; j += (int64_t)gridDim.x * blockDim.x)
    refresh_node(s, m, sorted, j, d, P);
}

__global__ void sample_kernel(const double* __restrict__ s, const double* __restrict__ u, int64_t* __restrict__ out,
                              int64_t n, int64_t P) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
    double x = u[j];
    int64_t v = 1;
    while (v < P) {
      const double left = __ldg(s + 2 * v);
      if (x >= left && __ldg(s + 2 * v + 1) > 0.0) {
        x -= left;
        v = 2 * v + 1;
      } else {
        v = 2 * v;
      }
    }
    out[j] = v - P;
  }
}

void check_tree(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.is_cuda() && t.dim() == 1 && t.scalar_type() == at::kDouble && t.is_contiguous(), op, ": ", name,
              " must be a contiguous 1-D float64 CUDA tensor");
  const int64_t n = t.numel();
  TORCH_CHECK(n >= 2 && (n & (n - 1)) == 0, op, ": ", name, " must hold 2 * P nodes with P a power of two, got ", n);
}

int64_t blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return b < 65535 ? (b > 0 ? b : 1) : 65535;
}

}  // namespace

void sum_tree_update_cuda(at::Tensor tree, at::Tensor min_tree, const at::Tensor& indices,
                          const at::Tensor& priorities) {
  check_tree(tree, "tree", "sum_tree_update");
  check_tree(min_tree, "min_tree", "sum_tree_update");
  TORCH_CHECK(min_tree.numel() == tree.numel() && min_tree.device() == tree.device(),
              "sum_tree_update: min_tree must match tree in size and device");
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong && indices.device() == tree.device(),
              "sum_tree_update: indices must be 1-D int64 on the tree's device");
  TORCH_CHECK(priorities.dim() == 1 && priorities.scalar_type() == at::kDouble &&
                  priorities.device() == tree.device(),
              "sum_tree_update: priorities must be 1-D float64 on the tree's device");
  TORCH_CHECK(indices.numel() == priorities.numel(), "sum_tree_update: indices and priorities must have the same length");
  const int64_t K = indices.numel();
  if (K == 0) return;
  const c10::cuda::CUDAGuard guard(tree.device());
  const int64_t P = tree.numel() / 2;
  int levels = 0;
  while ((int64_t{1} << levels) < P) ++levels;
  auto sorted_perm = at::sort(indices, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor sorted = std::get<0>(sorted_perm).contiguous();
  const at::Tensor perm = std::get<1>(sorted_perm).contiguous();
  const at::Tensor pri = priorities.contiguous();
  double* s = tree.data_ptr<double>();
  double* m = min_tree.data_ptr<double>();
  const int64_t* sp = sorted.data_ptr<int64_t>();
  const int64_t* pp = perm.data_ptr<int64_t>();
  const double* pr = pri.data_ptr<double>();
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (K <= kSingleBlockMax) {
    update_single_block_kernel<<<1, kSingleBlockThreads, 0, stream>>>(s, m, sp, pp, pr, K, P, levels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t blocks = blocks_for(K);
  update_leaves_kernel<<<blocks, kThreads, 0, stream>>>(s, m, sp, pp, pr, K, P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int d = 1; d <= levels; ++d) {
    update_level_kernel<<<blocks, kThreads, 0, stream>>>(s, m, sp, K, P, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor sum_tree_sample_cuda(const at::Tensor& tree, const at::Tensor& u) {
  check_tree(tree, "tree", "sum_tree_sample");
  TORCH_CHECK(u.dim() == 1 && u.scalar_type() == at::kDouble && u.device() == tree.device(),
              "sum_tree_sample: u must be 1-D float64 on the tree's device");
  const c10::cuda::CUDAGuard guard(tree.device());
  const int64_t n = u.numel();
  at::Tensor out = at::empty({n}, u.options().dtype(at::kLong));
  if (n == 0) return out;
  const at::Tensor uc = u.contiguous();
  const int64_t P = tree.numel() / 2;
  sample_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      tree.data_ptr<double>(), uc.data_ptr<double>(), out.data_ptr<int64_t>(), n, P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace pydistill

TORCH_LIBRARY_IMPL(pydistill, CUDA, m) {
  m.impl("sum_tree_update", &pydistill::sum_tree_update_cuda);
  m.impl("sum_tree_sample", &pydistill::sum_tree_sample_cuda);
}
