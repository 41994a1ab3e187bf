#include "mel_loss_checks.h"

#include <sstream>

namespace myxtts_ops {
namespace {

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace

std::string shape_string(const Dims& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) s += ",";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

std::string check_mel_shapes(const Dims& y_true, const Dims& y_pred, const Dims& lengths,
                             bool use_lengths, MelShape* shape) {
  if (y_true.size() != 3)
    return cat("y_true must have rank 3 [batch, frames, mels], got shape ", shape_string(y_true));
  if (y_pred != y_true)
    return cat("y_pred shape ", shape_string(y_pred), " does not match y_true shape ",
               shape_string(y_true));
  shape->batch = y_true[0];
  shape->frames = y_true[1];
  shape->mels = y_true[2];
  if (use_lengths && (lengths.size() != 1 || lengths[0] != shape->batch))
    return cat("lengths must have shape [", shape->batch, "] (one length per sample), got shape ",
               shape_string(lengths));
  if (shape->frames > 0x7fffffff) return cat("frames = ", shape->frames, " exceeds 2^31 - 1");
  return std::string();
}

std::string check_state_shape(const Dims& state) {
  if (state.size() == 1 && state[0] == state::kSize) return std::string();
  return cat("state must have shape [", state::kSize, "] (myxtts_ops.STATE_SIZE), got shape ",
             shape_string(state));
}

std::string check_huber_delta_shape(const Dims& huber_delta) {
  if (huber_delta.empty()) return std::string();
  return cat("huber_delta must be a scalar, got shape ", shape_string(huber_delta));
}

std::string check_huber_delta(double delta) {
  if (delta > 0.0 && delta <= 1.7976931348623157e308) return std::string();  // rejects NaN, Inf
  return cat("huber_delta must be a positive finite number, got ", delta);
}

std::string check_grad_shapes(const Dims& sample_weights, const Dims& grad_loss,
                              const Dims& grad_per_sample, int64_t batch) {
  if (sample_weights.size() != 2 || sample_weights[0] != 2 || sample_weights[1] != batch)
    return cat("sample_weights must have shape [2, ", batch, "], got ",
               shape_string(sample_weights));
  if (!grad_loss.empty())
    return cat("grad_loss must be a scalar, got shape ", shape_string(grad_loss));
  if (grad_per_sample.size() != 1 || grad_per_sample[0] != batch)
    return cat("grad_per_sample must have shape [", batch, "], got ",
               shape_string(grad_per_sample));
  return std::string();
}

std::string check_length_values(const LengthsView& lengths, const MelShape& shape) {
  int64_t bad = 0;
  const int64_t b = find_invalid_length(lengths, shape.batch, shape.frames, &bad);
  if (b < 0) return std::string();
  return cat("lengths[", b, "] = ", bad, " is outside [0, ", shape.frames,
             "] (frames of y_true)");
}

}  // namespace myxtts_ops
