//! The Krites policy engine: plain Rust, no proxy-wasm and no Kubernetes types.
//!
//! The Envoy filter and the `control` CLI both compile a [`config::PluginConfig`]
//! into a [`model::PolicySet`], specialise it for a workload with
//! [`engine::WorkloadPolicy::new`], and ask the same
//! [`engine::WorkloadPolicy::decide`], so they cannot disagree.

pub mod engine;
pub mod model;
pub mod path;
pub mod ranges;
pub mod selector;
pub mod spiffe;

/// The plugin config and its JSON reader live in their own crate, which the
/// module builds for size (the workspace's `wasm-release` profile).
pub use krites_config::{self as config, json};

pub use config::PluginConfig;
pub use engine::{ConnectionVerdict, Decision, Destination, EgressDecision, EgressFacts, EgressPolicy, Needs, Peer, Reason, RequestFacts, Verdict, Workload, WorkloadPolicy};
pub use model::{ConfigError, ConfigErrors, PolicySet};
