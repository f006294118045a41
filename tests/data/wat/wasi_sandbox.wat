;; What a Go SDK (TinyGo) applet reaches for beyond stdout and the clock: standard input, the file
;; system, sockets and sleeping. Each handler returns the WASI errno it got (0: success).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fdstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_raise" (func $raise (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "data.json")
  ;; stdin is empty: success, 0 bytes read (the count lands at 100)
  (func (export "read_stdin") (param $rid i32) (result i32)
    (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.const 16))
    (i32.store (i32.const 100) (i32.const 99))
    (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 100)) (then (return (i32.const -1))))
    (i32.load (i32.const 100)))
  (func (export "no_preopens") (param $rid i32) (result i32) (call $prestat (i32.const 3) (i32.const 0)))
  (func (export "open_file") (param $rid i32) (result i32)
    (call $path_open (i32.const 3) (i32.const 0) (i32.const 512) (i32.const 9) (i32.const 0)
                     (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 300)))
  (func (export "stdout_is_a_terminal") (param $rid i32) (result i32)
    (if (call $fdstat (i32.const 1) (i32.const 400)) (then (return (i32.const -1))))
    (i32.load8_u (i32.const 400)))  ;; the filetype: 2, character device
  (func (export "seek_stdout") (param $rid i32) (result i32)
    (call $seek (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 300)))
  (func (export "close_file") (param $rid i32) (result i32) (call $close (i32.const 7)))
  (func (export "accept") (param $rid i32) (result i32) (call $accept (i32.const 3) (i32.const 0) (i32.const 300)))
  (func (export "raise") (param $rid i32) (result i32) (call $raise (i32.const 9)))
  ;; sleep 20 ms on the monotonic clock: one clock subscription at 600, the event out at 700
  (func (export "sleep") (param $rid i32) (result i32)
    (i64.store (i32.const 600) (i64.const 42))            ;; userdata
    (i32.store8 (i32.const 608) (i32.const 0))            ;; tag: clock
    (i32.store (i32.const 616) (i32.const 1))             ;; monotonic
    (i64.store (i32.const 624) (i64.const 20000000))      ;; 20 ms, relative
    (i32.store16 (i32.const 640) (i32.const 0))
    (if (call $poll (i32.const 600) (i32.const 700) (i32.const 1) (i32.const 800)) (then (return (i32.const -1))))
    (if (i32.ne (i32.load (i32.const 800)) (i32.const 1)) (then (return (i32.const -2))))
    (i32.wrap_i64 (i64.load (i32.const 700))))            ;; the userdata of the event: 42
)
