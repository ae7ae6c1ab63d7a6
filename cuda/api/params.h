// params.h — reading versioned parameter structs and writing versioned info structs.
//
// A caller built against an older header passes a smaller `size`: the fields it knows are
// taken from it and the rest keep their defaults. A caller with a newer (larger) struct
// than this library knows is refused, since its extra fields would be ignored silently.
#pragma once

#include <algorithm>
#include <cstring>

#include "common/common.h"

namespace mp {

template <class T>
T read_params(const T *p, void (*defaults)(T *), const char *name) {
  MP_CHECK(p, MP_ERR_INVALID, "%s is NULL", name);
  MP_CHECK(p->size >= sizeof(size_t) && p->size <= sizeof(T), MP_ERR_INVALID,
           "%s.size \"%zu\" is invalid: must be at most sizeof(%s) = %zu (fill it with the "
           "*_default_params function)",
           name, p->size, name, sizeof(T));
  T out;
  defaults(&out);
  std::memcpy((void *)&out, (const void *)p, p->size);
  out.size = sizeof(T);
  return out;
}

// Copies `full` into `out` up to the caller's out->size (which is kept).
template <class T>
void write_info(const T &full, T *out) {
  const size_t n = std::min(out->size, sizeof(T));
  const size_t keep = out->size;
  std::memcpy((void *)out, (const void *)&full, n);
  out->size = keep;
}

}  // namespace mp
