// snapshot.h — session snapshot files: a header, tagged sections, a 64-bit checksum.
//
// File layout (little-endian, version 1):
//
//   header   "MPSNAP\0\1" magic (8 bytes), u32 version, u32 header_bytes,
//            model shape, kv dtype, attention params, n_tokens, key statistics
//            (see snapshot.cpp: write_header)
//   sections repeated: u32 tag, u32 flags (0), u64 payload_bytes, payload
//   trailer  u32 tag SNAP_TAG_END, u32 0, u64 0, then u64 checksum
//
// The checksum is hash64 (an xxHash64-style hash, snapshot.cpp) of every byte before it.
// The engine's own sections: SNAP_TAG_KV, one per layer. Other parts add sections with
// their own tags through policy_save()/policy_load_section() (policy.h) using the writer
// and reader below; a section's size is declared up front so files stream.
//
// Writing goes to `path`.tmp, is fsynced and renamed over `path`. Loading first verifies
// the checksum over the whole file (MP_ERR_CORRUPT, nothing loaded), then parses.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/common.h"

namespace mp {

class Session;
class Engine;

constexpr uint32_t snap_tag(char a, char b, char c, char d) {
  return (uint32_t)(uint8_t)a | (uint32_t)(uint8_t)b << 8 | (uint32_t)(uint8_t)c << 16 |
         (uint32_t)(uint8_t)d << 24;
}
constexpr uint32_t SNAP_TAG_KV = snap_tag('K', 'V', 'L', 'Y');   // one layer's K and V
constexpr uint32_t SNAP_TAG_END = snap_tag('E', 'N', 'D', '.');  // trailer
constexpr uint32_t SNAP_VERSION = 1;

// Streaming 64-bit hash (xxHash64 construction).
class Hash64 {
 public:
  explicit Hash64(uint64_t seed = 0);
  void update(const void *data, size_t n);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_;
  uint64_t total_ = 0;
  uint8_t buf_[32];
  size_t buf_n_ = 0;
};
uint64_t hash64(const void *data, size_t n, uint64_t seed = 0);

class SnapshotWriter {
 public:
  // Opens `path`.tmp for writing (MP_ERR_IO).
  explicit SnapshotWriter(const std::string &path);
  ~SnapshotWriter();  // removes the .tmp file unless commit() succeeded

  // A section of exactly `payload_bytes` bytes, written by write() calls.
  void begin_section(uint32_t tag, uint64_t payload_bytes);
  void write(const void *data, size_t n);
  template <class T>
  void put(const T &v) {
    write(&v, sizeof v);
  }
  void end_section();  // MP_ERR_INTERNAL when the declared size was not written

  // Writes the trailer and checksum, fsyncs, renames over `path`, fsyncs the directory.
  void commit();

 private:
  friend void save_session(const Engine &, const Session &, const std::string &);
  void raw(const void *data, size_t n);  // hashed, buffered
  void flush();
  std::string path_, tmp_;
  int fd_ = -1;
  Hash64 hash_;
  std::string buf_;
  bool in_section_ = false;
  uint64_t section_left_ = 0;
  bool committed_ = false;
};

class SnapshotReader {
 public:
  // Verifies magic, size and checksum of the whole file (MP_ERR_IO / MP_ERR_CORRUPT), then
  // positions after the magic.
  explicit SnapshotReader(const std::string &path);
  ~SnapshotReader();

  // Bytes left in the current section.
  uint64_t remaining() const { return section_left_; }
  // Reads n bytes of the current section (MP_ERR_CORRUPT past its end).
  void read(void *data, size_t n);
  template <class T>
  T get() {
    T v;
    read(&v, sizeof v);
    return v;
  }
  const std::string &path() const { return path_; }

 private:
  friend mp_session *load_session(const std::shared_ptr<Engine> &, const std::string &);
  // Header bytes (not in a section).
  void read_raw(void *data, size_t n);
  // Next section header; false at the trailer.
  bool next_section(uint32_t *tag);
  void skip_rest();
  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0, pos_ = 0, end_ = 0;  // end_: start of the trailer checksum
  uint64_t section_left_ = 0;
};

// mp_session_save / mp_session_load.
void save_session(const Engine &e, const Session &s, const std::string &path);
mp_session *load_session(const std::shared_ptr<Engine> &e, const std::string &path);

}  // namespace mp
