/**
 * Typed facade over the `@std/assert` functions the tests use. JSR is out of reach here,
 * so they come from the npm package `deno-std` (Deno's std compiled to JavaScript, no
 * types); everything else imports this module.
 *
 * @module
 */
import { assert as assertJs } from "deno-std/assert/assert.js";
import { assertEquals as assertEqualsJs } from "deno-std/assert/equals.js";
import { assertAlmostEquals as assertAlmostEqualsJs } from "deno-std/assert/almost_equals.js";
import { assertThrows as assertThrowsJs } from "deno-std/assert/throws.js";
import { assertRejects as assertRejectsJs } from "deno-std/assert/rejects.js";
import { assertMatch as assertMatchJs } from "deno-std/assert/match.js";
import { assertStringIncludes as assertStringIncludesJs } from "deno-std/assert/string_includes.js";
import { assertGreater as assertGreaterJs } from "deno-std/assert/greater.js";
import { assertLess as assertLessJs } from "deno-std/assert/less.js";
import { assertLessOrEqual as assertLessOrEqualJs } from "deno-std/assert/less_or_equal.js";
import { assertGreaterOrEqual as assertGreaterOrEqualJs } from "deno-std/assert/greater_or_equal.js";
import { fail as failJs } from "deno-std/assert/fail.js";

/** Asserts that `expr` is truthy. */
export const assert: (expr: unknown, msg?: string) => asserts expr = assertJs;
/** Deep equality. */
export const assertEquals: <T>(actual: T, expected: T, msg?: string) => void = assertEqualsJs;
/** |actual − expected| ≤ tolerance. */
export const assertAlmostEquals: (
  actual: number,
  expected: number,
  tolerance?: number,
  msg?: string,
) => void = assertAlmostEqualsJs;
/** `fn` throws (optionally an instance of `ErrorClass` whose message includes `msgIncludes`). */
export const assertThrows: (
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  ErrorClass?: new (...args: any[]) => Error,
  msgIncludes?: string,
  msg?: string,
) => Error = assertThrowsJs as never;
/** `fn`'s promise rejects (optionally with an instance of `ErrorClass`). */
export const assertRejects: (
  fn: () => PromiseLike<unknown>,
  // deno-lint-ignore no-explicit-any
  ErrorClass?: new (...args: any[]) => Error,
  msgIncludes?: string,
  msg?: string,
) => Promise<Error> = assertRejectsJs as never;
/** `actual` matches `expected`. */
export const assertMatch: (actual: string, expected: RegExp, msg?: string) => void = assertMatchJs;
/** `actual` includes `expected`. */
export const assertStringIncludes: (actual: string, expected: string, msg?: string) => void =
  assertStringIncludesJs;
/** actual > expected. */
export const assertGreater: <T>(actual: T, expected: T, msg?: string) => void = assertGreaterJs;
/** actual < expected. */
export const assertLess: <T>(actual: T, expected: T, msg?: string) => void = assertLessJs;
/** actual ≤ expected. */
export const assertLessOrEqual: <T>(actual: T, expected: T, msg?: string) => void =
  assertLessOrEqualJs;
/** actual ≥ expected. */
export const assertGreaterOrEqual: <T>(actual: T, expected: T, msg?: string) => void =
  assertGreaterOrEqualJs;
/** Fails the test. */
export const fail: (msg?: string) => never = failJs as never;
