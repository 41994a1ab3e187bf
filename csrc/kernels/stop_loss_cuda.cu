// CUDA kernels of the stop-token loss: one block per sample for the forward
// (a fixed-order block reduction, so the sums are deterministic) and a
// grid-stride element-wise backward. Every launch goes on the caller's stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "stop_loss_kernels.h"

namespace myxtts_ops {
namespace {

constexpr int kThreads = 256;
// Backward blocks: enough to fill any current GPU; the grid-stride loop covers the rest.
constexpr int64_t kMaxBackwardBlocks = 65536;

__device__ __forceinline__ int64_t clamp_length(int32_t length, int64_t frames) {
  return min(max(int64_t(length), int64_t(0)), frames);
}

__global__ void __launch_bounds__(kThreads)
    stop_forward_kernel(const float* __restrict__ target, const float* __restrict__ pred,
                        const int32_t* __restrict__ lengths, StopShape shape, StopLossConfig c,
                        float* __restrict__ sums, int32_t* __restrict__ counts,
                        unsigned long long* __restrict__ nonfinite) {
  __shared__ double sum_shared[kThreads];
  __shared__ int count_shared[kThreads];
  const int64_t b = blockIdx.x;
  const int64_t n = clamp_length(lengths[b], shape.frames);
  const float* t = target + b * shape.frames;
  const float* p = pred + b * shape.frames;
  double sum = 0.0;
  int count = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    if (stop_finite(t[i]) & stop_finite(p[i])) {
      sum += double(stop_loss_at(t[i], stop_clip(p[i], c), c));
      ++count;
    }
  }
  sum_shared[threadIdx.x] = sum;
  count_shared[threadIdx.x] = count;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      sum_shared[threadIdx.x] += sum_shared[threadIdx.x + stride];
      count_shared[threadIdx.x] += count_shared[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    sums[b] = float(sum_shared[0]);
    counts[b] = count_shared[0];
    // An integer sum: the same in any order.
    atomicAdd(nonfinite, static_cast<unsigned long long>(n - count_shared[0]));
  }
}

template <bool kWriteTrue>
__global__ void __launch_bounds__(kThreads)
    stop_backward_kernel(const float* __restrict__ target, const float* __restrict__ pred,
                         const int32_t* __restrict__ lengths, StopShape shape,
                         const float* __restrict__ grad_sums, StopLossConfig c,
                         float* __restrict__ grad_target, float* __restrict__ grad_pred) {
  const int64_t total = shape.batch * shape.frames;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t b = i / shape.frames;
    const int64_t pos = i - b * shape.frames;
    float gp = 0.0f, gt = 0.0f;
    if (pos < clamp_length(lengths[b], shape.frames)) {
      const float t = target[i], p = pred[i];
      if (stop_finite(t) & stop_finite(p)) {
        const float g = grad_sums[b];
        const float pc = stop_clip(p, c);
        gp = pc == p ? g * stop_grad_pred(t, pc, c) : 0.0f;
        if (kWriteTrue) gt = g * stop_grad_target(pc, c);
      }
    }
    grad_pred[i] = gp;
    if (kWriteTrue) grad_target[i] = gt;
  }
}

std::string cuda_error(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return std::string();
  return std::string(what) + ": " + cudaGetErrorString(e);
}

}  // namespace

std::string stop_loss_forward_cuda(const StopForwardArgs& a, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  // The nonfinite count is int64 (TensorFlow's), accumulated as unsigned long long.
  static_assert(sizeof(unsigned long long) == sizeof(int64_t), "64-bit counter");
  const cudaError_t e = cudaMemsetAsync(a.nonfinite, 0, sizeof(int64_t), stream);
  if (e != cudaSuccess)
    return std::string("clearing the stop loss count: ") + cudaGetErrorString(e);
  if (a.shape.batch == 0) return std::string();
  constexpr int64_t kMaxGridX = 2147483647;
  if (a.shape.batch > kMaxGridX)
    return "the stop loss needs " + std::to_string(a.shape.batch) +
           " CUDA blocks (one per sample), more than a grid's 2^31 - 1: split the batch";
  stop_forward_kernel<<<unsigned(a.shape.batch), kThreads, 0, stream>>>(
      a.target, a.pred, a.lengths, a.shape, a.config, a.sums, a.counts,
      reinterpret_cast<unsigned long long*>(a.nonfinite));
  return cuda_error("launching the stop loss forward kernel");
}

std::string stop_loss_backward_cuda(const StopBackwardArgs& a, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t total = a.shape.batch * a.shape.frames;
  if (total == 0) return std::string();
  const unsigned grid =
      unsigned(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBackwardBlocks));
  if (a.grad_target != nullptr)
    stop_backward_kernel<true><<<grid, kThreads, 0, stream>>>(
        a.target, a.pred, a.lengths, a.shape, a.grad_sums, a.config, a.grad_target, a.grad_pred);
  else
    stop_backward_kernel<false><<<grid, kThreads, 0, stream>>>(
        a.target, a.pred, a.lengths, a.shape, a.grad_sums, a.config, nullptr, a.grad_pred);
  return cuda_error("launching the stop loss backward kernel");
}

}  // namespace myxtts_ops
