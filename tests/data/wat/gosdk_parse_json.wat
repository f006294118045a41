;; What a TinyGo build of the Go SDK's JSON example does at the WASI level, written by hand
;; (TinyGo is not installable here). Linking encoding/json's dependencies (os, syscall) brings in
;; wasi-libc, whose imports are those of the upstream build: fd_read, path_open, fd_seek,
;; fd_close, fd_fdstat_get, fd_prestat_get and fd_prestat_dir_name beside the runtime's fd_write,
;; clock_time_get, args and environ sizes and proc_exit; newer TinyGo seeds its maps with
;; random_get. The `start` handler makes each of those calls as the libraries would (wasi-libc
;; looks for preopened directories from fd 3 up, os.Open tries a file, os.Stdin is read, stdout
;; is checked for a terminal and seeked, a descriptor closed), prints what each returned with
;; println (fd_write to stdout: "<call>: errno <n>"), then reads the payload and logs its "name"
;; as the example does: "wasm get name from json: <name>". `exit` is os.Exit(3).
;;
;; Memory as TinyGo lays it out (stack below 64 KiB, then .rodata, .data, the heap); the heap is
;; TinyGo's leaking collector (-gc=leaking): bump allocation, memory doubled when full.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "env" "ws_log" (func $ws_log (param i32 i32 i32) (result i32)))
  (import "env" "ws_get_data" (func $ws_get_data (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global $__heap_base i32 (i32.const 73728))
  ;; .rodata
  (data (i32.const 65536) "fd_prestat_get(")
  (data (i32.const 65552) "): errno ")
  (data (i32.const 65568) "path_open(data.json): errno ")
  (data (i32.const 65600) "fd_read(stdin): errno ")
  (data (i32.const 65632) ", bytes ")
  (data (i32.const 65648) "fd_fdstat_get(stdout): errno ")
  (data (i32.const 65680) ", filetype ")
  (data (i32.const 65696) "fd_seek(stdout): errno ")
  (data (i32.const 65728) "fd_close(3): errno ")
  (data (i32.const 65760) "random_get: errno ")
  (data (i32.const 65792) "clock_time_get: errno ")
  (data (i32.const 65824) "data.json")
  (data (i32.const 65840) "\"name\"")
  (data (i32.const 65856) "wasm get name from json: ")
  (data (i32.const 65888) "panic: runtime error: out of memory\n")
  (data (i32.const 65936) "error: get data failed")
  ;; .data: 66560 the heap's next free byte (0: not set up), 66564 the println buffer's end
  ;; (its start is 69632)

  ;; -- the heap (gc=leaking) ----------------------------------------------------------------
  (func $panic_oom
    (call $print (i32.const 65888) (i32.const 36))
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

  ;; -- println ------------------------------------------------------------------------------
  (func $print (param $ptr i32) (param $len i32)
    (local $sp i32)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (global.set $__stack_pointer (local.get $sp))
    (i32.store (local.get $sp) (local.get $ptr))
    (i32.store offset=4 (local.get $sp) (local.get $len))
    (drop (call $fd_write (i32.const 1) (local.get $sp) (i32.const 1) (i32.add (local.get $sp) (i32.const 8))))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16))))

  (func $line_end (result i32)
    (if (result i32) (i32.load (i32.const 66564)) (then (i32.load (i32.const 66564))) (else (i32.const 69632))))

  (func $put (param $src i32) (param $len i32)
    (memory.copy (call $line_end) (local.get $src) (local.get $len))
    (i32.store (i32.const 66564) (i32.add (call $line_end) (local.get $len))))

  ;; the decimal digits of an unsigned value
  (func $put_u32 (param $v i32)
    (local $n i32) (local $t i32) (local $end i32)
    (local.set $t (local.get $v))
    (local.set $n (i32.const 1))
    (block $counted (loop $count
      (br_if $counted (i32.lt_u (local.get $t) (i32.const 10)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $count)))
    (local.set $end (i32.add (call $line_end) (local.get $n)))
    (local.set $t (local.get $end))
    (loop $digit
      (local.set $t (i32.sub (local.get $t) (i32.const 1)))
      (i32.store8 (local.get $t) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (i32.gt_u (local.get $t) (call $line_end))))
    (i32.store (i32.const 66564) (local.get $end)))

  (func $println
    (i32.store8 (call $line_end) (i32.const 10))
    (call $print (i32.const 69632) (i32.sub (i32.add (call $line_end) (i32.const 1)) (i32.const 69632)))
    (i32.store (i32.const 66564) (i32.const 69632)))

  ;; println(what, errno)
  (func $report (param $what i32) (param $len i32) (param $errno i32)
    (call $put (local.get $what) (local.get $len))
    (call $put_u32 (local.get $errno))
    (call $println))

  ;; -- gjson.Get(json, "name").String(), enough of it ---------------------------------------
  ;; the string value of the key at $key (quoted, $klen bytes) in [$p, $end): its start, and its
  ;; length at $out; 0 when there is none
  (func $json_string (param $p i32) (param $end i32) (param $key i32) (param $klen i32) (param $out i32) (result i32)
    (local $i i32) (local $j i32)
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
          ;; spaces and the colon, then the opening quote
          (block $skipped (loop $skip
            (br_if $skipped (i32.ge_u (local.get $i) (local.get $end)))
            (br_if $skipped (i32.and (i32.ne (i32.load8_u (local.get $i)) (i32.const 32))
                                     (i32.ne (i32.load8_u (local.get $i)) (i32.const 58))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $skip)))
          (if (i32.and (i32.lt_u (local.get $i) (local.get $end)) (i32.eq (i32.load8_u (local.get $i)) (i32.const 34)))
            (then
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (local.set $j (local.get $i))
              (block $closed (loop $value
                (br_if $none (i32.ge_u (local.get $j) (local.get $end)))
                (br_if $closed (i32.eq (i32.load8_u (local.get $j)) (i32.const 34)))
                (local.set $j (i32.add (local.get $j) (i32.const 1)))
                (br $value)))
              (i32.store (local.get $out) (i32.sub (local.get $j) (local.get $i)))
              (return (local.get $i))))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $search)))
    (i32.const 0))

  ;; -- the handlers -------------------------------------------------------------------------
  (func (export "start") (param $rid i32) (result i32)
    (local $sp i32) (local $fd i32) (local $errno i32) (local $p i32) (local $msg i32) (local $name i32)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 64)))
    (global.set $__stack_pointer (local.get $sp))
    ;; wasi-libc's preopens: fd 3, 4, ... until one is not a preopened directory
    (local.set $fd (i32.const 3))
    (block $last (loop $preopen
      (local.set $errno (call $fd_prestat_get (local.get $fd) (local.get $sp)))
      (br_if $last (local.get $errno))
      (drop (call $fd_prestat_dir_name (local.get $fd) (i32.add (local.get $sp) (i32.const 16)) (i32.const 0)))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br $preopen)))
    (call $put (i32.const 65536) (i32.const 15))
    (call $put_u32 (local.get $fd))
    (call $report (i32.const 65552) (i32.const 9) (local.get $errno))
    ;; os.Open("data.json"): relative to the first preopen, fd 3, read rights
    (call $report (i32.const 65568) (i32.const 28)
          (call $path_open (i32.const 3) (i32.const 1) (i32.const 65824) (i32.const 9) (i32.const 0)
                           (i64.const 2) (i64.const 0) (i32.const 0) (local.get $sp)))
    ;; os.Stdin.Read(buf[:16])
    (i32.store (i32.add (local.get $sp) (i32.const 8)) (i32.add (local.get $sp) (i32.const 32)))
    (i32.store (i32.add (local.get $sp) (i32.const 12)) (i32.const 16))
    (i32.store (local.get $sp) (i32.const 99))
    (call $put (i32.const 65600) (i32.const 22))
    (call $put_u32 (call $fd_read (i32.const 0) (i32.add (local.get $sp) (i32.const 8)) (i32.const 1) (local.get $sp)))
    (call $report (i32.const 65632) (i32.const 8) (i32.load (local.get $sp)))
    ;; is stdout a terminal? (filetype 2: a character device)
    (call $put (i32.const 65648) (i32.const 29))
    (call $put_u32 (call $fd_fdstat_get (i32.const 1) (i32.add (local.get $sp) (i32.const 16))))
    (call $report (i32.const 65680) (i32.const 11) (i32.load8_u (i32.add (local.get $sp) (i32.const 16))))
    (call $report (i32.const 65696) (i32.const 23)
          (call $fd_seek (i32.const 1) (i64.const 0) (i32.const 1) (local.get $sp)))
    (call $report (i32.const 65728) (i32.const 19) (call $fd_close (i32.const 3)))
    (call $report (i32.const 65760) (i32.const 18) (call $random_get (i32.add (local.get $sp) (i32.const 32)) (i32.const 8)))
    (call $report (i32.const 65792) (i32.const 22)
          (call $clock_time_get (i32.const 0) (i64.const 1000) (i32.add (local.get $sp) (i32.const 32))))
    ;; the example: the payload, and its "name"
    (if (call $ws_get_data (local.get $rid) (local.get $sp) (i32.add (local.get $sp) (i32.const 4)))
      (then
        (drop (call $ws_log (i32.const 4) (i32.const 65936) (i32.const 22)))
        (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 64)))
        (return (i32.const -1))))
    (local.set $p (i32.load (local.get $sp)))
    (local.set $name (call $json_string (local.get $p) (i32.add (local.get $p) (i32.load offset=4 (local.get $sp)))
                                        (i32.const 65840) (i32.const 6) (i32.add (local.get $sp) (i32.const 8))))
    (local.set $msg (call $new (i32.add (i32.const 25) (i32.load offset=8 (local.get $sp)))))
    (memory.copy (local.get $msg) (i32.const 65856) (i32.const 25))
    (if (local.get $name)
      (then (memory.copy (i32.add (local.get $msg) (i32.const 25)) (local.get $name) (i32.load offset=8 (local.get $sp))))
      (else (i32.store offset=8 (local.get $sp) (i32.const 0))))
    (drop (call $ws_log (i32.const 4) (local.get $msg) (i32.add (i32.const 25) (i32.load offset=8 (local.get $sp)))))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 64)))
    (i32.const 0))

  ;; os.Exit(3)
  (func (export "exit") (param $rid i32) (result i32)
    (call $proc_exit (i32.const 3))
    (i32.const 0))

  (func (export "_start")
    (local $sp i32)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (drop (call $args_sizes_get (local.get $sp) (i32.add (local.get $sp) (i32.const 4))))
    (drop (call $environ_sizes_get (local.get $sp) (i32.add (local.get $sp) (i32.const 4))))
    (call $proc_exit (i32.const 0)))
)
