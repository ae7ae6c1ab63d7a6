// embedding.cu — token embedding lookup.
//
// out[i][:] = f32(table[tokens[i]][:]) with table [vocab][dim] in F32, F16 or BF16 (the
// residual stream is f32). One block per token; threads stride over the row, so reads of
// the table row and writes of the output row are coalesced. A token outside [0, vocab)
// writes a zero row instead of reading out of bounds (the engine validates tokens before
// they get here; this only keeps a bad id from faulting the context).
#include <cuda_fp16.h>

#include "gpu/gpu.h"
#include "gpu/kernels.h"

namespace mp::gpu {

// ------------------------------------------------------------
// kernels

template <class T>
__device__ __forceinline__ float load_f32(const T *p);
template <>
__device__ __forceinline__ float load_f32<float>(const float *p) {
  return *p;
}
template <>
__device__ __forceinline__ float load_f32<bf16>(const bf16 *p) {
  return __bfloat162float(*p);
}
template <>
__device__ __forceinline__ float load_f32<__half>(const __half *p) {
  return __half2float(*p);
}

template <class T>
__global__ void embedding_kernel(const T *__restrict__ table, int vocab, int dim,
                                 const int32_t *__restrict__ tokens,
                                 float *__restrict__ out) {
  const int i = blockIdx.x;
  const int tok = tokens[i];
  float *o = out + (int64_t)i * dim;
  if (tok < 0 || tok >= vocab) {
    for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = 0.f;
    return;
  }
  const T *row = table + (int64_t)tok * dim;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = load_f32(row + c);
}

// ------------------------------------------------------------
// launchers

void embedding(int32_t dtype, const void *table, int vocab, int dim, const int32_t *tokens,
               int n, float *out, cudaStream_t s) {
  if (n <= 0 || dim <= 0) return;
  const int threads = dim >= 256 ? 256 : ((dim + 31) / 32) * 32;
  switch (dtype) {
    case MP_DTYPE_F32:
      embedding_kernel<float>
          <<<n, threads, 0, s>>>((const float *)table, vocab, dim, tokens, out);
      break;
    case MP_DTYPE_BF16:
      embedding_kernel<bf16><<<n, threads, 0, s>>>((const bf16 *)table, vocab, dim, tokens, out);
      break;
    case MP_DTYPE_F16:
      embedding_kernel<__half>
          <<<n, threads, 0, s>>>((const __half *)table, vocab, dim, tokens, out);
      break;
    default:
      MP_FAIL(MP_ERR_INVALID, "embedding: unknown dtype %d", dtype);
  }
  MP_CUDA_LAUNCH("embedding_kernel");
}

// ------------------------------------------------------------
// host-pointer op (tests)

void op_embedding(int32_t dtype, const void *table, int vocab, int dim, const int32_t *tokens,
                  int n, float *out) {
  require_device();
  Stream s;
  const size_t esz = dtype_size(dtype);
  DevBuf<uint8_t> d_table((size_t)vocab * dim * esz);
  to_device(d_table.p, (const uint8_t *)table, d_table.n, s);
  DevBuf<int32_t> d_tok = upload(tokens, (size_t)n, s);
  DevBuf<float> d_out((size_t)n * dim);
  embedding(dtype, d_table.p, vocab, dim, d_tok.p, n, d_out.p, s);
  to_host(out, d_out.p, d_out.n, s);
  s.sync();
}

}  // namespace mp::gpu
