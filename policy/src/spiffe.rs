//! SPIFFE identities as Istio issues them: `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.

/// The namespace and service account a certificate vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    pub trust_domain: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl<'a> SpiffeId<'a> {
    /// Accepts exactly Istio's shape; anything else is not an identity.
    /// The trust domain is kept but not compared, as in Calico: the CA that
    /// Envoy validated the certificate against is what makes it trusted.
    pub fn parse(uri: &'a str) -> Option<SpiffeId<'a>> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next()?;
        let (ns_kw, namespace, sa_kw, service_account) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let ok = |s: &str| !s.is_empty() && !s.bytes().any(|b| b.is_ascii_control() || b == b' ');
        if parts.next().is_some() || ns_kw != "ns" || sa_kw != "sa" || !ok(trust_domain) || !ok(namespace) || !ok(service_account) {
            return None;
        }
        Some(SpiffeId { trust_domain, namespace, service_account })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::SpiffeId;

    #[test]
    fn spiffe_table() {
        let good = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/summary");
        assert_eq!(good, Some(SpiffeId { trust_domain: "cluster.local", namespace: "default", service_account: "summary" }));
        for bad in [
            "",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/",
            "spiffe://cluster.local/ns//sa/summary",
            "spiffe://cluster.local/ns/default/sa/summary/extra",
            "spiffe://cluster.local/ns/default/sa/summary/",
            "spiffe:///ns/default/sa/summary",
            "https://cluster.local/ns/default/sa/summary",
            "spiffe://cluster.local/namespace/default/sa/summary",
            "spiffe://cluster.local/ns/default/serviceaccount/summary",
            "SPIFFE://cluster.local/ns/default/sa/summary",
            "spiffe://cluster.local/ns/def ault/sa/summary",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad:?}");
        }
    }
}
