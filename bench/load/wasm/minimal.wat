;; The smallest module Envoy runs as an HTTP filter: the bench's `wasm-min`
;; configuration, the floor any Wasm filter pays (issue #15). Envoy enters it
;; twice per request (context_create, request_headers) and it makes no host
;; call. The host needs `memory` and `malloc` to load it; this malloc is a
;; bump allocator over the first page, and nothing here ever makes the host
;; call it.
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "malloc") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (if (i32.gt_u (i32.add (local.get $at) (local.get $size)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $next (i32.add (local.get $at) (local.get $size)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))
  (func (export "proxy_on_context_create") (param $context i32) (param $parent i32))
  ;; FilterHeadersStatus::Continue
  (func (export "proxy_on_request_headers") (param $context i32) (param $headers i32) (param $end i32) (result i32)
    (i32.const 0)))
