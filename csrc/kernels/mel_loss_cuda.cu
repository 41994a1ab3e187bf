// CUDA kernels. Forward: one launch; each block reduces one fixed chunk of one
// sample into a partial, and the last block to finish (integer ticket) combines
// the partials in a fixed order, so the result is deterministic without float
// atomics. Backward: one launch writing both gradients.
#include <cuda_runtime.h>

#include <cmath>

#include <string>

#include "mel_loss_checks.h"
#include "mel_loss_kernels.h"

namespace myxtts_ops {
namespace {

constexpr int kThreads = 256;
// Elements per block; a multiple of every vector width times kThreads.
constexpr int64_t kChunk = 8192;
constexpr size_t kHeaderAlign = 256;

template <typename T>
struct Vec {
  // Elements per 16-byte load.
  static constexpr int kWidth = 16 / sizeof(T);
  struct alignas(16) Type {
    T v[kWidth];
  };
};

struct WorkspaceLayout {
  size_t counter = 0;        // unsigned int ticket counter
  size_t lengths = 0;        // int32 [batch] staged from the host (header)
  size_t sums = 0;           // double [units]
  size_t counts = 0;         // int32 [units]
  size_t nonfinite = 0;      // int32 [units]
  size_t sample_counts = 0;  // int64 [batch]
  size_t total = 0;
};

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

__host__ __device__ inline int64_t chunks_per_sample(const MelShape& s) {
  return (s.frames * s.mels + kChunk - 1) / kChunk;
}

// One block per chunk; a grid holds at most 2^31 - 1 blocks in x. Only a
// batch of more than 2^31 samples reaches it (each has at least one chunk).
std::string grid_error(int64_t units) {
  constexpr int64_t kMaxGridX = 2147483647;
  if (units <= kMaxGridX) return std::string();
  return "the input needs " + std::to_string(units) + " CUDA blocks (one per sample's chunk of " +
         std::to_string(kChunk) + " elements), more than a grid's 2^31 - 1: split the batch";
}

WorkspaceLayout workspace_layout(const MelShape& s) {
  const size_t units = size_t(s.batch * chunks_per_sample(s));
  WorkspaceLayout w;
  size_t off = 0;
  w.counter = off;
  off = align_up(off + 8, 8);
  w.lengths = off;
  off = align_up(off + sizeof(int32_t) * size_t(s.batch), kHeaderAlign);
  w.sums = off;
  off = align_up(off + sizeof(double) * units, kHeaderAlign);
  w.counts = off;
  off = align_up(off + sizeof(int32_t) * units, kHeaderAlign);
  w.nonfinite = off;
  off = align_up(off + sizeof(int32_t) * units, kHeaderAlign);
  w.sample_counts = off;
  off = align_up(off + sizeof(int64_t) * size_t(s.batch), kHeaderAlign);
  w.total = off;
  return w;
}

__device__ __forceinline__ int64_t device_length(const void* lengths, int kind, int64_t b,
                                                 int64_t frames) {
  // kind: 0 none, 1 int32, 2 int64
  if (kind == 0) return frames;
  return kind == 1 ? int64_t(static_cast<const int32_t*>(lengths)[b])
                   : static_cast<const int64_t*>(lengths)[b];
}

__device__ __forceinline__ int64_t clamp_length(int64_t v, int64_t frames) {
  return v < 0 ? 0 : (v > frames ? frames : v);
}

// Deterministic block-wide sum (fixed shuffle tree, then fixed warp order).
template <typename V>
__device__ V block_sum(V v, V* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  V total = V(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  return total;  // valid in thread 0 only
}

template <LossType kType, typename T, typename A>
__device__ __forceinline__ void accumulate(T t_raw, T p_raw, A delta, A& acc, int& cnt) {
  const A e = element_loss<kType>(to_acc(p_raw) - to_acc(t_raw), delta);
  const bool ok = element_counts<kType>(e);
  acc += ok ? e : A(0);
  cnt += ok ? 1 : 0;
}

template <typename T, LossType kType>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ y_true, const T* __restrict__ y_pred,
                   const void* __restrict__ lengths, int lengths_kind, MelShape shape,
                   const double* __restrict__ state_in, LossConfig cfg, char* workspace,
                   WorkspaceLayout layout, typename AccType<T>::type* __restrict__ loss_out,
                   typename AccType<T>::type* __restrict__ per_sample,
                   int64_t* __restrict__ nonfinite_out, double* __restrict__ state_out,
                   double* __restrict__ weights, int64_t* __restrict__ active_out,
                   int64_t* __restrict__ valid_out) {
  using A = typename AccType<T>::type;
  using VecT = typename Vec<T>::Type;
  constexpr int W = Vec<T>::kWidth;
  __shared__ double shared_d[kThreads / 32];
  __shared__ long long shared_i[kThreads / 32];
  __shared__ bool is_last;

  const int64_t row = shape.frames * shape.mels;
  const int64_t chunks = chunks_per_sample(shape);
  const int64_t units = shape.batch * chunks;
  const int64_t unit = blockIdx.x;

  double* sums = reinterpret_cast<double*>(workspace + layout.sums);
  int32_t* counts = reinterpret_cast<int32_t*>(workspace + layout.counts);
  int32_t* nonfin = reinterpret_cast<int32_t*>(workspace + layout.nonfinite);

  if (unit < units) {
    const int64_t b = unit / chunks;
    const int64_t lo = (unit % chunks) * kChunk;
    const int64_t valid =
        clamp_length(device_length(lengths, lengths_kind, b, shape.frames), shape.frames) *
        shape.mels;
    const int64_t n = valid - lo < kChunk ? valid - lo : kChunk;
    if (n > 0) {  // chunks past the valid frames are never read back
      const T* t = y_true + b * row + lo;
      const T* p = y_pred + b * row + lo;
      const A delta = A(cfg.huber_delta);
      A acc = A(0);
      int cnt = 0;
      // Vector body when both pointers share their misalignment.
      const size_t mis_t = reinterpret_cast<uintptr_t>(t) % 16;
      const size_t mis_p = reinterpret_cast<uintptr_t>(p) % 16;
      int64_t head = n, n_vec = 0;
      if (mis_t == mis_p && mis_t % sizeof(T) == 0) {
        head = mis_t == 0 ? 0 : (16 - mis_t) / sizeof(T);
        if (head > n) head = n;
        n_vec = (n - head) / W;
      }
      for (int64_t i = threadIdx.x; i < head; i += kThreads)
        accumulate<kType>(t[i], p[i], delta, acc, cnt);
      const VecT* tv = reinterpret_cast<const VecT*>(t + head);
      const VecT* pv = reinterpret_cast<const VecT*>(p + head);
      for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
        const VecT a = tv[i];
        const VecT c = pv[i];
#pragma unroll
        for (int k = 0; k < W; ++k) accumulate<kType>(a.v[k], c.v[k], delta, acc, cnt);
      }
      for (int64_t i = head + n_vec * W + threadIdx.x; i < n; i += kThreads)
        accumulate<kType>(t[i], p[i], delta, acc, cnt);

      const double s = block_sum<double>(double(acc), shared_d);
      const long long c = block_sum<long long>(cnt, shared_i);
      if (threadIdx.x == 0) {
        sums[unit] = s;
        counts[unit] = int32_t(c);
        nonfin[unit] = int32_t(n - c);
      }
    }
  }

  // Publish the partial, then take a ticket; the last block finalises.
  if (threadIdx.x == 0) {
    __threadfence();
    unsigned int* counter = reinterpret_cast<unsigned int*>(workspace + layout.counter);
    const unsigned int ticket = atomicAdd(counter, 1u);
    is_last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();

  // Per-sample totals, one thread per sample (strided), chunks in order.
  int64_t* sample_counts = reinterpret_cast<int64_t*>(workspace + layout.sample_counts);
  double local_means = 0.0, local_sum = 0.0;
  long long local_active = 0, local_count = 0, local_nonfinite = 0, local_valid = 0, local_bad = 0;
  for (int64_t b = threadIdx.x; b < shape.batch; b += kThreads) {
    const int64_t raw = device_length(lengths, lengths_kind, b, shape.frames);
    local_bad += (raw < 0 || raw > shape.frames) ? 1 : 0;
    const int64_t valid = clamp_length(raw, shape.frames) * shape.mels;
    const int64_t used = (valid + kChunk - 1) / kChunk;
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t c = 0; c < used; ++c) {
      sum += __ldcg(&sums[b * chunks + c]);
      count += __ldcg(&counts[b * chunks + c]);
      local_nonfinite += __ldcg(&nonfin[b * chunks + c]);
    }
    sample_counts[b] = count;
    const double mean = sample_mean(sum, count);
    per_sample[b] = A(mean);
    if (count > 0) {
      ++local_active;
      local_means += mean;
    }
    local_sum += sum;
    local_count += count;
    local_valid += valid;
  }
  __shared__ long long totals_i[2];
  const double sum_means = block_sum<double>(local_means, shared_d);
  const double total_sum = block_sum<double>(local_sum, shared_d);
  const long long active = block_sum<long long>(local_active, shared_i);
  const long long total_count = block_sum<long long>(local_count, shared_i);
  const long long nonfinite = block_sum<long long>(local_nonfinite, shared_i);
  const long long valid_total = block_sum<long long>(local_valid, shared_i);
  const long long bad = block_sum<long long>(local_bad, shared_i);
  if (threadIdx.x == 0) {
    A loss = A(batch_loss(cfg.normalization, sum_means, active, total_sum, total_count));
    // Out-of-range lengths: never a plausible number; a NaN loss also keeps
    // the step out of the statistics (update_state).
    if (bad > 0) loss = A(NAN);
    *loss_out = loss;
    *nonfinite_out = nonfinite;
    if (active_out != nullptr) *active_out = active;
    if (valid_out != nullptr) *valid_out = valid_total;
    update_state(state_in, state_out, double(loss), nonfinite, valid_total);
    totals_i[0] = active;
    totals_i[1] = total_count;
  }
  __syncthreads();
  for (int64_t b = threadIdx.x; b < shape.batch; b += kThreads) {
    sample_weights(sample_counts[b], totals_i[0], totals_i[1], cfg.normalization, &weights[b],
                   &weights[shape.batch + b]);
  }
  if (threadIdx.x == 0) {
    // Leave the counter at zero for callers that reuse the workspace.
    *reinterpret_cast<unsigned int*>(workspace + layout.counter) = 0u;
  }
}

template <LossType kType, typename T, typename A>
__device__ __forceinline__ void grad_element(T t_raw, T p_raw, bool valid, A coef, A delta,
                                             T& g_true, T& g_pred) {
  const A d = to_acc(p_raw) - to_acc(t_raw);
  const bool ok = valid & element_counts<kType>(element_loss<kType>(d, delta));
  const A g = ok ? coef * element_loss_grad<kType>(d, delta) : A(0);
  g_pred = from_acc<T>(g);
  g_true = from_acc<T>(-g);
}

// Scalar path of the backward: element i of the chunk.
template <LossType kType, typename T, typename A>
__device__ __forceinline__ void grad_scalar(const T* t, const T* p, T* gt, T* gp, int64_t i,
                                            int64_t valid, A coef, A delta) {
  T g_true, g_pred;
  grad_element<kType>(t[i], p[i], i < valid, coef, delta, g_true, g_pred);
  gp[i] = g_pred;
  if (gt != nullptr) gt[i] = g_true;
}

template <typename T, LossType kType>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ y_true, const T* __restrict__ y_pred,
                    const void* __restrict__ lengths, int lengths_kind, MelShape shape,
                    const double* __restrict__ weights,
                    const typename AccType<T>::type* __restrict__ grad_loss,
                    const typename AccType<T>::type* __restrict__ grad_per_sample, LossConfig cfg,
                    T* __restrict__ g_true, T* __restrict__ g_pred) {
  using A = typename AccType<T>::type;
  using VecT = typename Vec<T>::Type;
  constexpr int W = Vec<T>::kWidth;
  const int64_t row = shape.frames * shape.mels;
  const int64_t chunks = chunks_per_sample(shape);
  const int64_t b = blockIdx.x / chunks;
  const int64_t lo = (blockIdx.x % chunks) * kChunk;
  const int64_t n = row - lo < kChunk ? row - lo : kChunk;
  const int64_t valid =
      clamp_length(device_length(lengths, lengths_kind, b, shape.frames), shape.frames) *
          shape.mels -
      lo;
  const A coef =
      A(double(*grad_loss) * weights[b] + double(grad_per_sample[b]) * weights[shape.batch + b]);
  const A delta = A(cfg.huber_delta);
  const int64_t off = b * row + lo;
  const T* t = y_true + off;
  const T* p = y_pred + off;
  T* gt = g_true == nullptr ? nullptr : g_true + off;  // null: d/dy_true not wanted
  T* gp = g_pred + off;

  const size_t mis = reinterpret_cast<uintptr_t>(t) % 16;
  const bool same = mis == reinterpret_cast<uintptr_t>(p) % 16 &&
                    (gt == nullptr || mis == reinterpret_cast<uintptr_t>(gt) % 16) &&
                    mis == reinterpret_cast<uintptr_t>(gp) % 16 && mis % sizeof(T) == 0;
  int64_t head = n, n_vec = 0;
  if (same) {
    head = mis == 0 ? 0 : (16 - mis) / sizeof(T);
    if (head > n) head = n;
    n_vec = (n - head) / W;
  }
  for (int64_t i = threadIdx.x; i < head; i += kThreads)
    grad_scalar<kType>(t, p, gt, gp, i, valid, coef, delta);
  const VecT* tv = reinterpret_cast<const VecT*>(t + head);
  const VecT* pv = reinterpret_cast<const VecT*>(p + head);
  VecT* gtv = gt == nullptr ? nullptr : reinterpret_cast<VecT*>(gt + head);
  VecT* gpv = reinterpret_cast<VecT*>(gp + head);
  for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
    const int64_t base = head + i * W;
    VecT a, c, ot, op;
    if (base < valid) {  // padding-only vectors skip the loads
      a = tv[i];
      c = pv[i];
    } else {
      a = VecT{};
      c = VecT{};
    }
#pragma unroll
    for (int k = 0; k < W; ++k)
      grad_element<kType>(a.v[k], c.v[k], base + k < valid, coef, delta, ot.v[k], op.v[k]);
    if (gtv != nullptr) gtv[i] = ot;
    gpv[i] = op;
  }
  for (int64_t i = head + n_vec * W + threadIdx.x; i < n; i += kThreads)
    grad_scalar<kType>(t, p, gt, gp, i, valid, coef, delta);
}

int lengths_kind(const LengthsView& l) { return l.data == nullptr ? 0 : (l.is_int64 ? 2 : 1); }

std::string cuda_error(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return std::string();
  return std::string(what) + ": " + cudaGetErrorString(e);
}

template <typename T>
std::string launch_forward(const ForwardArgs& a, void* workspace, const void* header_host,
                           size_t header_bytes, cudaStream_t stream) {
  using A = typename AccType<T>::type;
  const WorkspaceLayout layout = workspace_layout(a.shape);
  char* ws = static_cast<char*>(workspace);
  const void* lengths = a.lengths.data;
  int kind = lengths_kind(a.lengths);
  cudaError_t e;
  if (header_host != nullptr) {
    e = cudaMemcpyAsync(ws, header_host, header_bytes, cudaMemcpyHostToDevice, stream);
    if (kind != 0) {
      lengths = ws + layout.lengths;
      kind = 1;
    }
  } else {
    e = cudaMemsetAsync(ws + layout.counter, 0, sizeof(unsigned int), stream);
  }
  if (e != cudaSuccess) return std::string("staging the forward header: ") + cudaGetErrorString(e);
  const int64_t units = a.shape.batch * chunks_per_sample(a.shape);
  if (std::string err = grid_error(units); !err.empty()) return err;
  const unsigned int grid = units > 0 ? unsigned(units) : 1u;
  auto kernel = a.config.loss_type == LossType::kL1 ? forward_kernel<T, LossType::kL1>
                                                    : forward_kernel<T, LossType::kHuber>;
  kernel<<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(a.y_true), static_cast<const T*>(a.y_pred), lengths, kind, a.shape,
      a.state_in, a.config, ws, layout, static_cast<A*>(a.loss), static_cast<A*>(a.per_sample),
      a.nonfinite_count, a.state_out, a.sample_weights, a.active_count, a.valid_count);
  return cuda_error("launching the masked mel loss forward kernel");
}

template <typename T>
std::string launch_backward(const BackwardArgs& a, cudaStream_t stream) {
  using A = typename AccType<T>::type;
  const int64_t units = a.shape.batch * chunks_per_sample(a.shape);
  if (units == 0) return std::string();
  if (std::string err = grid_error(units); !err.empty()) return err;
  auto kernel = a.config.loss_type == LossType::kL1 ? backward_kernel<T, LossType::kL1>
                                                    : backward_kernel<T, LossType::kHuber>;
  kernel<<<unsigned(units), kThreads, 0, stream>>>(
      static_cast<const T*>(a.y_true), static_cast<const T*>(a.y_pred), a.lengths.data,
      lengths_kind(a.lengths), a.shape, a.sample_weights, static_cast<const A*>(a.grad_loss),
      static_cast<const A*>(a.grad_per_sample), a.config, static_cast<T*>(a.grad_y_true),
      static_cast<T*>(a.grad_y_pred));
  return cuda_error("launching the masked mel loss backward kernel");
}

}  // namespace

bool built_with_cuda() { return true; }

size_t cuda_forward_workspace_size(const MelShape& shape) { return workspace_layout(shape).total; }

size_t cuda_forward_header_size(int64_t batch, bool with_lengths) {
  MelShape s;
  s.batch = batch;
  const WorkspaceLayout w = workspace_layout(s);
  return with_lengths ? w.lengths + sizeof(int32_t) * size_t(batch) : w.lengths;
}

void cuda_forward_fill_header(void* header, const LengthsView& host_lengths, int64_t batch) {
  MelShape s;
  s.batch = batch;
  const WorkspaceLayout w = workspace_layout(s);
  char* h = static_cast<char*>(header);
  for (size_t i = 0; i < w.lengths; ++i) h[i] = 0;
  if (host_lengths.data == nullptr) return;
  stage_lengths_int32(host_lengths, batch, reinterpret_cast<int32_t*>(h + w.lengths));
}

std::string mel_loss_forward_cuda(const ForwardArgs& args, void* workspace, const void* header_host,
                                  size_t header_bytes, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (args.dtype) {
    case DType::kHalf:
      return launch_forward<half_t>(args, workspace, header_host, header_bytes, s);
    case DType::kBFloat16:
      return launch_forward<bfloat16_t>(args, workspace, header_host, header_bytes, s);
    case DType::kFloat:
      return launch_forward<float>(args, workspace, header_host, header_bytes, s);
    case DType::kDouble:
      return launch_forward<double>(args, workspace, header_host, header_bytes, s);
  }
  return "unsupported dtype";
}

std::string mel_loss_backward_cuda(const BackwardArgs& args, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (args.dtype) {
    case DType::kHalf:
      return launch_backward<half_t>(args, s);
    case DType::kBFloat16:
      return launch_backward<bfloat16_t>(args, s);
    case DType::kFloat:
      return launch_backward<float>(args, s);
    case DType::kDouble:
      return launch_backward<double>(args, s);
  }
  return "unsupported dtype";
}

// From pageable memory the call returns once the source is staged for the DMA
// (CUDA's documented synchronisation for such copies), so a caller's local
// buffer may go out of scope right after it.
std::string cuda_copy_to_device_async(void* dst, const void* src, size_t bytes, void* stream) {
  const cudaError_t e =
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream));
  return e == cudaSuccess ? std::string()
                          : std::string("host-to-device copy: ") + cudaGetErrorString(e);
}

std::string cuda_copy_to_host(void* dst, const void* src, size_t bytes, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  return e == cudaSuccess ? std::string()
                          : std::string("device-to-host copy: ") + cudaGetErrorString(e);
}

std::string cuda_copy_on_device(void* dst, const void* src, size_t bytes, void* stream) {
  const cudaError_t e =
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream));
  return e == cudaSuccess ? std::string()
                          : std::string("device-to-device copy: ") + cudaGetErrorString(e);
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace myxtts_ops
