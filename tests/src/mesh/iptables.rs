//! The interception `istio-iptables` (the `istio-init` container, or the CNI plugin) sets up
//! in a pod: the nat table only, inbound TCP REDIRECTed to 15006, outbound to 15001, the
//! proxy's uid and gid excluded, and Istio's loopback handling (127.0.0.6 is the source of
//! the sidecar -> application hop and is never redirected).
//!
//! The rules are Istio's `iptables-restore` input for the default sidecar (REDIRECT mode,
//! `INBOUND_PORTS_INCLUDE=*`, `INBOUND_PORTS_EXCLUDE=15090,15021,15020`, no DNS capture, no
//! IPv6), as istio-iptables 1.20+ prints it. They live in the pod's namespace and go with it.
//!
//! Needs the `iptables` Debian package (`iptables-restore`; the nft or the legacy variant,
//! both work inside a namespace).

use std::time::Duration;

use anyhow::{bail, Result};

use super::netns::{which, Pod};

/// What `istio-iptables` is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// `virtualInbound`.
    pub inbound_port: u16,
    /// `virtualOutbound`.
    pub outbound_port: u16,
    /// HBONE; never redirected.
    pub tunnel_port: u16,
    /// Istio's own ports: merged Prometheus, health, agent.
    pub inbound_exclude: Vec<u16>,
}

impl Default for Capture {
    fn default() -> Capture {
        Capture {
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            tunnel_port: 15008,
            inbound_exclude: vec![15090, 15021, 15020],
        }
    }
}

impl Capture {
    /// The `iptables-restore --noflush` input, line for line as istio-iptables writes it.
    pub fn rules(&self) -> String {
        let Capture {
            proxy_uid: uid,
            proxy_gid: gid,
            inbound_port,
            outbound_port,
            tunnel_port: hbone,
            ..
        } = self;
        let mut r = vec![
            "* nat".to_string(),
            "-N ISTIO_INBOUND".into(),
            "-N ISTIO_REDIRECT".into(),
            "-N ISTIO_IN_REDIRECT".into(),
            "-N ISTIO_OUTPUT".into(),
            format!("-A ISTIO_INBOUND -p tcp --dport {hbone} -j RETURN"),
            format!("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {outbound_port}"),
            format!("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {inbound_port}"),
            "-A PREROUTING -p tcp -j ISTIO_INBOUND".into(),
        ];
        for port in &self.inbound_exclude {
            r.push(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
        }
        r.extend([
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_string(),
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT".into(),
            // The inbound passthrough / inbound clusters bind 127.0.0.6: never redirected.
            "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN".into(),
            // The proxy calling its own pod's address (app -> own service): back to inbound.
            format!("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport {hbone} -m owner --uid-owner {uid} -j ISTIO_IN_REDIRECT"),
            format!("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"),
            format!("-A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN"),
            format!("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport {hbone} -m owner --gid-owner {gid} -j ISTIO_IN_REDIRECT"),
            format!("-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {gid} -j RETURN"),
            format!("-A ISTIO_OUTPUT -m owner --gid-owner {gid} -j RETURN"),
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".into(),
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into(),
            "COMMIT".into(),
        ]);
        let mut text = r.join("\n");
        text.push('\n');
        text
    }

    /// Install the rules in `pod` (atomically, as istio-iptables does).
    pub fn apply(&self, pod: &Pod) -> Result<()> {
        let rules = self.rules();
        let mut last = String::new();
        // Whichever variant this kernel and package offer: nft first (Debian's default).
        for tool in [
            "iptables-restore",
            "iptables-nft-restore",
            "iptables-legacy-restore",
        ] {
            if which(tool).is_none() {
                continue;
            }
            let out = pod.exec(
                &[tool, "--noflush"],
                Some(rules.as_bytes()),
                Duration::from_secs(20),
            )?;
            if out.status.success() {
                return Ok(());
            }
            last = format!("{tool}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        bail!(
            "installing Istio's iptables rules in pod {} failed: {last}\n{rules}",
            pod.name()
        )
    }

    /// `iptables-save -t nat` inside `pod`, for diagnostics.
    pub fn dump(pod: &Pod) -> String {
        pod.run(&["iptables-save", "-t", "nat"])
            .unwrap_or_else(|e| format!("{e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_are_istios() {
        let r = Capture::default().rules();
        assert!(r.starts_with("* nat\n-N ISTIO_INBOUND\n"));
        assert!(r.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
        assert!(r.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        assert!(r.contains("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        // The passthrough source comes before every owner rule.
        let p = r.find("-s 127.0.0.6/32 -j RETURN").unwrap_or(usize::MAX);
        let o = r.find("--uid-owner").unwrap_or(0);
        assert!(p < o);
        assert!(r.ends_with("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n"));
    }
}
