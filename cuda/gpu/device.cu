// device.cu — device discovery. cudart is linked statically; on a machine without a
// driver or GPU every runtime call fails cleanly, which counts as zero devices.
#include <cuda_runtime.h>

#include "gpu/gpu.h"

namespace mp::gpu {

int device_count() {
  int n = 0;
  cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    (void)cudaGetLastError();  // clear, so later calls do not see it
    return 0;
  }
  return n;
}

}  // namespace mp::gpu
