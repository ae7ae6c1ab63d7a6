/**
 * An unbounded single-consumer async queue: the producer pushes and closes, the consumer
 * iterates with `for await`. Leaving the loop early (break, throw, `return()`) calls the
 * `onCancel` callback once, which is how a consumer that goes away aborts its request.
 *
 * @module
 */

/** A push-based async iterable with a cancel callback. */
export class Channel<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #closed = false;
  #cancelled = false;
  #waiter: ((r: IteratorResult<T>) => void) | null = null;
  #onCancel: (() => void) | null;
  #iterated = false;

  constructor(onCancel: (() => void) | null = null) {
    this.#onCancel = onCancel;
  }

  /** Whether the producer closed the channel. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Queues an item (ignored once closed or cancelled). */
  push(item: T): void {
    if (this.#closed || this.#cancelled) return;
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      w({ value: item, done: false });
    } else {
      this.#items.push(item);
    }
  }

  /** Ends the stream after the queued items. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      w({ value: undefined, done: true });
    }
  }

  #cancel(): void {
    if (this.#cancelled || this.#closed) return;
    this.#cancelled = true;
    this.#items = [];
    this.#onCancel?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.#iterated) throw new Error("Cannot iterate a channel twice");
    this.#iterated = true;
    return {
      next: (): Promise<IteratorResult<T>> => {
        if (this.#items.length > 0) {
          return Promise.resolve({ value: this.#items.shift() as T, done: false });
        }
        if (this.#closed || this.#cancelled) {
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve) => this.#waiter = resolve);
      },
      return: (): Promise<IteratorResult<T>> => {
        this.#cancel();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
