// profile.h — process-wide stage timers of the decode step (mp_decode_profile).
//
// The CUDA backend's decode adds, per step, the host wall time of each stage below (ms);
// the bench reads and resets them around each row to say what bounds a figure. Adding is
// a few steady_clock reads per step and per split layer: always on.
#pragma once

#include <chrono>
#include <cstdint>

namespace mp {

enum DecodeStage : int {
  PROF_STEPS = 0,     // decode calls
  PROF_TOTAL,         // whole call
  PROF_SETUP,         // placement, split-decode windows and tables, before the first launch
  PROF_WAIT_Q,        // split layers: waiting for the GPU to deliver q (the GPU segment)
  PROF_CPU,           // split layers: the CPU's offloaded part (retrieval + sampled attention)
  PROF_TAIL,          // after the last launch: waiting for the GPU to finish the step
  PROF_POST,          // host rows written back, counters
  PROF_SPLIT_LAYERS,  // split layer-calls (layers × steps)
  PROF_GPU_JOBS,      // split layers: query heads whose sample the GPU attended (its share)
  PROF_CPU_PHASE_A,   // split layers: CPU part's start until every head's sample exists
  PROF_CPU_HANDOFF,   // split layers: CPU part's start until the GPU share was launched
  PROF_SHARE_LATE,    // split layers: GPU share still running when the CPU part ended (GPU ms)
  PROF_SHARE_SLACK,   // split layers: GPU share done before the CPU part ended, by (GPU ms)
  PROF_SHARE_LATE_LAYERS,  // split layer-calls whose GPU share ended after the CPU part
  PROF_CPU_PREPARE,   // split layers: CPU part's start until the retrieval tasks start
  PROF_A_HEAD_MAX,    // split layers: the longest query head's retrieval
  PROF_A_HEAD_SUM,    // split layers: every query head's retrieval, summed
  PROF_A_ENTRIES,     // split layers: bucket entries scanned
  PROF_QCODES_GPU,    // split layer-calls whose MAGICPIG query codes the GPU computed
  PROF_GPU_RETRIEVAL,  // split layer-calls whose GPU share the GPU retrieved (op "retrieval")
  PROF_COUNT
};

// Adds one step's stage times (PROF_COUNT values).
void decode_profile_add(const double *v);
// Copies up to n values into out and returns how many; reset clears them after the copy.
int decode_profile_read(double *out, int n, bool reset);

inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace mp
