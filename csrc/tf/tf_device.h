// TF glue shared by the OpKernels of every op: the CPU thread pool as the
// kernels' ParallelFor, and the CUDA stream TF gives the op.
#pragma once

#include <algorithm>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "kernels/mel_loss_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/lib/core/threadpool.h"
#if MYXTTS_OPS_WITH_CUDA
#include "tensorflow/core/framework/device_base.h"
#include "xla/stream_executor/stream.h"
#endif

namespace myxtts_ops {

// One contiguous block of work units per pool thread: the kernels' units are
// equal, so finer, adaptive blocks only add scheduling overhead.
inline ParallelFor TfParallelFor(::tensorflow::OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [pool](int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t threads = std::max<int64_t>(1, pool->NumThreads());
    const int64_t block = std::max<int64_t>(1, (n + threads - 1) / threads);
    // The constructor, not SchedulingParams::Fixed(), which TF 2.16 lacks.
    using Pool = ::tsl::thread::ThreadPool;
    pool->ParallelFor(
        n, Pool::SchedulingParams(Pool::SchedulingStrategy::kFixedBlockSize, {}, block), fn);
  };
}

enum class Device { kCpu, kGpu };

// Allocates output `key` (its index or its name) as a scalar holding `value`.
template <typename Key, typename T>
absl::Status ScalarOutput(::tensorflow::OpKernelContext* ctx, Key key, T value) {
  ::tensorflow::Tensor* out;
  TF_RETURN_IF_ERROR(ctx->allocate_output(key, ::tensorflow::TensorShape({}), &out));
  out->scalar<T>()() = value;
  return absl::OkStatus();
}

// Runs an OpKernel's work with a failed host allocation (the kernels'
// per-sample buffers, the staged lengths: a size the batch sets) turned into
// a ResourceExhausted error. An exception must not cross TF's frames: there it
// ends the process. Safe because the kernels allocate only between parallel
// loops, never inside one; an allocation failure inside TF's own ParallelFor
// scheduling (blocks already running on this frame's buffers) is not covered.
template <typename Work>
void ComputeOrExhausted(::tensorflow::OpKernelContext* ctx, Work&& work) {
  try {
    work();
  } catch (const std::bad_alloc&) {
    ctx->SetStatus(::tensorflow::errors::ResourceExhausted(
        ctx->op_kernel().type_string(), ": out of host memory for its per-sample buffers (batch ",
        ctx->num_inputs() > 0 && ctx->input(0).dims() > 0 ? ctx->input(0).dim_size(0) : 0,
        "); use a smaller batch"));
  }
}

#if MYXTTS_OPS_WITH_CUDA
// The cudaStream_t TF runs this op's device work on (never the default stream).
inline void* GpuStream(::tensorflow::OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}

// `staged` (pageable host memory, so the copy has read it when the call
// returns) into a new int32 device tensor, queued on the op's stream. Callers
// copy TF's host inputs here first: those may be pinned, and an async copy
// from pinned memory reads it after Compute returns, when TF may reuse it.
inline absl::Status CopyStagedToDevice(::tensorflow::OpKernelContext* ctx,
                                       const std::vector<int32_t>& staged,
                                       ::tensorflow::Tensor* device_tensor) {
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      ::tensorflow::DT_INT32, ::tensorflow::TensorShape({int64_t(staged.size())}), device_tensor));
  const std::string err =
      cuda_copy_to_device_async(const_cast<char*>(device_tensor->tensor_data().data()),
                                staged.data(), staged.size() * sizeof(int32_t), GpuStream(ctx));
  return err.empty() ? absl::OkStatus() : ::tensorflow::errors::Internal(err);
}
#endif

}  // namespace myxtts_ops
