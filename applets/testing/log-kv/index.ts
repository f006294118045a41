// log-kv: the benchmark's applet, the smallest that does what most applets do per event:
// read the payload, log it, and count the event in KV (one key per project).

import { GetDataByRID, GetDB, Log, SetDB } from "@w3bstream/wasm-sdk";

export { alloc } from "@w3bstream/wasm-sdk";

export function start(rid: i32): i32 {
  const payload = GetDataByRID(rid);
  Log("log-kv: " + payload.length.toString() + " bytes");
  const stored = GetDB("log-kv:events");
  const count = stored == null ? 0 : I32.parseInt(String.UTF8.decode(stored!));
  SetDB("log-kv:events", String.UTF8.encode((count + 1).toString()));
  return 0;
}
