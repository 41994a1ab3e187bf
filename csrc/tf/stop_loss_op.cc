// TensorFlow glue of MyxttsOps>StopTokenLoss and its gradient: registration,
// shape functions and the CPU/GPU OpKernels. The math lives in
// csrc/kernels/stop_loss_*; this file validates, allocates and dispatches.
// XTTSLoss runs these ops outside XLA only: inside jit_compile=True, XLA
// fuses the same formula written in TF ops (myxtts_loss.terms) by itself.
#define EIGEN_USE_THREADS

#include <string>
#include <vector>

#include "kernels/stop_loss_kernels.h"
#include "tf/mel_loss_common.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf/tf_device.h"

namespace myxtts_ops {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

absl::Status StopShapes(InferenceContext* c, ShapeHandle* matrix) {
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, matrix));
  ShapeHandle pred, lengths;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &pred));
  TF_RETURN_IF_ERROR(c->Merge(*matrix, pred, matrix));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &lengths));
  DimensionHandle batch;
  return c->Merge(c->Dim(*matrix, 0), c->Dim(lengths, 0), &batch);
}

absl::Status ForwardShape(InferenceContext* c) {
  ShapeHandle matrix;
  TF_RETURN_IF_ERROR(StopShapes(c, &matrix));
  c->set_output(0, c->Vector(c->Dim(matrix, 0)));
  c->set_output(1, c->Vector(c->Dim(matrix, 0)));
  c->set_output(2, c->Scalar());
  return absl::OkStatus();
}

absl::Status BackwardShape(InferenceContext* c) {
  ShapeHandle matrix, grad;
  TF_RETURN_IF_ERROR(StopShapes(c, &matrix));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &grad));
  DimensionHandle batch;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(matrix, 0), c->Dim(grad, 0), &batch));
  c->set_output(0, matrix);
  c->set_output(1, matrix);
  return absl::OkStatus();
}

}  // namespace
}  // namespace myxtts_ops

REGISTER_OP("MyxttsOps>StopTokenLoss")
    .Input("target: float")
    .Input("pred: float")
    .Input("lengths: int32")
    .Output("sums: float")
    .Output("counts: int32")
    .Output("nonfinite_count: int64")
    .Attr("positive_weight: float")
    .Attr("label_smoothing: float")
    .Attr("prob_min: float")
    .SetShapeFn(myxtts_ops::ForwardShape)
    .Doc(R"doc(
Weighted binary cross entropy of stop probabilities, per sample, in one pass:
sums[b] is the sum of the element loss over the positions t < lengths[b] whose
target and prediction are finite, counts[b] their number, nonfinite_count the
positions before the lengths that are not counted. Padding is never read.
)doc");

REGISTER_OP("MyxttsOps>StopTokenLossGrad")
    .Input("target: float")
    .Input("pred: float")
    .Input("lengths: int32")
    .Input("grad_sums: float")
    .Output("grad_target: float")
    .Output("grad_pred: float")
    .Attr("positive_weight: float")
    .Attr("label_smoothing: float")
    .Attr("prob_min: float")
    .SetShapeFn(myxtts_ops::BackwardShape)
    .Doc(R"doc(
Gradient of StopTokenLoss's sums: grad_sums[b] times the element derivative at
counted positions, 0 elsewhere (padding, non-finite inputs, and for grad_pred
a prediction outside the clip bounds).
)doc");

namespace myxtts_ops {
namespace {

absl::Status ReadConfig(OpKernelConstruction* ctx, StopLossConfig* config) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("positive_weight", &config->positive_weight));
  TF_RETURN_IF_ERROR(ctx->GetAttr("label_smoothing", &config->label_smoothing));
  TF_RETURN_IF_ERROR(ctx->GetAttr("prob_min", &config->prob_min));
  return CheckResult(
      stop_config_error(config->positive_weight, config->label_smoothing, config->prob_min));
}

// Shapes agree and every length is in [0, T] (lengths are host memory on
// every device), else an error naming the input and the value.
absl::Status CheckInputs(const Tensor& target, const Tensor& pred, const Tensor& lengths,
                         StopShape* shape) {
  TF_RETURN_IF_ERROR(CheckResult(
      check_stop_shapes(DimsOf(target.shape()), DimsOf(pred.shape()), DimsOf(lengths.shape()))));
  shape->batch = target.dim_size(0);
  shape->frames = target.dim_size(1);
  return CheckResult(
      stop_lengths_error(lengths.flat<int32_t>().data(), shape->batch, shape->frames));
}

#if MYXTTS_OPS_WITH_CUDA
// The checked host lengths, copied to the device on the op's stream.
absl::Status StageLengths(OpKernelContext* ctx, const Tensor& lengths, Tensor* device_lengths) {
  const int32_t* host = lengths.flat<int32_t>().data();
  return CopyStagedToDevice(ctx, std::vector<int32_t>(host, host + lengths.NumElements()),
                            device_lengths);
}
#endif

template <Device D>
class StopTokenLossOp : public OpKernel {
 public:
  explicit StopTokenLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadConfig(ctx, &config_));
  }

  void Compute(OpKernelContext* ctx) override {
    ComputeOrExhausted(ctx, [&] { ComputeImpl(ctx); });
  }

 private:
  void ComputeImpl(OpKernelContext* ctx) {
    const Tensor& target = ctx->input(0);
    const Tensor& pred = ctx->input(1);
    const Tensor& lengths = ctx->input(2);
    StopForwardArgs args;
    OP_REQUIRES_OK(ctx, CheckInputs(target, pred, lengths, &args.shape));
    Tensor *sums, *counts, *nonfinite;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({args.shape.batch}), &sums));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({args.shape.batch}), &counts));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &nonfinite));
    args.target = target.flat<float>().data();
    args.pred = pred.flat<float>().data();
    args.lengths = lengths.flat<int32_t>().data();
    args.config = config_;
    args.sums = sums->flat<float>().data();
    args.counts = counts->flat<int32_t>().data();
    args.nonfinite = nonfinite->flat<int64_t>().data();
    if (D == Device::kCpu) {
      stop_loss_forward_cpu(args, TfParallelFor(ctx));
      return;
    }
#if MYXTTS_OPS_WITH_CUDA
    Tensor device_lengths;
    OP_REQUIRES_OK(ctx, StageLengths(ctx, lengths, &device_lengths));
    args.lengths = device_lengths.flat<int32_t>().data();
    const std::string err = stop_loss_forward_cuda(args, GpuStream(ctx));
    OP_REQUIRES(ctx, err.empty(), errors::Internal(err));
#endif
  }

  StopLossConfig config_;
};

template <Device D>
class StopTokenLossGradOp : public OpKernel {
 public:
  explicit StopTokenLossGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadConfig(ctx, &config_));
  }

  void Compute(OpKernelContext* ctx) override {
    ComputeOrExhausted(ctx, [&] { ComputeImpl(ctx); });
  }

 private:
  void ComputeImpl(OpKernelContext* ctx) {
    const Tensor& target = ctx->input(0);
    const Tensor& pred = ctx->input(1);
    const Tensor& lengths = ctx->input(2);
    const Tensor& grad_sums = ctx->input(3);
    StopBackwardArgs args;
    OP_REQUIRES_OK(ctx, CheckInputs(target, pred, lengths, &args.shape));
    OP_REQUIRES(ctx, grad_sums.dims() == 1 && grad_sums.dim_size(0) == args.shape.batch,
                errors::InvalidArgument("grad_sums must have shape [", args.shape.batch, "], got ",
                                        grad_sums.shape().DebugString()));
    Tensor *g_target, *g_pred;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, target.shape(), &g_target));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, target.shape(), &g_pred));
    args.target = target.flat<float>().data();
    args.pred = pred.flat<float>().data();
    args.lengths = lengths.flat<int32_t>().data();
    args.grad_sums = grad_sums.flat<float>().data();
    args.config = config_;
    // The target is data in training: nothing reads its gradient, so skip the writes.
    args.grad_target = ctx->output_required(0) ? g_target->flat<float>().data() : nullptr;
    args.grad_pred = g_pred->flat<float>().data();
    if (D == Device::kCpu) {
      stop_loss_backward_cpu(args, TfParallelFor(ctx));
      return;
    }
#if MYXTTS_OPS_WITH_CUDA
    Tensor device_lengths;
    OP_REQUIRES_OK(ctx, StageLengths(ctx, lengths, &device_lengths));
    args.lengths = device_lengths.flat<int32_t>().data();
    const std::string err = stop_loss_backward_cuda(args, GpuStream(ctx));
    OP_REQUIRES(ctx, err.empty(), errors::Internal(err));
#endif
  }

  StopLossConfig config_;
};

}  // namespace
}  // namespace myxtts_ops

REGISTER_KERNEL_BUILDER(Name("MyxttsOps>StopTokenLoss").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::StopTokenLossOp<myxtts_ops::Device::kCpu>);
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>StopTokenLossGrad").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::StopTokenLossGradOp<myxtts_ops::Device::kCpu>);
#if MYXTTS_OPS_WITH_CUDA
REGISTER_KERNEL_BUILDER(
    Name("MyxttsOps>StopTokenLoss").Device(::tensorflow::DEVICE_GPU).HostMemory("lengths"),
    myxtts_ops::StopTokenLossOp<myxtts_ops::Device::kGpu>);
REGISTER_KERNEL_BUILDER(
    Name("MyxttsOps>StopTokenLossGrad").Device(::tensorflow::DEVICE_GPU).HostMemory("lengths"),
    myxtts_ops::StopTokenLossGradOp<myxtts_ops::Device::kGpu>);
#endif
