// CPU kernels of the stop-token loss: one pass over each sample's valid
// positions (forward) and one over all positions (backward), a sample per
// work unit. The element math is plain arithmetic (stop_loss_math.h), so the
// loops vectorise; on x86-64 they are also built for x86-64-v3 (AVX2) and
// the loader picks that copy where the CPU has it: it takes about half the
// time of the baseline SSE2 copy (BENCHMARKS.md). Both copies are
// built without FMA contraction (CMakeLists.txt), so they give the same bits.
#include <algorithm>

#include "stop_loss_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MXO_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MXO_CPU_CLONES
#endif

namespace myxtts_ops {
namespace {

// Independent accumulators: the compiler vectorises the sum without
// reassociating float additions, so the result does not depend on the
// partition (the lanes are combined in a fixed order, in double).
constexpr int kLanes = 16;
// Positions per float accumulation: each lane sums at most kChunk / kLanes
// element losses before the chunk's sum joins the row's in double, so a long
// row keeps float32's relative error of a few hundred additions.
constexpr int64_t kChunk = 4096;
// Rough cost of one position, in the units ParallelFor's hint expects.
constexpr int64_t kForwardCost = 60;
constexpr int64_t kBackwardCost = 30;

int64_t clamp_length(int32_t length, int64_t frames) {
  return std::min<int64_t>(std::max<int32_t>(length, 0), frames);
}

// Sum and count of the counted positions among [0, n) of one chunk.
MXO_CPU_CLONES
double forward_chunk(const float* __restrict t, const float* __restrict p, int64_t n,
                     const StopLossConfig c, int32_t* count_out) {
  float acc[kLanes] = {};
  int32_t cnt[kLanes] = {};
  int64_t i = 0;
  const int64_t n_vec = n - n % kLanes;
  for (; i < n_vec; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const bool ok = stop_finite(t[i + l]) & stop_finite(p[i + l]);
      const float e = stop_loss_at(t[i + l], stop_clip(p[i + l], c), c);
      acc[l] += ok ? e : 0.0f;
      cnt[l] += ok;  // plain bool add: a ternary here blocks vectorisation
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const bool ok = stop_finite(t[i]) & stop_finite(p[i]);
    const float e = stop_loss_at(t[i], stop_clip(p[i], c), c);
    acc[l] += ok ? e : 0.0f;
    cnt[l] += ok;
  }
  double sum = 0.0;
  int32_t count = 0;
  for (int l = 0; l < kLanes; ++l) {
    sum += double(acc[l]);
    count += cnt[l];
  }
  *count_out = count;
  return sum;
}

void forward_row(const float* t, const float* p, int64_t n, const StopLossConfig& c, float* sum_out,
                 int32_t* count_out) {
  double sum = 0.0;
  int32_t count = 0;
  for (int64_t lo = 0; lo < n; lo += kChunk) {
    int32_t chunk_count = 0;
    sum += forward_chunk(t + lo, p + lo, std::min(kChunk, n - lo), c, &chunk_count);
    count += chunk_count;
  }
  *sum_out = float(sum);
  *count_out = count;
}

template <bool kWriteTrue>
MXO_CPU_CLONES void backward_row(const float* __restrict t, const float* __restrict p,
                                 float* __restrict g_true, float* __restrict g_pred, int64_t n,
                                 int64_t frames, float g, const StopLossConfig c) {
  int64_t i = 0;
  for (; i < n; ++i) {
    const bool ok = stop_finite(t[i]) & stop_finite(p[i]);
    const float pc = stop_clip(p[i], c);
    // Selected, never multiplied: a non-finite input gives 0, not NaN.
    g_pred[i] = ok & (pc == p[i]) ? g * stop_grad_pred(t[i], pc, c) : 0.0f;
    if (kWriteTrue) g_true[i] = ok ? g * stop_grad_target(pc, c) : 0.0f;
  }
  for (; i < frames; ++i) {
    g_pred[i] = 0.0f;
    if (kWriteTrue) g_true[i] = 0.0f;
  }
}

}  // namespace

void stop_loss_forward_cpu(const StopForwardArgs& args, const ParallelFor& parallel_for) {
  const StopShape& s = args.shape;
  parallel_for(s.batch, s.frames * kForwardCost, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * s.frames;
      forward_row(args.target + off, args.pred + off, clamp_length(args.lengths[b], s.frames),
                  args.config, &args.sums[b], &args.counts[b]);
    }
  });
  int64_t nonfinite = 0;
  for (int64_t b = 0; b < s.batch; ++b)
    nonfinite += clamp_length(args.lengths[b], s.frames) - args.counts[b];
  *args.nonfinite = nonfinite;
}

void stop_loss_backward_cpu(const StopBackwardArgs& args, const ParallelFor& parallel_for) {
  const StopShape& s = args.shape;
  parallel_for(s.batch, s.frames * kBackwardCost, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t off = b * s.frames;
      const int64_t n = clamp_length(args.lengths[b], s.frames);
      if (args.grad_target != nullptr)
        backward_row<true>(args.target + off, args.pred + off, args.grad_target + off,
                           args.grad_pred + off, n, s.frames, args.grad_sums[b], args.config);
      else
        backward_row<false>(args.target + off, args.pred + off, nullptr, args.grad_pred + off, n,
                            s.frames, args.grad_sums[b], args.config);
    }
  });
}

}  // namespace myxtts_ops
