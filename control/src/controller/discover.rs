//! Which API serves Calico's policies, asked of the API server's discovery
//! (`/apis/<group>/<version>`), so that a flag naming an API the cluster
//! does not serve is an error instead of a config without Calico policies.

use kube::Client;

use super::sources::CalicoApi;

/// `--calico-api`: `auto` (the default) takes what the cluster serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CalicoApiFlag {
    /// `projectcalico.org/v3` if the cluster serves it, else
    /// `crd.projectcalico.org/v1`, else none (Kubernetes NetworkPolicies only).
    #[default]
    Auto,
    /// `crd.projectcalico.org/v1` (must be served).
    Crd,
    /// `projectcalico.org/v3` (must be served).
    V3,
}

/// Resources a group must serve to count as Calico's policy API (Tier is
/// optional: some installs lack its CRD).
const REQUIRED: [&str; 2] = ["globalnetworkpolicies", "networkpolicies"];

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The flag names an API the cluster does not serve. Waiting, not
    /// compiling: a config without the policies of the named API would
    /// loosen enforcement.
    #[error("--calico-api {flag} names {wanted}, which this API server does not serve{hint}")]
    NotServed { flag: &'static str, wanted: String, hint: String },
    /// Discovery itself failed (API server down, aggregated API unavailable).
    #[error("asking the API server which Calico API it serves: {0}")]
    Discovery(#[source] kube::Error),
}

fn label(api: CalicoApi) -> String {
    let (g, v) = api.group_version();
    format!("{g}/{v}")
}

/// True when `api` serves Calico's policy kinds. Only a 404 (group or
/// version unknown) means "no": any other error is reported, so an
/// unavailable aggregated API is never mistaken for an absent one.
pub async fn serves(client: &Client, api: CalicoApi) -> Result<bool, DiscoverError> {
    match client.list_api_group_resources(&label(api)).await {
        Ok(list) => Ok(REQUIRED.iter().all(|r| list.resources.iter().any(|x| x.name == *r))),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 404 => Ok(false),
        Err(e) => Err(DiscoverError::Discovery(e)),
    }
}

/// The API to watch: `Ok(None)` when `auto` finds no Calico API at all.
pub async fn resolve(client: &Client, flag: CalicoApiFlag) -> Result<Option<CalicoApi>, DiscoverError> {
    let (wanted, other, name) = match flag {
        CalicoApiFlag::Auto => {
            // v3 first: Calico's own API (validated by Calico) when it is there.
            for api in [CalicoApi::V3, CalicoApi::Crd] {
                if serves(client, api).await? {
                    return Ok(Some(api));
                }
            }
            return Ok(None);
        }
        CalicoApiFlag::Crd => (CalicoApi::Crd, CalicoApi::V3, "crd"),
        CalicoApiFlag::V3 => (CalicoApi::V3, CalicoApi::Crd, "v3"),
    };
    if serves(client, wanted).await? {
        return Ok(Some(wanted));
    }
    let hint = if serves(client, other).await.unwrap_or(false) {
        format!(" (it serves {}: use --calico-api auto)", label(other))
    } else {
        " (are Calico's CRDs installed?)".to_string()
    };
    Err(DiscoverError::NotServed { flag: name, wanted: label(wanted), hint })
}
