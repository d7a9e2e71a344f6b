//! A throwaway certificate authority standing in for Istio's CA (istiod / Citadel).
//!
//! Leaf certificates carry what an Istio workload certificate carries: a SPIFFE URI SAN
//! `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` and both serverAuth and clientAuth, so one
//! certificate serves a "pod" as server and as client. Two `Pki`s are two unrelated CAs.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its key on disk, in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The URI SAN in the certificate, if it has one.
    pub uri: Option<String>,
}

/// A self-signed CA whose files live in one directory.
pub struct Pki {
    dir: PathBuf,
    trust_domain: String,
    ca_cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Create a new CA in `dir` (created if missing): `dir/ca.crt`, `dir/ca.key`.
    pub fn new(dir: &Path, trust_domain: &str) -> Result<Pki> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Distinct subjects per CA make "which CA signed this" obvious in logs.
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("krites test CA {}", dir.display()),
        );
        let key = KeyPair::generate().context("generating CA key")?;
        let cert = params.self_signed(&key).context("self-signing CA")?;
        let ca_cert = dir.join("ca.crt");
        write(&ca_cert, &cert.pem())?;
        write(&dir.join("ca.key"), &key.serialize_pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.to_string(),
            ca_cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// PEM file of the CA certificate, for `trusted_ca` / `curl --cacert`.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The SPIFFE ID Istio would give a workload in `namespace` running as `service_account`.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, namespace, service_account
        )
    }

    /// Issue an Istio-style workload certificate, written to `dir/<name>.crt|key`.
    pub fn issue(&self, name: &str, namespace: &str, service_account: &str) -> Result<Identity> {
        let uri = self.spiffe_id(namespace, service_account);
        self.issue_with_uri(name, Some(&uri))
    }

    /// Issue a certificate with an arbitrary URI SAN (or none), for malformed-identity tests.
    /// DNS SANs are always `<name>` and `localhost`.
    pub fn issue_with_uri(&self, name: &str, uri: Option<&str>) -> Result<Identity> {
        self.issue_with_uris(name, uri.as_slice())
    }

    /// Issue a certificate with any number of URI SANs, in this order (Istio issues exactly
    /// one; a certificate with several is what a test wants to see handled). `Identity::uri`
    /// is the first.
    pub fn issue_with_uris(&self, name: &str, uris: &[&str]) -> Result<Identity> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        let mut sans = Vec::new();
        for &uri in uris {
            sans.push(SanType::URI(
                uri.try_into()
                    .with_context(|| format!("URI SAN {uri:?} is not IA5"))?,
            ));
        }
        for dns in [name, "localhost"] {
            sans.push(SanType::DnsName(
                dns.try_into()
                    .with_context(|| format!("DNS SAN {dns:?} is not IA5"))?,
            ));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating leaf key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing certificate for {name}"))?;
        let cert_path = self.dir.join(format!("{name}.crt"));
        let key_path = self.dir.join(format!("{name}.key"));
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok(Identity {
            cert: cert_path,
            key: key_path,
            uri: uris.first().map(|u| u.to_string()),
        })
    }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
