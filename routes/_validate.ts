/**
 * Typed reading of untyped JSON bodies: each getter checks one field and throws a 400
 * {@link HttpError} that names it (`param`) and says what was expected and what came.
 *
 * @example
 * ```ts
 * import { Fields } from "./_validate.ts";
 * const f = new Fields({ temperature: 0.7 });
 * const t = f.number("temperature", { min: 0, max: 2 }) ?? 1;
 * ```
 *
 * @module
 */
import { HttpError } from "./_http_error.ts";

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? s.slice(0, 57) + "..." : s;
}

/** Bounds of {@link Fields.number}. */
export interface NumberRule {
  min?: number;
  max?: number;
  /** Exclude `min` itself: the value must be greater. */
  minExclusive?: boolean;
  integer?: boolean;
}

/** Reads fields of a JSON object with checks. */
export class Fields {
  readonly body: Record<string, unknown>;

  constructor(body: unknown) {
    this.body = body as Record<string, unknown>;
  }

  /** A 400 about `param`. */
  invalid(param: string, message: string, code: string | null = null): HttpError {
    return new HttpError(400, message, { param, code });
  }

  /** Whether the field is present and not null. */
  has(name: string): boolean {
    return this.body[name] !== undefined && this.body[name] !== null;
  }

  /** A number within `rule`, or undefined when absent/null. */
  number(name: string, rule: NumberRule = {}): number | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    const kind = rule.integer ? "an integer" : "a number";
    const lo = rule.min === undefined ? "" : `${rule.minExclusive ? "(" : "["}${rule.min}`;
    const hi = rule.max === undefined ? "" : `${rule.max}]`;
    const range = lo && hi
      ? ` in ${lo}, ${hi}`
      : lo
      ? ` ${rule.minExclusive ? ">" : ">="} ${rule.min}`
      : hi
      ? ` <= ${rule.max}`
      : "";
    const bad = () =>
      this.invalid(name, `Invalid "${name}": expected ${kind}${range}, got ${show(v)}`);
    if (typeof v !== "number" || !Number.isFinite(v)) throw bad();
    if (rule.integer && !Number.isInteger(v)) throw bad();
    if (rule.min !== undefined && (rule.minExclusive ? v <= rule.min : v < rule.min)) throw bad();
    if (rule.max !== undefined && v > rule.max) throw bad();
    return v;
  }

  /** A boolean, or undefined when absent/null. */
  boolean(name: string): boolean | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "boolean") {
      throw this.invalid(name, `Invalid "${name}": expected true or false, got ${show(v)}`);
    }
    return v;
  }

  /** A string, or undefined when absent/null. */
  string(name: string): string | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") {
      throw this.invalid(name, `Invalid "${name}": expected a string, got ${show(v)}`);
    }
    return v;
  }

  /** A plain object, or undefined when absent/null. */
  object(name: string): Record<string, unknown> | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) {
      throw this.invalid(name, `Invalid "${name}": expected an object, got ${show(v)}`);
    }
    return v as Record<string, unknown>;
  }

  /** `stop`: a string or an array of at most `max` strings; [] when absent. */
  stopStrings(name: string, max = 16): string[] {
    const v = this.body[name];
    if (v === undefined || v === null) return [];
    if (typeof v === "string") return [v];
    if (Array.isArray(v) && v.length <= max && v.every((s) => typeof s === "string")) {
      return v as string[];
    }
    throw this.invalid(
      name,
      `Invalid "${name}": expected a string or an array of at most ${max} strings, got ${show(v)}`,
    );
  }

  /** An array of integer token ids, or undefined when absent/null. */
  tokenIds(name: string): number[] | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v) || !v.every((x) => typeof x === "number" && Number.isInteger(x))) {
      throw this.invalid(
        name,
        `Invalid "${name}": expected an array of integer token ids, got ${show(v)}`,
      );
    }
    return v as number[];
  }

  /**
   * Refuses a field whose value asks for something this server does not do: `accepted`
   * says which values are fine (the defaults clients send).
   */
  unsupported(name: string, accepted: (v: unknown) => boolean, why: string): void {
    const v = this.body[name];
    if (v === undefined || v === null || accepted(v)) return;
    throw this.invalid(
      name,
      `Unsupported value ${show(v)} for "${name}": ${why}`,
      "unsupported_parameter",
    );
  }
}
