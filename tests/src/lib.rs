//! End-to-end test rig for Krites (DESIGN.md section 6): Envoy processes standing in for Istio
//! sidecars on their own 127.0.0.x "pod IPs", a test CA standing in for Istio's, and curl
//! standing in for client pods.
//!
//! For `make demo` the same sidecars carry real traffic: `Sidecar::start_with` puts an
//! application behind the inbound listeners and adds outbound listeners that call other
//! sidecars over mTLS from the pod IP (`Mesh`); `Ingress` is the gateway for a browser;
//! `etcd::Etcd` runs a real etcd; `yaobank::live` wires YAO Bank from these parts. Every
//! process is owned by a `process::ChildGuard`, which stops it on drop, on
//! `process::terminate_all` (signal handlers) or, through a watchdog, when the owner dies.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use krites_testbed::*;
//! let dir = tempfile::tempdir()?;
//! let pki = Pki::new(&dir.path().join("pki"), "cluster.local")?;
//! let db = Sidecar::start(SidecarSpec {
//!     name: "database".into(),
//!     ip: "127.0.0.13".parse()?,
//!     namespace: "default".into(),
//!     service_account: "database".into(),
//!     labels: [("app".to_string(), "database".to_string())].into(),
//!     identity: pki.issue("database", "default", "database")?,
//!     ca: pki.ca_cert().to_path_buf(),
//!     wasm: Some(module_path()),
//!     plugin_config: "{}".into(),
//!     work_dir: dir.path().join("database"),
//!     normalize_path: true,
//!     peer_address_filter: false,
//! })?;
//! let me = pki.issue("summary", "default", "summary")?;
//! let resp = Request::from("127.0.0.11".parse()?)
//!     .to(db.mtls_addr())
//!     .tls(pki.ca_cert(), Some(&me), db.server_name())
//!     .path("/orders")
//!     .send()?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! ```

pub mod attack_corpus;
mod client;
mod config;
mod envoy;
pub mod etcd;
mod ingress;
pub mod istiod;
pub mod mesh;
mod pki;
pub mod process;
mod raw;
pub mod tcp;
pub mod yaobank;

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use client::{Request, Response, TransportError};
pub use config::{ecds_name, istiod_plugin_config};
pub use envoy::{
    parse_stats, ContainerPort, EcdsCounts, EcdsOutcome, Mesh, Outbound, PathNormalization, Sidecar, SidecarSpec,
    READY_TIMEOUT,
};
pub use ingress::{Ingress, IngressSpec};
pub use pki::{Identity, Pki};
pub use raw::{raw_request, RawConn, RawResponse};

/// The Cargo workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The Krites module as built by the workspace's wasm build.
pub fn module_path() -> PathBuf {
    workspace_root().join("wasm-out").join("krites.wasm")
}

/// Envoy to run: `$KRITES_ENVOY`, else `<root>/.venv/bin/envoy`, else `envoy` on PATH.
pub fn envoy_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KRITES_ENVOY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "KRITES_ENVOY={} is not a file; unset it or run `make setup`",
            p.display()
        );
    }
    let venv = workspace_root().join(".venv").join("bin").join("envoy");
    if venv.is_file() {
        return Ok(venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no Envoy binary: set KRITES_ENVOY, or run `make setup` to install one at {}",
        venv.display()
    )
}
