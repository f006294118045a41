;; A hand-written applet for tests/hil/test_device_command.py: reacting to a contract log (the
;; go-ethereum Log JSON of a chain monitor), it asks the gateway to command the legacy device the
;; log's second topic names (a bytes32 whose first 8 bytes are the device id) through the system
;; API: POST /system/device_command {"device": "<16 hex>", "command": {"relay": <env RELAY>}},
;; the body base64-encoded as W3bstream's ws_api_call takes it. The gateway's answer is logged
;; (info) and becomes the handler's return value.
;; Memory: 0..63 out cells, 64.. constants, 1024 the body, 2048 the request, heap from 4096.
(module
  (import "env" "ws_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "ws_get_data" (func $get_data (param i32 i32 i32) (result i32)))
  (import "env" "ws_set_data" (func $set_data (param i32 i32 i32) (result i32)))
  (import "env" "ws_get_env" (func $get_env (param i32 i32 i32 i32) (result i32)))
  (import "env" "ws_api_call" (func $api_call (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1 64)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 64) "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")  ;; 64..127
  (data (i32.const 128) "\22topics\22")                                                     ;; 8
  (data (i32.const 144) "0x")                                                               ;; 2
  (data (i32.const 160) "RELAY")                                                            ;; 5
  (data (i32.const 176) "{\22device\22:\22")                                                ;; 11
  (data (i32.const 192) "\22,\22command\22:{\22relay\22:")                                  ;; 21
  (data (i32.const 224) "}}")                                                               ;; 2
  (data (i32.const 256) "{\22Method\22:\22POST\22,\22Url\22:\22/system/device_command\22,\22Body\22:\22")  ;; 56
  (data (i32.const 320) "\22}")                                                             ;; 2
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.const 1)))))
    (local.get $p))
  ;; where the n bytes at $needle first occur in [$at, $end), or -1
  (func $find (param $at i32) (param $end i32) (param $needle i32) (param $n i32) (result i32)
    (local $j i32)
    (block $none
      (loop $scan
        (br_if $none (i32.gt_u (i32.add (local.get $at) (local.get $n)) (local.get $end)))
        (local.set $j (i32.const 0))
        (block $differ
          (loop $compare
            (br_if $differ (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $j)))
                                   (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br_if $compare (i32.lt_u (local.get $j) (local.get $n))))
          (return (local.get $at)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $scan)))
    (i32.const -1))
  ;; copy n bytes; returns the end of the copy
  (func $copy (param $dst i32) (param $src i32) (param $n i32) (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $dst))
  ;; base64 (with padding) of n bytes at $src, written at $dst; returns its end
  (func $base64 (param $src i32) (param $n i32) (param $dst i32) (result i32)
    (local $v i32)
    (block $done
      (loop $group
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $v (i32.shl (i32.load8_u (local.get $src)) (i32.const 16)))
        (if (i32.gt_u (local.get $n) (i32.const 1))
          (then (local.set $v (i32.or (local.get $v) (i32.shl (i32.load8_u offset=1 (local.get $src)) (i32.const 8))))))
        (if (i32.gt_u (local.get $n) (i32.const 2))
          (then (local.set $v (i32.or (local.get $v) (i32.load8_u offset=2 (local.get $src))))))
        (i32.store8 (local.get $dst) (i32.load8_u offset=64 (i32.shr_u (local.get $v) (i32.const 18))))
        (i32.store8 offset=1 (local.get $dst)
          (i32.load8_u offset=64 (i32.and (i32.shr_u (local.get $v) (i32.const 12)) (i32.const 63))))
        (i32.store8 offset=2 (local.get $dst)
          (if (result i32) (i32.gt_u (local.get $n) (i32.const 1))
            (then (i32.load8_u offset=64 (i32.and (i32.shr_u (local.get $v) (i32.const 6)) (i32.const 63))))
            (else (i32.const 61))))
        (i32.store8 offset=3 (local.get $dst)
          (if (result i32) (i32.gt_u (local.get $n) (i32.const 2))
            (then (i32.load8_u offset=64 (i32.and (local.get $v) (i32.const 63))))
            (else (i32.const 61))))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
        (br_if $done (i32.le_u (local.get $n) (i32.const 3)))
        (local.set $src (i32.add (local.get $src) (i32.const 3)))
        (local.set $n (i32.sub (local.get $n) (i32.const 3)))
        (br $group)))
    (local.get $dst))
  ;; the contract log names a device: command it ({"relay": RELAY}); negative: a log without one
  (func $start (export "start") (param $rid i32) (result i32)
    (local $rc i32) (local $end i32) (local $at i32) (local $body i32) (local $request i32)
    (local.set $rc (call $get_data (local.get $rid) (i32.const 0) (i32.const 4)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (local.set $end (i32.add (i32.load (i32.const 0)) (i32.load (i32.const 4))))
    (local.set $at (call $find (i32.load (i32.const 0)) (local.get $end) (i32.const 128) (i32.const 8)))
    (if (i32.lt_s (local.get $at) (i32.const 0)) (then (return (i32.const -2))))
    (local.set $at (call $find (local.get $at) (local.get $end) (i32.const 144) (i32.const 2)))  ;; the event's topic
    (if (i32.lt_s (local.get $at) (i32.const 0)) (then (return (i32.const -3))))
    (local.set $at (call $find (i32.add (local.get $at) (i32.const 2)) (local.get $end) (i32.const 144) (i32.const 2)))
    (if (i32.lt_s (local.get $at) (i32.const 0)) (then (return (i32.const -3))))  ;; no second topic
    (if (i32.gt_u (i32.add (local.get $at) (i32.const 18)) (local.get $end)) (then (return (i32.const -3))))
    (local.set $rc (call $get_env (i32.const 160) (i32.const 5) (i32.const 8) (i32.const 12)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (local.set $body (call $copy (i32.const 1024) (i32.const 176) (i32.const 11)))
    (local.set $body (call $copy (local.get $body) (i32.add (local.get $at) (i32.const 2)) (i32.const 16)))
    (local.set $body (call $copy (local.get $body) (i32.const 192) (i32.const 21)))
    (local.set $body (call $copy (local.get $body) (i32.load (i32.const 8)) (i32.load (i32.const 12))))
    (local.set $body (call $copy (local.get $body) (i32.const 224) (i32.const 2)))
    (local.set $request (call $copy (i32.const 2048) (i32.const 256) (i32.const 56)))
    (local.set $request (call $base64 (i32.const 1024) (i32.sub (local.get $body) (i32.const 1024)) (local.get $request)))
    (local.set $request (call $copy (local.get $request) (i32.const 320) (i32.const 2)))
    (local.set $rc (call $api_call (i32.const 2048) (i32.sub (local.get $request) (i32.const 2048))
                                   (i32.const 16) (i32.const 20)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (drop (call $log (i32.const 4) (i32.load (i32.const 16)) (i32.load (i32.const 20))))
    (drop (call $set_data (local.get $rid) (i32.load (i32.const 16)) (i32.load (i32.const 20))))
    (i32.const 0))
  ;; the same, then trap: the event fails, so its command must not be sent
  (func (export "command_then_trap") (param $rid i32) (result i32)
    (drop (call $start (local.get $rid)))
    unreachable)
)
