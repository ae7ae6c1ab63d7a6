// snapshot.cpp — session snapshots (format in snapshot.h) and the 64-bit checksum.
//
// Hash64 follows the xxHash64 construction (4 lanes of 64-bit multiply-rotate over 32-byte
// stripes, then a merge and an avalanche), written from its published description; it
// runs at memory speed, so checksumming a multi-GB KV snapshot costs about as much as
// reading it.
//
// Header fields after the magic, in order (all little-endian):
//   u32 version, u32 header_bytes (bytes of the fields that follow, up to the first section)
//   i32 n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab_size, kv_dtype
//   i64 n_tokens; f64 keys_attended, keys_offloaded
//   i32 method, lsh_k, lsh_l, sinks, window, gen_buffer; f32 eps, budget; i32 page_size;
//   u64 seed; i32 n_dense_layers; i32 dense_layers[16]
// SNAP_TAG_KV payload: i32 layer, i32 dtype, i64 n_tokens, then K rows [Hkv][n][d] and
// V rows [Hkv][n][d] in dtype.
#include "engine/snapshot.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/policy.h"
#include "engine/session.h"

namespace mp {

static const char kMagic[8] = {'M', 'P', 'S', 'N', 'A', 'P', 0, 1};

// ------------------------------------------------------------
// Hash64

namespace {
constexpr uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full,
                   P3 = 0x165667B19E3779F9ull, P4 = 0x85EBCA77C2B3AE63ull,
                   P5 = 0x27D4EB2F165667C5ull;
inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t rd64(const uint8_t *p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t rd32(const uint8_t *p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t round64(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
inline uint64_t merge64(uint64_t acc, uint64_t v) { return (acc ^ round64(0, v)) * P1 + P4; }
}  // namespace

Hash64::Hash64(uint64_t seed) : seed_(seed) {
  v_[0] = seed + P1 + P2;
  v_[1] = seed + P2;
  v_[2] = seed;
  v_[3] = seed - P1;
}

void Hash64::update(const void *data, size_t n) {
  if (n == 0) return;
  const uint8_t *p = (const uint8_t *)data;
  total_ += n;
  if (buf_n_ > 0) {
    const size_t take = std::min(n, 32 - buf_n_);
    std::memcpy(buf_ + buf_n_, p, take);
    buf_n_ += take;
    p += take;
    n -= take;
    if (buf_n_ < 32) return;
    for (int i = 0; i < 4; i++) v_[i] = round64(v_[i], rd64(buf_ + 8 * i));
    buf_n_ = 0;
  }
  uint64_t a = v_[0], b = v_[1], c = v_[2], d = v_[3];
  while (n >= 32) {
    a = round64(a, rd64(p));
    b = round64(b, rd64(p + 8));
    c = round64(c, rd64(p + 16));
    d = round64(d, rd64(p + 24));
    p += 32;
    n -= 32;
  }
  v_[0] = a, v_[1] = b, v_[2] = c, v_[3] = d;
  if (n) {
    std::memcpy(buf_, p, n);
    buf_n_ = n;
  }
}

uint64_t Hash64::digest() const {
  uint64_t h;
  if (total_ >= 32) {
    h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
    for (int i = 0; i < 4; i++) h = merge64(h, v_[i]);
  } else {
    h = seed_ + P5;
  }
  h += total_;
  const uint8_t *p = buf_;
  size_t n = buf_n_;
  while (n >= 8) {
    h = rotl(h ^ round64(0, rd64(p)), 27) * P1 + P4;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    h = rotl(h ^ ((uint64_t)rd32(p) * P1), 23) * P2 + P3;
    p += 4;
    n -= 4;
  }
  while (n--) h = rotl(h ^ ((uint64_t)*p++ * P5), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

uint64_t hash64(const void *data, size_t n, uint64_t seed) {
  Hash64 h(seed);
  h.update(data, n);
  return h.digest();
}

// ------------------------------------------------------------
// writer

static void write_all(int fd, const void *data, size_t n, const std::string &path) {
  const uint8_t *p = (const uint8_t *)data;
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, (size_t)1 << 30));
    if (w < 0 && errno == EINTR) continue;
    MP_CHECK(w > 0, MP_ERR_IO, "cannot write \"%s\": %s", path.c_str(),
             w < 0 ? std::strerror(errno) : "no progress");
    p += w;
    n -= (size_t)w;
  }
}

SnapshotWriter::SnapshotWriter(const std::string &path) : path_(path), tmp_(path + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MP_CHECK(fd_ >= 0, MP_ERR_IO, "cannot create \"%s\": %s", tmp_.c_str(), std::strerror(errno));
  buf_.reserve(1 << 20);
}

SnapshotWriter::~SnapshotWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void SnapshotWriter::flush() {
  if (buf_.empty()) return;
  write_all(fd_, buf_.data(), buf_.size(), tmp_);
  buf_.clear();
}

void SnapshotWriter::raw(const void *data, size_t n) {
  if (n == 0) return;
  hash_.update(data, n);
  if (buf_.size() + n <= buf_.capacity()) {
    buf_.append((const char *)data, n);
    return;
  }
  flush();
  if (n >= buf_.capacity()) {
    write_all(fd_, data, n, tmp_);
  } else {
    buf_.append((const char *)data, n);
  }
}

void SnapshotWriter::begin_section(uint32_t tag, uint64_t payload_bytes) {
  MP_CHECK(!in_section_, MP_ERR_INTERNAL, "snapshot section opened inside another");
  MP_CHECK(tag != SNAP_TAG_END, MP_ERR_INTERNAL, "snapshot section tag is reserved");
  const uint32_t flags = 0;
  raw(&tag, 4);
  raw(&flags, 4);
  raw(&payload_bytes, 8);
  in_section_ = true;
  section_left_ = payload_bytes;
}

void SnapshotWriter::write(const void *data, size_t n) {
  MP_CHECK(in_section_ && n <= section_left_, MP_ERR_INTERNAL,
           "snapshot section overflow: %zu bytes written, %llu declared left", n,
           (unsigned long long)section_left_);
  raw(data, n);
  section_left_ -= n;
}

void SnapshotWriter::end_section() {
  MP_CHECK(in_section_ && section_left_ == 0, MP_ERR_INTERNAL,
           "snapshot section closed with %llu bytes missing", (unsigned long long)section_left_);
  in_section_ = false;
}

void SnapshotWriter::commit() {
  MP_CHECK(!in_section_, MP_ERR_INTERNAL, "snapshot committed inside a section");
  const uint32_t tag = SNAP_TAG_END, flags = 0;
  const uint64_t zero = 0;
  raw(&tag, 4);
  raw(&flags, 4);
  raw(&zero, 8);
  const uint64_t sum = hash_.digest();
  flush();
  write_all(fd_, &sum, 8, tmp_);
  MP_CHECK(::fsync(fd_) == 0, MP_ERR_IO, "cannot sync \"%s\": %s", tmp_.c_str(),
           std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  MP_CHECK(::close(fd) == 0, MP_ERR_IO, "cannot close \"%s\": %s", tmp_.c_str(),
           std::strerror(errno));
  MP_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, MP_ERR_IO, "cannot rename \"%s\" to \"%s\": %s",
           tmp_.c_str(), path_.c_str(), std::strerror(errno));
  committed_ = true;
  // Make the rename durable (best effort: some filesystems refuse to sync directories).
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path_.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

// ------------------------------------------------------------
// reader

static void read_at(int fd, void *data, size_t n, uint64_t off, const std::string &path) {
  uint8_t *p = (uint8_t *)data;
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, std::min<size_t>(n, (size_t)1 << 30), (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    MP_CHECK(r >= 0, MP_ERR_IO, "cannot read \"%s\": %s", path.c_str(), std::strerror(errno));
    MP_CHECK(r > 0, MP_ERR_CORRUPT, "snapshot \"%s\" is truncated", path.c_str());
    p += r;
    off += (uint64_t)r;
    n -= (size_t)r;
  }
}

SnapshotReader::SnapshotReader(const std::string &path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(fd_ >= 0, MP_ERR_IO, "cannot open \"%s\": %s", path.c_str(), std::strerror(errno));
  struct stat st;
  MP_CHECK(::fstat(fd_, &st) == 0, MP_ERR_IO, "cannot stat \"%s\": %s", path.c_str(),
           std::strerror(errno));
  file_size_ = (uint64_t)st.st_size;
  const uint64_t min_size = sizeof kMagic + 8 + 16 + 8;
  char magic[8] = {0};
  if (file_size_ >= sizeof magic) read_at(fd_, magic, sizeof magic, 0, path_);
  MP_CHECK(file_size_ >= sizeof magic && std::memcmp(magic, kMagic, sizeof magic) == 0,
           MP_ERR_CORRUPT, "\"%s\" is not a session snapshot: bad magic", path.c_str());
  MP_CHECK(file_size_ >= min_size, MP_ERR_CORRUPT, "snapshot \"%s\" is truncated", path.c_str());
  // Checksum over everything but the last 8 bytes.
  Hash64 h;
  std::vector<uint8_t> buf((size_t)4 << 20);
  const uint64_t body = file_size_ - 8;
  for (uint64_t off = 0; off < body;) {
    const size_t n = (size_t)std::min<uint64_t>(buf.size(), body - off);
    read_at(fd_, buf.data(), n, off, path_);
    h.update(buf.data(), n);
    off += n;
  }
  uint64_t stored = 0;
  read_at(fd_, &stored, 8, body, path_);
  MP_CHECK(stored == h.digest(), MP_ERR_CORRUPT,
           "snapshot \"%s\" failed its checksum: the file is damaged", path.c_str());
  pos_ = sizeof kMagic;
  end_ = body;
}

SnapshotReader::~SnapshotReader() {
  if (fd_ >= 0) ::close(fd_);
}

void SnapshotReader::read_raw(void *data, size_t n) {
  if (n == 0) return;
  MP_CHECK(pos_ + n <= end_, MP_ERR_CORRUPT, "snapshot \"%s\" is truncated", path_.c_str());
  read_at(fd_, data, n, pos_, path_);
  pos_ += n;
}

void SnapshotReader::read(void *data, size_t n) {
  MP_CHECK(n <= section_left_, MP_ERR_CORRUPT,
           "snapshot \"%s\" is malformed: a section is shorter than its contents",
           path_.c_str());
  read_raw(data, n);
  section_left_ -= n;
}

bool SnapshotReader::next_section(uint32_t *tag) {
  skip_rest();
  uint32_t flags;
  uint64_t size;
  read_raw(tag, 4);
  read_raw(&flags, 4);
  read_raw(&size, 8);
  if (*tag == SNAP_TAG_END) {
    MP_CHECK(pos_ == end_ && size == 0, MP_ERR_CORRUPT,
             "snapshot \"%s\" is malformed: data after the end marker", path_.c_str());
    return false;
  }
  MP_CHECK(size <= end_ - pos_, MP_ERR_CORRUPT,
           "snapshot \"%s\" is malformed: a section runs past the end of the file",
           path_.c_str());
  section_left_ = size;
  return true;
}

void SnapshotReader::skip_rest() {
  pos_ += section_left_;
  section_left_ = 0;
}

// ------------------------------------------------------------
// save / load

void save_session(const Engine &e, const Session &s, const std::string &path) {
  const mp_model_config &c = e.config();
  const mp_attention_params &a = s.attention();
  SnapshotWriter w(path);
  // Header, built in memory first to know its size.
  std::string h;
  auto put = [&h](const auto &v) { h.append((const char *)&v, sizeof v); };
  for (int32_t v : {c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim,
                    c.vocab_size, s.kv_dtype()})
    put(v);
  put((int64_t)s.n_tokens());
  put(s.keys_attended());
  put(s.keys_offloaded());
  for (int32_t v : {a.method, a.lsh_k, a.lsh_l, a.sinks, a.window, a.gen_buffer}) put(v);
  put(a.eps);
  put(a.budget);
  put(a.page_size);
  put(a.seed);
  put(a.n_dense_layers);
  for (int i = 0; i < 16; i++) put(a.dense_layers[i]);
  const uint32_t version = SNAP_VERSION, header_bytes = (uint32_t)h.size();
  w.raw(kMagic, sizeof kMagic);
  w.raw(&version, 4);
  w.raw(&header_bytes, 4);
  w.raw(h.data(), h.size());

  const int64_t n = s.n_tokens();
  const size_t rows = (size_t)n * s.row_bytes();
  for (int32_t l = 0; l < s.n_layers(); l++) {
    w.begin_section(SNAP_TAG_KV, 16 + 2 * (uint64_t)s.n_kv_heads() * rows);
    w.put((int32_t)l);
    w.put((int32_t)s.kv_dtype());
    w.put((int64_t)n);
    for (int32_t hh = 0; hh < s.n_kv_heads(); hh++) w.write(s.k_row(l, hh, 0), rows);
    for (int32_t hh = 0; hh < s.n_kv_heads(); hh++) w.write(s.v_row(l, hh, 0), rows);
    w.end_section();
  }
  policy_save(s, w);
  w.commit();
}

mp_session *load_session(const std::shared_ptr<Engine> &ep, const std::string &path) {
  Engine &e = *ep;
  const mp_model_config &c = e.config();
  SnapshotReader r(path);
  uint32_t version = 0, header_bytes = 0;
  r.read_raw(&version, 4);
  MP_CHECK(version == SNAP_VERSION, MP_ERR_CORRUPT,
           "snapshot \"%s\" has version %u: this library reads version %u", path.c_str(),
           version, SNAP_VERSION);
  r.read_raw(&header_bytes, 4);
  const uint64_t header_start = r.pos_;
  auto get = [&r](auto &v) { r.read_raw(&v, sizeof v); };
  int32_t shape[8];
  for (int32_t &v : shape) get(v);
  const char *names[7] = {"n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                          "vocab_size"};
  const int32_t want[7] = {c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim,
                           c.vocab_size};
  for (int i = 0; i < 7; i++)
    MP_CHECK(shape[i] == want[i], MP_ERR_INVALID,
             "snapshot \"%s\" was made for another model: %s is %d, this model has %d",
             path.c_str(), names[i], shape[i], want[i]);
  const int32_t file_kv_dtype = shape[7];
  int64_t n_tokens;
  double attended, offloaded;
  get(n_tokens);
  get(attended);
  get(offloaded);
  mp_session_params p;
  std::memset(&p, 0, sizeof p);
  p.size = sizeof p;
  mp_attention_params &a = p.attention;
  a.size = sizeof a;
  for (int32_t *v : {&a.method, &a.lsh_k, &a.lsh_l, &a.sinks, &a.window, &a.gen_buffer}) get(*v);
  get(a.eps);
  get(a.budget);
  get(a.page_size);
  get(a.seed);
  get(a.n_dense_layers);
  for (int i = 0; i < 16; i++) get(a.dense_layers[i]);
  MP_CHECK(r.pos_ - header_start <= header_bytes, MP_ERR_CORRUPT,
           "snapshot \"%s\" is malformed: header too short", path.c_str());
  r.pos_ = header_start + header_bytes;  // skip fields a newer writer added
  MP_CHECK(n_tokens >= 0 && n_tokens < ((int64_t)1 << 31), MP_ERR_CORRUPT,
           "snapshot \"%s\" is malformed: n_tokens %lld", path.c_str(), (long long)n_tokens);
  MP_CHECK(file_kv_dtype == MP_DTYPE_F32 || file_kv_dtype == MP_DTYPE_BF16, MP_ERR_CORRUPT,
           "snapshot \"%s\" is malformed: kv dtype %d", path.c_str(), file_kv_dtype);
  p.reserve_tokens = n_tokens;
  p = validate_session_params(e, p);
  std::unique_ptr<mp_session> s(new mp_session(ep, p));
  s->set_key_stats(attended, offloaded);

  std::vector<uint8_t> seen((size_t)c.n_layers, 0);
  std::vector<uint8_t> tmp;
  const size_t src_row = (size_t)c.head_dim * dtype_size(file_kv_dtype);
  uint32_t tag;
  while (r.next_section(&tag)) {
    if (tag != SNAP_TAG_KV) {
      if (!policy_load_section(*s, tag, r)) r.skip_rest();
      continue;
    }
    const int32_t l = r.get<int32_t>(), dt = r.get<int32_t>();
    const int64_t n = r.get<int64_t>();
    MP_CHECK(l >= 0 && l < c.n_layers && !seen[(size_t)l] && dt == file_kv_dtype &&
                 n == n_tokens &&
                 r.remaining() == 2 * (uint64_t)c.n_kv_heads * (uint64_t)n * src_row,
             MP_ERR_CORRUPT, "snapshot \"%s\" is malformed: bad KV section for layer %d",
             path.c_str(), l);
    seen[(size_t)l] = 1;
    for (int kv = 0; kv < 2; kv++) {
      for (int32_t h = 0; h < c.n_kv_heads; h++) {
        void *dst = kv == 0 ? s->k_row(l, h, 0) : s->v_row(l, h, 0);
        if (dt == s->kv_dtype()) {
          r.read(dst, (size_t)n * src_row);
          continue;
        }
        tmp.resize((size_t)n * src_row);
        r.read(tmp.data(), tmp.size());
        const size_t cnt = (size_t)n * (size_t)c.head_dim;
        if (dt == MP_DTYPE_BF16) {  // BF16 file -> F32 session
          to_f32(MP_DTYPE_BF16, tmp.data(), (float *)dst, cnt);
        } else {  // F32 file -> BF16 session
          from_f32(MP_DTYPE_BF16, (const float *)tmp.data(), dst, cnt);
        }
      }
    }
  }
  for (int32_t l = 0; l < c.n_layers; l++)
    MP_CHECK(seen[(size_t)l], MP_ERR_CORRUPT,
             "snapshot \"%s\" is malformed: the KV of layer %d is missing", path.c_str(), l);
  s->set_n_tokens(n_tokens);
  e.backend().session_created(*s);
  return s.release();
}

}  // namespace mp
