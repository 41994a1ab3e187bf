#include "mel_loss_checks.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace myxtts_ops {
namespace {

// Messages are built without iostreams. An ostream formats integers through
// the global C++ locale, which a host program may have set to one that groups
// digits; and where a toolchain links libstdc++ into the pybind11 module
// statically (as the GPU machine's does), inserting an integer into an
// ostream crashed the process (SIGSEGV in std::ostream::_M_insert<long>).
// std::to_string of an integer touches no locale.
void append(std::string& s, const char* part) { s += part; }
void append(std::string& s, const std::string& part) { s += part; }
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
void append(std::string& s, T value) {
  s += std::to_string(value);
}

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::string out;
  (append(out, parts), ...);
  return out;
}

int64_t length_at(const LengthsView& lengths, int64_t b) {
  return lengths.is_int64 ? static_cast<const int64_t*>(lengths.data)[b]
                          : static_cast<const int32_t*>(lengths.data)[b];
}

}  // namespace

namespace {
// Shortest text that reads back as `x` in its own type.
template <typename T>
std::string format_shortest(T x) {
#if defined(__SSE__)
  // TF runs op kernels with denormals-are-zero set, under which the
  // formatter's own comparisons read a subnormal as 0: format with it off.
  const unsigned int csr = _mm_getcsr();
  _mm_setcsr(csr & ~0x8040u);  // clear FTZ (bit 15) and DAZ (bit 6)
#endif
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), x);
#if defined(__SSE__)
  _mm_setcsr(csr);
#endif
  return std::string(buf, r.ptr);
}
}  // namespace

std::string format_double(double x) { return format_shortest(x); }
std::string format_float(float x) { return format_shortest(x); }

std::string shape_string(const Dims& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) s += ",";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

std::string check_stop_shapes(const Dims& target, const Dims& pred, const Dims& lengths) {
  if (target.size() != 2)
    return cat("stop_target must have shape [batch, frames], got ", shape_string(target));
  if (pred != target)
    return cat("stop_tokens must have the shape of stop_target ", shape_string(target), ", got ",
               shape_string(pred));
  if (lengths.size() != 1 || lengths[0] != target[0])
    return cat("stop lengths must have shape [", target[0], "], got ", shape_string(lengths));
  return std::string();
}

std::string stop_lengths_error(const int32_t* lengths, int64_t batch, int64_t frames) {
  for (int64_t b = 0; b < batch; ++b) {
    if (lengths[b] < 0 || lengths[b] > frames)
      return cat("stop lengths[", b, "] = ", lengths[b], " is outside [0, ", frames,
                 "] (the stop_tokens frames)");
  }
  return std::string();
}

std::string stop_config_error(float positive_weight, float label_smoothing, float prob_min) {
  if (!std::isfinite(positive_weight))
    return cat("positive_weight must be finite, got ", format_float(positive_weight));
  if (!std::isfinite(label_smoothing))
    return cat("label_smoothing must be finite, got ", format_float(label_smoothing));
  // A positive float's bits order as its value; a negative one or a NaN
  // falls outside the range as an unsigned integer.
  const auto bits = [](float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof(u));
    return u;
  };
  if (!(bits(prob_min) >= bits(kMinStopProbMin) && bits(prob_min) < bits(0.5f)))
    return cat("prob_min must be in [", format_float(kMinStopProbMin),
               ", 0.5) (at least 2^-24, the float32 spacing below 1, so that the upper clip "
               "bound 1 - prob_min stays below 1), got ",
               format_float(prob_min));
  return std::string();
}

std::string check_huber_delta_shape(const Dims& huber_delta) {
  if (huber_delta.empty()) return std::string();
  return cat("huber_delta must be a scalar, got shape ", shape_string(huber_delta));
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
  const std::string err = mel_shape_error(shape->batch, shape->frames, shape->mels);
  return err.empty() ? err : "y_true: " + err;
}

std::string check_state_shape(const Dims& state) {
  if (state.size() == 1 && state[0] == state::kSize) return std::string();
  return cat("state must have shape [", state::kSize, "] (myxtts_ops.STATE_SIZE), got shape ",
             shape_string(state));
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

std::string parse_loss_names(std::string_view loss_type, std::string_view normalization,
                             LossConfig* config) {
  if (loss_type != "l1" && loss_type != "huber")
    return "loss_type must be 'l1' or 'huber', got '" + std::string(loss_type) + "'";
  if (normalization != "per_sample" && normalization != "global")
    return "normalization must be 'per_sample' or 'global', got '" + std::string(normalization) +
           "'";
  config->loss_type = loss_type == "huber" ? LossType::kHuber : LossType::kL1;
  config->normalization =
      normalization == "global" ? Normalization::kGlobal : Normalization::kPerSample;
  return std::string();
}

std::string huber_delta_error(double delta) {
  // Under denormals-are-zero a subnormal compares as zero: refused too.
  if (delta >= kMinHuberDelta && delta <= kMaxHuberDelta) return std::string();
  return "huber_delta must be finite and at least " + format_double(kMinHuberDelta) +
         " (the smallest normal float32: float32 and narrower inputs compute with it in float32), "
         "got " +
         format_double(delta);
}

std::string mel_shape_error(int64_t batch, int64_t frames, int64_t mels) {
  if (batch < 0 || frames < 0 || mels < 0)
    return "sizes must not be negative, got [batch, frames, mels] = [" + std::to_string(batch) +
           ", " + std::to_string(frames) + ", " + std::to_string(mels) + "]";
  if (frames > std::numeric_limits<int32_t>::max())
    return "frames = " + std::to_string(frames) + " exceeds 2^31 - 1";
  // 2^56 bytes: far beyond any memory, far below overflow of the workspace
  // arithmetic (a few aligned arrays of at most 8 bytes per element/sample).
  constexpr int64_t kMaxBytes = int64_t(1) << 56;
  int64_t elements = 0, bytes = 0, batch_bytes = 0;
  if (__builtin_mul_overflow(batch, frames, &elements) ||
      __builtin_mul_overflow(elements, mels, &elements) ||
      __builtin_mul_overflow(elements, int64_t(8), &bytes) || bytes > kMaxBytes ||
      __builtin_mul_overflow(batch, int64_t(16), &batch_bytes) || batch_bytes > kMaxBytes)
    return "shape [" + std::to_string(batch) + ", " + std::to_string(frames) + ", " +
           std::to_string(mels) + "] is too large (more than 2^53 elements)";
  return std::string();
}

int64_t find_invalid_length(const LengthsView& lengths, int64_t batch, int64_t frames,
                            int64_t* bad_value) {
  if (lengths.data == nullptr) return -1;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t v = length_at(lengths, b);
    if (v < 0 || v > frames) {
      *bad_value = v;
      return b;
    }
  }
  return -1;
}

std::string length_values_error(const LengthsView& lengths, int64_t batch, int64_t limit,
                                const std::string& name, const std::string& note) {
  int64_t bad = 0;
  const int64_t b = find_invalid_length(lengths, batch, limit, &bad);
  if (b < 0) return std::string();
  return name + "[" + std::to_string(b) + "] = " + std::to_string(bad) + " is outside [0, " +
         std::to_string(limit) + "]" + note;
}

std::string float_length_values_error(const double* values, int64_t batch, int64_t limit,
                                      const std::string& name, const std::string& note,
                                      bool single_precision) {
  for (int64_t b = 0; b < batch; ++b) {
    const double v = values[b];
    if (v >= 0.0 && v <= double(limit) && std::floor(v) == v) continue;
    const bool whole = std::isfinite(v) && std::floor(v) == v;
    const std::string shown =
        single_precision ? format_shortest(static_cast<float>(v)) : format_shortest(v);
    return name + "[" + std::to_string(b) + "] = " + shown +
           (whole ? " is outside [0, " : " is not a whole number in [0, ") + std::to_string(limit) +
           "]" + note;
  }
  return std::string();
}

std::string lengths_error(const LengthsView& lengths, int64_t batch, int64_t frames) {
  return length_values_error(lengths, batch, frames, "lengths", " (frames of y_true)");
}

std::string length_limit_error(int64_t limit) {
  if (limit >= 0 && limit <= std::numeric_limits<int32_t>::max()) return std::string();
  return "limit must be in [0, 2^31 - 1] (the checked lengths are int32), got limit=" +
         std::to_string(limit);
}

std::string pick_length_limit(int64_t limit, const std::string& note, const int32_t* bounds,
                              int64_t count, const std::vector<std::string>& bound_notes,
                              int64_t* limit_out, std::string* note_out) {
  if (count != int64_t(bound_notes.size()))
    return "bounds has " + std::to_string(count) + " entries but bound_notes has " +
           std::to_string(bound_notes.size());
  *limit_out = limit;
  *note_out = note;
  for (int64_t k = 0; k < count; ++k) {
    if (bounds[k] < 0)
      return "bounds[" + std::to_string(k) + "] = " + std::to_string(bounds[k]) + " is negative";
    if (bounds[k] < *limit_out) {
      *limit_out = bounds[k];
      *note_out = bound_notes[k];
    }
  }
  return std::string();
}

std::string size_mismatch_error(const int32_t* sizes, int64_t count, const int32_t* expected,
                                int64_t expected_count, const std::vector<std::string>& labels,
                                const std::vector<std::string>& expected_labels) {
  if (count != expected_count)
    return "sizes and expected must have one length, got " + std::to_string(count) + " and " +
           std::to_string(expected_count);
  if (count != int64_t(labels.size()) || count != int64_t(expected_labels.size()))
    return "sizes has " + std::to_string(count) + " entries but labels has " +
           std::to_string(labels.size()) + " and expected_labels " +
           std::to_string(expected_labels.size());
  for (int64_t i = 0; i < count; ++i) {
    if (sizes[i] == expected[i]) continue;
    return labels[i] + " is " + std::to_string(sizes[i]) + ", but " + expected_labels[i] + " is " +
           std::to_string(expected[i]);
  }
  return std::string();
}

void stage_lengths_int32(const LengthsView& lengths, int64_t batch, int32_t* out) {
  for (int64_t b = 0; b < batch; ++b) out[b] = int32_t(length_at(lengths, b));
}

}  // namespace myxtts_ops
