// decode_worker.h — an engine's decode thread, behind mp_decode_submit / mp_decode_wait /
// mp_decode_finish (magicpig.h).
//
// Why: the host calls the library from an event loop (Deno). A step run as one nonblocking
// FFI call pays two thread wake-ups per step, ~0.16-0.18 ms on the GPU server (4.5 ms steps):
// the runtime's pool thread wakes to start the call, and the event loop wakes when it ends.
// Here the caller submits the step synchronously to a thread of the engine's own, which
// keeps spinning between steps while decoding goes on (so the hand-off costs no wake-up),
// waits for it from a pool thread (that wake-up overlaps the step), is told when the GPU is
// on its last kernels (the LM head: ~0.25 ms on the 8B shape; decode_near() below), and
// collects the result with a short synchronous call: the event loop's own wake-up overlaps
// the step's tail.
//
// One job at a time; the caller serialises submit → wait → finish per engine (the engine
// threading rule). The worker runs mp::decode_step exactly as mp_decode_step does, so every
// status, message and rollback is the same.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mp {

class Engine;
class Session;

class DecodeWorker {
 public:
  DecodeWorker();
  ~DecodeWorker();  // waits for a step in flight, then stops the thread
  DecodeWorker(const DecodeWorker &) = delete;
  DecodeWorker &operator=(const DecodeWorker &) = delete;

  // Hands a step to the thread. `sessions` and `tokens` are copied; `logits` and `abort`
  // must stay valid until finish(). MP_ERR_STATE when a step is already in flight.
  void submit(std::shared_ptr<Engine> e, Session *const *sessions, int32_t n,
              const int32_t *tokens, float *logits, const int32_t *abort);
  // Blocks until the step is done or nearly done (decode_near); returns at once when
  // nothing is in flight.
  void wait();
  // Blocks until the step is done; its status, and its message into err.
  int32_t finish(char *err, size_t cap);
  // The running step's GPU work is nearly done (decode_near, on the worker's thread).
  void mark_near() { set_state(NEAR); }

 private:
  enum : int { IDLE = 0, QUEUED = 1, RUNNING = 2, NEAR = 3, DONE = 4 };
  void loop();
  void set_state(int s);

  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> state_{IDLE};
  bool stop_ = false;
  // the job
  std::shared_ptr<Engine> engine_;
  std::vector<Session *> sessions_;
  std::vector<int32_t> tokens_;
  float *logits_ = nullptr;
  const int32_t *abort_ = nullptr;
  int32_t rc_ = 0;
  char err_[1024] = {};  // the step's message when rc_ != MP_OK
  std::thread thread_;  // last: started after everything above exists
};

// Called by a backend's decode() on the thread that runs it, once the step's remaining GPU
// work is short (the LM head): lets a DecodeWorker's waiter return early. A no-op outside
// a worker.
void decode_near();
// Whether the calling thread is a DecodeWorker's (a backend may skip the wait for the
// "near" point otherwise).
bool decode_near_wanted();

}  // namespace mp
