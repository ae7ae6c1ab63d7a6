// cuda_backend_stub.cpp — CPU-only builds (no nvcc at build time): there is no CUDA
// forward pass, AUTO resolves to the CPU backend and asking for CUDA says why. Builds with
// CUDA get the real definitions from cuda_backend.cu.
#include "engine/backend.h"

#ifndef MP_HAVE_CUDA
namespace mp {

bool cuda_forward_available() { return false; }

std::unique_ptr<ForwardBackend> make_cuda_backend(Engine &) {
  MP_FAIL(MP_ERR_NO_DEVICE,
          "this build has no CUDA backend (nvcc was not found at build time): use backend CPU");
}

}  // namespace mp
#endif
