// cuda_backend_pending.cpp — TEMPORARY: the CUDA forward pass is not written yet.
// AUTO resolves to the CPU backend meanwhile, and asking for CUDA says so. The GPU work
// deletes this file when it defines cuda_forward_available() and make_cuda_backend().
#include "engine/backend.h"

namespace mp {

bool cuda_forward_available() { return false; }

std::unique_ptr<ForwardBackend> make_cuda_backend(Engine &) {
  MP_FAIL(MP_ERR_UNSUPPORTED, "the CUDA forward pass is not built yet: use backend CPU");
}

}  // namespace mp
