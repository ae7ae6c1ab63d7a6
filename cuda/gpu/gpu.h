// gpu.h — the host-side interface of the CUDA backend, callable from C++ code that is
// compiled without nvcc. In a CPU-only build (no MP_HAVE_CUDA) every function here has
// an inline fallback: no devices, and anything that needs one fails with
// MP_ERR_NO_DEVICE.
#pragma once

#include <cstdint>

#include "common/common.h"

namespace mp::gpu {

#ifdef MP_HAVE_CUDA
// Usable CUDA devices (0 when the driver or device is missing). Never throws.
int device_count();
#else
inline int device_count() { return 0; }
#endif

}  // namespace mp::gpu
