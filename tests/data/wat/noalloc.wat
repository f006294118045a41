;; An applet without an alloc export: every host call that returns data must fail with code 5.
(module
  (import "env" "ws_get_data" (func $get_data (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "start") (param $rid i32) (result i32)
    (call $get_data (local.get $rid) (i32.const 0) (i32.const 4)))
)
