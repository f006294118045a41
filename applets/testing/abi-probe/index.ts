// abi-probe: one handler per host function, for the runtime's tests. Each
// handler exercises its import directly (not through the SDK wrappers, which
// trap on errors), logs what happened and returns the host's return code, so
// a test sees both the code and the data. Results that are data are also
// written back with ws_set_data(rid, ...) for the test to read.
// See README.md for each handler's payload and result.

import { GetDataByRID, GetDB, JSON, JSONEncoder, Log, SetDB } from "@w3bstream/wasm-sdk";
import { ExecSQL, QuerySQL } from "@w3bstream/wasm-sdk";
import * as sql from "@w3bstream/wasm-sdk/assembly/sql";
import { envOr, logAt, numberOf, parseObject, sendMqtt, setData, takeOut } from "../../lib/host";

export { alloc } from "@w3bstream/wasm-sdk";

// @ts-ignore: decorator
@external("env", "ws_log")
declare function ws_log(level: i32, ptr: usize, len: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_get_data")
declare function ws_get_data(rid: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_set_data")
declare function ws_set_data(rid: i32, ptr: usize, len: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_get_db")
declare function ws_get_db(kptr: usize, klen: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_set_db")
declare function ws_set_db(kptr: usize, klen: i32, vptr: usize, vlen: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_get_env")
declare function ws_get_env(kptr: usize, klen: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_set_sql_db")
declare function ws_set_sql_db(ptr: usize, len: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_get_sql_db")
declare function ws_get_sql_db(ptr: usize, len: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_send_tx")
declare function ws_send_tx(chain_id: i32, ptr: usize, len: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_send_tx_with_operator")
declare function ws_send_tx_with_operator(chain_id: i32, ptr: usize, len: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_call_contract")
declare function ws_call_contract(chain_id: i32, ptr: usize, len: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_api_call")
declare function ws_api_call(ptr: usize, len: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("stat", "ws_submit_metrics")
declare function ws_submit_metrics(ptr: usize, len: i32): i32;
// w3gate extension (rc54's signature); not linked by the v1 node.
// @ts-ignore: decorator
@external("env", "ws_get_event_type")
declare function ws_get_event_type(rid: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;

// An address well past any memory this module will have (the host must not
// read or write there, and must return an error code instead of crashing).
const BAD: usize = 0xfffffff0;

// Two zeroed u32 out cells (ptr, len) for one data-returning call.
function cells(): usize {
  const c = heap.alloc(8);
  store<u64>(c, 0);
  return c;
}

// Raw payload bytes (GetDataByRID would UTF-8-decode them); null if the host said no.
function payloadBytes(rid: i32): ArrayBuffer | null {
  const c = cells();
  const rc = ws_get_data(rid, c, c + 4);
  const out = rc == 0 ? takeOut(c) : null;
  heap.free(c);
  return out;
}

function utf8(s: string): ArrayBuffer {
  return String.UTF8.encode(s);
}

function hex(buf: ArrayBuffer): string {
  const b = Uint8Array.wrap(buf);
  let s = "";
  for (let i = 0; i < b.length; i++) s += (b[i] < 16 ? "0" : "") + b[i].toString(16);
  return s;
}

// Calls a (chain_id, ptr, len, out, out) import with the payload as its JSON;
// chain id from the payload's "chainId" (default 31337, anvil's).
function chainCall(rid: i32, which: i32, label: string): i32 {
  const payload = GetDataByRID(rid);
  const obj = parseObject(payload);
  let chainId: i32 = 31337;
  if (obj != null && !isNaN(numberOf(obj, "chainId"))) chainId = <i32>numberOf(obj, "chainId");
  const body = utf8(payload);
  const c = cells();
  let rc: i32;
  if (which == 0) rc = ws_send_tx(chainId, changetype<usize>(body), body.byteLength, c, c + 4);
  else if (which == 1) rc = ws_send_tx_with_operator(chainId, changetype<usize>(body), body.byteLength, c, c + 4);
  else rc = ws_call_contract(chainId, changetype<usize>(body), body.byteLength, c, c + 4);
  if (rc == 0) {
    const out = takeOut(c);
    // call_contract returns raw bytes; the tx calls return the hash as text.
    const shown = which == 2 ? "0x" + hex(out) : String.UTF8.decode(out);
    Log(label + " chain " + chainId.toString() + " rc=0 result=" + shown);
    setData(rid, which == 2 ? utf8(shown) : out);
  } else {
    Log(label + " chain " + chainId.toString() + " rc=" + rc.toString());
  }
  heap.free(c);
  return rc;
}

// --- handlers --------------------------------------------------------------

// Default handler: logs the rid and the payload as text.
export function start(rid: i32): i32 {
  Log("abi-probe start rid=" + rid.toString() + " payload=" + GetDataByRID(rid));
  return 0;
}

// ws_log at every logrus level and one out-of-range level; returns how many calls did not return 0.
export function log_levels(rid: i32): i32 {
  let failures = 0;
  const levels: i32[] = [0, 1, 2, 3, 4, 5, 6, 99, -1];
  for (let i = 0; i < levels.length; i++) {
    if (logAt(levels[i], "abi-probe level " + levels[i].toString()) != 0) failures++;
  }
  return failures;
}

// ws_get_data then ws_set_data with the same bytes; returns the first non-zero code.
// Raw bytes: non-UTF-8 payloads survive.
export function echo(rid: i32): i32 {
  const c = cells();
  const rc = ws_get_data(rid, c, c + 4);
  if (rc != 0) {
    heap.free(c);
    Log("echo: ws_get_data rc=" + rc.toString());
    return rc;
  }
  const data = takeOut(c);
  heap.free(c);
  const set = ws_set_data(rid, changetype<usize>(data), data.byteLength);
  Log("echo: " + data.byteLength.toString() + " bytes, ws_set_data rc=" + set.toString());
  return set;
}

// SDK SetDB/GetDB round trip of the payload under "probe:kv", and a raw get of a
// missing key. Returns 0 when the value came back intact and the missing key gave 2.
export function kv_roundtrip(rid: i32): i32 {
  const value = payloadBytes(rid);
  const v = value == null ? new ArrayBuffer(0) : value;
  SetDB("probe:kv", v);
  const back = GetDB("probe:kv");
  const same = back != null && hex(back) == hex(v);
  const k = utf8("probe:missing");
  const c = cells();
  const missing = ws_get_db(changetype<usize>(k), k.byteLength, c, c + 4);
  heap.free(c);
  Log("kv_roundtrip: " + v.byteLength.toString() + " bytes " + (same ? "intact" : "CHANGED") +
      ", missing key rc=" + missing.toString());
  return same && missing == 2 ? 0 : 1;
}

// Payload "key" or "key=value": sets (if '=') then gets the key raw. Returns the
// ws_get_db code (2 when missing); the value is written back with ws_set_data.
export function kv_get(rid: i32): i32 {
  const payload = GetDataByRID(rid);
  const eq = payload.indexOf("=");
  const key = eq < 0 ? payload : payload.slice(0, eq);
  const k = utf8(key);
  if (eq >= 0) {
    const v = utf8(payload.slice(eq + 1));
    const set = ws_set_db(changetype<usize>(k), k.byteLength, changetype<usize>(v), v.byteLength);
    if (set != 0) {
      Log("kv_get: ws_set_db " + key + " rc=" + set.toString());
      return set;
    }
  }
  const c = cells();
  const rc = ws_get_db(changetype<usize>(k), k.byteLength, c, c + 4);
  if (rc == 0) {
    const v = takeOut(c);
    Log("kv_get: " + key + " = " + String.UTF8.decode(v));
    setData(rid, v);
  } else {
    Log("kv_get: " + key + " rc=" + rc.toString());
  }
  heap.free(c);
  return rc;
}

// Increments the ASCII decimal counter under "probe:counter" and returns the new
// value (shows KV persistence and instance reuse across events).
export function kv_incr(rid: i32): i32 {
  const old = GetDB("probe:counter");
  const n = (old == null ? 0 : <i32>parseInt(String.UTF8.decode(old))) + 1;
  SetDB("probe:counter", utf8(n.toString()));
  Log("kv_incr: probe:counter = " + n.toString());
  return n;
}

// Payload: the env key. Returns the ws_get_env code (8 when missing); the value
// is written back with ws_set_data.
export function env_get(rid: i32): i32 {
  const key = GetDataByRID(rid);
  const k = utf8(key);
  const c = cells();
  const rc = ws_get_env(changetype<usize>(k), k.byteLength, c, c + 4);
  if (rc == 0) {
    const v = takeOut(c);
    Log("env_get: " + key + " = " + String.UTF8.decode(v));
    setData(rid, v);
  } else {
    Log("env_get: " + key + " rc=" + rc.toString());
  }
  heap.free(c);
  return rc;
}

// Payload: a W3bstream SQL statement JSON {"statement": "...", "params": [{"int32": 1}, ...]},
// passed through to ws_set_sql_db. Returns its code.
export function sql_exec(rid: i32): i32 {
  const body = utf8(GetDataByRID(rid));
  const rc = ws_set_sql_db(changetype<usize>(body), body.byteLength);
  Log("sql_exec rc=" + rc.toString());
  return rc;
}

// Payload: a statement JSON passed to ws_get_sql_db. Returns its code; the result
// JSON is logged and written back with ws_set_data.
export function sql_query(rid: i32): i32 {
  const body = utf8(GetDataByRID(rid));
  const c = cells();
  const rc = ws_get_sql_db(changetype<usize>(body), body.byteLength, c, c + 4);
  if (rc == 0) {
    const rows = takeOut(c);
    Log("sql_query: " + String.UTF8.decode(rows));
    setData(rid, rows);
  } else {
    Log("sql_query rc=" + rc.toString());
  }
  heap.free(c);
  return rc;
}

// The SDK's own ExecSQL/QuerySQL (which trap on a non-zero code), as upstream's
// sql example uses them. Needs the table
//   t_probe (f_id INTEGER, f_name TEXT, f_big INTEGER, f_value REAL, f_flag BOOLEAN).
// Inserts one row (f_id = rid), queries all rows, writes the result back and returns 0.
export function sql_roundtrip(rid: i32): i32 {
  const params: sql.SQLTypes[] = [
    new sql.Int32(rid),
    new sql.String("probe"),
    new sql.Int64(9007199254740993),
    new sql.Float64(21.5),
    new sql.Bool(true),
  ];
  ExecSQL('INSERT INTO "t_probe" (f_id,f_name,f_big,f_value,f_flag) VALUES (?,?,?,?,?);', params);
  const rows = QuerySQL('SELECT * FROM "t_probe";');
  Log("sql_roundtrip: " + rows);
  setData(rid, utf8(rows));
  return 0;
}

// Publishes the payload on topic "abi-probe/mqtt" (or env PROBE_TOPIC). Returns the code.
export function send_mqtt(rid: i32): i32 {
  const topic = envOr("PROBE_TOPIC", "abi-probe/mqtt");
  const rc = sendMqtt(topic, GetDataByRID(rid));
  Log("send_mqtt " + topic + " rc=" + rc.toString());
  return rc;
}

// Payload: tx JSON {"to","value","data"} (+ optional "chainId"), passed through.
// Returns the code; the tx hash is written back with ws_set_data.
export function send_tx(rid: i32): i32 {
  return chainCall(rid, 0, "send_tx");
}

// As send_tx, with "operatorName" in the payload.
export function send_tx_with_operator(rid: i32): i32 {
  return chainCall(rid, 1, "send_tx_with_operator");
}

// Payload: {"to","data"} (+ optional "chainId"). Returns the code; the result is
// hex-encoded ("0x...") and written back with ws_set_data.
export function call_contract(rid: i32): i32 {
  return chainCall(rid, 2, "call_contract");
}

// Payload: an api request JSON {"Method","Url","Header","Body"(base64)}, passed through.
// Returns the code; the response JSON is logged and written back.
export function api_call(rid: i32): i32 {
  const body = utf8(GetDataByRID(rid));
  const c = cells();
  const rc = ws_api_call(changetype<usize>(body), body.byteLength, c, c + 4);
  if (rc == 0) {
    const resp = takeOut(c);
    Log("api_call: " + String.UTF8.decode(resp));
    setData(rid, resp);
  } else {
    Log("api_call rc=" + rc.toString());
  }
  heap.free(c);
  return rc;
}

// Payload passed to stat.ws_submit_metrics (a JSON object is accepted, an array or
// junk gives -1). Returns the code.
export function metrics(rid: i32): i32 {
  const body = utf8(GetDataByRID(rid));
  const rc = ws_submit_metrics(changetype<usize>(body), body.byteLength);
  Log("metrics rc=" + rc.toString());
  return rc;
}

// w3gate's ws_get_event_type. Returns the code; the type is logged and written back.
export function event_type(rid: i32): i32 {
  const c = cells();
  const rc = ws_get_event_type(rid, c, c + 4);
  if (rc == 0) {
    const t = takeOut(c);
    Log("event_type: " + String.UTF8.decode(t));
    setData(rid, t);
  } else {
    Log("event_type rc=" + rc.toString());
  }
  heap.free(c);
  return rc;
}

// Calls several imports with pointers outside memory. Writes back a JSON object
// {"ws_log": rc, ...} with each code (all must be non-zero, and the call must
// not crash the host) and returns how many of them returned 0.
export function bad_pointers(rid: i32): i32 {
  const k = utf8("probe:kv");
  const c = cells();
  const names: string[] = [
    "ws_log", "ws_get_data", "ws_set_data", "ws_set_db", "ws_get_db", "ws_get_env",
    "ws_set_sql_db", "ws_send_mqtt_msg", "ws_submit_metrics",
  ];
  const codes: i32[] = [
    ws_log(4, BAD, 64),
    ws_get_data(rid, BAD, BAD + 4),   // out cells outside memory
    ws_set_data(rid, BAD, 64),
    ws_set_db(BAD, 8, BAD, 8),
    ws_get_db(changetype<usize>(k), k.byteLength, BAD, BAD + 4),
    ws_get_env(BAD, 8, c, c + 4),
    ws_set_sql_db(BAD, 64),
    sendMqttRaw(),
    ws_submit_metrics(BAD, 64),
  ];
  heap.free(c);
  const e = new JSONEncoder();
  e.pushObject(null);
  let zeros = 0;
  for (let i = 0; i < names.length; i++) {
    e.setInteger(names[i], codes[i]);
    if (codes[i] == 0) zeros++;
  }
  e.popObject();
  Log("bad_pointers: " + e.toString());
  setData(rid, utf8(e.toString()));
  return zeros;
}

// @ts-ignore: decorator
@external("env", "ws_send_mqtt_msg")
declare function ws_send_mqtt_msg(tptr: usize, tlen: i32, mptr: usize, mlen: i32): i32;
function sendMqttRaw(): i32 {
  return ws_send_mqtt_msg(BAD, 16, BAD, 16);
}

// AssemblyScript's own runtime imports: trace (with two numbers) and seed (via Math.random).
export function trace_seed(rid: i32): i32 {
  trace("abi-probe trace", 2, 1.5, <f64>rid);
  const r = Math.random();
  Log("trace_seed: random " + r.toString());
  return r >= 0.0 && r < 1.0 ? 0 : 1;
}

// Aborts with a message (env.abort with AS UTF-16 strings: message, file, line, column).
export function trap_abort(rid: i32): i32 {
  throw new Error("abi-probe abort: " + GetDataByRID(rid));
}
