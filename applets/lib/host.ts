// Host calls that @w3bstream/wasm-sdk 0.12.0 does not wrap (or wraps with
// `assert`, which traps instead of letting the applet react), declared
// directly against the W3bstream v1 host ABI. Every wrapper here returns the
// host's return code or null, frees what it allocates, and never traps.
//
// Shared by the applets in this directory; not part of any applet's exports.

import { JSON } from "@w3bstream/wasm-sdk";

// @ts-ignore: decorator
@external("env", "ws_log")
declare function ws_log(level: i32, ptr: usize, len: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_get_env")
declare function ws_get_env(kptr: usize, klen: i32, vptr_ptr: usize, vlen_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_set_data")
declare function ws_set_data(rid: i32, ptr: usize, len: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_send_mqtt_msg")
declare function ws_send_mqtt_msg(tptr: usize, tlen: i32, mptr: usize, mlen: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_send_tx")
declare function ws_send_tx(chain_id: i32, ptr: usize, len: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;

// logrus levels, as the v1 node numbers them (the SDK's Log always sends 4).
export const LEVEL_ERROR: i32 = 2;
export const LEVEL_WARN: i32 = 3;
export const LEVEL_INFO: i32 = 4;
export const LEVEL_DEBUG: i32 = 5;

export function logAt(level: i32, msg: string): i32 {
  const buf = String.UTF8.encode(msg);
  return ws_log(level, changetype<usize>(buf), buf.byteLength);
}

// Reads the (ptr, len) pair the host wrote through the two out cells into a
// fresh ArrayBuffer and frees the host's block (which it got from our alloc).
export function takeOut(cells: usize): ArrayBuffer {
  const ptr = load<u32>(cells);
  const len = load<u32>(cells, 4);
  const out = new ArrayBuffer(<i32>len);
  memory.copy(changetype<usize>(out), ptr, len);
  if (ptr != 0) heap.free(ptr);
  return out;
}

// Project env value, or `fallback` when the key is unset (the SDK's GetEnv
// asserts, i.e. traps, on a missing key).
export function envOr(key: string, fallback: string): string {
  const k = String.UTF8.encode(key);
  const cells = heap.alloc(8);
  store<u64>(cells, 0);
  const rc = ws_get_env(changetype<usize>(k), k.byteLength, cells, cells + 4);
  let value = fallback;
  if (rc == 0) value = String.UTF8.decode(takeOut(cells));
  heap.free(cells);
  return value;
}

export function setData(rid: i32, data: ArrayBuffer): i32 {
  return ws_set_data(rid, changetype<usize>(data), data.byteLength);
}

// The SDK 0.12.0 has no MQTT wrapper at all.
export function sendMqtt(topic: string, message: string): i32 {
  const t = String.UTF8.encode(topic);
  const m = String.UTF8.encode(message);
  return ws_send_mqtt_msg(changetype<usize>(t), t.byteLength, changetype<usize>(m), m.byteLength);
}

// ws_send_tx that reports failure instead of asserting: the tx hash, or null.
export function sendTx(chainId: i32, txJson: string): string | null {
  const tx = String.UTF8.encode(txJson);
  const cells = heap.alloc(8);
  store<u64>(cells, 0);
  const rc = ws_send_tx(chainId, changetype<usize>(tx), tx.byteLength, cells, cells + 4);
  let hash: string | null = null;
  if (rc == 0) hash = String.UTF8.decode(takeOut(cells));
  heap.free(cells);
  return hash;
}

// --- JSON helpers -------------------------------------------------------

// Parses `text` as a JSON object, or returns null. assemblyscript-json traps
// on malformed input, so this only screens out the common non-object cases
// (empty payload, plain text); a truncated object still traps.
export function parseObject(text: string): JSON.Obj | null {
  const t = text.trim();
  if (t.length < 2 || t.charCodeAt(0) != 0x7b || t.charCodeAt(t.length - 1) != 0x7d) return null;
  const v = JSON.parse(t);
  return v.isObj ? <JSON.Obj>v : null;
}

// A JSON number as f64, NaN when missing or not a number. assemblyscript-json
// keeps integers (`4`) as JSON.Integer, which is not a JSON.Num, so getNum
// alone would miss `"vbat":4`.
export function numberOf(obj: JSON.Obj, key: string): f64 {
  const v = obj.get(key);
  if (v == null) return NaN;
  if (v.isInteger) return <f64>(<JSON.Integer>v)._num;
  if (v.isNum) return (<JSON.Num>v)._num;
  return NaN;
}

export function stringOf(obj: JSON.Obj, key: string): string {
  const v = obj.getString(key);
  return v == null ? "" : v._str;
}

export function boolOf(obj: JSON.Obj, key: string, fallback: bool): bool {
  const v = obj.getBool(key);
  return v == null ? fallback : v._bool;
}

// Readable number for log lines: 21.5 (not 21.500000001), 120 (not AS's "120.0").
export function fmt(x: f64): string {
  const s = (Math.round(x * 1e6) / 1e6).toString();
  return s.endsWith(".0") ? s.slice(0, s.length - 2) : s;
}
