// The verified Pebble reading as w3gate delivers it to applets, and the
// plausibility ranges shared by pebble-validator and erc20-reward (so a
// reading the validator flags never earns a reward).
//
// Payload: {"device":"<IMEI>","kind":"data","timestamp":<s>,"received":<s>,
//           "trust":"secure-element","reading":{"temperature":21.5,...}}
// Any channel inside "reading" may be missing.

import { JSON } from "@w3bstream/wasm-sdk";
import { fmt, numberOf, parseObject, stringOf } from "./host";

export class Reading {
  device: string = "";
  owner: string = "";
  // The "reading" object, or an empty one when the payload has none.
  data: JSON.Obj = new JSON.Obj();
}

// null when the payload is not a JSON object naming a device, or is another kind of message.
export function parseReading(payload: string): Reading | null {
  const root = parseObject(payload);
  if (root == null) return null;
  const device = stringOf(root, "device");
  if (device.length == 0) return null;
  // Confirm and config messages carry a "kind" too; only data readings count.
  const kind = stringOf(root, "kind");
  if (kind.length > 0 && kind != "data") return null;
  const r = new Reading();
  r.device = device;
  r.owner = stringOf(root, "owner");
  const data = root.getObj("reading");
  if (data != null) r.data = data;
  return r;
}

// Channel name, inclusive lower and upper bound, unit (Pebble's BME680 and
// battery; the BME680 is specified for -40..85 °C and 300..1100 hPa).
const CHANNELS: string[] = ["temperature", "humidity", "pressure", "vbat"];
const LOW: f64[] = [-40.0, 0.0, 300.0, 3.0];
const HIGH: f64[] = [85.0, 100.0, 1100.0, 4.5];

// Out-of-range channels as "name=value (low..high)" strings; empty when the
// reading is plausible. Missing channels are not an error.
export function outOfRange(data: JSON.Obj): string[] {
  const bad = new Array<string>();
  for (let i = 0; i < CHANNELS.length; i++) {
    const v = numberOf(data, CHANNELS[i]);
    if (isNaN(v)) {
      // Present but not a number (e.g. a string) is implausible too; null counts as missing.
      const raw = data.get(CHANNELS[i]);
      if (raw != null && !raw.isNull) bad.push(CHANNELS[i] + "=" + raw.stringify() + " (not a number)");
      continue;
    }
    if (v < LOW[i] || v > HIGH[i]) {
      bad.push(CHANNELS[i] + "=" + fmt(v) + " (" + fmt(LOW[i]) + ".." + fmt(HIGH[i]) + ")");
    }
  }
  return bad;
}
