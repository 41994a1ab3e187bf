// Host-side argument rules shared by every entry point: the TF op
// (csrc/tf/mel_loss_op.cc), the XLA custom call and the pybind11 module
// (csrc/python/kernels_module.cc), and, through myxtts_ops.kernels, the
// Python wrappers. Each rule is written here once; callers turn the returned
// message into their own error type. No framework headers.
#pragma once

#include <cstdint>
#include <string>

#include "mel_loss_kernels.h"

namespace myxtts_ops {

// Smallest accepted huber_delta: the smallest normal float64. TensorFlow runs
// CPU kernels with denormals flushed to zero, where a subnormal delta would
// act as 0, so subnormals are refused everywhere.
constexpr double kMinHuberDelta = 2.2250738585072014e-308;
constexpr double kMaxHuberDelta = 1.7976931348623157e308;

// Shortest decimal text that reads back as `x` ("1e-320", "nan", "-inf").
// Right under denormals-are-zero too (TF sets it for op kernels).
std::string format_double(double x);

// Empty when `delta` is a valid huber_delta (a positive, finite, normal
// float64), else the error message naming the value.
std::string huber_delta_error(double delta);

// Empty when [batch, frames, mels] is a shape the kernels handle: no size is
// negative, frames fits int32 (lengths travel to the GPU as int32), and the
// elements' bytes (8 per element at most) and the per-sample arrays fit in
// int64 with room to spare, so no size computed from them overflows.
std::string mel_shape_error(int64_t batch, int64_t frames, int64_t mels);

// Index of the first length outside [0, frames] (and its value in
// *bad_value), or -1.
int64_t find_invalid_length(const LengthsView& lengths, int64_t batch, int64_t frames,
                            int64_t* bad_value);

// Empty when every length is in [0, frames], else
// "lengths[b] = v is outside [0, frames] (frames of y_true)".
std::string lengths_error(const LengthsView& lengths, int64_t batch, int64_t frames);

// Copies validated host lengths (int32 or int64, values in [0, frames] with
// frames <= INT32_MAX) to int32, the form the CUDA kernels read. `lengths`
// must not be empty (data != nullptr).
void stage_lengths_int32(const LengthsView& lengths, int64_t batch, int32_t* out);

}  // namespace myxtts_ops
