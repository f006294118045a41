;; What a TinyGo build of a Go SDK applet does, written by hand (TinyGo is not installable here):
;; the word-count example's handlers over a heap that behaves as TinyGo's conservative GC.
;;
;; Layout as TinyGo lays out wasm32-wasi: the stack below 64 KiB (__stack_pointer, the only wasm
;; global), then .rodata and .data (package variables live in linear memory, not in globals), then
;; the heap from __heap_base to the end of memory. Two pages at start, as TinyGo emits.
;;
;; The heap, as TinyGo's allocator: first fit over blocks; when nothing fits, one collection (a
;; conservative mark that scans every live block word by word, then a sweep); if that freed less
;; than a third of the heap, or still nothing fits, memory doubles (memory.grow by its own size,
;; as growHeap does); when the doubling is refused: "panic: runtime error: out of memory" on
;; stdout (fd_write) and a trap. The SDK's `alloc` registers every block it hands out in its
;; Allocations map, which nothing ever clears: those blocks stay live for the instance's life,
;; so with a reused instance every payload is kept and memory doubles as they pile up. Other
;; allocations are temporaries: garbage once the handler that made them returned.
;;
;; Handlers: `start` (word count: each word's count in KV as an int32 little-endian, and in a
;; package-level map), `word_count` (how many distinct words that map holds: what this instance
;; saw), `log_payload` (the log example: the payload copied into a Go string and logged),
;; `keep_payload` (reads the payload as every SDK handler does and logs its size and the
;; memory pages: "kept N bytes, memory P pages").
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "env" "ws_log" (func $ws_log (param i32 i32 i32) (result i32)))
  (import "env" "ws_get_data" (func $ws_get_data (param i32 i32 i32) (result i32)))
  (import "env" "ws_get_db" (func $ws_get_db (param i32 i32 i32 i32) (result i32)))
  (import "env" "ws_set_db" (func $ws_set_db (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global $__heap_base i32 (i32.const 67584))
  ;; .rodata
  (data (i32.const 65536) "start received: ")
  (data (i32.const 65552) "panic: runtime error: out of memory\n")
  (data (i32.const 65616) "error: get data failed")
  (data (i32.const 65648) "kept ")
  (data (i32.const 65656) " bytes, memory ")
  (data (i32.const 65672) " pages")
  (data (i32.const 65680) "get resource: ")
  ;; .data: 66560 heap set up, 66564 epoch (the running handler's; temporaries carry it),
  ;; 66568 records (list head), 66572 len(records), 66576 collections, 66580 words marked
  (data (i32.const 66564) "\02\00\00\00")

  ;; -- the heap -----------------------------------------------------------------------------
  (func $heap_end (result i32) (i32.mul (memory.size) (i32.const 65536)))

  (func $heap_init
    (if (i32.eqz (i32.load (i32.const 66560)))
      (then
        (i32.store (global.get $__heap_base)
                   (i32.sub (i32.sub (call $heap_end) (global.get $__heap_base)) (i32.const 8)))
        (i32.store offset=4 (global.get $__heap_base) (i32.const 0))
        (i32.store (i32.const 66560) (i32.const 1)))))

  ;; first fit: a zeroed block of $need bytes tagged $tag (1 kept, >1 a handler's temporary)
  (func $find_fit (param $need i32) (param $tag i32) (result i32)
    (local $b i32) (local $size i32) (local $end i32) (local $rest i32)
    (local.set $b (global.get $__heap_base))
    (local.set $end (call $heap_end))
    (block $none
      (loop $next
        (br_if $none (i32.ge_u (local.get $b) (local.get $end)))
        (local.set $size (i32.load (local.get $b)))
        (if (i32.and (i32.eqz (i32.load offset=4 (local.get $b))) (i32.ge_u (local.get $size) (local.get $need)))
          (then
            (if (i32.ge_u (i32.sub (local.get $size) (local.get $need)) (i32.const 16))
              (then
                (local.set $rest (i32.add (local.get $b) (i32.add (local.get $need) (i32.const 8))))
                (i32.store (local.get $rest) (i32.sub (i32.sub (local.get $size) (local.get $need)) (i32.const 8)))
                (i32.store offset=4 (local.get $rest) (i32.const 0))
                (i32.store (local.get $b) (local.get $need))
                (local.set $size (local.get $need))))
            (i32.store offset=4 (local.get $b) (local.get $tag))
            (memory.fill (i32.add (local.get $b) (i32.const 8)) (i32.const 0) (local.get $size))
            (return (i32.add (local.get $b) (i32.const 8)))))
        (local.set $b (i32.add (local.get $b) (i32.add (local.get $size) (i32.const 8))))
        (br $next)))
    (i32.const 0))

  (func $live (param $tag i32) (result i32)
    (i32.or (i32.eq (local.get $tag) (i32.const 1)) (i32.eq (local.get $tag) (i32.load (i32.const 66564)))))

  ;; one collection: mark (every word of every live block that looks like a heap pointer, as a
  ;; conservative GC scans), then sweep (temporaries of handlers that returned are freed, free
  ;; neighbours merge); the bytes freed
  (func $collect (result i32)
    (local $b i32) (local $end i32) (local $tag i32) (local $w i32) (local $stop i32)
    (local $marked i32) (local $freed i32) (local $next i32)
    (local.set $end (call $heap_end))
    (local.set $b (global.get $__heap_base))
    (block $done (loop $blocks
      (br_if $done (i32.ge_u (local.get $b) (local.get $end)))
      (if (call $live (i32.load offset=4 (local.get $b)))
        (then
          (local.set $w (i32.add (local.get $b) (i32.const 8)))
          (local.set $stop (i32.add (local.get $w) (i32.load (local.get $b))))
          (block $scanned (loop $words
            (br_if $scanned (i32.ge_u (local.get $w) (local.get $stop)))
            (if (i32.and (i32.ge_u (i32.load (local.get $w)) (global.get $__heap_base))
                         (i32.lt_u (i32.load (local.get $w)) (local.get $end)))
              (then (local.set $marked (i32.add (local.get $marked) (i32.const 1)))))
            (local.set $w (i32.add (local.get $w) (i32.const 4)))
            (br $words)))))
      (local.set $b (i32.add (local.get $b) (i32.add (i32.load (local.get $b)) (i32.const 8))))
      (br $blocks)))
    (local.set $b (global.get $__heap_base))
    (block $swept (loop $sweep
      (br_if $swept (i32.ge_u (local.get $b) (local.get $end)))
      (local.set $tag (i32.load offset=4 (local.get $b)))
      (if (i32.and (local.get $tag) (i32.eqz (call $live (local.get $tag))))
        (then (i32.store offset=4 (local.get $b) (i32.const 0))
              (local.set $freed (i32.add (local.get $freed) (i32.load (local.get $b))))))
      (if (i32.eqz (i32.load offset=4 (local.get $b)))
        (then
          (block $merged (loop $merge
            (local.set $next (i32.add (local.get $b) (i32.add (i32.load (local.get $b)) (i32.const 8))))
            (br_if $merged (i32.ge_u (local.get $next) (local.get $end)))
            (local.set $tag (i32.load offset=4 (local.get $next)))
            (br_if $merged (call $live (local.get $tag)))
            (if (local.get $tag)
              (then (local.set $freed (i32.add (local.get $freed) (i32.load (local.get $next))))))
            (i32.store (local.get $b)
                       (i32.add (i32.load (local.get $b)) (i32.add (i32.load (local.get $next)) (i32.const 8))))
            (br $merge)))))
      (local.set $b (i32.add (local.get $b) (i32.add (i32.load (local.get $b)) (i32.const 8))))
      (br $sweep)))
    (i32.store (i32.const 66576) (i32.add (i32.load (i32.const 66576)) (i32.const 1)))
    (i32.store (i32.const 66580) (local.get $marked))
    (local.get $freed))

  ;; growHeap: double linear memory; the new space joins the heap's last block. 0 when refused.
  (func $grow_heap (result i32)
    (local $old_end i32) (local $b i32) (local $last i32) (local $added i32)
    (local.set $old_end (call $heap_end))
    (if (i32.eq (memory.grow (memory.size)) (i32.const -1)) (then (return (i32.const 0))))
    (local.set $added (i32.sub (call $heap_end) (local.get $old_end)))
    (local.set $b (global.get $__heap_base))
    (local.set $last (local.get $b))
    (block $found (loop $walk
      (br_if $found (i32.ge_u (local.get $b) (local.get $old_end)))
      (local.set $last (local.get $b))
      (local.set $b (i32.add (local.get $b) (i32.add (i32.load (local.get $b)) (i32.const 8))))
      (br $walk)))
    (if (i32.eqz (i32.load offset=4 (local.get $last)))
      (then (i32.store (local.get $last) (i32.add (i32.load (local.get $last)) (local.get $added))))
      (else (i32.store (local.get $old_end) (i32.sub (local.get $added) (i32.const 8)))
            (i32.store offset=4 (local.get $old_end) (i32.const 0))))
    (i32.const 1))

  (func $panic_oom
    (call $print (i32.const 65552) (i32.const 36))
    (unreachable))

  ;; runtime.alloc: fit; else collect once (and grow if that freed under a third); else grow
  (func $gc_alloc (param $size i32) (param $tag i32) (result i32)
    (local $need i32) (local $p i32) (local $collected i32) (local $heap i32)
    (call $heap_init)
    (if (i32.gt_u (local.get $size) (i32.const 0x7fff0000)) (then (call $panic_oom)))
    (local.set $need (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8)))
    (if (i32.eqz (local.get $need)) (then (local.set $need (i32.const 8))))
    (loop $retry
      (local.set $p (call $find_fit (local.get $need) (local.get $tag)))
      (if (local.get $p) (then (return (local.get $p))))
      (if (local.get $collected)
        (then (if (i32.eqz (call $grow_heap)) (then (call $panic_oom))))
        (else
          (local.set $heap (i32.sub (call $heap_end) (global.get $__heap_base)))
          (if (i32.lt_u (call $collect) (i32.div_u (local.get $heap) (i32.const 3)))
            (then (drop (call $grow_heap))))
          (local.set $collected (i32.const 1))))
      (br $retry))
    (unreachable))

  ;; a temporary of the running handler
  (func $new (param $size i32) (result i32)
    (call $gc_alloc (local.get $size) (i32.load (i32.const 66564))))

  ;; a handler starts: what earlier handlers allocated (and did not keep) is garbage now
  (func $enter
    (i32.store (i32.const 66564) (i32.add (i32.load (i32.const 66564)) (i32.const 1))))

  ;; the SDK's alloc: Allocations.memories[addr] = m, kept for ever
  (func (export "alloc") (param $size i32) (result i32) (call $gc_alloc (local.get $size) (i32.const 1)))
  (func (export "malloc") (param $size i32) (result i32) (call $gc_alloc (local.get $size) (i32.const 1)))
  (func (export "free") (param $ptr i32)
    (if (local.get $ptr) (then (i32.store offset=4 (i32.sub (local.get $ptr) (i32.const 8)) (i32.const 0)))))

  ;; -- runtime and fmt ----------------------------------------------------------------------
  ;; println: one iovec on the stack, to stdout
  (func $print (param $ptr i32) (param $len i32)
    (local $sp i32)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (global.set $__stack_pointer (local.get $sp))
    (i32.store (local.get $sp) (local.get $ptr))
    (i32.store offset=4 (local.get $sp) (local.get $len))
    (drop (call $fd_write (i32.const 1) (local.get $sp) (i32.const 1) (i32.add (local.get $sp) (i32.const 8))))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16))))

  (func $append (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  ;; the decimal digits of an unsigned value at $dst; returns the end
  (func $utoa (param $dst i32) (param $v i32) (result i32)
    (local $n i32) (local $t i32) (local $end i32)
    (local.set $t (local.get $v))
    (local.set $n (i32.const 1))
    (block $counted (loop $count
      (br_if $counted (i32.lt_u (local.get $t) (i32.const 10)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $count)))
    (local.set $end (i32.add (local.get $dst) (local.get $n)))
    (local.set $t (local.get $end))
    (loop $digit
      (local.set $t (i32.sub (local.get $t) (i32.const 1)))
      (i32.store8 (local.get $t) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (i32.gt_u (local.get $t) (local.get $dst))))
    (local.get $end))

  ;; log.Log: level 4 (info)
  (func $log (param $ptr i32) (param $end i32)
    (drop (call $ws_log (i32.const 4) (local.get $ptr) (i32.sub (local.get $end) (local.get $ptr)))))

  (func $equal (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ (loop $byte
      (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
      (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
      (local.set $a (i32.add (local.get $a) (i32.const 1)))
      (local.set $b (i32.add (local.get $b) (i32.const 1)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $byte)))
    (i32.const 0))

  ;; -- the SDK ------------------------------------------------------------------------------
  ;; stream.GetDataByRID: 0 with (ptr, len) in $cells, else non-zero. Like Allocations.GetByAddr,
  ;; it trusts only an address its own alloc handed out.
  (func $get_data (param $rid i32) (param $cells i32) (result i32)
    (local $code i32) (local $ptr i32)
    (local.set $code (call $ws_get_data (local.get $rid) (local.get $cells) (i32.add (local.get $cells) (i32.const 4))))
    (if (local.get $code) (then (return (local.get $code))))
    (local.set $ptr (i32.load (local.get $cells)))
    (if (i32.lt_u (local.get $ptr) (i32.add (global.get $__heap_base) (i32.const 8))) (then (return (i32.const -1))))
    (if (i32.ne (i32.load offset=4 (i32.sub (local.get $ptr) (i32.const 8))) (i32.const 1)) (then (return (i32.const -1))))
    (i32.const 0))

  ;; log.Log(fmt.Sprintf("start received: %d", rid))
  (func $log_start (param $rid i32)
    (local $msg i32)
    (local.set $msg (call $new (i32.const 32)))
    (call $log (local.get $msg)
          (call $utoa (call $append (local.get $msg) (i32.const 65536) (i32.const 16)) (local.get $rid))))

  ;; -- the word-count example ---------------------------------------------------------------
  (func $find_record (param $w i32) (param $len i32) (result i32)
    (local $rec i32)
    (local.set $rec (i32.load (i32.const 66568)))
    (block $none (loop $next
      (br_if $none (i32.eqz (local.get $rec)))
      (if (i32.eq (i32.load offset=4 (local.get $rec)) (local.get $len))
        (then (if (call $equal (i32.add (local.get $rec) (i32.const 12)) (local.get $w) (local.get $len))
                (then (return (local.get $rec))))))
      (local.set $rec (i32.load (local.get $rec)))
      (br $next)))
    (i32.const 0))

  ;; setDB(w, getDB(w) + 1), and records[w]++ (a node: next, len, count, the word's bytes)
  (func $count_word (param $w i32) (param $len i32) (param $cells i32)
    (local $v i32) (local $buf i32) (local $rec i32)
    (if (i32.eqz (call $ws_get_db (local.get $w) (local.get $len) (local.get $cells) (i32.add (local.get $cells) (i32.const 4))))
      (then (if (i32.ge_u (i32.load offset=4 (local.get $cells)) (i32.const 4))
              (then (local.set $v (i32.load (i32.load (local.get $cells))))))))
    (local.set $buf (call $new (i32.const 4)))
    (i32.store (local.get $buf) (i32.add (local.get $v) (i32.const 1)))
    (drop (call $ws_set_db (local.get $w) (local.get $len) (local.get $buf) (i32.const 4)))
    (local.set $rec (call $find_record (local.get $w) (local.get $len)))
    (if (i32.eqz (local.get $rec))
      (then
        (local.set $rec (call $gc_alloc (i32.add (local.get $len) (i32.const 12)) (i32.const 1)))
        (i32.store (local.get $rec) (i32.load (i32.const 66568)))
        (i32.store offset=4 (local.get $rec) (local.get $len))
        (memory.copy (i32.add (local.get $rec) (i32.const 12)) (local.get $w) (local.get $len))
        (i32.store (i32.const 66568) (local.get $rec))
        (i32.store (i32.const 66572) (i32.add (i32.load (i32.const 66572)) (i32.const 1)))))
    (i32.store offset=8 (local.get $rec) (i32.add (i32.load offset=8 (local.get $rec)) (i32.const 1))))

  (func (export "start") (param $rid i32) (result i32)
    (local $sp i32) (local $p i32) (local $end i32) (local $w i32) (local $sep i32)
    (call $enter)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (global.set $__stack_pointer (local.get $sp))
    (call $log_start (local.get $rid))
    (if (call $get_data (local.get $rid) (local.get $sp))
      (then
        (call $log (i32.const 65616) (i32.const 65638))
        (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
        (return (i32.const -1))))
    (local.set $p (i32.load (local.get $sp)))
    (local.set $end (i32.add (local.get $p) (i32.load offset=4 (local.get $sp))))
    (local.set $w (local.get $p))
    ;; strings.Split(text, " ")
    (block $done (loop $scan
      (local.set $sep (i32.eq (local.get $p) (local.get $end)))
      (if (i32.eqz (local.get $sep)) (then (local.set $sep (i32.eq (i32.load8_u (local.get $p)) (i32.const 32)))))
      (if (local.get $sep)
        (then
          (if (i32.gt_u (local.get $p) (local.get $w))
            (then (call $count_word (local.get $w) (i32.sub (local.get $p) (local.get $w)) (i32.add (local.get $sp) (i32.const 8)))))
          (br_if $done (i32.eq (local.get $p) (local.get $end)))
          (local.set $w (i32.add (local.get $p) (i32.const 1)))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $scan)))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
    (i32.const 0))

  ;; int32(len(records)): the distinct words this instance's memory has seen
  (func (export "word_count") (param $rid i32) (result i32)
    (i32.load (i32.const 66572)))

  ;; stream.GetDataByRID without common.FreeResource, as most SDK handlers are written
  (func (export "keep_payload") (param $rid i32) (result i32)
    (local $sp i32) (local $msg i32) (local $e i32)
    (call $enter)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (global.set $__stack_pointer (local.get $sp))
    (if (call $get_data (local.get $rid) (local.get $sp))
      (then
        (call $log (i32.const 65616) (i32.const 65638))
        (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
        (return (i32.const -1))))
    (local.set $msg (call $new (i32.const 64)))
    (local.set $e (call $append (local.get $msg) (i32.const 65648) (i32.const 5)))
    (local.set $e (call $utoa (local.get $e) (i32.load offset=4 (local.get $sp))))
    (local.set $e (call $append (local.get $e) (i32.const 65656) (i32.const 15)))
    (local.set $e (call $utoa (local.get $e) (memory.size)))
    (local.set $e (call $append (local.get $e) (i32.const 65672) (i32.const 6)))
    (call $log (local.get $msg) (local.get $e))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
    (i32.const 0))

  ;; log.Log(fmt.Sprintf("get resource %v: `%s`", rid, string(message))): the conversion copies
  ;; the payload on the heap
  (func (export "log_payload") (param $rid i32) (result i32)
    (local $sp i32) (local $msg i32) (local $len i32)
    (call $enter)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (global.set $__stack_pointer (local.get $sp))
    (call $log_start (local.get $rid))
    (if (call $get_data (local.get $rid) (local.get $sp))
      (then
        (call $log (i32.const 65616) (i32.const 65638))
        (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
        (return (i32.const -1))))
    (local.set $len (i32.load offset=4 (local.get $sp)))
    (local.set $msg (call $new (i32.add (local.get $len) (i32.const 14))))
    (call $log (local.get $msg)
          (call $append (call $append (local.get $msg) (i32.const 65680) (i32.const 14))
                        (i32.load (local.get $sp)) (local.get $len)))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16)))
    (i32.const 0))

  ;; TinyGo's _start: the runtime's init (os.Args, the environment), main, exit. W3bstream never
  ;; calls it; the handlers work without it.
  (func (export "_start")
    (local $sp i32)
    (local.set $sp (i32.sub (global.get $__stack_pointer) (i32.const 16)))
    (drop (call $args_sizes_get (local.get $sp) (i32.add (local.get $sp) (i32.const 4))))
    (drop (call $environ_sizes_get (local.get $sp) (i32.add (local.get $sp) (i32.const 4))))
    (call $proc_exit (i32.const 0)))
)
