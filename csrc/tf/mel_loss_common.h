// TF glue shared by the OpKernels (mel_loss_op.cc) and the XLA kernels
// (mel_loss_xla.cc): attribute parsing and the bridge to the framework-free
// checks of csrc/kernels/mel_loss_checks.h.
#pragma once

#include <string>

#include "kernels/mel_loss_checks.h"
#include "kernels/mel_loss_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace myxtts_ops {

inline Dims DimsOf(const ::tensorflow::TensorShape& shape) {
  Dims dims(shape.dims());
  for (int i = 0; i < shape.dims(); ++i) dims[i] = shape.dim_size(i);
  return dims;
}

// An empty message is OK; anything else is the InvalidArgument message.
inline absl::Status CheckResult(const std::string& message) {
  return message.empty() ? absl::OkStatus() : ::tensorflow::errors::InvalidArgument(message);
}

// Attributes shared by both ops, read and checked once at construction.
struct OpAttrs {
  LossConfig config;
  bool use_lengths = true;
  std::string loss_type = "l1";
  std::string normalization = "per_sample";

  absl::Status Read(::tensorflow::OpKernelConstruction* ctx, bool with_normalization) {
    using ::tensorflow::DataType;
    TF_RETURN_IF_ERROR(ctx->GetAttr("loss_type", &loss_type));
    TF_RETURN_IF_ERROR(ctx->GetAttr("use_lengths", &use_lengths));
    if (with_normalization) TF_RETURN_IF_ERROR(ctx->GetAttr("normalization", &normalization));
    DataType t, tout;
    TF_RETURN_IF_ERROR(ctx->GetAttr("T", &t));
    TF_RETURN_IF_ERROR(ctx->GetAttr("Tout", &tout));
    const DataType expected =
        t == ::tensorflow::DT_DOUBLE ? ::tensorflow::DT_DOUBLE : ::tensorflow::DT_FLOAT;
    if (tout != expected)
      return ::tensorflow::errors::InvalidArgument(
          "Tout must be ", ::tensorflow::DataTypeString(expected), " for inputs of type ",
          ::tensorflow::DataTypeString(t), ", got ", ::tensorflow::DataTypeString(tout));
    return CheckResult(parse_loss_names(loss_type, normalization, &config));
  }
};

}  // namespace myxtts_ops
