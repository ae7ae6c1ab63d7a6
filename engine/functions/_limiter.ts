/**
 * Concurrency of one function: up to `concurrency` invocations run, up to `queue` more
 * wait in arrival order, and the next one is refused at once (the host answers 429).
 *
 * @module
 */

/** Thrown by {@link Limiter.acquire} when every slot and queue place is taken. */
export class LimiterFullError extends Error {
  override readonly name = "LimiterFullError";
}

interface Waiter {
  resolve(release: () => void): void;
  reject(e: unknown): void;
  cleanup(): void;
}

/** A counting semaphore with a bounded wait queue. */
export class Limiter {
  #running = 0;
  #waiting: Waiter[] = [];
  // The concurrency the latest caller asked for (a manifest change can move it).
  #concurrency = 1;

  /** Invocations running now. */
  get running(): number {
    return this.#running;
  }

  /** Invocations waiting now. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /**
   * Resolves with a `release` function once a slot is free; rejects with
   * {@link LimiterFullError} when the queue is full, or with `signal.reason` when the
   * caller goes away while waiting.
   */
  acquire(concurrency: number, queue: number, signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    this.#concurrency = concurrency;
    if (this.#running < concurrency && this.#waiting.length === 0) {
      this.#running++;
      return Promise.resolve(this.#releaser());
    }
    if (this.#waiting.length >= queue) {
      return Promise.reject(
        new LimiterFullError(
          `${this.#running} invocations are running and ${this.#waiting.length} waiting`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.#waiting.indexOf(waiter);
        if (i >= 0) this.#waiting.splice(i, 1);
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener("abort", onAbort),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#running--;
      this.#drain();
    };
  }

  #drain(): void {
    while (this.#waiting.length > 0 && this.#running < this.#concurrency) {
      const w = this.#waiting.shift()!;
      w.cleanup();
      this.#running++;
      w.resolve(this.#releaser());
    }
  }

  /** Rejects every waiter with `reason` (shutdown). */
  rejectAll(reason: unknown): void {
    for (const w of this.#waiting.splice(0)) {
      w.cleanup();
      w.reject(reason);
    }
  }
}
