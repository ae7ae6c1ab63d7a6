// decode_worker.cpp — see decode_worker.h.
#include "engine/decode_worker.h"

#include <chrono>
#include <utility>

#include "common/common.h"
#include "engine/session.h"

namespace mp {

namespace {
// The worker whose thread this is (decode_near), null elsewhere.
thread_local DecodeWorker *t_worker = nullptr;

// How long the thread spins for the next step before it sleeps: steps of a generation come
// back to back (the caller samples between them), a pause longer than this is idle time.
constexpr auto SPIN = std::chrono::milliseconds(3);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}
}  // namespace

DecodeWorker::DecodeWorker() : thread_([this] { loop(); }) {}

DecodeWorker::~DecodeWorker() {
  wait();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void DecodeWorker::set_state(int s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_.store(s, std::memory_order_release);
  }
  cv_.notify_all();
}

void DecodeWorker::submit(std::shared_ptr<Engine> e, Session *const *sessions, int32_t n,
                          const int32_t *tokens, float *logits, const int32_t *abort) {
  MP_CHECK(state_.load(std::memory_order_acquire) == IDLE, MP_ERR_STATE,
           "a decode step is already in flight on this engine: call mp_decode_finish first");
  engine_ = std::move(e);
  sessions_.assign(sessions, sessions + (n > 0 && sessions ? n : 0));
  tokens_.assign(tokens, tokens + (n > 0 && tokens ? n : 0));
  logits_ = logits;
  abort_ = abort;
  rc_ = 0;
  err_[0] = 0;
  set_state(QUEUED);
}

void DecodeWorker::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] {
    const int s = state_.load(std::memory_order_acquire);
    return s == IDLE || s >= NEAR;
  });
}

int32_t DecodeWorker::finish(char *err, size_t cap) {
  int s = state_.load(std::memory_order_acquire);
  MP_CHECK(s != IDLE, MP_ERR_STATE, "no decode step is in flight: call mp_decode_submit first");
  // From a caller that waited, only the LM head is left: spin for it.
  for (auto t0 = std::chrono::steady_clock::now(); s != DONE;
       s = state_.load(std::memory_order_acquire)) {
    if (std::chrono::steady_clock::now() - t0 < SPIN) {
      cpu_relax();
    } else {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return state_.load(std::memory_order_acquire) == DONE; });
    }
  }
  const int32_t rc = rc_;
  if (rc != MP_OK) {
    write_error(err, cap, err_);
  } else if (err && cap) {
    err[0] = 0;
  }
  engine_.reset();
  set_state(IDLE);
  return rc;
}

void DecodeWorker::loop() {
  t_worker = this;
  for (;;) {
    // Spin for the next step a while, then sleep.
    const auto t0 = std::chrono::steady_clock::now();
    while (state_.load(std::memory_order_acquire) != QUEUED &&
           std::chrono::steady_clock::now() - t0 < SPIN)
      cpu_relax();
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || state_.load(std::memory_order_acquire) == QUEUED; });
      if (stop_) return;
      state_.store(RUNNING, std::memory_order_release);
    }
    const int32_t rc = guard(err_, sizeof err_, [&] {
      return decode_step(*engine_, sessions_.data(), (int32_t)sessions_.size(), tokens_.data(),
                         logits_, abort_);
    });
    rc_ = rc;
    set_state(DONE);
  }
}

void decode_near() {
  if (t_worker) t_worker->mark_near();
}

bool decode_near_wanted() { return t_worker != nullptr; }

}  // namespace mp
