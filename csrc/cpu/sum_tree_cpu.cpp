// SumTree: schemas of the compiled ops and their CPU kernels.
//
// Layout shared with the CUDA kernels and pydistill/ops/sum_tree.py: a tree over
// P = next_pow2(capacity) leaves is a flat float64 tensor of 2 * P nodes, 1-based heap
// order (node k has children 2k and 2k+1, the root is node 1, node 0 is unused), leaf i
// lives at node P + i. `tree` holds sums, `min_tree` minima (+inf for never-written leaves).
//
//   sum_tree_update(tree, min_tree, indices, priorities): writes the leaves (the last write
//     wins among duplicate indices, in input order) and recomputes only the ancestors of the
//     written leaves: per write up its path (small batches), or level by level over the
//     distinct changed nodes of each level, in parallel (large batches).
//   sum_tree_sample(tree, u) -> leaf indices: descends from the root for each u in [0, total);
//     a zero-sum child is never entered, so a zero-priority leaf is never returned.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace pydistill {

namespace {

constexpr int64_t kWalkMax = 8192;         // update batches up to this size walk each path serially
constexpr int64_t kSampleGrain = 1 << 15;  // draws per parallel chunk (small batches stay serial)

void check_trees(const at::Tensor& tree, const at::Tensor& min_tree, const char* op) {
  TORCH_CHECK(tree.dim() == 1 && tree.scalar_type() == at::kDouble && tree.is_contiguous(), op,
              ": tree must be a contiguous 1-D float64 tensor, got ", tree.scalar_type(), " of shape ",
              tree.sizes());
  const int64_t n = tree.numel();
  TORCH_CHECK(n >= 2 && (n & (n - 1)) == 0, op, ": tree must hold 2 * P nodes with P a power of two, got ", n);
  if (min_tree.defined()) {
    TORCH_CHECK(min_tree.dim() == 1 && min_tree.scalar_type() == at::kDouble && min_tree.is_contiguous(), op,
                ": min_tree must be a contiguous 1-D float64 tensor");
    TORCH_CHECK(min_tree.numel() == n, op, ": min_tree must have as many nodes as tree (", n, "), got ",
                min_tree.numel());
    TORCH_CHECK(min_tree.device() == tree.device(), op, ": tree and min_tree must be on the same device");
  }
}

}  // namespace

void sum_tree_update_cpu(at::Tensor tree, at::Tensor min_tree, const at::Tensor& indices,
                         const at::Tensor& priorities) {
  check_trees(tree, min_tree, "sum_tree_update");
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong, "sum_tree_update: indices must be 1-D int64");
  TORCH_CHECK(priorities.dim() == 1 && priorities.scalar_type() == at::kDouble,
              "sum_tree_update: priorities must be 1-D float64");
  TORCH_CHECK(indices.numel() == priorities.numel(), "sum_tree_update: indices (", indices.numel(),
              ") and priorities (", priorities.numel(), ") must have the same length");
  const int64_t K = indices.numel();
  if (K == 0) return;
  const int64_t P = tree.numel() / 2;
  const at::Tensor idx_c = indices.contiguous();
  const at::Tensor pri_c = priorities.contiguous();
  const int64_t* idx = idx_c.data_ptr<int64_t>();
  const double* pri = pri_c.data_ptr<double>();
  double* s = tree.data_ptr<double>();
  double* m = min_tree.data_ptr<double>();

  for (int64_t k = 0; k < K; ++k) {  // check every index before touching the tree
    TORCH_CHECK(idx[k] >= 0 && idx[k] < P, "sum_tree_update: index ", idx[k], " at position ", k,
                " is outside [0, ", P, ")");
  }
  if (K <= kWalkMax) {
    // Small batches: each write walks its own path to the root, in input order (so the last
    // write to a duplicate index wins). O(K log P) with no sort; repeated work is near the root.
    for (int64_t k = 0; k < K; ++k) {
      int64_t v = P + idx[k];
      s[v] = pri[k];
      m[v] = pri[k];
      for (v >>= 1; v >= 1; v >>= 1) {
        s[v] = s[2 * v] + s[2 * v + 1];
        m[v] = std::min(m[2 * v], m[2 * v + 1]);
      }
    }
    return;
  }
  // Large batches: leaves first, in input order (the last write to a duplicate index wins), then
  // each level once over its distinct changed nodes (parallel).
  std::vector<int64_t> nodes(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    const int64_t i = idx[k];
    s[P + i] = pri[k];
    m[P + i] = pri[k];
    nodes[static_cast<size_t>(k)] = P + i;
  }
  std::sort(nodes.begin(), nodes.end());
  nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
  while (nodes.front() > 1) {
    for (auto& v : nodes) v >>= 1;  // stays sorted; siblings collapse into one parent
    nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
    const int64_t cnt = static_cast<int64_t>(nodes.size());
    const int64_t* nd = nodes.data();
    at::parallel_for(0, cnt, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        const int64_t v = nd[j];
        s[v] = s[2 * v] + s[2 * v + 1];
        m[v] = std::min(m[2 * v], m[2 * v + 1]);
      }
    });
  }
}

at::Tensor sum_tree_sample_cpu(const at::Tensor& tree, const at::Tensor& u) {
  check_trees(tree, at::Tensor(), "sum_tree_sample");
  TORCH_CHECK(u.dim() == 1 && u.scalar_type() == at::kDouble, "sum_tree_sample: u must be 1-D float64");
  const int64_t P = tree.numel() / 2;
  const int64_t n = u.numel();
  at::Tensor out = at::empty({n}, u.options().dtype(at::kLong));
  if (n == 0) return out;
  const at::Tensor u_c = u.contiguous();
  const double* s = tree.data_ptr<double>();
  const double* uu = u_c.data_ptr<double>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, n, kSampleGrain, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      double x = uu[j];
      int64_t v = 1;
      while (v < P) {
        const double left = s[2 * v];
        // Go right only when x is past the left mass AND the right subtree holds mass:
        // rounding can push x past the total at the right boundary.
        if (x >= left && s[2 * v + 1] > 0.0) {
          x -= left;
          v = 2 * v + 1;
        } else {
          v = 2 * v;
        }
      }
      o[j] = v - P;
    }
  });
  return out;
}

}  // namespace pydistill

TORCH_LIBRARY_FRAGMENT(pydistill, m) {
  m.def("sum_tree_update(Tensor(a!) tree, Tensor(b!) min_tree, Tensor indices, Tensor priorities) -> ()");
  m.def("sum_tree_sample(Tensor tree, Tensor u) -> Tensor");
}

TORCH_LIBRARY_IMPL(pydistill, CPU, m) {
  m.impl("sum_tree_update", &pydistill::sum_tree_update_cpu);
  m.impl("sum_tree_sample", &pydistill::sum_tree_sample_cpu);
}
