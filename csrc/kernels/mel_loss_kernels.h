// Framework-free interface of the masked mel loss kernels (CPU and CUDA).
// Callers pass raw pointers; TensorFlow and pybind11 glue live elsewhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "mel_loss_math.h"

namespace myxtts_ops {

struct MelShape {
  int64_t batch = 0;
  int64_t frames = 0;
  int64_t mels = 0;
};

// Per-sample valid frame counts: int32, int64, or none (every frame valid).
struct LengthsView {
  const void* data = nullptr;
  bool is_int64 = false;
};

enum class DType : int { kHalf = 0, kBFloat16 = 1, kFloat = 2, kDouble = 3 };
// Loss and per_sample are float64 for float64 input, float32 otherwise.
inline bool output_is_double(DType dtype) { return dtype == DType::kDouble; }

struct ForwardArgs {
  DType dtype = DType::kFloat;
  MelShape shape;
  const void* y_true = nullptr;
  const void* y_pred = nullptr;
  LengthsView lengths;
  const double* state_in = nullptr;  // [state::kSize]
  LossConfig config;
  // Outputs.
  void* loss = nullptr;                // scalar, float or double
  void* per_sample = nullptr;          // [batch], float or double
  int64_t* nonfinite_count = nullptr;  // scalar
  double* state_out = nullptr;         // [state::kSize]
  double* sample_weights = nullptr;    // [2, batch]
  // What a caller averaging over the batch itself needs (null: not wanted):
  int64_t* active_count = nullptr;  // scalar: samples with at least one counted element
  int64_t* valid_count = nullptr;   // scalar: elements before the lengths (finite or not)
};

struct BackwardArgs {
  DType dtype = DType::kFloat;
  MelShape shape;
  const void* y_true = nullptr;
  const void* y_pred = nullptr;
  LengthsView lengths;
  const double* sample_weights = nullptr;  // [2, batch] from the forward
  const void* grad_loss = nullptr;         // scalar, float or double
  const void* grad_per_sample = nullptr;   // [batch], float or double
  LossConfig config;
  void* grad_y_true = nullptr;  // [B, T, M], input dtype; null: not wanted
  void* grad_y_pred = nullptr;  // [B, T, M], input dtype
};

// ---------------------------------------------------------------------------
// CPU. `parallel_for(n, cost_per_unit, fn)` must call fn(begin, end) over a
// partition of [0, n); any partition gives bitwise identical results because
// the work units and their combination order are fixed.
using ParallelFor = std::function<void(int64_t n, int64_t cost_per_unit,
                                       const std::function<void(int64_t, int64_t)>& fn)>;

// Lengths must already be validated (0 <= length <= frames; see
// mel_loss_checks.h for the shared argument rules).
void mel_loss_forward_cpu(const ForwardArgs& args, const ParallelFor& parallel_for);
void mel_loss_backward_cpu(const BackwardArgs& args, const ParallelFor& parallel_for);

// ---------------------------------------------------------------------------
// CUDA (defined only when built with CUDA; see built_with_cuda()).
bool built_with_cuda();

// Bytes of device workspace the forward needs.
size_t cuda_forward_workspace_size(const MelShape& shape);
// Bytes of the host-prepared header copied into the workspace before the
// launch: a zeroed ticket counter followed by the lengths as int32, so one
// async copy both resets the counter and stages host-side lengths.
size_t cuda_forward_header_size(int64_t batch, bool with_lengths);
void cuda_forward_fill_header(void* header, const LengthsView& host_lengths, int64_t batch);

// `stream` is a cudaStream_t. When `header_host` is non-null it is copied
// (cudaMemcpyAsync, pageable, staged before return) into the workspace and the
// kernel reads lengths from there (args.lengths is then ignored); otherwise the
// counter is cleared with cudaMemsetAsync and args.lengths is a device pointer.
// Out-of-range device lengths are clamped for memory safety and make the loss
// NaN. Returns an empty string on success, else the CUDA error text.
std::string mel_loss_forward_cuda(const ForwardArgs& args, void* workspace, const void* header_host,
                                  size_t header_bytes, void* stream);
// args.lengths is a device pointer (or null).
std::string mel_loss_backward_cuda(const BackwardArgs& args, void* stream);
// Async copy from pageable host memory (staged before return, so `src` may be
// freed right after) on `stream`.
std::string cuda_copy_to_device_async(void* dst, const void* src, size_t bytes, void* stream);
// Copies device memory to the host after the work queued on `stream`.
std::string cuda_copy_to_host(void* dst, const void* src, size_t bytes, void* stream);
// Copies device memory to device memory, queued on `stream`.
std::string cuda_copy_on_device(void* dst, const void* src, size_t bytes, void* stream);
// Number of visible CUDA devices (0 when built without CUDA or none found).
int cuda_device_count();

}  // namespace myxtts_ops
