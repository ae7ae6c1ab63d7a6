// library.cpp — library-wide entry points: ABI version, devices, build info, threads.
#include <omp.h>

#include "common/common.h"
#include "gpu/gpu.h"

namespace {

std::string make_build_info() {
  std::string s = "cpu";
#if defined(__AVX512BF16__)
  s += "+avx512bf16";
#elif defined(__AVX512F__)
  s += "+avx512f";
#elif defined(__AVX2__)
  s += "+avx2";
#endif
  s += " openmp=" + std::to_string(_OPENMP);
#ifdef MP_HAVE_CUDA
  s += " cuda=1";
#else
  s += " cuda=0";
#endif
#ifdef MP_HAVE_CUBLAS
  s += " cublas=1";
#else
  s += " cublas=0";
#endif
  return s;
}

}  // namespace

extern "C" {

MP_API int32_t mp_abi_version(void) { return MP_ABI_VERSION; }

MP_API int32_t mp_device_count(void) { return mp::gpu::device_count(); }

MP_API const char *mp_build_info(void) {
  static const std::string info = make_build_info();
  return info.c_str();
}

MP_API int32_t mp_set_num_threads(int32_t n) {
  mp::set_threads(n);
  return mp::threads();
}

MP_API int32_t mp_get_num_threads(void) { return mp::threads(); }

MP_API size_t mp_struct_size(const char *name) {
  if (!name) return 0;
  struct Entry {
    const char *name;
    size_t size;
  };
  static const Entry table[] = {
      {"mp_rope_params", sizeof(mp_rope_params)},
      {"mp_model_config", sizeof(mp_model_config)},
      {"mp_engine_params", sizeof(mp_engine_params)},
      {"mp_engine_info", sizeof(mp_engine_info)},
      {"mp_attention_params", sizeof(mp_attention_params)},
      {"mp_session_params", sizeof(mp_session_params)},
      {"mp_session_info", sizeof(mp_session_info)},
      {"mp_sampling_params", sizeof(mp_sampling_params)},
      {"mp_lsh_params", sizeof(mp_lsh_params)},
      {"mp_lsh_index_info", sizeof(mp_lsh_index_info)},
      {"mp_lsh_stats", sizeof(mp_lsh_stats)},
  };
  for (const Entry &e : table)
    if (std::strcmp(e.name, name) == 0) return e.size;
  return 0;
}

}  // extern "C"
