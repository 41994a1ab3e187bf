// XLA kernels of MyxttsOps>MaskedMelLoss, its gradient, MyxttsOps>CheckLengths
// and MyxttsOps>CheckSizes: under jit_compile=True each of the first three
// lowers to exactly one typed-FFI custom call whose target is a handler in
// csrc/xla/mel_loss_ffi.cc (registered for "Host" and, in CUDA builds,
// "CUDA"); CheckSizes lowers to nothing. Shapes, ranks, the state shape and
// axis sizes are checked here, at compile time, with the OpKernels' checks and
// messages; length values are checked by the handler at run time.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def_builder.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/logging.h"
#include "tf/mel_loss_common.h"
#include "xla/ffi/api/ffi.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/layout_util.h"
#include "xla/shape_util.h"
#include "xla/mel_loss_ffi.h"

// Exported by libtensorflow_cc; declared here because xla/ffi/ffi_api.h pulls
// XLA-internal headers.
namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();
}

namespace myxtts_ops {
namespace {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::XlaOpKernel;
using ::tensorflow::XlaOpKernelContext;

constexpr char kForwardOp[] = "MyxttsOps>MaskedMelLoss";
constexpr char kBackwardOp[] = "MyxttsOps>MaskedMelLossGrad";
constexpr char kCheckLengthsOp[] = "MyxttsOps>CheckLengths";
constexpr char kCheckSizesOp[] = "MyxttsOps>CheckSizes";

std::string Register(const char* target, const char* platform, XLA_FFI_Handler* handler) {
  const XLA_FFI_Api* api = ::xla::ffi::GetXlaFfiApi();
  XLA_FFI_Error* error = ::xla::ffi::Ffi::RegisterStaticHandler(api, target, platform, handler);
  if (error == nullptr) return std::string();
  XLA_FFI_Error_GetMessage_Args args;
  args.struct_size = XLA_FFI_Error_GetMessage_Args_STRUCT_SIZE;
  args.extension_start = nullptr;
  args.error = error;
  api->XLA_FFI_Error_GetMessage(&args);
  std::string message = std::string("registering the XLA FFI handler ") + target + " for " +
                        platform + ": " + args.message;
  XLA_FFI_Error_Destroy_Args destroy;
  destroy.struct_size = XLA_FFI_Error_Destroy_Args_STRUCT_SIZE;
  destroy.extension_start = nullptr;
  destroy.error = error;
  api->XLA_FFI_Error_Destroy(&destroy);
  return message;
}

// Registers the handlers with this process's XLA FFI registry ("Host", and
// "CUDA" in CUDA builds) once; why the XLA path is unavailable, or "".
const std::string& FfiRegistrationError() {
  static const std::string error = [] {
    for (const auto& [platform, handlers] :
         {std::pair{"Host", host_ffi_handlers()}, std::pair{"CUDA", cuda_ffi_handlers()}}) {
      if (handlers.forward == nullptr) continue;  // no CUDA in this build
      std::string err = Register(kFfiForwardTarget, platform, handlers.forward);
      if (err.empty()) err = Register(kFfiBackwardTarget, platform, handlers.backward);
      if (err.empty()) err = Register(kFfiCheckLengthsTarget, platform, handlers.check_lengths);
      if (!err.empty()) return err;
    }
    return std::string();
  }();
  return error;
}

// The name of input `index` as the op registration spells it.
std::string InputName(XlaOpKernelContext* ctx, int index) {
  const ::tensorflow::OpDef* op_def = nullptr;
  if (::tensorflow::OpRegistry::Global()
          ->LookUpOpDef(ctx->op_kernel().type_string(), &op_def)
          .ok() &&
      index < op_def->input_arg_size())
    return op_def->input_arg(index).name();
  return "input " + std::to_string(index);
}

// The row-major shape of operand `index`, which must be static. `what` names
// the operation and `input` the operand in the error (InputName when empty).
absl::StatusOr<xla::Shape> RowMajorInputShape(XlaOpKernelContext* ctx, int index,
                                              const std::string& what = "masked_mel_loss",
                                              const std::string& input = "") {
  TF_ASSIGN_OR_RETURN(xla::Shape shape, ctx->InputXlaShape(index));
  if (shape.is_dynamic())
    return ::tensorflow::errors::InvalidArgument(
        what, " under XLA needs static shapes, got ", input.empty() ? InputName(ctx, index) : input,
        " with the dynamic shape ", xla::ShapeUtil::HumanString(shape),
        " (a size known only at run time, e.g. from tf.boolean_mask or tf.unique). Pad or "
        "slice it to a fixed size before the loss, or call the loss outside jit_compile=True.");
  xla::LayoutUtil::SetToDefaultLayout(&shape);  // row-major: what the kernels index
  return shape;
}

// Row-major shapes of the first `count` operands (each static).
absl::StatusOr<std::vector<xla::Shape>> RowMajorInputShapes(XlaOpKernelContext* ctx, int count) {
  std::vector<xla::Shape> shapes;
  for (int i = 0; i < count; ++i) {
    TF_ASSIGN_OR_RETURN(xla::Shape shape, RowMajorInputShape(ctx, i));
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

Dims DimsOf(const xla::Shape& shape) {
  return Dims(shape.dimensions().begin(), shape.dimensions().end());
}

xla::Shape RowMajor(xla::PrimitiveType type, const Dims& dims) {
  return xla::ShapeUtil::MakeShapeWithDescendingLayout(type, dims);
}

// huber_delta must be a compile-time constant under XLA (the wrapper passes a
// constant); it becomes the custom call's f64 attribute.
absl::Status ReadConstantHuberDelta(XlaOpKernelContext* ctx, int index, double* delta) {
  TF_ASSIGN_OR_RETURN(xla::Shape shape, ctx->InputXlaShape(index));
  TF_RETURN_IF_ERROR(CheckResult(check_huber_delta_shape(DimsOf(shape))));
  xla::Literal literal;
  const absl::Status constant = ctx->ConstantInput(index, &literal);
  if (!constant.ok())
    return ::tensorflow::errors::InvalidArgument(
        "huber_delta must be a compile-time constant inside an XLA-compiled function: ",
        constant.message());
  *delta = literal.Get<double>({});
  return CheckResult(huber_delta_error(*delta));
}

// The typed-FFI attribute dictionary (MLIR syntax); the double is written
// with 17 significant digits so it round-trips exactly.
std::string FfiAttributes(const OpAttrs& attrs, double huber_delta, bool with_normalization,
                          const char* extra = "") {
  char delta[64];
  std::snprintf(delta, sizeof(delta), "%.17e", huber_delta);
  std::string dict = "{loss_type = \"" + attrs.loss_type + "\"";
  if (with_normalization) dict += ", normalization = \"" + attrs.normalization + "\"";
  dict += std::string(", use_lengths = ") + (attrs.use_lengths ? "true" : "false");
  dict += std::string(", huber_delta = ") + delta + " : f64";
  dict += extra;
  return dict + "}";
}

xla::PrimitiveType OutputType(xla::PrimitiveType input) {
  return input == xla::F64 ? xla::F64 : xla::F32;
}

bool CompilesForGpu(OpKernelConstruction* ctx) {
  return ctx->device_type() == ::tensorflow::DeviceType(::tensorflow::DEVICE_GPU_XLA_JIT);
}

absl::Status CheckXlaPathAvailable(bool for_gpu, const char* op = "masked_mel_loss") {
  if (!FfiRegistrationError().empty())
    return ::tensorflow::errors::Unimplemented(
        "the myxtts_ops XLA custom calls are unavailable in this process: ",
        FfiRegistrationError());
  if (for_gpu && cuda_ffi_handlers().forward == nullptr)
    return ::tensorflow::errors::Unimplemented(
        "myxtts-ops was built without CUDA, so ", op,
        " has no XLA:GPU custom call; "
        "rebuild it with nvcc on PATH and MYXTTS_OPS_CUDA=on, or compile this function for "
        "the CPU");
  return absl::OkStatus();
}

class MaskedMelLossXla : public XlaOpKernel {
 public:
  explicit MaskedMelLossXla(OpKernelConstruction* ctx)
      : XlaOpKernel(ctx), for_gpu_(CompilesForGpu(ctx)) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, /*with_normalization=*/true));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, CheckXlaPathAvailable(for_gpu_));
    auto shapes = RowMajorInputShapes(ctx, 4);
    OP_REQUIRES_OK(ctx, shapes.status());
    const std::vector<xla::Shape>& operand_shapes = *shapes;
    MelShape shape;
    OP_REQUIRES_OK(
        ctx, CheckResult(check_mel_shapes(DimsOf(operand_shapes[0]), DimsOf(operand_shapes[1]),
                                          DimsOf(operand_shapes[2]), attrs_.use_lengths, &shape)));
    OP_REQUIRES_OK(ctx, CheckResult(check_state_shape(DimsOf(operand_shapes[3]))));
    double huber_delta = 0.0;
    OP_REQUIRES_OK(ctx, ReadConstantHuberDelta(ctx, 4, &huber_delta));

    const xla::PrimitiveType out = OutputType(operand_shapes[0].element_type());
    const xla::Shape result = xla::ShapeUtil::MakeTupleShape({
        RowMajor(out, {}),                     // loss
        RowMajor(out, {shape.batch}),          // per_sample
        RowMajor(xla::S64, {}),                // nonfinite_count
        RowMajor(xla::F64, {state::kSize}),    // new_state
        RowMajor(xla::F64, {2, shape.batch}),  // sample_weights
        RowMajor(xla::S64, {}),                // active_count
        RowMajor(xla::S64, {}),                // valid_count
        // workspace: only the CUDA handler reads it
        RowMajor(xla::U8, {for_gpu_ ? int64_t(cuda_forward_workspace_size(shape)) : 0}),
    });
    std::vector<xla::XlaOp> operands;
    for (int i = 0; i < 4; ++i) operands.push_back(ctx->Input(i));
    xla::XlaOp call = xla::CustomCallWithLayout(
        ctx->builder(), kFfiForwardTarget, operands, result, operand_shapes,
        FfiAttributes(attrs_, huber_delta, /*with_normalization=*/true),
        /*has_side_effect=*/false, /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    for (int i = 0; i < 7; ++i) ctx->SetOutput(i, xla::GetTupleElement(call, i));
  }

 private:
  OpAttrs attrs_;
  bool for_gpu_;
};

class MaskedMelLossGradXla : public XlaOpKernel {
 public:
  explicit MaskedMelLossGradXla(OpKernelConstruction* ctx)
      : XlaOpKernel(ctx), for_gpu_(CompilesForGpu(ctx)) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, /*with_normalization=*/false));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("grad_y_true_wanted", &grad_y_true_wanted_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, CheckXlaPathAvailable(for_gpu_));
    auto shapes = RowMajorInputShapes(ctx, 6);
    OP_REQUIRES_OK(ctx, shapes.status());
    const std::vector<xla::Shape>& operand_shapes = *shapes;
    MelShape shape;
    OP_REQUIRES_OK(
        ctx, CheckResult(check_mel_shapes(DimsOf(operand_shapes[0]), DimsOf(operand_shapes[1]),
                                          DimsOf(operand_shapes[2]), attrs_.use_lengths, &shape)));
    OP_REQUIRES_OK(
        ctx, CheckResult(check_grad_shapes(DimsOf(operand_shapes[3]), DimsOf(operand_shapes[4]),
                                           DimsOf(operand_shapes[5]), shape.batch)));
    double huber_delta = 0.0;
    OP_REQUIRES_OK(ctx, ReadConstantHuberDelta(ctx, 6, &huber_delta));

    // Skip d/dy_true when nothing reads it: its result then has no elements
    // and the output is a zero. tf2xla reports every output as required, so
    // the gradient function's grad_y_true_wanted is what usually decides.
    const bool want_grad_y_true =
        grad_y_true_wanted_ && ctx->op_kernel_context()->output_required(0);
    const xla::PrimitiveType type = operand_shapes[0].element_type();
    const Dims mel = DimsOf(operand_shapes[0]);
    const xla::Shape result = xla::ShapeUtil::MakeTupleShape({
        RowMajor(type, want_grad_y_true ? mel : Dims{0}),  // grad_y_true
        RowMajor(type, mel),                               // grad_y_pred
    });
    std::vector<xla::XlaOp> operands;
    for (int i = 0; i < 6; ++i) operands.push_back(ctx->Input(i));
    xla::XlaOp call = xla::CustomCallWithLayout(
        ctx->builder(), kFfiBackwardTarget, operands, result, operand_shapes,
        FfiAttributes(
            attrs_, huber_delta, /*with_normalization=*/false,
            want_grad_y_true ? ", want_grad_y_true = true" : ", want_grad_y_true = false"),
        /*has_side_effect=*/false, /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    const xla::XlaOp grad_y_pred = xla::GetTupleElement(call, 1);
    ctx->SetOutput(0, want_grad_y_true
                          ? xla::GetTupleElement(call, 0)
                          : xla::Broadcast(xla::ConvertElementType(
                                               xla::ConstantR0<float>(ctx->builder(), 0.0f), type),
                                           mel));
    ctx->SetOutput(1, grad_y_pred);
  }

 private:
  OpAttrs attrs_;
  bool for_gpu_;
  bool grad_y_true_wanted_ = true;
};

// An MLIR string literal: quotes and backslashes escaped, control characters
// as two-digit hex escapes (a raw newline ends the attribute text).
std::string MlirString(const std::string& text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out = "\"";
  for (char ch : text) {
    const auto byte = static_cast<unsigned char>(ch);
    if (byte < 0x20 || byte == 0x7f) {
      out += '\\';
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
      continue;
    }
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

// One custom call that refuses a bad entry at run time (the handler's
// message) and returns the lengths as int32. Its operand: int32 (the result
// aliased to it: no copy) or int64 as they are, any float type as float64
// (exact), so the handler sees three types and shows the value as passed.
class CheckLengthsXla : public XlaOpKernel {
 public:
  explicit CheckLengthsXla(OpKernelConstruction* ctx)
      : XlaOpKernel(ctx), for_gpu_(CompilesForGpu(ctx)) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_name", &input_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("note", &note_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("limit", &limit_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bound_notes", &bound_notes_));
    OP_REQUIRES_OK(ctx, CheckResult(length_limit_error(limit_)));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    // The axis sizes in `bounds` are compile-time constants here.
    std::vector<int64_t> bounds64;
    OP_REQUIRES_OK(ctx, ctx->ConstantInputAsIntVector(1, &bounds64));
    const std::vector<int32_t> bounds(bounds64.begin(), bounds64.end());
    int64_t limit = limit_;
    std::string note = note_;
    OP_REQUIRES_OK(
        ctx, CheckResult(pick_length_limit(limit_, note_, bounds.data(), int64_t(bounds.size()),
                                           bound_notes_, &limit, &note)));
    auto shape = RowMajorInputShape(ctx, 0, "the length check", input_name_);
    OP_REQUIRES_OK(ctx, shape.status());
    OP_REQUIRES(
        ctx, shape->dimensions().size() == 1,
        ::tensorflow::errors::InvalidArgument(input_name_, " must have shape [batch], got shape ",
                                              shape_string(DimsOf(*shape))));
    const Dims dims = DimsOf(*shape);
    const xla::PrimitiveType in_type = shape->element_type();
    const bool is_int = in_type == xla::S32 || in_type == xla::S64;
    xla::XlaOp operand = ctx->Input(0);
    if (!is_int) operand = xla::ConvertElementType(operand, xla::F64);
    const xla::Shape operand_shape = RowMajor(is_int ? in_type : xla::F64, dims);
    const xla::Shape result_shape = RowMajor(xla::S32, dims);
    if (for_gpu_ && cuda_ffi_handlers().check_lengths == nullptr) {
      // A build without CUDA on XLA:GPU: what the lengths meant before the
      // check existed (an entry outside [0, limit] clamped into it), so the
      // terms that worked there still compile; said once.
      static bool warned = [] {
        LOG(WARNING) << "myxtts_ops: built without CUDA, so check_lengths has no XLA:GPU "
                        "custom call; lengths are clamped, not refused, under XLA on the GPU";
        return true;
      }();
      (void)warned;
      xla::XlaBuilder* b = ctx->builder();
      xla::XlaOp lo, hi;
      if (in_type == xla::S32) {
        lo = xla::ConstantR0<int32_t>(b, 0);
        hi = xla::ConstantR0<int32_t>(b, int32_t(limit));
      } else if (in_type == xla::S64) {
        lo = xla::ConstantR0<int64_t>(b, 0);
        hi = xla::ConstantR0<int64_t>(b, limit);
      } else {
        lo = xla::ConstantR0<double>(b, 0.0);
        hi = xla::ConstantR0<double>(b, double(limit));
      }
      ctx->SetOutput(0, xla::ConvertElementType(xla::Clamp(lo, operand, hi), xla::S32));
      return;
    }
    OP_REQUIRES_OK(ctx, CheckXlaPathAvailable(for_gpu_, "check_lengths"));
    // How the handler writes a bad float value: as the float32 it was, or as float64.
    const int64_t value_bits = in_type == xla::F64 || is_int ? 64 : 32;
    const std::string attributes = "{input_name = " + MlirString(input_name_) +
                                   ", note = " + MlirString(note) +
                                   ", limit = " + std::to_string(limit) +
                                   " : i64, value_bits = " + std::to_string(value_bits) + " : i64}";
    std::vector<std::pair<xla::ShapeIndex, std::pair<int64_t, xla::ShapeIndex>>> aliasing;
    if (in_type == xla::S32) aliasing.push_back({{}, {0, {}}});
    xla::XlaOp call = xla::CustomCallWithLayout(
        ctx->builder(), kFfiCheckLengthsTarget, {operand}, result_shape, {operand_shape},
        attributes,
        // Side-effecting: XLA must run it even where nothing reads the result.
        /*has_side_effect=*/true, aliasing,
        /*literal=*/nullptr, xla::CustomCallSchedule::SCHEDULE_NONE,
        xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    ctx->SetOutput(0, call);
  }

 private:
  std::string input_name_;
  std::string note_;
  int64_t limit_ = 0;
  std::vector<std::string> bound_notes_;
  bool for_gpu_;
};

// Every size is a compile-time constant under XLA, so sizes that disagree
// fail the compilation with the OpKernel's message; nothing runs on device.
class CheckSizesXla : public XlaOpKernel {
 public:
  explicit CheckSizesXla(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("labels", &labels_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("expected_labels", &expected_labels_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    std::vector<int64_t> sizes64, expected64;
    OP_REQUIRES_OK(ctx, ctx->ConstantInputAsIntVector(0, &sizes64));
    OP_REQUIRES_OK(ctx, ctx->ConstantInputAsIntVector(1, &expected64));
    const std::vector<int32_t> sizes(sizes64.begin(), sizes64.end());
    const std::vector<int32_t> expected(expected64.begin(), expected64.end());
    OP_REQUIRES_OK(
        ctx, CheckResult(size_mismatch_error(sizes.data(), int64_t(sizes.size()), expected.data(),
                                             int64_t(expected.size()), labels_, expected_labels_)));
  }

 private:
  std::vector<std::string> labels_;
  std::vector<std::string> expected_labels_;
};

::tensorflow::OpKernel* NewForwardXla(OpKernelConstruction* ctx) {
  return new MaskedMelLossXla(ctx);
}
::tensorflow::OpKernel* NewBackwardXla(OpKernelConstruction* ctx) {
  return new MaskedMelLossGradXla(ctx);
}
::tensorflow::OpKernel* NewCheckLengthsXla(OpKernelConstruction* ctx) {
  return new CheckLengthsXla(ctx);
}
::tensorflow::OpKernel* NewCheckSizesXla(OpKernelConstruction* ctx) {
  return new CheckSizesXla(ctx);
}

// Through the text listing: the KernelList proto is not safe to walk from
// this library (its protobuf runtime is TF's).
bool HasKernelFor(const std::string& op, const std::string& device) {
  const std::string listing = ::tensorflow::KernelsRegisteredForOp(op);
  return listing.find("device='" + device + "'") != std::string::npos;
}

// TF builds the XLA kernels of every REGISTER_XLA_OP once per process, at the
// first XLA compilation; a library loaded after that has its REGISTER_XLA_OP
// recorded but never turned into kernels. Detect that (a stock op already has
// its XLA kernel) and register ours with the kernel registry directly.
struct LateXlaKernelRegistration {
  LateXlaKernelRegistration() {
    if (!FfiRegistrationError().empty())
      LOG(WARNING) << "myxtts_ops: " << FfiRegistrationError()
                   << "; masked_mel_loss falls back to the pure-TF reference under XLA";
    for (const std::string& backend : ::tensorflow::XlaOpRegistry::BackendNames()) {
      if (!HasKernelFor("AddV2", backend)) continue;  // not built yet: REGISTER_XLA_OP serves
      using Factory = ::tensorflow::OpKernel* (*)(OpKernelConstruction*);
      const std::pair<const char*, Factory> kernels[] = {{kForwardOp, NewForwardXla},
                                                         {kBackwardOp, NewBackwardXla},
                                                         {kCheckLengthsOp, NewCheckLengthsXla},
                                                         {kCheckSizesOp, NewCheckSizesXla}};
      for (const auto& [op, factory] : kernels) {
        if (HasKernelFor(op, backend)) continue;
        const ::tensorflow::KernelDef* def =
            ::tensorflow::KernelDefBuilder(op).Device(backend.c_str()).Build();
        // Registrars live for the process, like REGISTER_KERNEL_BUILDER's.
        new ::tensorflow::kernel_factory::OpKernelRegistrar(def, "XlaJitOp", factory);
      }
    }
  }
};

}  // namespace
}  // namespace myxtts_ops

REGISTER_XLA_OP(Name("MyxttsOps>MaskedMelLoss").CompileTimeConstantInput("huber_delta"),
                myxtts_ops::MaskedMelLossXla);
REGISTER_XLA_OP(Name("MyxttsOps>MaskedMelLossGrad").CompileTimeConstantInput("huber_delta"),
                myxtts_ops::MaskedMelLossGradXla);
REGISTER_XLA_OP(Name("MyxttsOps>CheckLengths").CompileTimeConstantInput("bounds"),
                myxtts_ops::CheckLengthsXla);
REGISTER_XLA_OP(Name("MyxttsOps>CheckSizes")
                    .CompileTimeConstantInput("sizes")
                    .CompileTimeConstantInput("expected"),
                myxtts_ops::CheckSizesXla);

namespace myxtts_ops {
namespace {
// After the REGISTER_XLA_OPs above (same translation unit: in order).
const LateXlaKernelRegistration late_registration;
}  // namespace
}  // namespace myxtts_ops

// For myxtts_ops._loader (ctypes): why the XLA path is unavailable, or "".
extern "C" __attribute__((visibility("default"))) const char* myxtts_ops_xla_unavailable_reason() {
  return myxtts_ops::FfiRegistrationError().c_str();
}
