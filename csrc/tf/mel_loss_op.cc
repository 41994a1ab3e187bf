// TensorFlow glue: op registration, shape functions and the CPU/GPU OpKernels
// of MyxttsOps>MaskedMelLoss, its gradient, MyxttsOps>CheckLengths and
// MyxttsOps>CheckSizes. The math lives in
// csrc/kernels; this file only validates, allocates and dispatches.
//
// GPU kernels are compiled when MYXTTS_OPS_WITH_CUDA is set. The CUDA stream
// is taken from the op's DeviceContext through virtual calls only, so the
// library links against, and loads under, tensorflow-cpu too (which does not
// export Eigen::GpuDevice accessors); its CPU kernels then run as usual.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/mel_loss_checks.h"
#include "kernels/mel_loss_kernels.h"
#include "tf/mel_loss_common.h"
#include "tf/tf_device.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace myxtts_ops {
namespace {

using ::tensorflow::DataType;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

absl::Status ForwardShape(InferenceContext* c) {
  ShapeHandle y_true, y_pred, lengths, state;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &y_true));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &y_pred));
  ShapeHandle mel;
  TF_RETURN_IF_ERROR(c->Merge(y_true, y_pred, &mel));
  DimensionHandle batch = c->Dim(mel, 0);
  bool use_lengths = true;
  TF_RETURN_IF_ERROR(c->GetAttr("use_lengths", &use_lengths));
  if (use_lengths) {
    TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &lengths));
    TF_RETURN_IF_ERROR(c->Merge(batch, c->Dim(lengths, 0), &batch));
  }
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &state));
  DimensionHandle state_size;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(state, 0), state::kSize, &state_size));
  c->set_output(0, c->Scalar());
  c->set_output(1, c->Vector(batch));
  c->set_output(2, c->Scalar());
  c->set_output(3, c->Vector(state::kSize));
  c->set_output(4, c->Matrix(2, batch));
  c->set_output(5, c->Scalar());
  c->set_output(6, c->Scalar());
  return absl::OkStatus();
}

absl::Status BackwardShape(InferenceContext* c) {
  ShapeHandle mel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &mel));
  TF_RETURN_IF_ERROR(c->Merge(mel, c->input(1), &mel));
  c->set_output(0, mel);
  c->set_output(1, mel);
  return absl::OkStatus();
}

}  // namespace
}  // namespace myxtts_ops

REGISTER_OP("MyxttsOps>MaskedMelLoss")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("lengths: Tlen")
    .Input("state: double")
    .Input("huber_delta: double")
    .Output("loss: Tout")
    .Output("per_sample: Tout")
    .Output("nonfinite_count: int64")
    .Output("new_state: double")
    .Output("sample_weights: double")
    .Output("active_count: int64")
    .Output("valid_count: int64")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tout: {float, double}")
    .Attr("Tlen: {int32, int64} = DT_INT32")
    .Attr("loss_type: {'l1', 'huber'} = 'l1'")
    .Attr("normalization: {'per_sample', 'global'} = 'per_sample'")
    .Attr("use_lengths: bool = true")
    .SetShapeFn(myxtts_ops::ForwardShape)
    .Doc(R"doc(
Fused masked mel-spectrogram loss (L1 or Huber) with finiteness checks and
running loss statistics, in one pass. Padding (t >= lengths[b]) never affects
any output. sample_weights[0, b] = d loss / d element and sample_weights[1, b]
= 1 / n_b feed the gradient op. active_count (samples with a counted element)
and valid_count (elements before the lengths, finite or not) are what a caller
that reduces over the batch itself (XTTSLoss, across replicas) needs.
)doc");

REGISTER_OP("MyxttsOps>MaskedMelLossGrad")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("lengths: Tlen")
    .Input("sample_weights: double")
    .Input("grad_loss: Tout")
    .Input("grad_per_sample: Tout")
    .Input("huber_delta: double")
    .Output("grad_y_true: T")
    .Output("grad_y_pred: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tout: {float, double}")
    .Attr("Tlen: {int32, int64} = DT_INT32")
    .Attr("loss_type: {'l1', 'huber'} = 'l1'")
    .Attr("use_lengths: bool = true")
    .Attr("grad_y_true_wanted: bool = true")
    .SetShapeFn(myxtts_ops::BackwardShape)
    .Doc(R"doc(
Fused backward pass of MyxttsOps>MaskedMelLoss. grad_y_true_wanted = false
tells that nothing reads grad_y_true (the XLA kernel then skips it and returns
zeros; the OpKernel skips it whenever the graph does not consume it).
)doc");

REGISTER_OP("MyxttsOps>CheckLengths")
    .Input("lengths: T")
    .Input("bounds: int32")
    .Output("checked: int32")
    .Attr("T: {int32, int64, half, bfloat16, float, double} = DT_INT32")
    .Attr("input_name: string")
    .Attr("note: string = ''")
    .Attr("limit: int >= 0")
    .Attr("bound_notes: list(string) = []")
    .SetIsStateful()  // a check that must run, like Assert: never pruned or folded
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle lengths, bounds;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &lengths));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &bounds));
      c->set_output(0, lengths);
      return absl::OkStatus();
    })
    .Doc(R"doc(
The lengths as int32 once every entry is a whole number in [0, limit]
(limit <= 2^31 - 1; int32 lengths are passed through unchanged); otherwise an
InvalidArgument error "<input_name>[b] = v is outside [0, limit]<note>" (or
"... is not a whole number in [0, limit]<note>" for a fraction, NaN or an
infinity), v as passed. bounds: sizes of the axes the lengths index that were
unknown when the graph was traced; the smallest one below limit is the limit,
with its entry of bound_notes as the note. Its XLA kernel is a custom call
(bounds are compile-time constants there), so the check also runs inside
jit_compile=True, where XLA compiles tf.debugging assertions away.
)doc");

REGISTER_OP("MyxttsOps>CheckSizes")
    .Input("sizes: int32")
    .Input("expected: int32")
    .Attr("labels: list(string)")
    .Attr("expected_labels: list(string)")
    .SetIsStateful()  // a check that must run, like Assert: never pruned or folded
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle sizes;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &sizes));
      TF_RETURN_IF_ERROR(c->Merge(sizes, c->input(1), &sizes));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Refuses axis sizes that must agree but were unknown when the graph was traced:
the first i with sizes[i] != expected[i] is an InvalidArgument error
"<labels[i]> is <sizes[i]>, but <expected_labels[i]> is <expected[i]>". Under
XLA, where every size is a compile-time constant, the check runs when the
function compiles (XLA compiles tf.debugging assertions away).
)doc");

namespace myxtts_ops {
namespace {

// A float length as a double (exact: half and bfloat16 go through float).
// Integer lengths never come here.
template <typename T>
double LengthAsDouble(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<double>(static_cast<float>(v));
  }
}

// Host lengths on every device (the GPU kernel's are in host memory). int32
// lengths pass through (no copy); others are checked and converted.
template <typename T>
class CheckLengthsOp : public OpKernel {
 public:
  explicit CheckLengthsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_name", &input_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("note", &note_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("limit", &limit_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bound_notes", &bound_notes_));
    OP_REQUIRES_OK(ctx, CheckResult(length_limit_error(limit_)));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& lengths = ctx->input(0);
    OP_REQUIRES(ctx, lengths.dims() == 1,
                errors::InvalidArgument(input_name_, " must have shape [batch], got shape ",
                                        lengths.shape().DebugString()));
    const Tensor& bounds = ctx->input(1);
    // Eager execution skips the shape function: the rank is checked here too.
    OP_REQUIRES(ctx, bounds.dims() == 1,
                errors::InvalidArgument("bounds must be a vector, got shape ",
                                        bounds.shape().DebugString()));
    int64_t limit = limit_;
    std::string note = note_;
    OP_REQUIRES_OK(
        ctx, CheckResult(pick_length_limit(
                 limit_, note_, bounds.NumElements() > 0 ? bounds.flat<int32_t>().data() : nullptr,
                 bounds.NumElements(), bound_notes_, &limit, &note)));
    const int64_t batch = lengths.NumElements();
    const T* values = batch > 0 ? lengths.flat<T>().data() : nullptr;
    std::vector<double> as_double;  // float lengths, checked and converted from here
    if constexpr (std::is_integral_v<T>) {
      LengthsView view;
      view.data = values;
      view.is_int64 = sizeof(T) == 8;
      OP_REQUIRES_OK(ctx, CheckResult(length_values_error(view, batch, limit, input_name_, note)));
      if constexpr (std::is_same_v<T, int32_t>) {
        ctx->set_output(0, lengths);
        return;
      }
    } else {
      as_double.resize(batch);
      for (int64_t b = 0; b < batch; ++b) as_double[b] = LengthAsDouble(values[b]);
      OP_REQUIRES_OK(ctx, CheckResult(float_length_values_error(
                              as_double.data(), batch, limit, input_name_, note,
                              /*single_precision=*/!std::is_same_v<T, double>)));
    }
    Tensor* checked = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, lengths.shape(), &checked));
    int32_t* out = checked->flat<int32_t>().data();
    for (int64_t b = 0; b < batch; ++b) {
      if constexpr (std::is_integral_v<T>) {
        out[b] = int32_t(values[b]);
      } else {
        out[b] = int32_t(as_double[b]);
      }
    }
  }

 private:
  std::string input_name_;
  std::string note_;
  int64_t limit_ = 0;
  std::vector<std::string> bound_notes_;
};

// Host sizes on every device (the GPU kernel's are in host memory).
class CheckSizesOp : public OpKernel {
 public:
  explicit CheckSizesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("labels", &labels_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("expected_labels", &expected_labels_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& sizes = ctx->input(0);
    const Tensor& expected = ctx->input(1);
    OP_REQUIRES(ctx, sizes.dims() == 1 && expected.dims() == 1,
                errors::InvalidArgument("sizes and expected must be vectors, got shapes ",
                                        sizes.shape().DebugString(), " and ",
                                        expected.shape().DebugString()));
    const int64_t n = sizes.NumElements();
    const int64_t m = expected.NumElements();
    OP_REQUIRES_OK(
        ctx, CheckResult(size_mismatch_error(n > 0 ? sizes.flat<int32_t>().data() : nullptr, n,
                                             m > 0 ? expected.flat<int32_t>().data() : nullptr, m,
                                             labels_, expected_labels_)));
  }

 private:
  std::vector<std::string> labels_;
  std::vector<std::string> expected_labels_;
};

DType ToKernelDType(DataType t) {
  switch (t) {
    case ::tensorflow::DT_HALF:
      return DType::kHalf;
    case ::tensorflow::DT_BFLOAT16:
      return DType::kBFloat16;
    case ::tensorflow::DT_DOUBLE:
      return DType::kDouble;
    default:
      return DType::kFloat;
  }
}

// huber_delta travels as a float64 host scalar so float64 losses use it
// exactly (TF attributes only hold float32).
absl::Status ReadHuberDelta(const Tensor& t, LossConfig* config) {
  TF_RETURN_IF_ERROR(CheckResult(check_huber_delta_shape(DimsOf(t.shape()))));
  const double delta = t.scalar<double>()();
  TF_RETURN_IF_ERROR(CheckResult(huber_delta_error(delta)));
  config->huber_delta = delta;
  return absl::OkStatus();
}

// Checks shapes of y_true, y_pred and (optionally) lengths; fills `shape`.
absl::Status CheckMelInputs(const Tensor& y_true, const Tensor& y_pred, const Tensor& lengths,
                            bool use_lengths, MelShape* shape) {
  return CheckResult(check_mel_shapes(DimsOf(y_true.shape()), DimsOf(y_pred.shape()),
                                      DimsOf(lengths.shape()), use_lengths, shape));
}

LengthsView ViewLengths(const Tensor& lengths, bool use_lengths) {
  LengthsView v;
  if (!use_lengths) return v;
  v.is_int64 = lengths.dtype() == ::tensorflow::DT_INT64;
  v.data = lengths.tensor_data().data();
  return v;
}

// Lengths are read on the host for both devices (the GPU kernel registers
// them as host memory), so one check serves both.
absl::Status CheckLengths(const LengthsView& lengths, const MelShape& shape) {
  return CheckResult(lengths_error(lengths, shape.batch, shape.frames));
}

// --------------------------------------------------------------------------
class MaskedMelLossOp : public OpKernel {
 public:
  MaskedMelLossOp(OpKernelConstruction* ctx, Device device) : OpKernel(ctx), device_(device) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, /*with_normalization=*/true));
  }

  void Compute(OpKernelContext* ctx) override {
    ComputeOrExhausted(ctx, [&] { ComputeImpl(ctx); });
  }

 private:
  void ComputeImpl(OpKernelContext* ctx) {
    const Tensor& y_true = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    const Tensor& lengths = ctx->input(2);
    const Tensor& state_in = ctx->input(3);
    MelShape shape;
    OP_REQUIRES_OK(ctx, CheckMelInputs(y_true, y_pred, lengths, attrs_.use_lengths, &shape));
    OP_REQUIRES_OK(ctx, CheckResult(check_state_shape(DimsOf(state_in.shape()))));
    const LengthsView host_lengths = ViewLengths(lengths, attrs_.use_lengths);
    OP_REQUIRES_OK(ctx, CheckLengths(host_lengths, shape));
    LossConfig config = attrs_.config;
    OP_REQUIRES_OK(ctx, ReadHuberDelta(ctx->input(4), &config));

    Tensor *loss, *per_sample, *nonfinite, *state_out, *weights, *active, *valid;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({shape.batch}), &per_sample));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &nonfinite));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({state::kSize}), &state_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({2, shape.batch}), &weights));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, TensorShape({}), &active));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(6, TensorShape({}), &valid));

    ForwardArgs args;
    args.dtype = ToKernelDType(y_true.dtype());
    args.shape = shape;
    args.y_true = y_true.tensor_data().data();
    args.y_pred = y_pred.tensor_data().data();
    args.lengths = host_lengths;
    args.state_in = state_in.flat<double>().data();
    args.config = config;
    args.loss = const_cast<char*>(loss->tensor_data().data());
    args.per_sample = const_cast<char*>(per_sample->tensor_data().data());
    args.nonfinite_count = nonfinite->flat<int64_t>().data();
    args.state_out = state_out->flat<double>().data();
    args.sample_weights = weights->flat<double>().data();
    args.active_count = active->flat<int64_t>().data();
    args.valid_count = valid->flat<int64_t>().data();

    if (device_ == Device::kCpu) {
      mel_loss_forward_cpu(args, TfParallelFor(ctx));
      return;
    }
#if MYXTTS_OPS_WITH_CUDA
    Tensor workspace;
    OP_REQUIRES_OK(
        ctx,
        ctx->allocate_temp(::tensorflow::DT_UINT8,
                           TensorShape({int64_t(cuda_forward_workspace_size(shape))}), &workspace));
    std::vector<char> header(cuda_forward_header_size(shape.batch, attrs_.use_lengths));
    cuda_forward_fill_header(header.data(), host_lengths, shape.batch);
    // args.lengths stays the host view: with a header the launcher reads the
    // staged int32 copy in the workspace and uses the view only as a flag.
    const std::string err =
        mel_loss_forward_cuda(args, const_cast<char*>(workspace.tensor_data().data()),
                              header.data(), header.size(), GpuStream(ctx));
    OP_REQUIRES(ctx, err.empty(), errors::Internal(err));
#endif
  }

  OpAttrs attrs_;
  Device device_;
};

class MaskedMelLossGradOp : public OpKernel {
 public:
  MaskedMelLossGradOp(OpKernelConstruction* ctx, Device device) : OpKernel(ctx), device_(device) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, /*with_normalization=*/false));
  }

  void Compute(OpKernelContext* ctx) override {
    ComputeOrExhausted(ctx, [&] { ComputeImpl(ctx); });
  }

 private:
  void ComputeImpl(OpKernelContext* ctx) {
    const Tensor& y_true = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    const Tensor& lengths = ctx->input(2);
    const Tensor& weights = ctx->input(3);
    const Tensor& grad_loss = ctx->input(4);
    const Tensor& grad_per_sample = ctx->input(5);
    MelShape shape;
    OP_REQUIRES_OK(ctx, CheckMelInputs(y_true, y_pred, lengths, attrs_.use_lengths, &shape));
    OP_REQUIRES_OK(ctx,
                   CheckResult(check_grad_shapes(DimsOf(weights.shape()), DimsOf(grad_loss.shape()),
                                                 DimsOf(grad_per_sample.shape()), shape.batch)));
    const LengthsView host_lengths = ViewLengths(lengths, attrs_.use_lengths);
    OP_REQUIRES_OK(ctx, CheckLengths(host_lengths, shape));
    LossConfig config = attrs_.config;
    OP_REQUIRES_OK(ctx, ReadHuberDelta(ctx->input(6), &config));

    Tensor *g_true, *g_pred;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, y_true.shape(), &g_true));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, y_true.shape(), &g_pred));
    BackwardArgs args;
    args.dtype = ToKernelDType(y_true.dtype());
    args.shape = shape;
    args.y_true = y_true.tensor_data().data();
    args.y_pred = y_pred.tensor_data().data();
    args.lengths = host_lengths;
    args.sample_weights = weights.flat<double>().data();
    args.grad_loss = grad_loss.tensor_data().data();
    args.grad_per_sample = grad_per_sample.tensor_data().data();
    args.config = config;
    // In a graph where only d/dy_pred is consumed, skip writing d/dy_true:
    // it is a fifth of the backward's memory traffic.
    args.grad_y_true =
        ctx->output_required(0) ? const_cast<char*>(g_true->tensor_data().data()) : nullptr;
    args.grad_y_pred = const_cast<char*>(g_pred->tensor_data().data());

    if (device_ == Device::kCpu) {
      mel_loss_backward_cpu(args, TfParallelFor(ctx));
      return;
    }
#if MYXTTS_OPS_WITH_CUDA
    Tensor device_lengths;
    if (attrs_.use_lengths) {
      // Host lengths -> int32 on the device (validated above, so they fit).
      std::vector<int32_t> staged(shape.batch);
      stage_lengths_int32(host_lengths, shape.batch, staged.data());
      OP_REQUIRES_OK(ctx, CopyStagedToDevice(ctx, staged, &device_lengths));
      args.lengths.data = device_lengths.tensor_data().data();
      args.lengths.is_int64 = false;
    }
    const std::string err = mel_loss_backward_cuda(args, GpuStream(ctx));
    OP_REQUIRES(ctx, err.empty(), errors::Internal(err));
#endif
  }

  OpAttrs attrs_;
  Device device_;
};

template <Device D>
class ForwardOnDevice : public MaskedMelLossOp {
 public:
  explicit ForwardOnDevice(OpKernelConstruction* ctx) : MaskedMelLossOp(ctx, D) {}
};
template <Device D>
class BackwardOnDevice : public MaskedMelLossGradOp {
 public:
  explicit BackwardOnDevice(OpKernelConstruction* ctx) : MaskedMelLossGradOp(ctx, D) {}
};

}  // namespace
}  // namespace myxtts_ops

// One kernel class per device serves every dtype: the dtype is dispatched at
// run time from the tensor, so no type constraint is needed beyond the op's.
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>MaskedMelLoss").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::ForwardOnDevice<myxtts_ops::Device::kCpu>);
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>MaskedMelLossGrad").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::BackwardOnDevice<myxtts_ops::Device::kCpu>);
#define MYXTTS_OPS_REGISTER_CHECK_LENGTHS(T)                                                  \
  REGISTER_KERNEL_BUILDER(                                                                    \
      Name("MyxttsOps>CheckLengths").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      myxtts_ops::CheckLengthsOp<T>);                                                         \
  MYXTTS_OPS_REGISTER_CHECK_LENGTHS_GPU(T)
#if MYXTTS_OPS_WITH_CUDA
#define MYXTTS_OPS_REGISTER_CHECK_LENGTHS_GPU(T)                \
  REGISTER_KERNEL_BUILDER(Name("MyxttsOps>CheckLengths")        \
                              .Device(::tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")           \
                              .HostMemory("lengths")            \
                              .HostMemory("bounds")             \
                              .HostMemory("checked"),           \
                          myxtts_ops::CheckLengthsOp<T>);
#else
#define MYXTTS_OPS_REGISTER_CHECK_LENGTHS_GPU(T)
#endif
MYXTTS_OPS_REGISTER_CHECK_LENGTHS(int32_t)
MYXTTS_OPS_REGISTER_CHECK_LENGTHS(int64_t)
MYXTTS_OPS_REGISTER_CHECK_LENGTHS(Eigen::half)
MYXTTS_OPS_REGISTER_CHECK_LENGTHS(Eigen::bfloat16)
MYXTTS_OPS_REGISTER_CHECK_LENGTHS(float)
MYXTTS_OPS_REGISTER_CHECK_LENGTHS(double)
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>CheckSizes").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::CheckSizesOp);
#if MYXTTS_OPS_WITH_CUDA
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>CheckSizes")
                            .Device(::tensorflow::DEVICE_GPU)
                            .HostMemory("sizes")
                            .HostMemory("expected"),
                        myxtts_ops::CheckSizesOp);
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>MaskedMelLoss")
                            .Device(::tensorflow::DEVICE_GPU)
                            .HostMemory("lengths")
                            .HostMemory("huber_delta"),
                        myxtts_ops::ForwardOnDevice<myxtts_ops::Device::kGpu>);
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>MaskedMelLossGrad")
                            .Device(::tensorflow::DEVICE_GPU)
                            .HostMemory("lengths")
                            .HostMemory("huber_delta"),
                        myxtts_ops::BackwardOnDevice<myxtts_ops::Device::kGpu>);
#endif
