// CPU kernels: one multi-threaded pass over the valid elements (forward) and
// one over all elements (backward). Work is cut into fixed units so that the
// result does not depend on how a thread pool partitions them.
#include <algorithm>
#include <vector>

#include "mel_loss_kernels.h"

namespace myxtts_ops {
namespace {

// Elements per work unit. Fixed (never derived from the thread count) so the
// summation order, and thus every output bit, is the same on any machine
// configuration.
constexpr int64_t kCpuChunk = 16384;
// Independent accumulators in the inner loop: lets the compiler vectorise the
// reduction without reassociating float additions.
constexpr int kLanes = 16;

struct Partial {
  double sum;
  int64_t count;
  int64_t nonfinite;
};

int64_t length_of(const LengthsView& lengths, int64_t b, int64_t frames) {
  if (lengths.data == nullptr) return frames;
  return lengths.is_int64 ? static_cast<const int64_t*>(lengths.data)[b]
                          : static_cast<const int32_t*>(lengths.data)[b];
}

// Sum, count of the elements that count (element_counts) and count of those
// that do not, over elements [0, n).
template <typename T, LossType kType>
Partial reduce_range(const T* __restrict y_true, const T* __restrict y_pred, int64_t n,
                     typename AccType<T>::type delta) {
  using A = typename AccType<T>::type;
  A acc[kLanes] = {};
  int32_t cnt[kLanes] = {};
  int64_t i = 0;
  const int64_t n_vec = n - n % kLanes;
  for (; i < n_vec; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const A e = element_loss<kType>(to_acc(y_pred[i + l]) - to_acc(y_true[i + l]), delta);
      const bool ok = element_counts<kType>(e);
      acc[l] += ok ? e : A(0);
      cnt[l] += ok;  // plain bool add: a ternary here blocks vectorisation
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const A e = element_loss<kType>(to_acc(y_pred[i]) - to_acc(y_true[i]), delta);
    const bool ok = element_counts<kType>(e);
    acc[l] += ok ? e : A(0);
    cnt[l] += ok;  // plain bool add: a ternary here blocks vectorisation
  }
  Partial out{0.0, 0, 0};
  for (int l = 0; l < kLanes; ++l) {
    out.sum += double(acc[l]);
    out.count += cnt[l];
  }
  out.nonfinite = n - out.count;
  return out;
}

template <typename T>
void forward_impl(const ForwardArgs& args, const ParallelFor& parallel_for) {
  using A = typename AccType<T>::type;
  const MelShape& s = args.shape;
  const int64_t row = s.frames * s.mels;  // elements per sample
  const int64_t chunks = (row + kCpuChunk - 1) / kCpuChunk;
  const T* y_true = static_cast<const T*>(args.y_true);
  const T* y_pred = static_cast<const T*>(args.y_pred);
  const A delta = A(args.config.huber_delta);

  std::vector<int64_t> valid(s.batch);
  for (int64_t b = 0; b < s.batch; ++b) valid[b] = length_of(args.lengths, b, s.frames) * s.mels;

  std::vector<Partial> partials(s.batch * chunks);
  parallel_for(
      s.batch * chunks, kCpuChunk * 2 * int64_t(sizeof(T)), [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t b = u / chunks;
          const int64_t lo = (u % chunks) * kCpuChunk;
          const int64_t hi = std::min(lo + kCpuChunk, valid[b]);
          if (hi <= lo) {
            partials[u] = Partial{0.0, 0, 0};
            continue;
          }
          const int64_t off = b * row + lo;
          partials[u] =
              args.config.loss_type == LossType::kL1
                  ? reduce_range<T, LossType::kL1>(y_true + off, y_pred + off, hi - lo, delta)
                  : reduce_range<T, LossType::kHuber>(y_true + off, y_pred + off, hi - lo, delta);
        }
      });

  // Fixed-order combination.
  std::vector<int64_t> counts(s.batch);
  double sum_means = 0.0, total_sum = 0.0;
  int64_t active = 0, total_count = 0, nonfinite = 0, valid_total = 0;
  A* per_sample = static_cast<A*>(args.per_sample);
  for (int64_t b = 0; b < s.batch; ++b) {
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const Partial& p = partials[b * chunks + c];
      sum += p.sum;
      count += p.count;
      nonfinite += p.nonfinite;
    }
    counts[b] = count;
    const double mean = sample_mean(sum, count);
    per_sample[b] = A(mean);
    if (count > 0) {
      ++active;
      sum_means += mean;
    }
    total_sum += sum;
    total_count += count;
    valid_total += valid[b];
  }
  const A loss =
      A(batch_loss(args.config.normalization, sum_means, active, total_sum, total_count));
  *static_cast<A*>(args.loss) = loss;
  *args.nonfinite_count = nonfinite;
  if (args.active_count != nullptr) *args.active_count = active;
  if (args.valid_count != nullptr) *args.valid_count = valid_total;
  update_state(args.state_in, args.state_out, double(loss), nonfinite, valid_total);
  for (int64_t b = 0; b < s.batch; ++b) {
    sample_weights(counts[b], active, total_count, args.config.normalization,
                   &args.sample_weights[b], &args.sample_weights[s.batch + b]);
  }
}

// Writes d/dy_pred (and, when kWriteTrue, d/dy_true = -d/dy_pred) for one
// chunk: elements [0, n_valid) are valid frames, [n_valid, n) padding.
template <typename T, LossType kType, bool kWriteTrue>
void backward_range(const T* __restrict y_true, const T* __restrict y_pred, T* __restrict g_true,
                    T* __restrict g_pred, int64_t n_valid, int64_t n,
                    typename AccType<T>::type coef, typename AccType<T>::type delta) {
  using A = typename AccType<T>::type;
  int64_t i = 0;
  for (; i < n_valid; ++i) {
    const A d = to_acc(y_pred[i]) - to_acc(y_true[i]);
    const bool ok = element_counts<kType>(element_loss<kType>(d, delta));
    const A g = ok ? coef * element_loss_grad<kType>(d, delta) : A(0);
    g_pred[i] = from_acc<T>(g);
    if (kWriteTrue) g_true[i] = from_acc<T>(-g);
  }
  const T zero = from_acc<T>(A(0));
  for (; i < n; ++i) {
    g_pred[i] = zero;
    if (kWriteTrue) g_true[i] = zero;
  }
}

template <typename T, LossType kType>
void backward_chunk(const T* y_true, const T* y_pred, T* g_true, T* g_pred, int64_t n_valid,
                    int64_t n, typename AccType<T>::type coef, typename AccType<T>::type delta) {
  if (g_true != nullptr)
    backward_range<T, kType, true>(y_true, y_pred, g_true, g_pred, n_valid, n, coef, delta);
  else
    backward_range<T, kType, false>(y_true, y_pred, g_true, g_pred, n_valid, n, coef, delta);
}

template <typename T>
void backward_impl(const BackwardArgs& args, const ParallelFor& parallel_for) {
  using A = typename AccType<T>::type;
  const MelShape& s = args.shape;
  const int64_t row = s.frames * s.mels;
  const int64_t chunks = (row + kCpuChunk - 1) / kCpuChunk;
  const double g_loss = double(*static_cast<const A*>(args.grad_loss));
  const A* g_sample = static_cast<const A*>(args.grad_per_sample);
  const A delta = A(args.config.huber_delta);
  const T* y_true = static_cast<const T*>(args.y_true);
  const T* y_pred = static_cast<const T*>(args.y_pred);
  T* g_true = static_cast<T*>(args.grad_y_true);
  T* g_pred = static_cast<T*>(args.grad_y_pred);

  parallel_for(
      s.batch * chunks, kCpuChunk * 4 * int64_t(sizeof(T)), [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t b = u / chunks;
          const int64_t lo = (u % chunks) * kCpuChunk;
          const int64_t hi = std::min(lo + kCpuChunk, row);
          const int64_t valid = length_of(args.lengths, b, s.frames) * s.mels;
          const int64_t n_valid = std::max<int64_t>(0, std::min(hi, valid) - lo);
          const A coef = A(g_loss * args.sample_weights[b] +
                           double(g_sample[b]) * args.sample_weights[s.batch + b]);
          const int64_t off = b * row + lo;
          T* gt = g_true == nullptr ? nullptr : g_true + off;
          if (args.config.loss_type == LossType::kL1)
            backward_chunk<T, LossType::kL1>(y_true + off, y_pred + off, gt, g_pred + off, n_valid,
                                             hi - lo, coef, delta);
          else
            backward_chunk<T, LossType::kHuber>(y_true + off, y_pred + off, gt, g_pred + off,
                                                n_valid, hi - lo, coef, delta);
        }
      });
}

template <template <typename> class Fn, typename Args>
void dispatch(const Args& args, const ParallelFor& parallel_for) {
  switch (args.dtype) {
    case DType::kHalf:
      return Fn<half_t>::run(args, parallel_for);
    case DType::kBFloat16:
      return Fn<bfloat16_t>::run(args, parallel_for);
    case DType::kFloat:
      return Fn<float>::run(args, parallel_for);
    case DType::kDouble:
      return Fn<double>::run(args, parallel_for);
  }
}

template <typename T>
struct Forward {
  static void run(const ForwardArgs& a, const ParallelFor& p) { forward_impl<T>(a, p); }
};
template <typename T>
struct Backward {
  static void run(const BackwardArgs& a, const ParallelFor& p) { backward_impl<T>(a, p); }
};

}  // namespace

void mel_loss_forward_cpu(const ForwardArgs& args, const ParallelFor& parallel_for) {
  dispatch<Forward>(args, parallel_for);
}

void mel_loss_backward_cpu(const BackwardArgs& args, const ParallelFor& parallel_for) {
  dispatch<Backward>(args, parallel_for);
}

}  // namespace myxtts_ops
