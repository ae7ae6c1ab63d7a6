/**
 * The request metrics of one served model, in vLLM's shapes under our prefix: queue
 * lengths read from the scheduler at scrape time, time-to-first-token and inter-token
 * latency histograms and token counters fed by the scheduler's observer hooks.
 *
 * @module
 */
import { itlBuckets, type Metrics, ttftBuckets } from "./metrics.ts";
import type { SchedulerObserver, SchedulerStats } from "./scheduler.ts";

/**
 * Registers the request metrics on `metrics` and returns the scheduler observer that
 * feeds them; `stats` is read at every scrape (it may return null before the model loads).
 */
export function servingMetrics(
  metrics: Metrics,
  stats: () => SchedulerStats | null,
): SchedulerObserver {
  const running = metrics.gauge(
    "magicpig:num_requests_running",
    "Requests prefilling or decoding in the engine",
  );
  const waiting = metrics.gauge(
    "magicpig:num_requests_waiting",
    "Requests queued for the engine",
  );
  const ttft = metrics.histogram(
    "magicpig:time_to_first_token_seconds",
    "Seconds from a request's submission to its first generated token",
    ttftBuckets,
  );
  const itl = metrics.histogram(
    "magicpig:inter_token_latency_seconds",
    "Seconds between consecutive generated tokens of a request",
    itlBuckets,
  );
  const prompt = metrics.counter(
    "magicpig:prompt_tokens_total",
    "Prompt tokens prefilled (not counting tokens reused from sessions)",
  );
  const generation = metrics.counter(
    "magicpig:generation_tokens_total",
    "Tokens generated",
  );
  const cached = metrics.counter(
    "magicpig:cached_tokens_total",
    "Prompt tokens reused from pinned sessions instead of being prefilled again",
    ["cache_source"],
  );
  const finished = metrics.counter(
    "magicpig:request_success_total",
    "Finished requests by finish reason (stop, length, abort, deadline, error)",
    ["finished_reason"],
  );
  metrics.collect(() => {
    const s = stats();
    running.set(s ? s.running + s.prefilling : 0);
    waiting.set(s ? s.waiting : 0);
  });
  return {
    firstToken: (seconds) => ttft.observe(seconds),
    interToken: (seconds) => itl.observe(seconds),
    finished(summary, usage) {
      prompt.inc({}, summary.promptTokens);
      generation.inc({}, summary.completionTokens);
      if (usage.cachedTokens > 0) cached.inc({ cache_source: "session" }, usage.cachedTokens);
      finished.inc({ finished_reason: summary.reason });
    },
  };
}
