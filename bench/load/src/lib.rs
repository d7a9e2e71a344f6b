//! The Krites load benchmark (`make bench`): one Envoy per configuration
//! (no filter, Envoy RBAC, ext_authz to an out-of-process Krites engine, the
//! Krites Wasm filter), the same h2load request mix through each, alternated.

pub mod ext_authz;
pub mod h2load;
pub mod plot;
pub mod rbac;
pub mod report;
pub mod scenario;
pub mod topology;
