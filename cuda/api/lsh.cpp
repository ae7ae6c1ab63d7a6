// lsh.cpp — the exported MagicPIG entry points (magicpig.h, "MagicPIG" section): thin
// validation around cpu/lsh_hash, cpu/lsh_index, cpu/sampled_attention and
// cpu/attention_baselines.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <vector>

#include "common/common.h"
#include "cpu/attention_baselines.h"
#include "cpu/huge_alloc.h"
#include "cpu/lsh_hash.h"
#include "cpu/lsh_index.h"
#include "cpu/sampled_attention.h"
#include "gpu/gpu.h"

// A standalone index: the LSH structure plus its own copy of K and V, [Hkv][cap][d].
struct mp_lsh_index {
  std::unique_ptr<mp::lsh::Index> index;
  int32_t kv_dtype = MP_DTYPE_F32;
  int hkv = 0, d = 0;
  int64_t cap = 0;
  std::unique_ptr<uint8_t, mp::HugeFree> k, v;  // huge pages: rows are gathered at random

  size_t esz() const { return mp::dtype_size(kv_dtype); }

  // Makes room for `need` tokens per head, keeping the first n.
  void reserve(int64_t need, int64_t n) {
    if (need <= cap) return;
    const int64_t nc = std::max<int64_t>(need, cap + cap / 2);
    const size_t row = (size_t)d * esz();
    std::unique_ptr<uint8_t, mp::HugeFree> nk((uint8_t *)mp::huge_alloc((size_t)hkv * nc * row));
    std::unique_ptr<uint8_t, mp::HugeFree> nv((uint8_t *)mp::huge_alloc((size_t)hkv * nc * row));
    for (int h = 0; h < hkv && n > 0; h++) {
      std::memcpy(nk.get() + (size_t)h * nc * row, k.get() + (size_t)h * cap * row, n * row);
      std::memcpy(nv.get() + (size_t)h * nc * row, v.get() + (size_t)h * cap * row, n * row);
    }
    k.swap(nk);
    v.swap(nv);
    cap = nc;
  }

  // Copies m tokens ([Hkv][m][d]) to ids n .. n+m−1.
  void copy_in(const void *keys, const void *values, int64_t n, int64_t m) {
    const size_t row = (size_t)d * esz();
#pragma omp parallel for num_threads(mp::threads()) schedule(static)
    for (int h = 0; h < hkv; h++) {
      std::memcpy(k.get() + ((size_t)h * cap + n) * row, (const uint8_t *)keys + (size_t)h * m * row,
                  m * row);
      std::memcpy(v.get() + ((size_t)h * cap + n) * row,
                  (const uint8_t *)values + (size_t)h * m * row, m * row);
    }
  }

  mp::lsh::KVView view() const {
    mp::lsh::KVView kv;
    kv.k = k.get();
    kv.v = v.get();
    kv.dtype = kv_dtype;
    kv.head_rows = cap;
    kv.base = 0;
    return kv;
  }
};

namespace {

mp::lsh::Params to_params(const mp_lsh_params *p) {
  MP_CHECK(p, MP_ERR_INVALID, "LSH parameters are required");
  MP_CHECK(p->size >= sizeof(mp_lsh_params), MP_ERR_INVALID,
           "mp_lsh_params size \"%zu\" is smaller than %zu: fill it with mp_lsh_default_params",
           p->size, sizeof(mp_lsh_params));
  mp::lsh::Params q;
  q.K = p->k;
  q.L = p->l;
  q.seed = p->seed;
  q.eps = p->eps;
  q.center = p->center != 0;
  q.tail_max = p->tail_max;
  return q;
}

void check_kv_dtype(int32_t dtype) {
  MP_CHECK(dtype == MP_DTYPE_F32 || dtype == MP_DTYPE_BF16, MP_ERR_UNSUPPORTED,
           "KV dtype \"%s\" is not supported: use F32 or BF16", mp::dtype_name(dtype));
}

struct BatchHolder {
  std::vector<const mp::lsh::Index *> idx;
  std::vector<mp::lsh::KVView> kv;
  mp::lsh::Batch batch;
  BatchHolder(mp_lsh_index *const *in, int32_t B, const float *q, int32_t H,
              const uint16_t *qcodes) {
    MP_CHECK(in && B >= 1, MP_ERR_INVALID, "a batch of at least one index is required");
    MP_CHECK(q, MP_ERR_INVALID, "queries are required");
    for (int b = 0; b < B; b++) {
      MP_CHECK(in[b], MP_ERR_INVALID, "index %d of the batch is null", b);
      idx.push_back(in[b]->index.get());
      kv.push_back(in[b]->view());
    }
    batch.idx = idx.data();
    batch.kv = kv.data();
    batch.B = B;
    batch.H = H;
    batch.q = q;
    batch.qcodes = qcodes;
  }
};

}  // namespace

extern "C" {

MP_API int32_t mp_lsh_projection(uint64_t seed, int32_t d, int32_t K, int32_t L, float *R,
                                 char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(d >= 1 && K >= 1 && K <= 16 && L >= 1 && R, MP_ERR_INVALID,
             "invalid projection shape: d %d, K %d, L %d", d, K, L);
    mp::lsh::projection(seed, d, K, L, R);
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_hash(int32_t backend, const float *R, const float *x, int32_t n,
                           int32_t d, int32_t K, int32_t L, uint16_t *codes, char *err,
                           size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(d >= 1 && K >= 1 && K <= 16 && L >= 1 && n >= 0, MP_ERR_INVALID,
             "invalid hash shape: n %d, d %d, K %d, L %d", n, d, K, L);
    MP_CHECK(R && ((x && codes) || n == 0), MP_ERR_INVALID, "R, x and codes are required");
    if (backend == MP_BACKEND_CUDA) {
      mp::gpu::lsh_hash(R, x, n, d, K, L, codes);
      return MP_OK;
    }
    MP_CHECK(backend == MP_BACKEND_CPU || backend == MP_BACKEND_AUTO, MP_ERR_INVALID,
             "unknown backend %d", backend);
    auto P = mp::lsh::Projection::from_matrix(R, d, K, L);
    mp::lsh::hash_rows(*P, x, n, d, codes, L, 1);
    return MP_OK;
  });
}

MP_API void mp_lsh_default_params(mp_lsh_params *p) {
  if (!p) return;
  mp::lsh::Params d;
  p->size = sizeof(mp_lsh_params);
  p->k = d.K;
  p->l = d.L;
  p->seed = d.seed;
  p->eps = d.eps;
  p->center = d.center ? 1 : 0;
  p->tail_max = d.tail_max;
}

MP_API int32_t mp_lsh_index_create(const mp_lsh_params *p, int32_t n_kv_heads,
                                   int32_t head_dim, int32_t kv_dtype, const void *keys,
                                   const void *values, int64_t n, mp_lsh_index **out,
                                   char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out, MP_ERR_INVALID, "out is required");
    *out = nullptr;
    check_kv_dtype(kv_dtype);
    MP_CHECK(n >= 0 && (n == 0 || (keys && values)), MP_ERR_INVALID,
             "keys and values of %lld tokens are required", (long long)n);
    auto h = std::make_unique<mp_lsh_index>();
    h->index = std::make_unique<mp::lsh::Index>(to_params(p), n_kv_heads, head_dim);
    h->kv_dtype = kv_dtype;
    h->hkv = n_kv_heads;
    h->d = head_dim;
    h->reserve(std::max<int64_t>(n, 1), 0);
    if (n > 0) {
      h->copy_in(keys, values, 0, n);
      mp::lsh::KeyRows kr{h->k.get(), kv_dtype, h->cap};
      h->index->add(kr, n, true);  // a build sorts everything; the tail is for appends
    }
    *out = h.release();
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_index_append(mp_lsh_index *idx, const void *keys, const void *values,
                                   int64_t m, int32_t merge, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(idx, MP_ERR_INVALID, "index is required");
    MP_CHECK(m >= 0 && (m == 0 || (keys && values)), MP_ERR_INVALID,
             "keys and values of %lld tokens are required", (long long)m);
    const int64_t n = idx->index->n();
    idx->reserve(n + m, n);
    if (m > 0) idx->copy_in(keys, values, n, m);
    mp::lsh::KeyRows kr{idx->k.get() + (size_t)n * idx->d * idx->esz(), idx->kv_dtype, idx->cap};
    idx->index->add(kr, m, merge != 0);
    return MP_OK;
  });
}

MP_API void mp_lsh_index_free(mp_lsh_index *idx) { delete idx; }

MP_API int32_t mp_lsh_index_get_info(const mp_lsh_index *idx, mp_lsh_index_info *out) {
  if (!idx || !out || out->size < sizeof(mp_lsh_index_info)) return MP_ERR_INVALID;
  const mp::lsh::Index &I = *idx->index;
  const mp::lsh::Params &p = I.params();
  const mp::lsh::Index::Bytes b = I.bytes();
  out->n_tokens = I.n();
  out->n_blocked = I.n_blocked();
  out->n_tail = I.n_tail();
  out->n_kv_heads = I.n_kv_heads();
  out->head_dim = I.head_dim();
  out->kv_dtype = idx->kv_dtype;
  out->k = p.K;
  out->l = p.L;
  out->center = p.center ? 1 : 0;
  out->seed = p.seed;
  out->eps = p.eps;
  out->entry_bytes = b.entries;
  out->offset_bytes = b.offsets;
  out->tail_bytes = b.tail;
  out->norm_bytes = b.norms;
  out->kv_bytes = (int64_t)(2 * (size_t)idx->hkv * idx->cap * idx->d * idx->esz());
  out->bytes_per_token =
      I.n() > 0 ? (double)(b.entries + b.offsets + b.tail) / ((double)I.n() * I.n_kv_heads())
                : 0.0;
  return MP_OK;
}

MP_API int32_t mp_lsh_index_get_codes(const mp_lsh_index *idx, int32_t head, int64_t start,
                                      int64_t count, uint16_t *codes, char *err,
                                      size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(idx && codes, MP_ERR_INVALID, "index and codes are required");
    const mp::lsh::Index &I = *idx->index;
    MP_CHECK(head >= 0 && head < I.n_kv_heads(), MP_ERR_INVALID, "KV head \"%d\" is out of range",
             head);
    MP_CHECK(start >= 0 && count >= 0 && start + count <= I.n(), MP_ERR_INVALID,
             "token range %lld + %lld is outside 0..%lld", (long long)start, (long long)count,
             (long long)I.n());
    I.codes(head, start, count, codes);
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_index_get_table(const mp_lsh_index *idx, int32_t head, int32_t table,
                                      uint32_t *offsets, int32_t *indices, char *err,
                                      size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(idx && offsets && (indices || idx->index->n() == 0), MP_ERR_INVALID,
             "index, offsets and indices are required");
    const mp::lsh::Index &I = *idx->index;
    MP_CHECK(head >= 0 && head < I.n_kv_heads(), MP_ERR_INVALID, "KV head \"%d\" is out of range",
             head);
    MP_CHECK(table >= 0 && table < I.params().L, MP_ERR_INVALID, "table \"%d\" is out of range",
             table);
    I.table(head, table, offsets, indices);
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_index_get_mean(const mp_lsh_index *idx, float *mean, float *norms,
                                     char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(idx, MP_ERR_INVALID, "index is required");
    const mp::lsh::Index &I = *idx->index;
    for (int h = 0; h < I.n_kv_heads(); h++) {
      if (mean) std::memcpy(mean + (size_t)h * I.head_dim(), I.head(h).mean.data(),
                            sizeof(float) * I.head_dim());
      if (norms) std::memcpy(norms + (size_t)h * I.n(), I.head(h).norms.data(),
                             sizeof(float) * I.n());
    }
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_retrieve(mp_lsh_index *const *idx, int32_t B, const float *q,
                               int32_t H, const uint16_t *qcodes, int32_t flags, int64_t cap,
                               int32_t *indices, int32_t *nnz, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(nnz, MP_ERR_INVALID, "nnz is required");
    MP_CHECK(cap >= 0, MP_ERR_INVALID, "capacity \"%lld\" must be >= 0", (long long)cap);
    BatchHolder bh(idx, B, q, H, qcodes);
    mp::lsh::retrieve(bh.batch, flags, cap, indices, nnz, nullptr);
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_retrieve_gpu(mp_lsh_index *const *idx, int32_t B, int32_t H,
                                   const uint16_t *qcodes, int64_t cap, int32_t *indices,
                                   int32_t *nnz, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(idx && B >= 1 && qcodes && nnz && cap >= 0 && (cap == 0 || indices),
             MP_ERR_INVALID, "indexes, query codes, nnz (and indices for cap > 0) are required");
    const mp::lsh::Index *I0 = idx[0] ? idx[0]->index.get() : nullptr;
    MP_CHECK(I0, MP_ERR_INVALID, "index 0 of the batch is null");
    const int hkv = I0->n_kv_heads(), L = I0->params().L;
    MP_CHECK(H >= hkv && H % hkv == 0, MP_ERR_INVALID,
             "query heads \"%d\" must be a multiple of the index's %d KV heads", H, hkv);
    const int G = H / hkv;
    int64_t words = 0;
    for (int b = 0; b < B; b++) {
      MP_CHECK(idx[b], MP_ERR_INVALID, "index %d of the batch is null", b);
      const mp::lsh::Index &I = *idx[b]->index;
      MP_CHECK(I.n_kv_heads() == hkv && I.params().L == L, MP_ERR_INVALID,
               "index %d of the batch has another shape than index 0", b);
      words = std::max<int64_t>(words, (I.n_blocked() + 63) / 64);
    }
    std::vector<mp::gpu::RetrieveItemHost> items;
    std::vector<const void *> regions;
    std::vector<size_t> region_bytes;
    for (int b = 0; b < B; b++) {
      const mp::lsh::Index &I = *idx[b]->index;
      const int stride = (1 << I.params().K) + 1;
      for (const mp::lsh::Block &blk : I.blocks()) {
        regions.push_back(blk.offsets.data());
        region_bytes.push_back(mp::pinnable_bytes(blk.offsets.size() * sizeof(uint32_t)));
        regions.push_back(blk.entries.data());
        region_bytes.push_back(mp::pinnable_bytes(blk.entries.size() * sizeof(uint16_t)));
        for (int h = 0; h < H; h++)
          items.push_back({I.offsets(blk, h / G, 0), I.entries(blk, h / G, 0), blk.n, stride,
                           b * H + h, blk.start / 64});
      }
    }
    std::vector<uint64_t> bits((size_t)B * H * words);
    mp::gpu::op_lsh_retrieve(items.data(), (int)items.size(), qcodes, B * H, L, words,
                             regions.data(), region_bytes.data(), (int)regions.size(),
                             bits.data(), nnz);
    for (int64_t j = 0; j < (int64_t)B * H && cap > 0; j++) {
      int64_t k = 0;
      for (int64_t w = 0; w < words && k < cap; w++)
        for (uint64_t m = bits[(size_t)(j * words + w)]; m && k < cap; m &= m - 1)
          indices[j * cap + k++] = (int32_t)(w * 64 + __builtin_ctzll(m));
    }
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_attention(mp_lsh_index *const *idx, int32_t B, const float *q,
                                int32_t H, const uint16_t *qcodes, int32_t flags, float *out,
                                float *lse2, int32_t *nnz, mp_lsh_stats *stats, char *err,
                                size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out && lse2, MP_ERR_INVALID, "out and lse2 are required");
    MP_CHECK(!stats || stats->size >= sizeof(mp_lsh_stats), MP_ERR_INVALID,
             "mp_lsh_stats size is too small");
    BatchHolder bh(idx, B, q, H, qcodes);
    mp::lsh::Stats st;
    mp::lsh::attention(bh.batch, flags, nullptr, nullptr, 0, out, lse2, nnz, &st);
    if (stats) {
      stats->rows = st.rows;
      stats->sampled = st.sampled;
      stats->entries = st.entries;
      stats->bytes = st.bytes;
      stats->tasks = st.tasks;
    }
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_attention_offload(mp_lsh_index *const *idx, int32_t B, const float *q,
                                        int32_t H, const uint16_t *qcodes, int32_t flags,
                                        const uint8_t *offload_kv, int64_t off_cap,
                                        int32_t *off_ids, int32_t *off_n, int32_t *handed,
                                        float *out, float *lse2, int32_t *nnz, char *err,
                                        size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out && lse2 && offload_kv && off_n && handed, MP_ERR_INVALID,
             "out, lse2, offload_kv, off_n and handed are required");
    MP_CHECK(off_cap >= 0 && (off_cap == 0 || off_ids), MP_ERR_INVALID,
             "off_ids is required for a capacity \"%lld\"", (long long)off_cap);
    BatchHolder bh(idx, B, q, H, qcodes);
    struct Sink {
      int64_t cap;
      int32_t *ids, *n;
      int32_t calls = 0;
      std::vector<int32_t> times;  // [B·Hkv] how often each KV head was handed over
      std::mutex mu;               // `ready` may run on several pool threads at once
    } sink;
    sink.cap = off_cap, sink.ids = off_ids, sink.n = off_n;
    sink.times.assign((size_t)B * bh.batch.idx[0]->n_kv_heads(), 0);
    mp::lsh::Offload off;
    off.kv_heads = offload_kv;
    off.ctx = &sink;
    off.ready = [](void *ctx, const mp::lsh::OffloadSamples &smp) {
      Sink &k = *static_cast<Sink *>(ctx);
      std::lock_guard<std::mutex> lock(k.mu);
      k.calls++;
      for (size_t g = 0; g < k.times.size(); g++) k.times[g] += smp.kv[g];
      for (int b = 0; b < smp.B; b++)
        for (int h = 0; h < smp.H; h++) {
          const size_t bh = (size_t)b * smp.H + h;
          if (!smp.kv[(size_t)b * smp.Hkv + h / smp.G]) continue;
          std::vector<int32_t> v = smp.ids[bh];
          std::sort(v.begin(), v.end());
          k.n[bh] = (int32_t)v.size();
          const size_t m = std::min<size_t>(v.size(), (size_t)k.cap);
          if (m) std::copy(v.begin(), v.begin() + (int64_t)m, k.ids + bh * k.cap);
        }
    };
    if (flags & MP_LSH_OFFLOAD_BLOCKS) {  // the tail only, no hand-offs
      off.blocks = true;
      off.ready = nullptr;
      flags &= ~MP_LSH_OFFLOAD_BLOCKS;
    }
    bh.batch.offload = &off;
    std::fill(off_n, off_n + (size_t)B * H, 0);
    mp::lsh::attention(bh.batch, flags, nullptr, nullptr, 0, out, lse2, nnz, nullptr);
    for (size_t g = 0; g < sink.times.size() && !off.blocks; g++)
      MP_CHECK(sink.times[g] == (offload_kv[g] ? 1 : 0), MP_ERR_INTERNAL,
               "KV head %zu of the batch was handed over %d times", g, sink.times[g]);
    *handed = sink.calls;
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_attention_sets(mp_lsh_index *const *idx, int32_t B, const float *q,
                                     int32_t H, const int32_t *sets, const int32_t *set_n,
                                     int64_t set_cap, int32_t flags, float *out, float *lse2,
                                     char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(out && lse2 && sets && set_n, MP_ERR_INVALID,
             "out, lse2, sets and set_n are required");
    MP_CHECK(set_cap >= 0, MP_ERR_INVALID, "capacity \"%lld\" must be >= 0", (long long)set_cap);
    BatchHolder bh(idx, B, q, H, nullptr);
    mp::lsh::attention(bh.batch, flags, sets, set_n, set_cap, out, lse2, nullptr, nullptr);
    return MP_OK;
  });
}

MP_API int32_t mp_lsh_collision_weights(int32_t k, int32_t l, float eps, const float *cos,
                                        int64_t n, float *u, float *lnw, char *err,
                                        size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    MP_CHECK(k >= 1 && k <= 16 && l >= 2 && eps >= 0.0f && n >= 0, MP_ERR_INVALID,
             "invalid parameters: k %d, l %d, eps %g, n %lld", k, l, (double)eps, (long long)n);
    MP_CHECK(n == 0 || (cos && u && lnw), MP_ERR_INVALID, "cos, u and lnw are required");
    mp::lsh::collision_weights(k, l, eps, cos, n, u, lnw);
    return MP_OK;
  });
}

static mp::baseline::KV raw_kv(int32_t kv_dtype, const void *keys, const void *values,
                               int64_t n, int32_t hkv, int32_t d, const float *q,
                               const float *out, const float *lse2) {
  check_kv_dtype(kv_dtype);
  MP_CHECK(n >= 0 && (n == 0 || (keys && values)) && q && out && lse2, MP_ERR_INVALID,
           "keys, values, queries, out and lse2 are required");
  MP_CHECK(hkv >= 1 && d >= 1, MP_ERR_INVALID, "invalid shape: %d KV heads, head dim %d", hkv, d);
  mp::baseline::KV kv;
  kv.view.k = keys;
  kv.view.v = values;
  kv.view.dtype = kv_dtype;
  kv.view.head_rows = n;
  kv.view.base = 0;
  kv.n = n;
  kv.Hkv = hkv;
  kv.d = d;
  return kv;
}

MP_API int32_t mp_attention_topk(int32_t kv_dtype, const void *keys, const void *values,
                                 int64_t n, int32_t n_kv_heads, int32_t head_dim,
                                 const float *q, int32_t H, float budget, float *out,
                                 float *lse2, int32_t *nsel, char *err, size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    auto kv = raw_kv(kv_dtype, keys, values, n, n_kv_heads, head_dim, q, out, lse2);
    mp::baseline::topk(kv, q, H, budget, out, lse2, nsel);
    return MP_OK;
  });
}

MP_API int32_t mp_attention_quest(int32_t kv_dtype, const void *keys, const void *values,
                                  int64_t n, int32_t n_kv_heads, int32_t head_dim,
                                  const float *q, int32_t H, float budget, int32_t page_size,
                                  float *out, float *lse2, int32_t *nsel, char *err,
                                  size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    auto kv = raw_kv(kv_dtype, keys, values, n, n_kv_heads, head_dim, q, out, lse2);
    mp::baseline::quest(kv, q, H, budget, page_size, out, lse2, nsel);
    return MP_OK;
  });
}

MP_API int32_t mp_attention_oracle(int32_t kv_dtype, const void *keys, const void *values,
                                   int64_t n, int32_t n_kv_heads, int32_t head_dim,
                                   const float *q, int32_t H, float budget, uint64_t seed,
                                   float *out, float *lse2, int32_t *nsel, char *err,
                                   size_t err_cap) {
  return mp::guard(err, err_cap, [&] {
    auto kv = raw_kv(kv_dtype, keys, values, n, n_kv_heads, head_dim, q, out, lse2);
    mp::baseline::oracle(kv, q, H, budget, seed, out, lse2, nsel);
    return MP_OK;
  });
}

}  // extern "C"
