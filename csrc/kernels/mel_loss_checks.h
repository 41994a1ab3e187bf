// Framework-free input checks of the masked mel loss (SPEC 3.5), shared by the
// TF OpKernels, the XLA kernels (at compile time) and the XLA FFI handlers (at
// run time), so every path refuses the same input with the same message.
// Each check returns an empty string when the input is fine, else a message
// naming the input and its bad value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mel_loss_kernels.h"

namespace myxtts_ops {

using Dims = std::vector<int64_t>;

// "[2,3,4]", the way TensorShape::DebugString writes a shape.
std::string shape_string(const Dims& dims);

// Rank and shapes of y_true, y_pred and (when use_lengths) lengths; fills *shape.
std::string check_mel_shapes(const Dims& y_true, const Dims& y_pred, const Dims& lengths,
                             bool use_lengths, MelShape* shape);
std::string check_state_shape(const Dims& state);
std::string check_huber_delta_shape(const Dims& huber_delta);
std::string check_huber_delta(double delta);
// Inputs of the gradient op that come from the forward and from upstream.
std::string check_grad_shapes(const Dims& sample_weights, const Dims& grad_loss,
                              const Dims& grad_per_sample, int64_t batch);
// Length values (host memory): each in [0, frames].
std::string check_length_values(const LengthsView& lengths, const MelShape& shape);

}  // namespace myxtts_ops
