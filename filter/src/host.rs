//! The few proxy-wasm host calls Krites makes, declared against the ABI directly.
//!
//! The SDK's wrappers `panic!` on any status they don't expect and `unwrap()`
//! UTF-8 conversions of header values; a panic in Wasm takes the VM down, so
//! every call here maps every status (as a raw `u32`, never transmuted into an
//! enum) to a `Result`, and bytes stay bytes.

use std::ptr::{null, null_mut};

/// A host call returned a status other than Ok/NotFound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

#[allow(clashing_extern_declarations)] // the SDK declares the same imports with its own Status enum
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_property(path_data: *const u8, path_size: usize, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
}

/// proxy-wasm `StreamType::Downstream`: the connection from the client.
const STREAM_DOWNSTREAM: u32 = 2;

/// Takes ownership of a host-allocated buffer. The host allocates it through
/// the module's exported allocator (`proxy_on_memory_allocate`, a `Vec`).
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host allocated exactly `size` bytes with our allocator.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

fn result(status: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, HostError> {
    match status {
        // SAFETY: on Ok the host filled `data`/`size`.
        OK => Ok(unsafe { owned(data, size) }.or_else(|| Some(Vec::new()))),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

pub fn log(level: Level, message: &str) {
    // Nothing useful to do if logging itself fails.
    // SAFETY: pointer and length describe `message`.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Logs the message `message()` builds, only if Envoy would print it at
/// `level`. Formatting a denial costs more than deciding it; Istio's proxies
/// log at `warning` by default, so most lines would be built for nothing. The
/// level can change at run time (`istioctl proxy-config log`): asked each time.
pub fn log_with(level: Level, message: impl FnOnce() -> String) {
    if log_enabled(level) {
        log(level, &message());
    }
}

/// Whether the host logs at `level` now.
pub fn log_enabled(level: Level) -> bool {
    let mut current = 0u32;
    // SAFETY: `current` is a valid place for the host to write the level to.
    match unsafe { proxy_get_log_level(&mut current) } {
        0 => current <= level as u32,
        // A host without the call: log, as before it was asked.
        _ => true,
    }
}

/// The ABI wants property path segments NUL-separated.
fn serialize_path(path: &[&str]) -> Vec<u8> {
    let mut serialized = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            serialized.push(0);
        }
        serialized.extend_from_slice(part.as_bytes());
    }
    serialized
}

/// A property such as `["source", "address"]`; `None` when Envoy has none.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let serialized = serialize_path(path);
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid in-pointers; out-pointers to locals.
    let status = unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    result(status, data, size)
}

/// Stores a value in Envoy's filter state (key `wasm.<path>`), where filters
/// of later streams on the same connection can read it back.
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), HostError> {
    let serialized = serialize_path(path);
    // SAFETY: pointers and lengths describe live buffers.
    let rc = unsafe { proxy_set_property(serialized.as_ptr(), serialized.len(), value.as_ptr(), value.len()) };
    if rc == OK {
        Ok(())
    } else {
        Err(HostError(rc))
    }
}

/// All request headers as a serialised pair map (see `adapter::for_each_pair`).
pub fn request_headers() -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals.
    let status = unsafe { proxy_get_header_map_pairs(MAP_REQUEST_HEADERS, &mut data, &mut size) };
    result(status, data, size)
}

pub fn plugin_configuration(size: usize) -> Result<Option<Vec<u8>>, HostError> {
    if size == 0 {
        return Ok(None);
    }
    let (mut data, mut len) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals.
    let status = unsafe { proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) };
    result(status, data, len)
}

/// Ends the stream with a local reply. `details` shows up in Envoy's
/// `%RESPONSE_CODE_DETAILS%`, never to the client.
pub fn send_local_response(status: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
    let headers = serialize_pairs(headers);
    // SAFETY: all pointers and lengths describe live buffers.
    let rc = unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            if body.is_empty() { null() } else { body.as_ptr() },
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    if rc == OK {
        Ok(())
    } else {
        Err(HostError(rc))
    }
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: valid in-pointer; out-pointer to a local.
    let rc = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    if rc == OK {
        Ok(id)
    } else {
        Err(HostError(rc))
    }
}

pub fn increment_metric(id: u32, by: i64) {
    // A stats failure must never affect the request.
    // SAFETY: plain values.
    let _ = unsafe { proxy_increment_metric(id, by) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: plain values.
    let _ = unsafe { proxy_record_metric(id, value) };
}

pub fn now_nanos() -> Option<u64> {
    let mut t = 0u64;
    // SAFETY: out-pointer to a local.
    (unsafe { proxy_get_current_time_nanoseconds(&mut t) } == OK).then_some(t)
}

/// Closes the downstream connection (NETWORK role). Envoy closes it without
/// flushing, and the TCP proxy behind closes its upstream side.
pub fn close_downstream() -> Result<(), HostError> {
    // SAFETY: a plain value.
    match unsafe { proxy_close_stream(STREAM_DOWNSTREAM) } {
        OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// proxy-wasm map serialization: u32 count, (u32 key len, u32 value len) per
/// pair, then each key and value followed by a NUL.
fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Logs panics through the host before the trap, so a bug is visible in
/// Envoy's log rather than only as a 503.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("krites: panic: {info}"))));
}
