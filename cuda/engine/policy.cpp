// policy.cpp — FALLBACK attention policy: exact dense attention for every method.
//
// Until the MagicPIG work lands its real policies (magicpig.md), MAGICPIG, TOPK, QUEST and
// ORACLE sessions attend every key exactly on their sparse layers, index nothing
// (n_indexed = 0, no index bytes, commit is a no-op) and count every key as attended:
// keys_attended = keys_offloaded = Σ over sparse layers and query heads of (pos + 1).
// Those files replace this one and keep the signatures of policy.h.
#include "engine/policy.h"

#include "cpu/attention.h"
#include "engine/engine.h"

namespace mp {

void policy_decode_attention(Session &s, int32_t layer, int64_t pos, const float *q,
                             float *out) {
  const mp_model_config &c = s.engine().config();
  const cpu::KvView kv{s.k_row(layer, 0, 0), s.v_row(layer, 0, 0), s.kv_dtype(), s.head_dim(),
                       s.head_stride()};
  cpu::attention(q, 1, c.n_heads, c.n_kv_heads, c.head_dim, pos, pos + 1, kv, out, nullptr);
  const double keys = (double)c.n_heads * (double)(pos + 1);
  s.add_key_stats(keys, keys);
}

void policy_commit(Session &) {}

void policy_truncate(Session &, int64_t) {}

int64_t policy_n_indexed(const Session &) { return 0; }

int64_t policy_host_bytes(const Session &) { return 0; }

void policy_save(const Session &, SnapshotWriter &) {}

bool policy_load_section(Session &, uint32_t, SnapshotReader &) { return false; }

}  // namespace mp
