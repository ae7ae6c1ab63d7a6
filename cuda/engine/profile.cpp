// profile.cpp — the decode stage timers (profile.h).
#include "engine/profile.h"

#include <algorithm>
#include <mutex>

namespace mp {

namespace {
std::mutex g_mu;
double g_acc[PROF_COUNT] = {};
}  // namespace

void decode_profile_add(const double *v) {
  std::lock_guard<std::mutex> lock(g_mu);
  for (int i = 0; i < PROF_COUNT; i++) g_acc[i] += v[i];
}

int decode_profile_read(double *out, int n, bool reset) {
  std::lock_guard<std::mutex> lock(g_mu);
  const int k = std::max(0, std::min(n, (int)PROF_COUNT));
  for (int i = 0; i < k; i++) out[i] = g_acc[i];
  if (reset)
    for (double &x : g_acc) x = 0;
  return k;
}

}  // namespace mp
