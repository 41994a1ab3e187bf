// XLA typed-FFI handlers of the masked mel loss and the length check: the
// custom-call targets the XLA kernels (csrc/tf/mel_loss_xla.cc) lower the ops
// to, and register.
// No TensorFlow header or library: the handlers only see the header-only
// xla/ffi/api/ffi.h and csrc/kernels.
#pragma once

#include "xla/ffi/api/c_api.h"

namespace myxtts_ops {

// Custom-call target names (one per op, shared by every platform).
inline constexpr char kFfiForwardTarget[] = "myxtts_ops_masked_mel_loss";
inline constexpr char kFfiBackwardTarget[] = "myxtts_ops_masked_mel_loss_grad";
inline constexpr char kFfiCheckLengthsTarget[] = "myxtts_ops_check_lengths";

// The handlers of one platform; null members where this build has none (CUDA
// without nvcc). They depend on nothing but the versioned FFI C API, so any
// XLA runtime (TF's, JAX's) can register them under the targets above.
struct FfiHandlers {
  XLA_FFI_Handler* forward = nullptr;
  XLA_FFI_Handler* backward = nullptr;
  XLA_FFI_Handler* check_lengths = nullptr;
};
FfiHandlers host_ffi_handlers();  // platform "Host" (XLA:CPU)
FfiHandlers cuda_ffi_handlers();  // platform "CUDA" (XLA:GPU)

}  // namespace myxtts_ops
