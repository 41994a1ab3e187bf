// Stand-in for mel_loss_cuda.cu and stop_loss_cuda.cu in builds without CUDA: every CUDA entry
// point reports that the library was built without it.
#include "mel_loss_kernels.h"
#include "stop_loss_kernels.h"

namespace myxtts_ops {
namespace {
const char kNoCuda[] =
    "myxtts-ops was built without CUDA; rebuild with nvcc on PATH and MYXTTS_OPS_CUDA=on";
}

bool built_with_cuda() { return false; }
int cuda_device_count() { return 0; }
size_t cuda_forward_workspace_size(const MelShape&) { return 0; }
size_t cuda_forward_header_size(int64_t, bool) { return 0; }
void cuda_forward_fill_header(void*, const LengthsView&, int64_t) {}
std::string mel_loss_forward_cuda(const ForwardArgs&, void*, const void*, size_t, void*) {
  return kNoCuda;
}
std::string mel_loss_backward_cuda(const BackwardArgs&, void*) { return kNoCuda; }
std::string cuda_copy_to_device_async(void*, const void*, size_t, void*) { return kNoCuda; }
std::string cuda_copy_to_host(void*, const void*, size_t, void*) { return kNoCuda; }
std::string cuda_copy_on_device(void*, const void*, size_t, void*) { return kNoCuda; }
std::string stop_loss_forward_cuda(const StopForwardArgs&, void*) { return kNoCuda; }
std::string stop_loss_backward_cuda(const StopBackwardArgs&, void*) { return kNoCuda; }

}  // namespace myxtts_ops
