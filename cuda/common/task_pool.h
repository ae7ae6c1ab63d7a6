// task_pool.h — a spinning task pool for latency-bound parallel loops on the decode path.
//
// Split decode runs the CPU part of a layer (retrieval + sampled attention, a few hundred
// microseconds) 30 times per token, each after ~0.1 ms of waiting for the GPU. OpenMP's
// teams are owned by the calling thread: a host such as Deno calls in from several threads,
// each call site's thread gets its own pool, and once libgomp manages more threads than
// there are cores it stops spinning (a short "throttled" spin, then futex sleep), so every
// parallel region paid the wake-up of all its threads. This pool is one set of workers for
// the process that spin for a while after each job (kMaxSpinUs) and only then sleep, so
// back-to-back jobs start in about a microsecond from any calling thread.
//
// run(n, fn): fn(i) for every i in [0, n), in order of i across threads (an atomic
// counter hands out indices one at a time: a task may wait on earlier ones), on the caller
// plus mp::threads() − 1 workers. Jobs from several threads at once are serialised; a job
// started from inside a job runs inline. If tasks throw, every other task still runs and
// the first exception is rethrown to the caller (a task that others wait for must signal
// them on every path).
#pragma once

#include <functional>

namespace mp {

void pool_run(int n, const std::function<void(int)> &fn);

}  // namespace mp
