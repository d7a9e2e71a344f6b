//! Krites' control plane: turns what a cluster holds (Calico and Kubernetes
//! policies, Calico's staged policies, pods, service accounts, namespaces, Services and their
//! EndpointSlices) into the filter's plugin config, explains decisions with
//! the filter's own engine, and keeps a cluster's `WasmPlugin`s current. It
//! implements no policy semantics of its own: validation and decisions come
//! from `krites-policy`.

pub mod calico;
pub mod check;
pub mod cluster;
pub mod compile;
pub mod controller;
pub mod inventory;
pub mod knp;
pub mod manifests;
pub mod publish;
pub mod wasmplugin;
