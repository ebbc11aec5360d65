// MTT normalized parameter-matching loss: CUDA kernels (schemas live in csrc/cpu/trajectory_loss_cpu.cpp).
//
// Forward, one launch over the whole tensor list + one tiny finishing launch:
//   stage 1: the list is cut into tiles of kThreads*kUnroll*V elements (V = 16 bytes / element size,
//            i.e. float4-wide loads where the tensor is 16-byte aligned); block b walks tiles b, b+G, ...
//            (grid stride), accumulates sum (s-t)^2 and sum (a-t)^2 in fp32 (fp64 for fp64) and writes
//            its two partial sums to its own slot (no atomics);
//   stage 2: one block adds the G partial pairs in a fixed order -> loss = num/den and den.
//   The result is bitwise reproducible run to run on a given device.
// Backward, one launch: grads = grad * 2 * (s - t) / den, reading grad and den from device memory
// (no host synchronisation).
// The tensor table (pointers, sizes, first tile) travels in the kernel parameters for up to
// kMaxInline tensors, otherwise through one pinned host -> device copy (asynchronous).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "trajectory_loss.h"

#include <cstring>
#include <vector>

namespace pydistill {
namespace {

using trajectory_loss_common::check_lists;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kMaxInline = 64;  // 64 * 56 bytes fits the 4 KiB kernel-parameter space

struct Entry {
  const void* s;
  const void* a;
  const void* t;
  void* o;
  int64_t n;
  int64_t tile_begin;
  int64_t aligned;  // all pointers 16-byte aligned -> vector loads
};

struct InlineTable {
  Entry e[kMaxInline];
};

template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

template <typename T>
constexpr int64_t tile_size() {
  return static_cast<int64_t>(kThreads) * kUnroll * vec_width<T>();
}

template <typename T, int N>
struct alignas(sizeof(T) * N) VecT {
  T v[N];
};

// Tiles are visited in increasing order, so the owning tensor index only moves forward.
__device__ __forceinline__ int owner(const Entry* e, int n_tensors, int cursor, int64_t tile) {
  while (cursor + 1 < n_tensors && e[cursor + 1].tile_begin <= tile) ++cursor;
  return cursor;
}

template <typename A>
__device__ __forceinline__ void block_reduce2(A& x, A& y) {
  __shared__ A sx[32];
  __shared__ A sy[32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    x += __shfl_down_sync(0xffffffffu, x, off);
    y += __shfl_down_sync(0xffffffffu, y, off);
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    sx[warp] = x;
    sy[warp] = y;
  }
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  if (warp == 0) {
    x = lane < n_warps ? sx[lane] : A(0);
    y = lane < n_warps ? sy[lane] : A(0);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      x += __shfl_down_sync(0xffffffffu, x, off);
      y += __shfl_down_sync(0xffffffffu, y, off);
    }
  }
}

template <typename T>
__device__ __forceinline__ void fwd_body(const Entry* e, int n_tensors, int64_t n_tiles,
                                         typename AccOf<T>::type* __restrict__ partial) {
  using A = typename AccOf<T>::type;
  constexpr int V = vec_width<T>();
  constexpr int64_t TILE = tile_size<T>();
  using Vec = VecT<T, V>;
  A num = 0, den = 0;
  int cur = 0;
  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    cur = owner(e, n_tensors, cur, tile);
    const Entry& en = e[cur];
    const T* __restrict__ s = static_cast<const T*>(en.s);
    const T* __restrict__ a = static_cast<const T*>(en.a);
    const T* __restrict__ t = static_cast<const T*>(en.t);
    const int64_t base = (tile - en.tile_begin) * TILE;
    const int64_t n = en.n;
    if (en.aligned && base + TILE <= n) {
      Vec vs[kUnroll], va[kUnroll], vt[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * V;
        vs[u] = *reinterpret_cast<const Vec*>(s + i);
        va[u] = *reinterpret_cast<const Vec*>(a + i);
        vt[u] = *reinterpret_cast<const Vec*>(t + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const A xt = static_cast<A>(vt[u].v[k]);
          const A ds = static_cast<A>(vs[u].v[k]) - xt;
          const A da = static_cast<A>(va[u].v[k]) - xt;
          num += ds * ds;
          den += da * da;
        }
      }
    } else {
      const int64_t end = base + TILE < n ? base + TILE : n;
      for (int64_t i = base + threadIdx.x; i < end; i += kThreads) {
        const A xt = static_cast<A>(t[i]);
        const A ds = static_cast<A>(s[i]) - xt;
        const A da = static_cast<A>(a[i]) - xt;
        num += ds * ds;
        den += da * da;
      }
    }
  }
  block_reduce2(num, den);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = num;
    partial[2 * blockIdx.x + 1] = den;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    fwd_inline_kernel(const __grid_constant__ InlineTable tab, int n_tensors, int64_t n_tiles,
                      typename AccOf<T>::type* __restrict__ partial) {
  fwd_body<T>(tab.e, n_tensors, n_tiles, partial);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    fwd_table_kernel(const Entry* __restrict__ table, int n_tensors, int64_t n_tiles,
                     typename AccOf<T>::type* __restrict__ partial) {
  fwd_body<T>(table, n_tensors, n_tiles, partial);
}

constexpr int kFinishThreads = 512;

template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    fwd_finish_kernel(const typename AccOf<T>::type* __restrict__ partial, int n_partial, T* __restrict__ loss,
                      typename AccOf<T>::type* __restrict__ den_out) {
  using A = typename AccOf<T>::type;
  A num = 0, den = 0;
  for (int i = threadIdx.x; i < n_partial; i += blockDim.x) {  // fixed order per thread
    num += partial[2 * i];
    den += partial[2 * i + 1];
  }
  block_reduce2(num, den);
  if (threadIdx.x == 0) {
    *loss = static_cast<T>(num / den);
    *den_out = den;
  }
}

template <typename T>
__device__ __forceinline__ void bwd_body(const Entry* e, int n_tensors, int64_t n_tiles, const T* __restrict__ grad,
                                         const typename AccOf<T>::type* __restrict__ den) {
  using A = typename AccOf<T>::type;
  constexpr int V = vec_width<T>();
  constexpr int64_t TILE = tile_size<T>();
  using Vec = VecT<T, V>;
  const A scale = A(2) * static_cast<A>(*grad) / *den;
  int cur = 0;
  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    cur = owner(e, n_tensors, cur, tile);
    const Entry& en = e[cur];
    const T* __restrict__ s = static_cast<const T*>(en.s);
    const T* __restrict__ t = static_cast<const T*>(en.t);
    T* __restrict__ o = static_cast<T*>(en.o);
    const int64_t base = (tile - en.tile_begin) * TILE;
    const int64_t n = en.n;
    if (en.aligned && base + TILE <= n) {
      Vec vs[kUnroll], vt[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = base + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * V;
        vs[u] = *reinterpret_cast<const Vec*>(s + i);
        vt[u] = *reinterpret_cast<const Vec*>(t + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        Vec r;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          r.v[k] = static_cast<T>(scale * (static_cast<A>(vs[u].v[k]) - static_cast<A>(vt[u].v[k])));
        }
        const int64_t i = base + (static_cast<int64_t>(u) * kThreads + threadIdx.x) * V;
        *reinterpret_cast<Vec*>(o + i) = r;
      }
    } else {
      const int64_t end = base + TILE < n ? base + TILE : n;
      for (int64_t i = base + threadIdx.x; i < end; i += kThreads) {
        o[i] = static_cast<T>(scale * (static_cast<A>(s[i]) - static_cast<A>(t[i])));
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bwd_inline_kernel(const __grid_constant__ InlineTable tab, int n_tensors, int64_t n_tiles,
                      const T* __restrict__ grad, const typename AccOf<T>::type* __restrict__ den) {
  bwd_body<T>(tab.e, n_tensors, n_tiles, grad, den);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bwd_table_kernel(const Entry* __restrict__ table, int n_tensors, int64_t n_tiles, const T* __restrict__ grad,
                     const typename AccOf<T>::type* __restrict__ den) {
  bwd_body<T>(table, n_tensors, n_tiles, grad, den);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Fills tile_begin / aligned of each entry; returns the total number of tiles.
int64_t plan_tiles(std::vector<Entry>& entries, int64_t tile) {
  int64_t n_tiles = 0;
  for (auto& e : entries) {
    e.tile_begin = n_tiles;
    e.aligned = aligned16(e.s) && aligned16(e.a) && aligned16(e.t) && aligned16(e.o);
    n_tiles += (e.n + tile - 1) / tile;
  }
  return n_tiles;
}

// Copies a long tensor table to the device through pinned memory (asynchronous, stream ordered).
at::Tensor table_to_device(const std::vector<Entry>& entries, const at::Device& device) {
  const int64_t bytes = static_cast<int64_t>(entries.size() * sizeof(Entry));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), entries.data(), bytes);
  return host.to(device, /*non_blocking=*/true);
}

int grid_for(int64_t n_tiles, int blocks_per_sm) {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int64_t g = std::min<int64_t>(n_tiles, static_cast<int64_t>(sms) * blocks_per_sm);
  return static_cast<int>(std::max<int64_t>(g, 1));
}

std::tuple<at::Tensor, at::Tensor> trajectory_loss_fwd_cuda(at::TensorList student, at::TensorList start,
                                                            at::TensorList target) {
  TORCH_CHECK(!student.empty(), "trajectory_loss_fwd: student must be a non-empty list");
  check_lists("trajectory_loss_fwd", student, "student", start, "start");
  check_lists("trajectory_loss_fwd", student, "student", target, "target");
  TORCH_CHECK(student[0].is_cuda(), "trajectory_loss_fwd (CUDA): tensors must be CUDA tensors");
  const c10::cuda::CUDAGuard guard(student[0].device());
  const auto s = contiguous_all(student);
  const auto a = contiguous_all(start);
  const auto t = contiguous_all(target);
  const auto dtype = s[0].scalar_type();
  const auto acc_dtype = acc_type(dtype);
  at::Tensor loss = at::empty({}, s[0].options());
  at::Tensor den = at::empty({}, s[0].options().dtype(acc_dtype));
  std::vector<Entry> entries(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    entries[i] = Entry{s[i].const_data_ptr(), a[i].const_data_ptr(), t[i].const_data_ptr(), nullptr, s[i].numel(), 0,
                       0};
  }
  const int n_tensors = static_cast<int>(entries.size());
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "trajectory_loss_fwd_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const int64_t n_tiles = plan_tiles(entries, tile_size<scalar_t>());
    const int grid = grid_for(n_tiles, 4);
    at::Tensor partial = at::empty({grid, 2}, s[0].options().dtype(acc_dtype));
    acc_t* pp = partial.mutable_data_ptr<acc_t>();
    if (n_tensors <= kMaxInline) {
      InlineTable tab;
      std::memset(&tab, 0, sizeof(tab));
      std::memcpy(tab.e, entries.data(), entries.size() * sizeof(Entry));
      fwd_inline_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(tab, n_tensors, n_tiles, pp);
    } else {
      at::Tensor table = table_to_device(entries, s[0].device());
      fwd_table_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          reinterpret_cast<const Entry*>(table.const_data_ptr()), n_tensors, n_tiles, pp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fwd_finish_kernel<scalar_t><<<1, kFinishThreads, 0, stream>>>(pp, grid, loss.mutable_data_ptr<scalar_t>(),
                                                                   den.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, den};
}

std::vector<at::Tensor> trajectory_loss_bwd_cuda(const at::Tensor& grad, at::TensorList student,
                                                 at::TensorList target, const at::Tensor& den) {
  TORCH_CHECK(!student.empty(), "trajectory_loss_bwd: student must be a non-empty list");
  check_lists("trajectory_loss_bwd", student, "student", target, "target");
  TORCH_CHECK(student[0].is_cuda(), "trajectory_loss_bwd (CUDA): tensors must be CUDA tensors");
  TORCH_CHECK(grad.numel() == 1 && den.numel() == 1, "trajectory_loss_bwd: grad and den must hold one element");
  TORCH_CHECK(grad.device() == student[0].device() && den.device() == student[0].device(),
              "trajectory_loss_bwd: grad and den must be on the device of student");
  const c10::cuda::CUDAGuard guard(student[0].device());
  const auto dtype = student[0].scalar_type();
  const auto acc_dtype = acc_type(dtype);
  TORCH_CHECK(den.scalar_type() == acc_dtype, "trajectory_loss_bwd: den must be ", acc_dtype, ", got ",
              den.scalar_type());
  const auto s = contiguous_all(student);
  const auto t = contiguous_all(target);
  const at::Tensor g = grad.to(dtype).contiguous();
  const at::Tensor d = den.contiguous();
  std::vector<at::Tensor> out;
  std::vector<Entry> entries(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    out.push_back(at::empty(s[i].sizes(), s[i].options()));
    entries[i] = Entry{s[i].const_data_ptr(), nullptr, t[i].const_data_ptr(), out[i].mutable_data_ptr(),
                       s[i].numel(), 0, 0};
  }
  const int n_tensors = static_cast<int>(entries.size());
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "trajectory_loss_bwd_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const int64_t n_tiles = plan_tiles(entries, tile_size<scalar_t>());
    if (n_tiles == 0) return;
    const int grid = grid_for(n_tiles, 8);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const acc_t* dp = d.const_data_ptr<acc_t>();
    if (n_tensors <= kMaxInline) {
      InlineTable tab;
      std::memset(&tab, 0, sizeof(tab));
      std::memcpy(tab.e, entries.data(), entries.size() * sizeof(Entry));
      bwd_inline_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(tab, n_tensors, n_tiles, gp, dp);
    } else {
      at::Tensor table = table_to_device(entries, s[0].device());
      bwd_table_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          reinterpret_cast<const Entry*>(table.const_data_ptr()), n_tensors, n_tiles, gp, dp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace pydistill

TORCH_LIBRARY_IMPL(pydistill, CUDA, m) {
  m.impl("trajectory_loss_fwd", &pydistill::trajectory_loss_fwd_cuda);
  m.impl("trajectory_loss_bwd", &pydistill::trajectory_loss_bwd_cuda);
}
