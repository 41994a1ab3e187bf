// XLA typed-FFI handlers of the masked mel loss: the custom-call targets the
// XLA kernels (csrc/tf/mel_loss_xla.cc) lower the two ops to. No TensorFlow
// header: the handlers only see xla/ffi/api/ffi.h and csrc/kernels.
#pragma once

#include <string>

namespace myxtts_ops {

// Custom-call target names (one per op, shared by every platform).
inline constexpr char kFfiForwardTarget[] = "myxtts_ops_masked_mel_loss";
inline constexpr char kFfiBackwardTarget[] = "myxtts_ops_masked_mel_loss_grad";

// Registers the handlers with the XLA FFI registry of this process: "Host"
// always, "CUDA" when built with CUDA. Idempotent; returns an empty string
// on success, else what failed.
std::string register_ffi_handlers();

}  // namespace myxtts_ops
