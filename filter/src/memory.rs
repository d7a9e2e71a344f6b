//! The VM's linear memory, for the `krites_memory_linear_bytes` gauge. Wasm
//! memory grows and never shrinks, so a VM holds its largest compile's peak
//! for good: this is what the VM costs Envoy, whatever it keeps.

/// The linear memory's size in bytes.
pub fn linear_bytes() -> u64 {
    const PAGE: u64 = 64 * 1024;
    core::arch::wasm32::memory_size(0) as u64 * PAGE
}
