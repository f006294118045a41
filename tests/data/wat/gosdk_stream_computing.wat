;; What a TinyGo build of the Go SDK's stream_computing_01 example exports, written by hand
;; (TinyGo is not installable here): the flow operators of W3bstream's strategy pipeline. Three
;; take one argument, as a handler does, and hand their output back with ws_set_data on the rid
;; they return; `reduce(acc, rid)` takes two.
;;   filterAge(rid)   "true" when the payload's "age" is 18 or more, else "false"
;;   mapTax(rid)      the payload with "taxNumber":"19832106687" added when "age" is 30 or more
;;   groupByAge(rid)  the payload's "city"
;;   reduce(acc, rid) rid when acc is 0, else acc
;; Imports and memory as the upstream build's (the runtime's WASI calls, ws_log, ws_get_data,
;; ws_set_data); the heap is TinyGo's leaking collector: bump allocation, memory doubled when full.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "env" "ws_log" (func $ws_log (param i32 i32 i32) (result i32)))
  (import "env" "ws_get_data" (func $ws_get_data (param i32 i32 i32) (result i32)))
  (import "env" "ws_set_data" (func $ws_set_data (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global $__heap_base i32 (i32.const 69632))
  ;; .rodata
  (data (i32.const 65536) "true")
  (data (i32.const 65544) "false")
  (data (i32.const 65552) "\"age\"")
  (data (i32.const 65560) "\"city\"")
  (data (i32.const 65568) ",\"taxNumber\":\"19832106687\"}")
  (data (i32.const 65600) "filter the Customer's age more than 18")
  (data (i32.const 65640) "filter the Customer's age less than 18")
  (data (i32.const 65680) "the Customer's age is more than 30")
  (data (i32.const 65720) "panic: runtime error: out of memory\n")
  (data (i32.const 65760) "get reduce acc resource is 0")
  ;; .data: 66560 the heap's next free byte (0: not set up)

  (func $panic_oom
    (local $sp i32)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (i32.store (local.get $sp) (i32.const 65720))
    (i32.store offset=4 (local.get $sp) (i32.const 36))
    (drop (call $fd_write (i32.const 1) (local.get $sp) (i32.const 1) (i32.add (local.get $sp) (i32.const 8))))
    (unreachable))

  (func $new (param $size i32) (result i32)
    (local $p i32) (local $next i32)
    (if (i32.gt_u (local.get $size) (i32.const 0x40000000)) (then (call $panic_oom)))
    (local.set $p (i32.load (i32.const 66560)))
    (if (i32.eqz (local.get $p)) (then (local.set $p (global.get $__heap_base))))
    (local.set $next (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (block $fits (loop $grow
      (br_if $fits (i32.le_u (local.get $next) (i32.mul (memory.size) (i32.const 65536))))
      (if (i32.eq (memory.grow (memory.size)) (i32.const -1)) (then (call $panic_oom)))
      (br $grow)))
    (i32.store (i32.const 66560) (local.get $next))
    (local.get $p))

  (func (export "alloc") (param $size i32) (result i32) (call $new (local.get $size)))
  (func (export "malloc") (param $size i32) (result i32) (call $new (local.get $size)))
  (func (export "free") (param $ptr i32))

  (func $log (param $ptr i32) (param $len i32)
    (drop (call $ws_log (i32.const 4) (local.get $ptr) (local.get $len))))

  ;; stream.GetDataByRID: the payload's address, its length at $out; 0 when it failed
  (func $get_data (param $rid i32) (param $out i32) (result i32)
    (if (call $ws_get_data (local.get $rid) (i32.add (local.get $out) (i32.const 4)) (local.get $out))
      (then (return (i32.const 0))))
    (i32.load offset=4 (local.get $out)))

  ;; where the value of the key at $key (quoted, $klen bytes) starts in [$p, $end); 0 if absent
  (func $json_value (param $p i32) (param $end i32) (param $key i32) (param $klen i32) (result i32)
    (local $j i32) (local $i i32)
    (block $none (loop $search
      (br_if $none (i32.gt_u (i32.add (local.get $p) (local.get $klen)) (local.get $end)))
      (local.set $j (i32.const 0))
      (block $differ (loop $cmp
        (br_if $differ (i32.ge_u (local.get $j) (local.get $klen)))
        (br_if $differ (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $j)))
                               (i32.load8_u (i32.add (local.get $key) (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $cmp)))
      (if (i32.eq (local.get $j) (local.get $klen))
        (then
          (local.set $i (i32.add (local.get $p) (local.get $klen)))
          (block $skipped (loop $skip
            (br_if $skipped (i32.ge_u (local.get $i) (local.get $end)))
            (br_if $skipped (i32.and (i32.ne (i32.load8_u (local.get $i)) (i32.const 32))
                                     (i32.ne (i32.load8_u (local.get $i)) (i32.const 58))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $skip)))
          (return (local.get $i))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $search)))
    (i32.const 0))

  ;; the payload's "age" (0 when absent)
  (func $age (param $p i32) (param $end i32) (result i32)
    (local $i i32) (local $n i32)
    (local.set $i (call $json_value (local.get $p) (local.get $end) (i32.const 65552) (i32.const 5)))
    (if (i32.eqz (local.get $i)) (then (return (i32.const 0))))
    (block $done (loop $digit
      (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
      (br_if $done (i32.gt_u (i32.sub (i32.load8_u (local.get $i)) (i32.const 48)) (i32.const 9)))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (i32.load8_u (local.get $i)) (i32.const 48))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $digit)))
    (local.get $n))

  (func (export "filterAge") (param $rid i32) (result i32)
    (local $p i32)
    (local.set $p (call $get_data (local.get $rid) (i32.const 66568)))
    (if (i32.eqz (local.get $p)) (then (return (i32.const -1))))
    (if (i32.ge_u (call $age (local.get $p) (i32.add (local.get $p) (i32.load (i32.const 66568)))) (i32.const 18))
      (then (call $log (i32.const 65600) (i32.const 38))
            (drop (call $ws_set_data (local.get $rid) (i32.const 65536) (i32.const 4))))
      (else (call $log (i32.const 65640) (i32.const 38))
            (drop (call $ws_set_data (local.get $rid) (i32.const 65544) (i32.const 5)))))
    (local.get $rid))

  (func (export "mapTax") (param $rid i32) (result i32)
    (local $p i32) (local $len i32) (local $out i32)
    (local.set $p (call $get_data (local.get $rid) (i32.const 66568)))
    (if (i32.eqz (local.get $p)) (then (return (i32.const -1))))
    (local.set $len (i32.load (i32.const 66568)))
    (if (i32.and (i32.ge_u (call $age (local.get $p) (i32.add (local.get $p) (local.get $len))) (i32.const 30))
                 (i32.gt_u (local.get $len) (i32.const 1)))
      (then
        (call $log (i32.const 65680) (i32.const 34))
        ;; the object without its closing brace, then the tax number and the brace
        (local.set $out (call $new (i32.add (local.get $len) (i32.const 26))))
        (memory.copy (local.get $out) (local.get $p) (i32.sub (local.get $len) (i32.const 1)))
        (memory.copy (i32.add (local.get $out) (i32.sub (local.get $len) (i32.const 1))) (i32.const 65568) (i32.const 27))
        (drop (call $ws_set_data (local.get $rid) (local.get $out) (i32.add (local.get $len) (i32.const 26)))))
      (else (drop (call $ws_set_data (local.get $rid) (local.get $p) (local.get $len)))))
    (local.get $rid))

  (func (export "groupByAge") (param $rid i32) (result i32)
    (local $p i32) (local $end i32) (local $i i32) (local $j i32)
    (local.set $p (call $get_data (local.get $rid) (i32.const 66568)))
    (if (i32.eqz (local.get $p)) (then (return (i32.const -1))))
    (local.set $end (i32.add (local.get $p) (i32.load (i32.const 66568))))
    (local.set $i (call $json_value (local.get $p) (local.get $end) (i32.const 65560) (i32.const 6)))
    (if (i32.and (i32.ne (local.get $i) (i32.const 0)) (i32.lt_u (local.get $i) (local.get $end)))
      (then (if (i32.eq (i32.load8_u (local.get $i)) (i32.const 34))
        (then
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (local.set $j (local.get $i))
          (block $closed (loop $value
            (br_if $closed (i32.ge_u (local.get $j) (local.get $end)))
            (br_if $closed (i32.eq (i32.load8_u (local.get $j)) (i32.const 34)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $value)))
          (drop (call $ws_set_data (local.get $rid) (local.get $i) (i32.sub (local.get $j) (local.get $i))))
          (return (local.get $rid))))))
    (drop (call $ws_set_data (local.get $rid) (i32.const 65536) (i32.const 0)))
    (local.get $rid))

  ;; reduce(acc, rid): the pipeline's fold; a handler is never called with two arguments
  (func (export "reduce") (param $acc i32) (param $rid i32) (result i32)
    (if (i32.eqz (local.get $acc))
      (then (call $log (i32.const 65760) (i32.const 28))
            (return (local.get $rid))))
    (local.get $acc))

  (func (export "_start")
    (local $sp i32)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (drop (call $args_sizes_get (local.get $sp) (i32.add (local.get $sp) (i32.const 4))))
    (drop (call $environ_sizes_get (local.get $sp) (i32.add (local.get $sp) (i32.const 4))))
    (call $proc_exit (i32.const 0)))
)
