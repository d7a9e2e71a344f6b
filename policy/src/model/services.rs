//! Kubernetes Services as a client's sidecar meets them: a connection names
//! a ClusterIP (or a route names the cluster `outbound|port||host`) before
//! Envoy's load balancer picks one of the endpoints. The egress role reads its
//! rules against every endpoint that could be picked.

use std::collections::HashMap;
use std::net::IpAddr;

/// An address and port a Service port forwards to (its targetPort there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceEndpoint {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    /// Sorted, without duplicates.
    pub endpoints: Vec<ServiceEndpoint>,
    /// One endpoint per (owning pod group, port): rules that do not read
    /// the address itself decide every endpoint of a group alike.
    pub representatives: Vec<ServiceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// Empty: headless (clients connect to the pod addresses themselves).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

impl Service {
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty()
    }

    /// The Service's `port`, if it has one.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// Every Service of the config, found by ClusterIP or by host name.
#[derive(Debug, Default)]
pub struct Services {
    list: Vec<Service>,
    by_cluster_ip: HashMap<IpAddr, u32>,
    /// namespace -> name -> index: looked up with borrowed strings, since
    /// an outbound HTTP request names its Service by cluster every time.
    by_name: HashMap<String, HashMap<String, u32>>,
}

impl Services {
    /// `list` must be validated (no duplicate names or ClusterIPs).
    #[inline(never)]
    pub(crate) fn new(list: Vec<Service>) -> Services {
        let mut by_cluster_ip = HashMap::new();
        let mut by_name: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (i, s) in (0u32..).zip(&list) {
            for ip in &s.cluster_ips {
                by_cluster_ip.insert(*ip, i);
            }
            by_name.entry(s.namespace.clone()).or_default().insert(s.name.clone(), i);
        }
        Services { list, by_cluster_ip, by_name }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.list.iter()
    }

    /// The Service whose ClusterIP is `ip` (IPv4-mapped IPv6 folded).
    pub fn by_cluster_ip(&self, ip: IpAddr) -> Option<&Service> {
        self.by_cluster_ip.get(&ip.to_canonical()).and_then(|&i| self.list.get(i as usize))
    }

    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.by_name.get(namespace).and_then(|m| m.get(name)).and_then(|&i| self.list.get(i as usize))
    }

    /// The Service a Kubernetes host name names: `<name>.<namespace>.svc`
    /// and the cluster's domain, as Istio names a Service's clusters.
    pub fn by_host(&self, host: &str) -> Option<&Service> {
        let mut labels = host.split('.');
        let (Some(name), Some(namespace), Some("svc")) = (labels.next(), labels.next(), labels.next()) else {
            return None;
        };
        self.by_name(namespace, name)
    }
}

/// What an Istio outbound cluster name says: `outbound|<port>|<subset>|<host>`.
/// Other clusters (`PassthroughCluster`, `BlackHoleCluster`, inbound ones)
/// name no Service.
pub fn parse_outbound_cluster(cluster: &str) -> Option<(u16, &str)> {
    let mut parts = cluster.split('|');
    let (Some("outbound"), Some(port), Some(_subset), Some(host), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    (!host.is_empty()).then_some((port, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_cluster_names() {
        let cases = [
            ("outbound|9080||ratings.bookinfo.svc.cluster.local", Some((9080, "ratings.bookinfo.svc.cluster.local"))),
            ("outbound|9080|v1|ratings.bookinfo.svc.cluster.local", Some((9080, "ratings.bookinfo.svc.cluster.local"))),
            ("inbound|9080||", None),
            ("PassthroughCluster", None),
            ("outbound|0||x.y.svc", None),
            ("outbound|99999||x.y.svc", None),
            ("outbound|80||", None),
            ("outbound|80||a|b", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_outbound_cluster(name), want, "{name}");
        }
    }

    #[test]
    fn host_names() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let services = Services::new(vec![Service {
            namespace: "bookinfo".into(),
            name: "ratings".into(),
            cluster_ips: ip("10.96.0.12").into_iter().collect(),
            ports: vec![],
        }]);
        assert!(services.by_host("ratings.bookinfo.svc.cluster.local").is_some());
        assert!(services.by_host("ratings.bookinfo.svc").is_some());
        assert!(services.by_host("ratings.bookinfo").is_none());
        assert!(services.by_host("ratings.other.svc.cluster.local").is_none());
        assert!(services.by_host("details.bookinfo.svc.cluster.local").is_none());
        assert!(ip("::ffff:10.96.0.12").and_then(|a| services.by_cluster_ip(a)).is_some());
    }
}
