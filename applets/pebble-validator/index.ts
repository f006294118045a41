// pebble-validator: flags implausible Pebble readings and keeps per-device
// statistics in KV. See README.md for the payload, KV layout and return codes.

import { GetDataByRID, GetDB, JSON, JSONEncoder, Log, SetDB } from "@w3bstream/wasm-sdk";
import { LEVEL_WARN, fmt, logAt, numberOf } from "../lib/host";
import { outOfRange, parseReading } from "../lib/pebble";

// The host calls alloc to hand us data (event payload, KV values).
export { alloc } from "@w3bstream/wasm-sdk";

// Return codes (surfaced as the event's result code).
const VALID: i32 = 0;
const FLAGGED: i32 = 1;
const BAD_PAYLOAD: i32 = 2;

class Stats {
  count: i64 = 0;    // readings seen
  flagged: i64 = 0;  // readings with at least one out-of-range channel
  n_t: i64 = 0;      // in-range temperatures summed in sum_t (mean = sum_t / n_t)
  min_t: f64 = NaN;  // NaN until the first in-range temperature; stored as null
  max_t: f64 = NaN;
  sum_t: f64 = 0;
}

function statsKey(device: string): string {
  return "stats:" + device;
}

function loadStats(device: string): Stats {
  const s = new Stats();
  const raw = GetDB(statsKey(device)); // null when the key is missing (host code 2)
  if (raw == null) return s;
  const text = String.UTF8.decode(raw);
  if (text.length < 2 || text.charCodeAt(0) != 0x7b) return s; // not ours; start over
  const obj = <JSON.Obj>JSON.parse(text);
  const count = numberOf(obj, "count");
  if (!isNaN(count)) s.count = <i64>count;
  const flagged = numberOf(obj, "flagged");
  if (!isNaN(flagged)) s.flagged = <i64>flagged;
  const n_t = numberOf(obj, "n_t");
  if (!isNaN(n_t)) s.n_t = <i64>n_t;
  s.min_t = numberOf(obj, "min_t");
  s.max_t = numberOf(obj, "max_t");
  const sum_t = numberOf(obj, "sum_t");
  if (!isNaN(sum_t)) s.sum_t = sum_t;
  return s;
}

function saveStats(device: string, s: Stats): void {
  const e = new JSONEncoder();
  e.pushObject(null);
  e.setInteger("count", s.count);
  e.setInteger("flagged", s.flagged);
  if (isNaN(s.min_t)) {
    e.setNull("min_t");
    e.setNull("max_t");
  } else {
    e.setFloat("min_t", s.min_t);
    e.setFloat("max_t", s.max_t);
  }
  e.setFloat("sum_t", s.sum_t);
  e.setInteger("n_t", s.n_t);
  e.popObject();
  SetDB(statsKey(device), String.UTF8.encode(e.toString()));
}

// Default handler: one verified Pebble reading per event.
export function start(rid: i32): i32 {
  const payload = GetDataByRID(rid);
  const reading = parseReading(payload);
  if (reading == null) {
    logAt(LEVEL_WARN, "pebble-validator: rid " + rid.toString() + ": payload is not a Pebble reading");
    return BAD_PAYLOAD;
  }
  const device = reading.device;
  const bad = outOfRange(reading.data);

  const s = loadStats(device);
  s.count += 1;
  if (bad.length > 0) s.flagged += 1;
  const t = numberOf(reading.data, "temperature");
  // Only plausible temperatures feed min/max/mean, so one glitch cannot skew them.
  if (!isNaN(t) && t >= -40.0 && t <= 85.0) {
    s.min_t = isNaN(s.min_t) ? t : Math.min(s.min_t, t);
    s.max_t = isNaN(s.max_t) ? t : Math.max(s.max_t, t);
    s.sum_t += t;
    s.n_t += 1;
  }
  saveStats(device, s);

  if (bad.length > 0) {
    logAt(LEVEL_WARN, "pebble-validator: " + device + " flagged: " + bad.join(", "));
    return FLAGGED;
  }
  Log("pebble-validator: " + device + " ok" + (isNaN(t) ? "" : " t=" + fmt(t)) +
      " (" + s.count.toString() + " readings, " + s.flagged.toString() + " flagged)");
  return VALID;
}
