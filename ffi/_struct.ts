/**
 * C struct layouts for FFI parameter structs: fields in declaration order, each at its
 * natural alignment (x86-64 System V), so a layout here matches the header's struct.
 * `tests/ffi_test.ts` checks every layout's size against `mp_struct_size()`.
 *
 * @example
 * ```ts
 * const point = new StructLayout([["size", "usize"], ["x", "f32"]]);
 * const buf = point.encode({ size: BigInt(point.size), x: 1.5 });
 * ```
 *
 * @module
 */

/** A scalar field type. */
export type Scalar = "i32" | "u32" | "i64" | "u64" | "usize" | "f32" | "f64";

/** A field: a scalar, a fixed array of scalars, a char array, or a nested struct. */
export type FieldType =
  | Scalar
  | { array: Scalar; length: number }
  | { chars: number }
  | { struct: StructLayout };

const scalarSize: Record<Scalar, number> = {
  i32: 4,
  u32: 4,
  i64: 8,
  u64: 8,
  usize: 8,
  f32: 4,
  f64: 8,
};

/** A plain JS value of a field. 64-bit integers are bigint. */
export type FieldValue =
  | number
  | bigint
  | string
  | number[]
  | bigint[]
  | { [key: string]: FieldValue };

function sizeAlign(t: FieldType): [number, number] {
  if (typeof t === "string") return [scalarSize[t], scalarSize[t]];
  if ("array" in t) return [scalarSize[t.array] * t.length, scalarSize[t.array]];
  if ("chars" in t) return [t.chars, 1];
  return [t.struct.size, t.struct.align];
}

/** The layout of one C struct. */
export class StructLayout {
  readonly fields: ReadonlyArray<readonly [string, FieldType]>;
  readonly offsets: Record<string, number> = {};
  readonly size: number;
  readonly align: number;

  constructor(fields: ReadonlyArray<readonly [string, FieldType]>) {
    this.fields = fields;
    let off = 0;
    let maxAlign = 1;
    for (const [name, t] of fields) {
      const [s, a] = sizeAlign(t);
      off = Math.ceil(off / a) * a;
      this.offsets[name] = off;
      off += s;
      maxAlign = Math.max(maxAlign, a);
    }
    this.align = maxAlign;
    this.size = Math.ceil(off / maxAlign) * maxAlign;
  }

  /** Writes `value`'s fields (missing ones stay as they are in `into`) into a buffer. */
  encode(value: Record<string, FieldValue>, into?: Uint8Array): Uint8Array<ArrayBuffer> {
    const buf = new Uint8Array(this.size);
    if (into) buf.set(into.subarray(0, this.size));
    this.write(new DataView(buf.buffer), 0, value);
    return buf;
  }

  /** Reads every field of a buffer holding this struct. */
  decode(buf: Uint8Array): Record<string, FieldValue> {
    return this.read(new DataView(buf.buffer, buf.byteOffset, buf.byteLength), 0);
  }

  private write(dv: DataView, base: number, value: Record<string, FieldValue>): void {
    for (const [name, t] of this.fields) {
      const v = value[name];
      if (v === undefined) continue;
      const off = base + this.offsets[name];
      if (typeof t === "string") {
        writeScalar(dv, off, t, v as number | bigint, name);
      } else if ("array" in t) {
        const arr = v as Array<number | bigint>;
        if (arr.length > t.length) {
          throw new RangeError(`Field "${name}" holds at most ${t.length}`);
        }
        for (let i = 0; i < arr.length; i++) {
          writeScalar(dv, off + i * scalarSize[t.array], t.array, arr[i], name);
        }
      } else if ("chars" in t) {
        const bytes = new TextEncoder().encode(String(v));
        const n = Math.min(bytes.length, t.chars - 1);
        for (let i = 0; i < t.chars; i++) dv.setUint8(off + i, i < n ? bytes[i] : 0);
      } else {
        t.struct.write(dv, off, v as Record<string, FieldValue>);
      }
    }
  }

  private read(dv: DataView, base: number): Record<string, FieldValue> {
    const out: Record<string, FieldValue> = {};
    for (const [name, t] of this.fields) {
      const off = base + this.offsets[name];
      if (typeof t === "string") {
        out[name] = readScalar(dv, off, t);
      } else if ("array" in t) {
        const arr: Array<number | bigint> = [];
        for (let i = 0; i < t.length; i++) {
          arr.push(readScalar(dv, off + i * scalarSize[t.array], t.array));
        }
        out[name] = arr as number[] | bigint[];
      } else if ("chars" in t) {
        const bytes = new Uint8Array(dv.buffer, dv.byteOffset + off, t.chars);
        const end = bytes.indexOf(0);
        out[name] = new TextDecoder().decode(bytes.subarray(0, end < 0 ? t.chars : end));
      } else {
        out[name] = t.struct.read(dv, off);
      }
    }
    return out;
  }
}

function writeScalar(dv: DataView, off: number, t: Scalar, v: number | bigint, name: string) {
  switch (t) {
    case "i32":
      dv.setInt32(off, Number(v), true);
      return;
    case "u32":
      dv.setUint32(off, Number(v), true);
      return;
    case "f32":
      dv.setFloat32(off, Number(v), true);
      return;
    case "f64":
      dv.setFloat64(off, Number(v), true);
      return;
    case "i64":
      dv.setBigInt64(off, BigInt(v), true);
      return;
    case "u64":
    case "usize":
      if (BigInt(v) < 0n) throw new RangeError(`Field "${name}" must not be negative`);
      dv.setBigUint64(off, BigInt(v), true);
      return;
  }
}

function readScalar(dv: DataView, off: number, t: Scalar): number | bigint {
  switch (t) {
    case "i32":
      return dv.getInt32(off, true);
    case "u32":
      return dv.getUint32(off, true);
    case "f32":
      return dv.getFloat32(off, true);
    case "f64":
      return dv.getFloat64(off, true);
    case "i64":
      return dv.getBigInt64(off, true);
    case "u64":
    case "usize":
      return dv.getBigUint64(off, true);
  }
}
