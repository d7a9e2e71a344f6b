//! Krites' Envoy HTTP filter (proxy-wasm). It only adapts the host to the
//! policy engine: read the workload identity from node metadata and the
//! request facts from the connection, ask `krites_policy`, answer 403 or let
//! the request through, log and count.

pub mod adapter;
pub mod policy_stats;
pub mod staged;

#[cfg(target_arch = "wasm32")]
mod connection;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod memory;
#[cfg(target_arch = "wasm32")]
mod metrics;
#[cfg(target_arch = "wasm32")]
mod plugin;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::install_panic_hook();
    proxy_wasm::set_root_context(|id| Box::new(plugin::Root::new(id)));
}}
