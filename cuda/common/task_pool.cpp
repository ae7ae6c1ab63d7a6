// task_pool.cpp — see task_pool.h.
#include "common/task_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "common/common.h"

namespace mp {

namespace {

constexpr double kMaxSpinUs = 2000.0;  // workers spin this long after a job, then sleep

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

thread_local bool t_in_job = false;

// state_ = (job id << 32) | workers inside the job. An odd id is an open job, an even one a
// closed job: a worker enters only an open job (CAS on state_), and the caller closes its
// job once every index is done and no worker is inside, so it never waits for a worker
// that has not woken up yet (on a busy machine that could be a whole time slice).
class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; i++) threads_.emplace_back([this] { loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto &t : threads_) t.join();
  }
  int workers() const { return (int)threads_.size(); }

  // Runs one job (the caller holds g_pool_mu).
  void run(int n, const std::function<void(int)> &fn) {
    fn_ = &fn;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t id = (state_.load(std::memory_order_relaxed) >> 32) + 1;  // odd: open
    state_.store(id << 32, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lk(mu_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    error_ = nullptr;
    failed_.store(false, std::memory_order_relaxed);
    work();
    while (done_.load(std::memory_order_acquire) < n_) cpu_relax();
    // close: wait out the workers inside (they find no index left)
    for (uint64_t open = id << 32;; open = id << 32) {
      if (state_.compare_exchange_weak(open, (id + 1) << 32, std::memory_order_acq_rel))
        break;
      cpu_relax();
    }
    if (error_) std::rethrow_exception(error_);  // the first task that threw
  }

 private:
  void work() {
    t_in_job = true;
    for (;;) {
      const int i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_) break;
      try {
        (*fn_)(i);
      } catch (...) {  // kept for the caller; the other tasks still run (and count)
        if (!failed_.exchange(true, std::memory_order_acq_rel)) error_ = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_release);
    }
    t_in_job = false;
  }

  // Enters the open job, if any; returns false when there is none.
  bool enter() {
    uint64_t v = state_.load(std::memory_order_acquire);
    while ((v >> 32) & 1) {
      if (state_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) return true;
    }
    return false;
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      // spin for a new generation, then sleep
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t g;
      for (int k = 0;; k++) {
        g = gen_.load(std::memory_order_acquire);
        if (g != seen) break;
        cpu_relax();
        if ((k & 255) == 255 &&
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                    .count() > kMaxSpinUs) {
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1, std::memory_order_acq_rel);
          cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_acq_rel);
          g = gen_.load(std::memory_order_acquire);
          break;
        }
      }
      seen = g;
      if (quit_) return;
      if (enter()) {
        work();
        state_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> sleepers_{0};
  bool quit_ = false;
  const std::function<void(int)> *fn_ = nullptr;
  int n_ = 0;
  std::atomic<int> next_{0}, done_{0};
  std::atomic<uint64_t> state_{0};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;  // written once per job (by the task that set failed_)
};

std::mutex g_pool_mu;
Pool *g_pool = nullptr;  // left running at exit (no static destructor joins threads)

}  // namespace

void pool_run(int n, const std::function<void(int)> &fn) {
  if (n <= 0) return;
  const int want = threads() - 1;
  if (n == 1 || want <= 0 || t_in_job) {
    for (int i = 0; i < n; i++) fn(i);
    return;
  }
  // One job at a time; the pool follows mp::threads().
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!g_pool || g_pool->workers() != want) {
    delete g_pool;
    g_pool = nullptr;
    g_pool = new Pool(want);
  }
  g_pool->run(n, fn);
}

}  // namespace mp
