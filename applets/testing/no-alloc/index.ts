// no-alloc: an applet that does NOT export alloc (like upstream's AS json
// example builds), so every data-returning host call must fail with code 5.
// Each handler returns the host's code.

// @ts-ignore: decorator
@external("env", "ws_log")
declare function ws_log(level: i32, ptr: usize, len: i32): i32;
// @ts-ignore: decorator
@external("env", "ws_get_data")
declare function ws_get_data(rid: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_get_db")
declare function ws_get_db(kptr: usize, klen: i32, out_ptr_ptr: usize, out_len_ptr: usize): i32;
// @ts-ignore: decorator
@external("env", "ws_set_db")
declare function ws_set_db(kptr: usize, klen: i32, vptr: usize, vlen: i32): i32;

function log(msg: string): void {
  const b = String.UTF8.encode(msg);
  ws_log(4, changetype<usize>(b), b.byteLength);
}

// ws_get_data: 5 expected (the host has nowhere to put the payload).
export function start(rid: i32): i32 {
  const cells = heap.alloc(8);
  const rc = ws_get_data(rid, cells, cells + 4);
  log("no-alloc: ws_get_data rc=" + rc.toString());
  return rc;
}

// ws_set_db then ws_get_db of the same key: 5 expected (the key exists, so
// the failure is the copy, not a missing key).
export function get_db(rid: i32): i32 {
  const k = String.UTF8.encode("no-alloc:key");
  const v = String.UTF8.encode("value");
  ws_set_db(changetype<usize>(k), k.byteLength, changetype<usize>(v), v.byteLength);
  const cells = heap.alloc(8);
  const rc = ws_get_db(changetype<usize>(k), k.byteLength, cells, cells + 4);
  log("no-alloc: ws_get_db rc=" + rc.toString());
  return rc;
}
