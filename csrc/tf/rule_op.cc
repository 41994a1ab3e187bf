// TensorFlow glue of MyxttsOps>AdaptiveWeightStep and MyxttsOps>SmoothingStep:
// registration, shape functions and the CPU OpKernels around the pure
// functions of csrc/kernels/adaptive_rule.h. XTTSLoss runs them in plain
// graphs and eagerly on the CPU (myxtts_loss.rule.rule_op_used); inside
// jit_compile=True, and where a GPU is visible, it runs the same rule in TF ops.
// Every setting is an attribute set by myxtts_loss.rule, the rule's one source.
#include <string>

#include "kernels/adaptive_rule.h"
#include "tf/tf_device.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace myxtts_ops {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

// Every input and output a scalar.
absl::Status ScalarShapes(InferenceContext* c) {
  ShapeHandle unused;
  for (int i = 0; i < c->num_inputs(); ++i)
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->Scalar());
  return absl::OkStatus();
}

absl::Status SmoothingShapes(InferenceContext* c) {
  ShapeHandle history, unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &history));
  for (int i = 1; i < c->num_inputs(); ++i)
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  c->set_output(0, history);
  c->set_output(1, c->Scalar());
  c->set_output(2, c->Scalar());
  return absl::OkStatus();
}

}  // namespace
}  // namespace myxtts_ops

// Inputs: the state fields of myxtts_loss.rule.RULE_STATE, then the
// observations; outputs: the new state in the same order, then the weight
// and the events. Names and order are checked against RULE_STATE by
// tests/test_rule_op.py.
REGISTER_OP("MyxttsOps>AdaptiveWeightStep")
    .Input("step_count: int64")
    .Input("current_mel_weight: float")
    .Input("previous_mel_weight: float")
    .Input("last_weight_change_step: int64")
    .Input("consecutive_stable_steps: int64")
    .Input("running_total_loss: float")
    .Input("running_total_initialized: bool")
    .Input("nonfinite_steps: int64")
    .Input("spike_count: int64")
    .Input("weight_changes: int64")
    .Input("rejected_changes: int64")
    .Input("mel: float")
    .Input("other: float")
    .Input("finite: bool")
    .Input("has_valid: bool")
    .Input("running_mean: float")
    .Input("window_variance: float")
    .Input("growing: bool")
    .Input("enabled: bool")
    .Output("new_step_count: int64")
    .Output("new_current_mel_weight: float")
    .Output("new_previous_mel_weight: float")
    .Output("new_last_weight_change_step: int64")
    .Output("new_consecutive_stable_steps: int64")
    .Output("new_running_total_loss: float")
    .Output("new_running_total_initialized: bool")
    .Output("new_nonfinite_steps: int64")
    .Output("new_spike_count: int64")
    .Output("new_weight_changes: int64")
    .Output("new_rejected_changes: int64")
    .Output("weight: float")
    .Output("clean: bool")
    .Output("spike: bool")
    .Output("accepted: bool")
    .Output("rejected: bool")
    .Attr("spike_factor_nonnegative: float")
    .Attr("spike_factor_negative: float")
    .Attr("spike_min_steps: int")
    .Attr("min_warmup_steps: int")
    .Attr("cooling_period: int")
    .Attr("min_stable_steps: int")
    .Attr("variance_threshold: float")
    .Attr("ratio_eps: float")
    .Attr("ratio_min: float")
    .Attr("ratio_max: float")
    .Attr("loss_high_ratio: float")
    .Attr("loss_low_ratio: float")
    .Attr("min_weight: float")
    .Attr("max_weight: float")
    .Attr("max_change_percent: float")
    .Attr("max_weighted_loss: float")
    .Attr("reference_rate: float")
    .Attr("reference_keep: float")
    .SetShapeFn(myxtts_ops::ScalarShapes)
    .Doc(R"doc(
One call of the adaptive mel weight rule (SPEC 4.1) on scalars: the new state,
the weight for this call's total and the call's events. A pure function: it
reads and writes no variable.
)doc");

REGISTER_OP("MyxttsOps>SmoothingStep")
    .Input("total_history: float")
    .Input("smoothing_running_total: float")
    .Input("raw_total: float")
    .Input("step: int64")
    .Output("new_total_history: float")
    .Output("new_smoothing_running_total: float")
    .Output("smoothed: float")
    .Attr("alpha: float")
    .Attr("keep: float")
    .Attr("theta: float")
    .Attr("decay_steps: float")
    .Attr("decay_max: float")
    .Attr("eps: float")
    .Attr("damp_after: int")
    .SetShapeFn(myxtts_ops::SmoothingShapes)
    .Doc(R"doc(
One call of the reported smoothed total (MyXTTS contract, section 4): the new
history and running total, and the smoothed value. A pure function.
)doc");

namespace myxtts_ops {
namespace {

template <typename T>
absl::Status Scalar(OpKernelContext* ctx, int index, T* value) {
  const Tensor& t = ctx->input(index);
  // The shape function refuses non-scalars first; this guards the kernel
  // should a caller bypass it.
  if (t.dims() != 0) {
    const ::tensorflow::OpDef* op_def = nullptr;
    std::string name = std::to_string(index);
    if (::tensorflow::OpRegistry::Global()
            ->LookUpOpDef(ctx->op_kernel().type_string(), &op_def)
            .ok())
      name = op_def->input_arg(index).name();
    return errors::InvalidArgument(ctx->op_kernel().type_string(), ": input '", name,
                                   "' must be a scalar, got shape ", t.shape().DebugString());
  }
  *value = t.scalar<T>()();
  return absl::OkStatus();
}

class AdaptiveWeightStepOp : public OpKernel {
 public:
  explicit AdaptiveWeightStepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    rule::Settings& c = settings_;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("spike_factor_nonnegative", &c.spike_factor_nonnegative));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("spike_factor_negative", &c.spike_factor_negative));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("spike_min_steps", &c.spike_min_steps));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("min_warmup_steps", &c.min_warmup_steps));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("cooling_period", &c.cooling_period));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("min_stable_steps", &c.min_stable_steps));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("variance_threshold", &c.variance_threshold));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ratio_eps", &c.ratio_eps));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ratio_min", &c.ratio_min));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ratio_max", &c.ratio_max));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("loss_high_ratio", &c.loss_high_ratio));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("loss_low_ratio", &c.loss_low_ratio));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("min_weight", &c.min_weight));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_weight", &c.max_weight));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_change_percent", &c.max_change_percent));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_weighted_loss", &c.max_weighted_loss));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reference_rate", &c.reference_rate));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reference_keep", &c.reference_keep));
  }

  void Compute(OpKernelContext* ctx) override {
    rule::State s;
    rule::Observations o;
    int i = 0;
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.step_count));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.current_mel_weight));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.previous_mel_weight));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.last_weight_change_step));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.consecutive_stable_steps));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.running_total_loss));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.running_total_initialized));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.nonfinite_steps));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.spike_count));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.weight_changes));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &s.rejected_changes));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.mel));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.other));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.finite));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.has_valid));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.running_mean));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.window_variance));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.growing));
    OP_REQUIRES_OK(ctx, Scalar(ctx, i++, &o.enabled));

    rule::State n;
    rule::Events e;
    const float weight = rule::adaptive_weight_step(s, o, settings_, &n, &e);
    int k = 0;
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.step_count));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.current_mel_weight));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.previous_mel_weight));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.last_weight_change_step));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.consecutive_stable_steps));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.running_total_loss));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.running_total_initialized));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.nonfinite_steps));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.spike_count));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.weight_changes));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, n.rejected_changes));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, weight));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, e.clean));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, e.spike));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, e.accepted));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, k++, e.rejected));
  }

 private:
  rule::Settings settings_;
};

class SmoothingStepOp : public OpKernel {
 public:
  explicit SmoothingStepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    rule::SmoothingSettings& c = settings_;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("alpha", &c.alpha));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("keep", &c.keep));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("theta", &c.theta));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("decay_steps", &c.decay_steps));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("decay_max", &c.decay_max));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("eps", &c.eps));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("damp_after", &c.damp_after));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& history = ctx->input(0);
    OP_REQUIRES(ctx, history.dims() == 1 && history.dim_size(0) > 0,
                errors::InvalidArgument(type_string(),
                                        ": total_history must be a non-empty vector, got shape ",
                                        history.shape().DebugString()));
    float running, raw;
    int64_t step;
    OP_REQUIRES_OK(ctx, Scalar(ctx, 1, &running));
    OP_REQUIRES_OK(ctx, Scalar(ctx, 2, &raw));
    OP_REQUIRES_OK(ctx, Scalar(ctx, 3, &step));
    Tensor* new_history;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, history.shape(), &new_history));
    float* h = new_history->flat<float>().data();
    const float* old = history.flat<float>().data();
    const int64_t window = history.dim_size(0);
    for (int64_t i = 0; i < window; ++i) h[i] = old[i];
    const float smoothed = rule::smoothing_step(raw, step, settings_, h, window, &running);
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, 1, running));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, 2, smoothed));
  }

 private:
  rule::SmoothingSettings settings_;
};

}  // namespace
}  // namespace myxtts_ops

REGISTER_KERNEL_BUILDER(Name("MyxttsOps>AdaptiveWeightStep").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::AdaptiveWeightStepOp);
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>SmoothingStep").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::SmoothingStepOp);
