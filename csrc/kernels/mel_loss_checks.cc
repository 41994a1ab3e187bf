#include "mel_loss_checks.h"

#include <charconv>
#include <cmath>
#include <limits>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace myxtts_ops {
namespace {

int64_t length_at(const LengthsView& lengths, int64_t b) {
  return lengths.is_int64 ? static_cast<const int64_t*>(lengths.data)[b]
                          : static_cast<const int32_t*>(lengths.data)[b];
}

}  // namespace

std::string format_double(double x) {
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

std::string huber_delta_error(double delta) {
  // Under denormals-are-zero a subnormal classifies as zero: refused too.
  const int kind = std::fpclassify(delta);
  if (kind == FP_NORMAL && !std::signbit(delta) && delta <= kMaxHuberDelta) return std::string();
  return "huber_delta must be a positive, finite, normal float64 (at least " +
         format_double(kMinHuberDelta) + "), got " + format_double(delta);
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

std::string lengths_error(const LengthsView& lengths, int64_t batch, int64_t frames) {
  int64_t bad = 0;
  const int64_t b = find_invalid_length(lengths, batch, frames, &bad);
  if (b < 0) return std::string();
  return "lengths[" + std::to_string(b) + "] = " + std::to_string(bad) + " is outside [0, " +
         std::to_string(frames) + "] (frames of y_true)";
}

void stage_lengths_int32(const LengthsView& lengths, int64_t batch, int32_t* out) {
  for (int64_t b = 0; b < batch; ++b) out[b] = int32_t(length_at(lengths, b));
}

}  // namespace myxtts_ops
