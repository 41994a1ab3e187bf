// Framework-free interface of the stop-token loss kernels (CPU and CUDA): the
// per-sample sums of the element loss of stop_loss_math.h over the counted
// positions (t < lengths[b], target and prediction finite), in one pass, and
// its gradient from d / d sums. Float32 in and out; callers pass raw pointers.
#pragma once

#include <cstdint>
#include <string>

#include "mel_loss_kernels.h"  // ParallelFor
#include "stop_loss_math.h"

namespace myxtts_ops {

struct StopShape {
  int64_t batch = 0;
  int64_t frames = 0;
};

struct StopForwardArgs {
  StopShape shape;
  const float* target = nullptr;     // [B, T]
  const float* pred = nullptr;       // [B, T] probabilities
  const int32_t* lengths = nullptr;  // [B], each in [0, T] (checked by the caller)
  StopLossConfig config;
  // Outputs.
  float* sums = nullptr;         // [B]: sum of the element loss over counted positions
  int32_t* counts = nullptr;     // [B]: counted positions
  int64_t* nonfinite = nullptr;  // scalar: positions before the lengths that do not count
};

struct StopBackwardArgs {
  StopShape shape;
  const float* target = nullptr;
  const float* pred = nullptr;
  const int32_t* lengths = nullptr;
  const float* grad_sums = nullptr;  // [B]
  StopLossConfig config;
  float* grad_target = nullptr;  // [B, T]; null: not wanted
  float* grad_pred = nullptr;    // [B, T]
};

// CPU, with the ParallelFor contract of mel_loss_kernels.h (one unit = one
// sample; the result does not depend on the partition).
void stop_loss_forward_cpu(const StopForwardArgs& args, const ParallelFor& parallel_for);
void stop_loss_backward_cpu(const StopBackwardArgs& args, const ParallelFor& parallel_for);

// CUDA: every pointer is device memory (lengths included), `stream` a
// cudaStream_t. Lengths outside [0, T] are clamped for memory safety (the
// TensorFlow glue refuses them before staging). Empty string on success, else
// the CUDA error text (or that the library was built without CUDA).
std::string stop_loss_forward_cuda(const StopForwardArgs& args, void* stream);
std::string stop_loss_backward_cuda(const StopBackwardArgs& args, void* stream);

}  // namespace myxtts_ops
