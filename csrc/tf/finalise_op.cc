// TensorFlow glue of MyxttsOps>FinaliseTerms, MyxttsOps>CombineTotal and
// MyxttsOps>CombineTotalGrad: registration, shape functions and the CPU
// OpKernels around the pure functions of csrc/kernels/term_finalise.h.
// XTTSLoss runs them in plain graphs and eagerly on the CPU, on one replica,
// for a float32 mel loss (myxtts_loss.finalise.finalise_op_applies); elsewhere
// (jit_compile=True, a visible GPU, several replicas, ...) it runs the same
// steps in TF ops. Every weight and bound is an attribute set by
// myxtts_loss.finalise.
#include <string>
#include <vector>

#include "kernels/term_finalise.h"
#include "tf/tf_device.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace myxtts_ops {
namespace {

using ::tensorflow::OpInputList;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::OpOutputList;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

// Inputs of FinaliseTerms: num, den, nonfinite (N scalars each), mel_valid,
// mel_state, old_state.
absl::Status FinaliseShapes(InferenceContext* c) {
  int n;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
  ShapeHandle unused;
  for (int i = 0; i < 3 * n + 1; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  ShapeHandle state;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3 * n + 1), 1, &state));
  TF_RETURN_IF_ERROR(c->Merge(state, c->input(3 * n + 2), &state));
  TF_RETURN_IF_ERROR(c->Merge(state, c->Vector(state::kSize), &state));
  c->set_output(0, c->Vector(n));  // values
  for (int i = 1; i <= 7; ++i) c->set_output(i, c->Scalar());
  c->set_output(8, state);          // new_op_state
  c->set_output(9, c->Scalar());    // running_mean
  c->set_output(10, c->Scalar());   // window_variance
  c->set_output(11, c->Vector(n));  // kept
  c->set_output(12, c->Vector(n));  // inside
  return absl::OkStatus();
}

// Inputs of CombineTotal: weight, mel, other, mel_out, other_out, num (N),
// den (N), kept, inside.
absl::Status CombineShapes(InferenceContext* c) {
  int n;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
  ShapeHandle unused;
  for (int i = 0; i < 5 + 2 * n; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  for (int i = 5 + 2 * n; i < 7 + 2 * n; ++i)
    TF_RETURN_IF_ERROR(c->Merge(c->input(i), c->Vector(n), &unused));
  c->set_output(0, c->Scalar());
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

// Inputs of CombineTotalGrad: grad_total, weight, mel, mel_out, other_out,
// den (N), kept, inside.
absl::Status CombineGradShapes(InferenceContext* c) {
  int n;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
  ShapeHandle unused;
  for (int i = 0; i < 5 + n; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  for (int i = 5 + n; i < 7 + n; ++i)
    TF_RETURN_IF_ERROR(c->Merge(c->input(i), c->Vector(n), &unused));
  for (int i = 0; i < n; ++i) c->set_output(i, c->Scalar());
  return absl::OkStatus();
}

}  // namespace
}  // namespace myxtts_ops

REGISTER_OP("MyxttsOps>FinaliseTerms")
    .Input("num: N * float")
    .Input("den: N * float")
    .Input("nonfinite: N * float")
    .Input("mel_valid: int64")
    .Input("mel_state: double")
    .Input("old_state: double")
    .Output("values: float")
    .Output("mel: float")
    .Output("mel_out: float")
    .Output("other: float")
    .Output("other_out: float")
    .Output("finite: bool")
    .Output("has_valid: bool")
    .Output("all_bad: bool")
    .Output("new_op_state: double")
    .Output("running_mean: float")
    .Output("window_variance: float")
    .Output("kept: bool")
    .Output("inside: bool")
    .Attr("N: int >= 1")
    .Attr("weights: list(float)")
    .Attr("clipped: list(bool)")
    .Attr("clip_lo: list(float)")
    .Attr("clip_hi: list(float)")
    .Attr("mel_index: int >= 0")
    .SetShapeFn(myxtts_ops::FinaliseShapes)
    .Doc(R"doc(
XTTSLoss's finalisation on one replica: every term's value from its statistics
(values: each finite value, 0 where not finite; kept: its weighted value is
finite; inside: within its clip bounds), the mel term's value and what the
total adds for it (mel_out), the sums of the other terms' weighted values
and of what the total adds for them (other_out), the finiteness flags and the mel op's state for
this call. A pure function of its inputs.
)doc");

REGISTER_OP("MyxttsOps>CombineTotal")
    .Input("weight: float")
    .Input("mel: float")
    .Input("other: float")
    .Input("mel_out: float")
    .Input("other_out: float")
    .Input("num: N * float")
    .Input("den: N * float")
    .Input("kept: bool")
    .Input("inside: bool")
    .Output("total: float")
    .Output("raw: float")
    .Attr("N: int >= 1")
    .Attr("weights: list(float)")
    .Attr("mel_index: int >= 0")
    .SetShapeFn(myxtts_ops::CombineShapes)
    .Doc(R"doc(
The total XTTSLoss returns (differentiable with respect to num) and the raw
total, from FinaliseTerms' outputs and the decision's mel weight. num only
connects the gradient (CombineTotalGrad reads den): the value comes from
mel_out and other_out.
)doc");

REGISTER_OP("MyxttsOps>CombineTotalGrad")
    .Input("grad_total: float")
    .Input("weight: float")
    .Input("mel: float")
    .Input("mel_out: float")
    .Input("other_out: float")
    .Input("den: N * float")
    .Input("kept: bool")
    .Input("inside: bool")
    .Output("grad_num: N * float")
    .Attr("N: int >= 1")
    .Attr("weights: list(float)")
    .Attr("mel_index: int >= 0")
    .SetShapeFn(myxtts_ops::CombineGradShapes)
    .Doc(R"doc(
The gradient of CombineTotal's total with respect to every term's num.
)doc");

namespace myxtts_ops {
namespace {

// The terms' settings from the attributes, checked against N.
absl::Status ReadSettings(OpKernelConstruction* ctx, bool with_clips,
                          std::vector<finalise::TermSetting>* out, int* mel_index) {
  int n;
  TF_RETURN_IF_ERROR(ctx->GetAttr("N", &n));
  std::vector<float> weights;
  TF_RETURN_IF_ERROR(ctx->GetAttr("weights", &weights));
  TF_RETURN_IF_ERROR(ctx->GetAttr("mel_index", mel_index));
  if (static_cast<int>(weights.size()) != n)
    return errors::InvalidArgument("weights has ", weights.size(), " entries for ", n, " terms");
  if (*mel_index >= n)
    return errors::InvalidArgument("mel_index ", *mel_index, " is not below N = ", n);
  out->assign(n, finalise::TermSetting{});
  for (int i = 0; i < n; ++i) (*out)[i].weight = weights[i];
  if (!with_clips) return absl::OkStatus();
  std::vector<bool> clipped;
  std::vector<float> lo, hi;
  TF_RETURN_IF_ERROR(ctx->GetAttr("clipped", &clipped));
  TF_RETURN_IF_ERROR(ctx->GetAttr("clip_lo", &lo));
  TF_RETURN_IF_ERROR(ctx->GetAttr("clip_hi", &hi));
  if (static_cast<int>(clipped.size()) != n || static_cast<int>(lo.size()) != n ||
      static_cast<int>(hi.size()) != n)
    return errors::InvalidArgument("clipped, clip_lo and clip_hi need ", n, " entries each, got ",
                                   clipped.size(), ", ", lo.size(), " and ", hi.size());
  for (int i = 0; i < n; ++i) {
    (*out)[i].clipped = clipped[i];
    (*out)[i].lo = lo[i];
    (*out)[i].hi = hi[i];
  }
  return absl::OkStatus();
}

// The N scalars of an input list, in order.
absl::Status Scalars(OpKernelContext* ctx, const char* name, std::vector<float>* out) {
  OpInputList list;
  TF_RETURN_IF_ERROR(ctx->input_list(name, &list));
  out->resize(list.size());
  for (int i = 0; i < list.size(); ++i) {
    if (list[i].dims() != 0)
      return errors::InvalidArgument(ctx->op_kernel().type_string(), ": ", name, "[", i,
                                     "] must be a scalar, got shape ",
                                     list[i].shape().DebugString());
    (*out)[i] = list[i].scalar<float>()();
  }
  return absl::OkStatus();
}

absl::Status Scalar(OpKernelContext* ctx, const char* name, const Tensor** out) {
  TF_RETURN_IF_ERROR(ctx->input(name, out));
  if ((*out)->dims() != 0)
    return errors::InvalidArgument(ctx->op_kernel().type_string(), ": ", name,
                                   " must be a scalar, got shape ", (*out)->shape().DebugString());
  return absl::OkStatus();
}

absl::Status Vector(OpKernelContext* ctx, const char* name, int64_t size, const Tensor** out) {
  TF_RETURN_IF_ERROR(ctx->input(name, out));
  if ((*out)->dims() != 1 || (*out)->dim_size(0) != size)
    return errors::InvalidArgument(ctx->op_kernel().type_string(), ": ", name, " must have shape [",
                                   size, "], got ", (*out)->shape().DebugString());
  return absl::OkStatus();
}

class FinaliseTermsOp : public OpKernel {
 public:
  explicit FinaliseTermsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadSettings(ctx, true, &settings_, &mel_index_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = static_cast<int>(settings_.size());
    std::vector<float> num, den, nonfinite;
    OP_REQUIRES_OK(ctx, Scalars(ctx, "num", &num));
    OP_REQUIRES_OK(ctx, Scalars(ctx, "den", &den));
    OP_REQUIRES_OK(ctx, Scalars(ctx, "nonfinite", &nonfinite));
    const Tensor *mel_valid, *mel_state, *old_state;
    OP_REQUIRES_OK(ctx, Scalar(ctx, "mel_valid", &mel_valid));
    OP_REQUIRES_OK(ctx, Vector(ctx, "mel_state", state::kSize, &mel_state));
    OP_REQUIRES_OK(ctx, Vector(ctx, "old_state", state::kSize, &old_state));

    Tensor *values, *new_state, *kept, *inside;
    OP_REQUIRES_OK(ctx, ctx->allocate_output("values", TensorShape({n}), &values));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output("new_op_state", TensorShape({state::kSize}), &new_state));
    OP_REQUIRES_OK(ctx, ctx->allocate_output("kept", TensorShape({n}), &kept));
    OP_REQUIRES_OK(ctx, ctx->allocate_output("inside", TensorShape({n}), &inside));
    std::vector<finalise::TermValue> terms(n);
    double* s = new_state->flat<double>().data();
    const finalise::Finalised f = finalise::finalise_terms(
        n, num.data(), den.data(), nonfinite.data(), settings_.data(), mel_index_,
        mel_valid->scalar<int64_t>()(), mel_state->flat<double>().data(),
        old_state->flat<double>().data(), terms.data(), s);
    auto v = values->flat<float>();
    auto k = kept->flat<bool>();
    auto in = inside->flat<bool>();
    for (int i = 0; i < n; ++i) {
      v(i) = std::isfinite(terms[i].value) ? terms[i].value : 0.0f;
      k(i) = terms[i].kept;
      in(i) = terms[i].inside;
    }
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "mel", f.mel));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "mel_out", terms[mel_index_].out));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "other", f.other));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "other_out", f.other_out));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "finite", f.finite));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "has_valid", f.has_valid));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "all_bad", f.all_bad));
    OP_REQUIRES_OK(ctx,
                   ScalarOutput(ctx, "running_mean", static_cast<float>(s[state::kRunningMean])));
    OP_REQUIRES_OK(
        ctx, ScalarOutput(ctx, "window_variance", static_cast<float>(s[state::kWindowVariance])));
  }

 private:
  std::vector<finalise::TermSetting> settings_;
  int mel_index_ = 0;
};

class CombineTotalOp : public OpKernel {
 public:
  explicit CombineTotalOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadSettings(ctx, false, &settings_, &mel_index_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor *weight, *mel, *other, *mel_out, *other_out, *kept, *inside;
    OP_REQUIRES_OK(ctx, Scalar(ctx, "weight", &weight));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "mel", &mel));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "other", &other));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "mel_out", &mel_out));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "other_out", &other_out));
    // Read by the gradient only; checked here so a bad graph fails forward.
    OP_REQUIRES_OK(ctx, Vector(ctx, "kept", settings_.size(), &kept));
    OP_REQUIRES_OK(ctx, Vector(ctx, "inside", settings_.size(), &inside));
    const finalise::Total t = finalise::combine_total(
        weight->scalar<float>()(), mel->scalar<float>()(), other->scalar<float>()(),
        mel_out->scalar<float>()(), other_out->scalar<float>()());
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "total", t.total));
    OP_REQUIRES_OK(ctx, ScalarOutput(ctx, "raw", t.raw));
  }

 private:
  std::vector<finalise::TermSetting> settings_;
  int mel_index_ = 0;
};

class CombineTotalGradOp : public OpKernel {
 public:
  explicit CombineTotalGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadSettings(ctx, false, &settings_, &mel_index_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = static_cast<int>(settings_.size());
    const Tensor *grad, *weight, *mel, *mel_out, *other_out, *kept, *inside;
    OP_REQUIRES_OK(ctx, Scalar(ctx, "grad_total", &grad));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "weight", &weight));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "mel", &mel));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "mel_out", &mel_out));
    OP_REQUIRES_OK(ctx, Scalar(ctx, "other_out", &other_out));
    std::vector<float> den;
    OP_REQUIRES_OK(ctx, Scalars(ctx, "den", &den));
    OP_REQUIRES_OK(ctx, Vector(ctx, "kept", n, &kept));
    OP_REQUIRES_OK(ctx, Vector(ctx, "inside", n, &inside));
    std::vector<float> grad_num(n);
    finalise::combine_total_grad(n, grad->scalar<float>()(), weight->scalar<float>()(),
                                 mel->scalar<float>()(), mel_out->scalar<float>()(),
                                 other_out->scalar<float>()(), den.data(),
                                 kept->flat<bool>().data(), inside->flat<bool>().data(),
                                 settings_.data(), mel_index_, grad_num.data());
    OpOutputList out;
    OP_REQUIRES_OK(ctx, ctx->output_list("grad_num", &out));
    for (int i = 0; i < n; ++i) {
      Tensor* t;
      OP_REQUIRES_OK(ctx, out.allocate(i, TensorShape({}), &t));
      t->scalar<float>()() = grad_num[i];
    }
  }

 private:
  std::vector<finalise::TermSetting> settings_;
  int mel_index_ = 0;
};

}  // namespace
}  // namespace myxtts_ops

REGISTER_KERNEL_BUILDER(Name("MyxttsOps>FinaliseTerms").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::FinaliseTermsOp);
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>CombineTotal").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::CombineTotalOp);
REGISTER_KERNEL_BUILDER(Name("MyxttsOps>CombineTotalGrad").Device(::tensorflow::DEVICE_CPU),
                        myxtts_ops::CombineTotalGradOp);
