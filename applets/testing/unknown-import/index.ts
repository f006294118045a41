// unknown-import: imports env.ws_get_mqtt_msg, which the Go SDK declares but no
// W3bstream node ever linked. A compatible node must refuse it at deploy time,
// naming the import (upstream fails at instantiation; wasm3 would only trap
// when the call is reached).

export { alloc } from "@w3bstream/wasm-sdk";

// @ts-ignore: decorator
@external("env", "ws_get_mqtt_msg")
declare function ws_get_mqtt_msg(rid: i32, topic_ptr_ptr: usize, topic_len_ptr: usize,
                                 payload_ptr_ptr: usize, payload_len_ptr: usize): i32;

export function start(rid: i32): i32 {
  const cells = heap.alloc(16);
  return ws_get_mqtt_msg(rid, cells, cells + 4, cells + 8, cells + 12);
}
