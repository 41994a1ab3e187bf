// XLA typed-FFI handlers: decode the custom call's buffers and attributes,
// check them with the same framework-free checks as the OpKernels, and run the
// same framework-free kernels (csrc/kernels) as the OpKernels.
//
// Custom-call contract (built by csrc/tf/mel_loss_xla.cc):
//   forward  operands (y_true, y_pred, lengths, state)
//            results  (loss, per_sample, nonfinite_count, new_state, sample_weights,
//                      active_count, valid_count, workspace)
//            workspace is u8[cuda_forward_workspace_size] for the CUDA handler (a
//            result, so XLA's own buffer assignment provides it) and is not read
//            by the Host handler (TF's CPU lowering gives it 0 elements)
//   backward operands (y_true, y_pred, lengths, sample_weights, grad_loss, grad_per_sample)
//            results  (grad_y_true, grad_y_pred); grad_y_true has 0 elements when
//            want_grad_y_true is false (nothing downstream reads it)
//   attributes loss_type ("l1" | "huber"), normalization ("per_sample" |
//            "global", forward only), use_lengths (lengths is a placeholder
//            when false), huber_delta (f64), want_grad_y_true (backward only).
//   check_lengths operand (lengths: s32, s64 or f64 [B]; other float types go in
//            as f64), result (checked, s32[B]: the lengths as int32; XLA aliases
//            it to an s32 operand), attributes input_name and note (strings of
//            the message), limit (i64, in [0, 2^31 - 1]), value_bits (i64: 32
//            when the f64 values were float32 or narrower, so a bad value is
//            written as passed): refuses an entry that is not a whole number in
//            [0, limit] with length_values_error's / float_length_values_error's
//            message.
// The TF op library registers these handlers with TF's XLA; the pybind module
// exports them as PyCapsules for other XLA runtimes (JAX).
#include "xla/mel_loss_ffi.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/mel_loss_checks.h"
#include "kernels/mel_loss_kernels.h"
#include "xla/ffi/api/ffi.h"

#if MYXTTS_OPS_WITH_CUDA
// The stream type only; CUDA headers stay in csrc/kernels' .cu files.
struct CUstream_st;
using cudaStream_t = CUstream_st*;
#endif

namespace myxtts_ops {
namespace {

namespace ffi = ::xla::ffi;

std::optional<DType> KernelDType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F16:
      return DType::kHalf;
    case ffi::DataType::BF16:
      return DType::kBFloat16;
    case ffi::DataType::F32:
      return DType::kFloat;
    case ffi::DataType::F64:
      return DType::kDouble;
    default:
      return std::nullopt;
  }
}

Dims DimsOf(const ffi::AnyBuffer& b) {
  const auto d = b.dimensions();
  return Dims(d.begin(), d.end());
}

ffi::Error Invalid(const std::string& message) { return ffi::Error::InvalidArgument(message); }

// The NumPy name of an element type, for error messages.
std::string TypeName(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::PRED:
      return "bool";
    case ffi::DataType::S8:
      return "int8";
    case ffi::DataType::S16:
      return "int16";
    case ffi::DataType::S32:
      return "int32";
    case ffi::DataType::S64:
      return "int64";
    case ffi::DataType::U8:
      return "uint8";
    case ffi::DataType::U16:
      return "uint16";
    case ffi::DataType::U32:
      return "uint32";
    case ffi::DataType::U64:
      return "uint64";
    case ffi::DataType::F16:
      return "float16";
    case ffi::DataType::BF16:
      return "bfloat16";
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::F64:
      return "float64";
    case ffi::DataType::C64:
      return "complex64";
    case ffi::DataType::C128:
      return "complex128";
    default:
      return "XLA element type " + std::to_string(int(t));
  }
}

// The attributes of either custom call into *config.
std::optional<ffi::Error> ReadAttrs(std::string_view loss_type, std::string_view normalization,
                                    double huber_delta, LossConfig* config) {
  if (std::string m = parse_loss_names(loss_type, normalization, config); !m.empty())
    return Invalid(m);
  if (std::string m = huber_delta_error(huber_delta); !m.empty()) return Invalid(m);
  config->huber_delta = huber_delta;
  return std::nullopt;
}

// Dtypes and shapes of the mel inputs and lengths; what the XLA kernel
// checked at compile time, checked again for callers that build the custom
// call themselves (e.g. JAX).
std::optional<ffi::Error> CheckMel(const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred,
                                   const ffi::AnyBuffer& lengths, bool use_lengths, MelShape* shape,
                                   DType* dtype, LengthsView* view) {
  const std::optional<DType> t = KernelDType(y_true.element_type());
  if (!t)
    return Invalid("y_true must be float16, bfloat16, float32 or float64, got y_true dtype=" +
                   TypeName(y_true.element_type()));
  if (y_pred.element_type() != y_true.element_type())
    return Invalid("y_pred must have the dtype of y_true (" + TypeName(y_true.element_type()) +
                   "), got y_pred dtype=" + TypeName(y_pred.element_type()));
  if (std::string m =
          check_mel_shapes(DimsOf(y_true), DimsOf(y_pred), DimsOf(lengths), use_lengths, shape);
      !m.empty())
    return Invalid(m);
  *dtype = *t;
  *view = LengthsView();
  if (use_lengths) {
    if (lengths.element_type() != ffi::DataType::S32 &&
        lengths.element_type() != ffi::DataType::S64)
      return Invalid("lengths must be int32 or int64, got lengths dtype=" +
                     TypeName(lengths.element_type()));
    view->data = lengths.untyped_data();
    view->is_int64 = lengths.element_type() == ffi::DataType::S64;
  }
  return std::nullopt;
}

ffi::DataType OutputType(DType dtype) {
  return output_is_double(dtype) ? ffi::DataType::F64 : ffi::DataType::F32;
}

std::optional<ffi::Error> CheckForwardResults(
    DType dtype, const MelShape& shape, const ffi::AnyBuffer& state, const ffi::AnyBuffer& loss,
    const ffi::AnyBuffer& per_sample, const ffi::AnyBuffer& nonfinite,
    const ffi::AnyBuffer& new_state, const ffi::AnyBuffer& weights, const ffi::AnyBuffer& active,
    const ffi::AnyBuffer& valid) {
  if (state.element_type() != ffi::DataType::F64)
    return Invalid("state must be float64, got state dtype=" + TypeName(state.element_type()));
  if (std::string m = check_state_shape(DimsOf(state)); !m.empty()) return Invalid(m);
  const ffi::DataType out = OutputType(dtype);
  const bool ok =
      loss.element_type() == out && loss.element_count() == 1 && per_sample.element_type() == out &&
      per_sample.element_count() == size_t(shape.batch) &&
      nonfinite.element_type() == ffi::DataType::S64 && nonfinite.element_count() == 1 &&
      new_state.element_type() == ffi::DataType::F64 &&
      new_state.element_count() == size_t(state::kSize) &&
      weights.element_type() == ffi::DataType::F64 &&
      weights.element_count() == size_t(2 * shape.batch) &&
      active.element_type() == ffi::DataType::S64 && active.element_count() == 1 &&
      valid.element_type() == ffi::DataType::S64 && valid.element_count() == 1;
  if (!ok) return Invalid("masked mel loss custom call: result buffers do not match its inputs");
  return std::nullopt;
}

std::optional<ffi::Error> CheckBackwardBuffers(
    DType dtype, const MelShape& shape, const ffi::AnyBuffer& weights,
    const ffi::AnyBuffer& grad_loss, const ffi::AnyBuffer& grad_per_sample,
    const ffi::AnyBuffer& grad_true, const ffi::AnyBuffer& grad_pred, bool want_grad_y_true) {
  if (std::string m = check_grad_shapes(DimsOf(weights), DimsOf(grad_loss), DimsOf(grad_per_sample),
                                        shape.batch);
      !m.empty())
    return Invalid(m);
  const ffi::DataType out = OutputType(dtype);
  if (weights.element_type() != ffi::DataType::F64)
    return Invalid("masked mel loss gradient: sample_weights must be float64, got dtype=" +
                   TypeName(weights.element_type()));
  for (const auto& [name, buffer] :
       {std::pair{"grad_loss", &grad_loss}, std::pair{"grad_per_sample", &grad_per_sample}})
    if (buffer->element_type() != out)
      return Invalid(std::string("masked mel loss gradient: ") + name + " must be " +
                     TypeName(out) + " (the loss's dtype for these inputs), got " + name +
                     " dtype=" + TypeName(buffer->element_type()));
  const size_t n = size_t(shape.batch * shape.frames * shape.mels);
  const bool ok =
      KernelDType(grad_pred.element_type()) == dtype && grad_pred.element_count() == n &&
      (!want_grad_y_true ||
       (KernelDType(grad_true.element_type()) == dtype && grad_true.element_count() == n));
  if (!ok) return Invalid("masked mel loss gradient: result buffers do not match its inputs");
  return std::nullopt;
}

// ParallelFor over XLA's intra-op thread pool. The calling thread works too
// and only ever waits for blocks that another thread has already started, so
// it cannot deadlock when the pool is busy, small, or absent (the FFI then
// runs a scheduled task inline). Tasks that start after all blocks are taken
// return at once; the shared state outlives the call for them.
ParallelFor PoolParallelFor(ffi::ThreadPool* pool) {
  return [pool](int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    const int64_t threads = std::max<int64_t>(1, pool->num_threads());
    const int64_t blocks = std::min<int64_t>(threads, n);
    const int64_t block = (n + blocks - 1) / blocks;
    struct Shared {
      std::atomic<int64_t> next{0};
      std::mutex mu;
      std::condition_variable cv;
      int64_t done = 0;
    };
    auto shared = std::make_shared<Shared>();
    const auto* work = &fn;
    auto run_blocks = [shared, work, blocks, block, n]() {
      for (;;) {
        const int64_t i = shared->next.fetch_add(1);
        if (i >= blocks) return;
        (*work)(i* block, std::min(n, (i + 1) * block));
        std::lock_guard<std::mutex> lock(shared->mu);
        if (++shared->done == blocks) shared->cv.notify_all();
      }
    };
    for (int64_t i = 1; i < blocks; ++i) pool->Schedule([run_blocks] { run_blocks(); });
    run_blocks();
    std::unique_lock<std::mutex> lock(shared->mu);
    shared->cv.wait(lock, [&] { return shared->done == blocks; });
  };
}

// The forward call decoded: attributes, dtypes and shapes checked and every
// pointer taken into *args. One decoder for the Host and CUDA handlers, which
// differ only in where they check the length values and which kernel they run.
std::optional<ffi::Error> DecodeForward(
    const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred, const ffi::AnyBuffer& lengths,
    const ffi::AnyBuffer& state, const ffi::AnyBuffer& loss, const ffi::AnyBuffer& per_sample,
    const ffi::AnyBuffer& nonfinite, const ffi::AnyBuffer& new_state, const ffi::AnyBuffer& weights,
    const ffi::AnyBuffer& active, const ffi::AnyBuffer& valid, std::string_view loss_type,
    std::string_view normalization, bool use_lengths, double huber_delta, ForwardArgs* args) {
  if (auto e = ReadAttrs(loss_type, normalization, huber_delta, &args->config)) return e;
  if (auto e = CheckMel(y_true, y_pred, lengths, use_lengths, &args->shape, &args->dtype,
                        &args->lengths))
    return e;
  if (auto e = CheckForwardResults(args->dtype, args->shape, state, loss, per_sample, nonfinite,
                                   new_state, weights, active, valid))
    return e;
  args->y_true = y_true.untyped_data();
  args->y_pred = y_pred.untyped_data();
  args->state_in = static_cast<const double*>(state.untyped_data());
  args->loss = loss.untyped_data();
  args->per_sample = per_sample.untyped_data();
  args->nonfinite_count = static_cast<int64_t*>(nonfinite.untyped_data());
  args->state_out = static_cast<double*>(new_state.untyped_data());
  args->sample_weights = static_cast<double*>(weights.untyped_data());
  args->active_count = static_cast<int64_t*>(active.untyped_data());
  args->valid_count = static_cast<int64_t*>(valid.untyped_data());
  return std::nullopt;
}

// The backward call decoded, as DecodeForward.
std::optional<ffi::Error> DecodeBackward(
    const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred, const ffi::AnyBuffer& lengths,
    const ffi::AnyBuffer& weights, const ffi::AnyBuffer& grad_loss,
    const ffi::AnyBuffer& grad_per_sample, const ffi::AnyBuffer& grad_true,
    const ffi::AnyBuffer& grad_pred, std::string_view loss_type, bool use_lengths,
    double huber_delta, bool want_grad_y_true, BackwardArgs* args) {
  if (auto e = ReadAttrs(loss_type, "per_sample", huber_delta, &args->config)) return e;
  if (auto e = CheckMel(y_true, y_pred, lengths, use_lengths, &args->shape, &args->dtype,
                        &args->lengths))
    return e;
  if (auto e = CheckBackwardBuffers(args->dtype, args->shape, weights, grad_loss, grad_per_sample,
                                    grad_true, grad_pred, want_grad_y_true))
    return e;
  args->y_true = y_true.untyped_data();
  args->y_pred = y_pred.untyped_data();
  args->sample_weights = static_cast<const double*>(weights.untyped_data());
  args->grad_loss = grad_loss.untyped_data();
  args->grad_per_sample = grad_per_sample.untyped_data();
  args->grad_y_true = want_grad_y_true ? grad_true.untyped_data() : nullptr;
  args->grad_y_pred = grad_pred.untyped_data();
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// Host (XLA:CPU)

ffi::Error ForwardHost(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred,
                       ffi::AnyBuffer lengths, ffi::AnyBuffer state,
                       ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> per_sample,
                       ffi::Result<ffi::AnyBuffer> nonfinite, ffi::Result<ffi::AnyBuffer> new_state,
                       ffi::Result<ffi::AnyBuffer> weights, ffi::Result<ffi::AnyBuffer> active,
                       ffi::Result<ffi::AnyBuffer> valid,
                       ffi::Result<ffi::AnyBuffer> /*workspace: CUDA only*/,
                       std::string_view loss_type, std::string_view normalization, bool use_lengths,
                       double huber_delta) {
  ForwardArgs args;
  if (auto e = DecodeForward(y_true, y_pred, lengths, state, *loss, *per_sample, *nonfinite,
                             *new_state, *weights, *active, *valid, loss_type, normalization,
                             use_lengths, huber_delta, &args))
    return *e;
  if (std::string m = lengths_error(args.lengths, args.shape.batch, args.shape.frames); !m.empty())
    return Invalid(m);
  mel_loss_forward_cpu(args, PoolParallelFor(&pool));
  return ffi::Error::Success();
}

ffi::Error BackwardHost(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred,
                        ffi::AnyBuffer lengths, ffi::AnyBuffer weights, ffi::AnyBuffer grad_loss,
                        ffi::AnyBuffer grad_per_sample, ffi::Result<ffi::AnyBuffer> grad_true,
                        ffi::Result<ffi::AnyBuffer> grad_pred, std::string_view loss_type,
                        bool use_lengths, double huber_delta, bool want_grad_y_true) {
  BackwardArgs args;
  if (auto e =
          DecodeBackward(y_true, y_pred, lengths, weights, grad_loss, grad_per_sample, *grad_true,
                         *grad_pred, loss_type, use_lengths, huber_delta, want_grad_y_true, &args))
    return *e;
  if (std::string m = lengths_error(args.lengths, args.shape.batch, args.shape.frames); !m.empty())
    return Invalid(m);
  mel_loss_backward_cpu(args, PoolParallelFor(&pool));
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------
// CUDA (XLA:GPU). Buffers, lengths included, are device memory. The forward
// reads the B lengths back to the host (one small copy and a wait for the
// stream, what the GPU OpKernel's host-memory lengths cost outside XLA) so
// that an out-of-range length is the same InvalidArgument error as on every
// other path; the kernels still clamp lengths for memory safety. The backward
// gets the lengths the forward checked.
#if MYXTTS_OPS_WITH_CUDA
std::optional<ffi::Error> CheckDeviceLengths(const LengthsView& lengths, const MelShape& shape,
                                             cudaStream_t stream) {
  if (lengths.data == nullptr || shape.batch == 0) return std::nullopt;
  std::vector<int64_t> host64(lengths.is_int64 ? shape.batch : 0);
  std::vector<int32_t> host32(lengths.is_int64 ? 0 : shape.batch);
  void* dst =
      lengths.is_int64 ? static_cast<void*>(host64.data()) : static_cast<void*>(host32.data());
  const std::string err = cuda_copy_to_host(
      dst, lengths.data, size_t(shape.batch) * (lengths.is_int64 ? 8 : 4), stream);
  if (!err.empty()) return ffi::Error::Internal(err);
  LengthsView host;
  host.data = dst;
  host.is_int64 = lengths.is_int64;
  if (std::string m = lengths_error(host, shape.batch, shape.frames); !m.empty()) return Invalid(m);
  return std::nullopt;
}

ffi::Error ForwardCuda(cudaStream_t stream, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred,
                       ffi::AnyBuffer lengths, ffi::AnyBuffer state,
                       ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> per_sample,
                       ffi::Result<ffi::AnyBuffer> nonfinite, ffi::Result<ffi::AnyBuffer> new_state,
                       ffi::Result<ffi::AnyBuffer> weights, ffi::Result<ffi::AnyBuffer> active,
                       ffi::Result<ffi::AnyBuffer> valid, ffi::Result<ffi::AnyBuffer> workspace,
                       std::string_view loss_type, std::string_view normalization, bool use_lengths,
                       double huber_delta) {
  ForwardArgs args;
  if (auto e = DecodeForward(y_true, y_pred, lengths, state, *loss, *per_sample, *nonfinite,
                             *new_state, *weights, *active, *valid, loss_type, normalization,
                             use_lengths, huber_delta, &args))
    return *e;
  if (auto e = CheckDeviceLengths(args.lengths, args.shape, stream)) return *e;
  // A result buffer, not ffi::ScratchAllocator: JAX's GPU runtime gives the
  // handler no scratch allocator, and a result is assigned like any other.
  const size_t workspace_bytes = cuda_forward_workspace_size(args.shape);
  if (workspace->size_bytes() < workspace_bytes)
    return Invalid("masked mel loss: the workspace result has " +
                   std::to_string(workspace->size_bytes()) + " bytes, the forward needs " +
                   std::to_string(workspace_bytes));
  // No host header: the kernel reads the device lengths and the launcher
  // clears the ticket counter on the stream.
  const std::string err =
      mel_loss_forward_cuda(args, workspace->untyped_data(), nullptr, 0, stream);
  return err.empty() ? ffi::Error::Success() : ffi::Error::Internal(err);
}

ffi::Error BackwardCuda(cudaStream_t stream, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred,
                        ffi::AnyBuffer lengths, ffi::AnyBuffer weights, ffi::AnyBuffer grad_loss,
                        ffi::AnyBuffer grad_per_sample, ffi::Result<ffi::AnyBuffer> grad_true,
                        ffi::Result<ffi::AnyBuffer> grad_pred, std::string_view loss_type,
                        bool use_lengths, double huber_delta, bool want_grad_y_true) {
  BackwardArgs args;
  if (auto e =
          DecodeBackward(y_true, y_pred, lengths, weights, grad_loss, grad_per_sample, *grad_true,
                         *grad_pred, loss_type, use_lengths, huber_delta, want_grad_y_true, &args))
    return *e;
  const std::string err = mel_loss_backward_cuda(args, stream);
  return err.empty() ? ffi::Error::Success() : ffi::Error::Internal(err);
}
#endif

// ---------------------------------------------------------------------------
// The length check: an int32, int64 or float64 [B] operand (the XLA kernel
// widens every float type to float64), an int32 result of the same shape
// (aliased to an int32 operand), and a limit the int32 result can hold.
std::optional<ffi::Error> CheckLengthsBuffers(const ffi::AnyBuffer& lengths,
                                              const ffi::AnyBuffer& checked,
                                              std::string_view input_name, int64_t limit,
                                              int64_t* batch) {
  const std::string limit_error = length_limit_error(limit);
  if (!limit_error.empty()) return Invalid(limit_error);
  const std::string name(input_name);
  const ffi::DataType type = lengths.element_type();
  if (type != ffi::DataType::S32 && type != ffi::DataType::S64 && type != ffi::DataType::F64)
    return Invalid(name + " must be int32, int64 or float64 here, got dtype=" + TypeName(type));
  const Dims dims = DimsOf(lengths);
  if (dims.size() != 1)
    return Invalid(name + " must have shape [batch], got shape " + shape_string(dims));
  if (checked.element_type() != ffi::DataType::S32 || DimsOf(checked) != dims)
    return Invalid("check_lengths: the result must be int32 with the shape of " + name + " " +
                   shape_string(dims));
  *batch = dims[0];
  return std::nullopt;
}

// The rule on host lengths of the operand's type; on success, the int32
// lengths in *out (unless the operand is int32: the result is the operand).
std::string CheckHostLengths(ffi::DataType type, const void* host, int64_t batch, int64_t limit,
                             std::string_view input_name, std::string_view note, int64_t value_bits,
                             std::vector<int32_t>* out) {
  const std::string name(input_name), suffix(note);
  if (type == ffi::DataType::F64) {
    const double* v = static_cast<const double*>(host);
    std::string m = float_length_values_error(v, batch, limit, name, suffix, /*single_precision=*/
                                              value_bits <= 32);
    if (m.empty()) {  // whole numbers in [0, limit]: exact in int32
      out->resize(batch);
      for (int64_t b = 0; b < batch; ++b) (*out)[b] = int32_t(v[b]);
    }
    return m;
  }
  LengthsView view;
  view.data = host;
  view.is_int64 = type == ffi::DataType::S64;
  std::string m = length_values_error(view, batch, limit, name, suffix);
  if (m.empty() && view.is_int64) {
    out->resize(batch);
    stage_lengths_int32(view, batch, out->data());
  }
  return m;
}

ffi::Error CheckLengthsHost(ffi::AnyBuffer lengths, ffi::Result<ffi::AnyBuffer> checked,
                            std::string_view input_name, std::string_view note, int64_t limit,
                            int64_t value_bits) {
  int64_t batch = 0;
  if (auto e = CheckLengthsBuffers(lengths, *checked, input_name, limit, &batch)) return *e;
  if (batch == 0) return ffi::Error::Success();
  std::vector<int32_t> converted;
  const std::string m = CheckHostLengths(lengths.element_type(), lengths.untyped_data(), batch,
                                         limit, input_name, note, value_bits, &converted);
  if (!m.empty()) return Invalid(m);
  const void* src = converted.empty() ? lengths.untyped_data() : converted.data();
  if (checked->untyped_data() != src)
    std::memcpy(checked->untyped_data(), src, checked->size_bytes());
  return ffi::Error::Success();
}

#if MYXTTS_OPS_WITH_CUDA
// Device lengths: read back to the host (one small copy and a wait for the
// stream, as the forward's CheckDeviceLengths), checked there; converted
// lengths go back with one host-to-device copy.
ffi::Error CheckLengthsCuda(cudaStream_t stream, ffi::AnyBuffer lengths,
                            ffi::Result<ffi::AnyBuffer> checked, std::string_view input_name,
                            std::string_view note, int64_t limit, int64_t value_bits) {
  int64_t batch = 0;
  if (auto e = CheckLengthsBuffers(lengths, *checked, input_name, limit, &batch)) return *e;
  if (batch == 0) return ffi::Error::Success();
  std::vector<int64_t> host(batch);  // 8 bytes per entry: room for every operand type
  std::string err =
      cuda_copy_to_host(host.data(), lengths.untyped_data(), lengths.size_bytes(), stream);
  if (!err.empty()) return ffi::Error::Internal(err);
  std::vector<int32_t> converted;
  const std::string m = CheckHostLengths(lengths.element_type(), host.data(), batch, limit,
                                         input_name, note, value_bits, &converted);
  if (!m.empty()) return Invalid(m);
  if (!converted.empty())
    err = cuda_copy_to_device_async(checked->untyped_data(), converted.data(),
                                    checked->size_bytes(), stream);
  else if (checked->untyped_data() != lengths.untyped_data())
    err = cuda_copy_on_device(checked->untyped_data(), lengths.untyped_data(), lengths.size_bytes(),
                              stream);
  return err.empty() ? ffi::Error::Success() : ffi::Error::Internal(err);
}
#endif

}  // namespace

// Bindings: operand and result order is the custom-call contract above.
XLA_FFI_DEFINE_HANDLER(kCheckLengthsHost, CheckLengthsHost,
                       ffi::Ffi::Bind()
                           .Arg<ffi::AnyBuffer>()  // lengths
                           .Ret<ffi::AnyBuffer>()  // checked
                           .Attr<std::string_view>("input_name")
                           .Attr<std::string_view>("note")
                           .Attr<int64_t>("limit")
                           .Attr<int64_t>("value_bits"));
#if MYXTTS_OPS_WITH_CUDA
XLA_FFI_DEFINE_HANDLER(kCheckLengthsCuda, CheckLengthsCuda,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Attr<std::string_view>("input_name")
                           .Attr<std::string_view>("note")
                           .Attr<int64_t>("limit")
                           .Attr<int64_t>("value_bits"));
#endif

XLA_FFI_DEFINE_HANDLER(kForwardHost, ForwardHost,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::ThreadPool>()
                           .Arg<ffi::AnyBuffer>()  // y_true
                           .Arg<ffi::AnyBuffer>()  // y_pred
                           .Arg<ffi::AnyBuffer>()  // lengths
                           .Arg<ffi::AnyBuffer>()  // state
                           .Ret<ffi::AnyBuffer>()  // loss
                           .Ret<ffi::AnyBuffer>()  // per_sample
                           .Ret<ffi::AnyBuffer>()  // nonfinite_count
                           .Ret<ffi::AnyBuffer>()  // new_state
                           .Ret<ffi::AnyBuffer>()  // sample_weights
                           .Ret<ffi::AnyBuffer>()  // active_count
                           .Ret<ffi::AnyBuffer>()  // valid_count
                           .Ret<ffi::AnyBuffer>()  // workspace (not read)
                           .Attr<std::string_view>("loss_type")
                           .Attr<std::string_view>("normalization")
                           .Attr<bool>("use_lengths")
                           .Attr<double>("huber_delta"));

XLA_FFI_DEFINE_HANDLER(kBackwardHost, BackwardHost,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::ThreadPool>()
                           .Arg<ffi::AnyBuffer>()  // y_true
                           .Arg<ffi::AnyBuffer>()  // y_pred
                           .Arg<ffi::AnyBuffer>()  // lengths
                           .Arg<ffi::AnyBuffer>()  // sample_weights
                           .Arg<ffi::AnyBuffer>()  // grad_loss
                           .Arg<ffi::AnyBuffer>()  // grad_per_sample
                           .Ret<ffi::AnyBuffer>()  // grad_y_true
                           .Ret<ffi::AnyBuffer>()  // grad_y_pred
                           .Attr<std::string_view>("loss_type")
                           .Attr<bool>("use_lengths")
                           .Attr<double>("huber_delta")
                           .Attr<bool>("want_grad_y_true"));

#if MYXTTS_OPS_WITH_CUDA
XLA_FFI_DEFINE_HANDLER(kForwardCuda, ForwardCuda,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()  // workspace
                           .Attr<std::string_view>("loss_type")
                           .Attr<std::string_view>("normalization")
                           .Attr<bool>("use_lengths")
                           .Attr<double>("huber_delta"));

XLA_FFI_DEFINE_HANDLER(kBackwardCuda, BackwardCuda,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Arg<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Ret<ffi::AnyBuffer>()
                           .Attr<std::string_view>("loss_type")
                           .Attr<bool>("use_lengths")
                           .Attr<double>("huber_delta")
                           .Attr<bool>("want_grad_y_true"));
#endif

FfiHandlers host_ffi_handlers() { return {kForwardHost, kBackwardHost, kCheckLengthsHost}; }

#if MYXTTS_OPS_WITH_CUDA
FfiHandlers cuda_ffi_handlers() { return {kForwardCuda, kBackwardCuda, kCheckLengthsCuda}; }
#else
FfiHandlers cuda_ffi_handlers() { return {}; }
#endif

}  // namespace myxtts_ops
