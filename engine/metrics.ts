/**
 * Prometheus metrics in the text exposition format (version 0.0.4): counters, gauges and
 * histograms with labels, in one {@link Metrics} registry that `GET /metrics` renders.
 * Names carry our own prefix in vLLM's shapes (`magicpig:num_requests_running`,
 * `magicpig:time_to_first_token_seconds`, ...), so dashboards and alerts written for vLLM
 * carry over with the prefix changed.
 *
 * Values that already live elsewhere (the scheduler's queue lengths, the session
 * manager's byte counts) are read at scrape time through {@link Metrics.collect}
 * callbacks instead of being mirrored.
 *
 * @example
 * ```ts
 * import { Metrics } from "./metrics.ts";
 * const m = new Metrics();
 * const hits = m.counter("magicpig:demo_total", "Demo events", ["kind"]);
 * hits.inc({ kind: "a" });
 * console.log(m.render());
 * ```
 *
 * @module
 */

/** Label values by label name. */
export type Labels = Record<string, string>;

type Kind = "counter" | "gauge" | "histogram";

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

function labelText(names: readonly string[], values: readonly string[], extra = ""): string {
  const parts = names.map((n, i) => `${n}="${escapeLabel(values[i])}"`);
  if (extra) parts.push(extra);
  return parts.length ? `{${parts.join(",")}}` : "";
}

abstract class Metric {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  abstract readonly kind: Kind;

  constructor(name: string, help: string, labelNames: readonly string[]) {
    this.name = name;
    this.help = help;
    this.labelNames = labelNames;
  }

  protected key(labels: Labels = {}): string {
    for (const k of Object.keys(labels)) {
      if (!this.labelNames.includes(k)) {
        throw new Error(`Metric "${this.name}" has no label "${k}": labels are ${this.labelNames}`);
      }
    }
    return JSON.stringify(this.labelNames.map((n) => labels[n] ?? ""));
  }

  abstract lines(): string[];
}

/** A monotonically increasing count. */
export class Counter extends Metric {
  readonly kind = "counter";
  #values = new Map<string, number>();

  /** Adds `by` (default 1, never negative). */
  inc(labels: Labels = {}, by = 1): void {
    if (!(by >= 0)) throw new RangeError(`Invalid counter increment "${by}": must be >= 0`);
    const k = this.key(labels);
    this.#values.set(k, (this.#values.get(k) ?? 0) + by);
  }

  /** The current value for `labels`. */
  get(labels: Labels = {}): number {
    return this.#values.get(this.key(labels)) ?? 0;
  }

  lines(): string[] {
    if (this.#values.size === 0 && this.labelNames.length === 0) return [`${this.name} 0`];
    return [...this.#values].map(([k, v]) =>
      `${this.name}${labelText(this.labelNames, JSON.parse(k))} ${formatValue(v)}`
    );
  }
}

/** A value that goes up and down, set directly or read at scrape time. */
export class Gauge extends Metric {
  readonly kind = "gauge";
  #values = new Map<string, number>();

  set(value: number, labels: Labels = {}): void {
    this.#values.set(this.key(labels), value);
  }

  get(labels: Labels = {}): number {
    return this.#values.get(this.key(labels)) ?? 0;
  }

  lines(): string[] {
    if (this.#values.size === 0 && this.labelNames.length === 0) return [`${this.name} 0`];
    return [...this.#values].map(([k, v]) =>
      `${this.name}${labelText(this.labelNames, JSON.parse(k))} ${formatValue(v)}`
    );
  }
}

interface HistogramSeries {
  counts: number[];
  sum: number;
  count: number;
}

/** Observations counted into cumulative buckets (`le`), with their sum and count. */
export class Histogram extends Metric {
  readonly kind = "histogram";
  readonly buckets: readonly number[];
  #series = new Map<string, HistogramSeries>();

  constructor(name: string, help: string, labelNames: readonly string[], buckets: number[]) {
    super(name, help, labelNames);
    this.buckets = [...buckets].sort((a, b) => a - b);
  }

  observe(value: number, labels: Labels = {}): void {
    const k = this.key(labels);
    let s = this.#series.get(k);
    if (!s) {
      s = { counts: new Array(this.buckets.length).fill(0), sum: 0, count: 0 };
      this.#series.set(k, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]) s.counts[i]++;
    s.sum += value;
    s.count++;
  }

  /** Observations so far for `labels`. */
  count(labels: Labels = {}): number {
    return this.#series.get(this.key(labels))?.count ?? 0;
  }

  lines(): string[] {
    const out: string[] = [];
    const series = this.#series.size === 0 && this.labelNames.length === 0
      ? new Map([["[]", { counts: this.buckets.map(() => 0), sum: 0, count: 0 }]])
      : this.#series;
    for (const [k, s] of series) {
      const values: string[] = JSON.parse(k);
      this.buckets.forEach((b, i) => {
        const le = `le="${formatValue(b)}"`;
        out.push(`${this.name}_bucket${labelText(this.labelNames, values, le)} ${s.counts[i]}`);
      });
      out.push(`${this.name}_bucket${labelText(this.labelNames, values, 'le="+Inf"')} ${s.count}`);
      out.push(`${this.name}_sum${labelText(this.labelNames, values)} ${formatValue(s.sum)}`);
      out.push(`${this.name}_count${labelText(this.labelNames, values)} ${s.count}`);
    }
    return out;
  }
}

/** vLLM's buckets for time to first token (seconds). */
export const ttftBuckets = [
  0.001,
  0.005,
  0.01,
  0.02,
  0.04,
  0.06,
  0.08,
  0.1,
  0.25,
  0.5,
  0.75,
  1,
  2.5,
  5,
  7.5,
  10,
  20,
  40,
  80,
  160,
  640,
  2560,
];

/** vLLM's buckets for inter-token latency (seconds). */
export const itlBuckets = [
  0.01,
  0.025,
  0.05,
  0.075,
  0.1,
  0.15,
  0.2,
  0.3,
  0.4,
  0.5,
  0.75,
  1,
  2.5,
  5,
  7.5,
  10,
  20,
  40,
  80,
];

/** A registry of metrics, rendered in the Prometheus text format. */
export class Metrics {
  #metrics = new Map<string, Metric>();
  #collectors: (() => void)[] = [];

  #add<T extends Metric>(metric: T): T {
    const existing = this.#metrics.get(metric.name);
    if (existing) {
      if (existing.kind !== metric.kind) {
        throw new Error(`Metric "${metric.name}" is already registered as a ${existing.kind}`);
      }
      return existing as T;
    }
    this.#metrics.set(metric.name, metric);
    return metric;
  }

  /** Registers (or returns the already registered) counter `name`. */
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, labelNames));
  }

  /** Registers (or returns the already registered) gauge `name`. */
  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.#add(new Gauge(name, help, labelNames));
  }

  /** Registers (or returns the already registered) histogram `name`. */
  histogram(
    name: string,
    help: string,
    buckets: number[],
    labelNames: readonly string[] = [],
  ): Histogram {
    return this.#add(new Histogram(name, help, labelNames, buckets));
  }

  /** Runs `fn` before every render (to set gauges from live state). Returns an unregister. */
  collect(fn: () => void): () => void {
    this.#collectors.push(fn);
    return () => {
      this.#collectors = this.#collectors.filter((f) => f !== fn);
    };
  }

  /** A registered metric by name. */
  get(name: string): Metric | undefined {
    return this.#metrics.get(name);
  }

  /** The exposition text (`text/plain; version=0.0.4`). */
  render(): string {
    for (const fn of this.#collectors) {
      try {
        fn();
      } catch {
        // A failing collector must not break the scrape; its gauges keep old values.
      }
    }
    const out: string[] = [];
    for (const m of this.#metrics.values()) {
      out.push(`# HELP ${m.name} ${escapeHelp(m.help)}`);
      out.push(`# TYPE ${m.name} ${m.kind}`);
      out.push(...m.lines());
    }
    return out.join("\n") + "\n";
  }
}

/** The content type of {@link Metrics.render}. */
export const metricsContentType = "text/plain; version=0.0.4; charset=utf-8";
