//! YAO Bank's two application services, as the tutorial's images
//! (`spikecurtis/yaobank-customer`, `spikecurtis/yaobank-summary`) run them:
//!
//! - `summary` answers `GET /` with `{"balance": "<value>"}`, read from the database (etcd's
//!   v2 API, key `/v2/keys/accounts/519940/balance`);
//! - `customer` answers `GET /` with the bank's HTML page, showing the balance it got from
//!   `summary`.
//!
//! Both speak plain HTTP to an upstream URL given on the command line: in the demo that is
//! their own sidecar's outbound listener, which carries the request over mTLS to the next
//! workload's sidecar, as an application in an Istio mesh does without knowing it.
//!
//! ```text
//! yaobank-summary  --listen 127.0.0.12:8080 --database http://127.0.0.12:15001/
//! yaobank-customer --listen 127.0.0.11:8080 --summary  http://127.0.0.11:15001/
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// The etcd v2 key holding the account's balance.
pub const BALANCE_KEY: &str = "/v2/keys/accounts/519940/balance";
/// The account holder the page greets.
pub const ACCOUNT_HOLDER: &str = "Spike Curtis";
/// Marks the balance in the customer page: `<span id="balance">...</span>`.
pub const BALANCE_OPEN: &str = "<span id=\"balance\">";
pub const BALANCE_CLOSE: &str = "</span>";

const WORKERS: usize = 4;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Customer,
    Summary,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Customer => "customer",
            Kind::Summary => "summary",
        }
    }

    /// The flag naming the upstream: `--summary` for customer, `--database` for summary.
    pub fn upstream_flag(self) -> &'static str {
        match self {
            Kind::Customer => "--summary",
            Kind::Summary => "--database",
        }
    }
}

/// One service instance: what it is, where it listens, what it calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub kind: Kind,
    pub listen: SocketAddr,
    /// Base URL of the upstream (`http://host:port/`).
    pub upstream: String,
}

impl Service {
    /// Parses `--listen ADDR` and the kind's upstream flag (`--summary URL` or `--database URL`).
    pub fn from_args(kind: Kind, args: &[String]) -> Result<Service> {
        let usage = || {
            format!(
                "usage: yaobank-{} --listen IP:PORT {} http://HOST:PORT/",
                kind.name(),
                kind.upstream_flag()
            )
        };
        let (mut listen, mut upstream) = (None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{}", usage()))?;
            match flag.as_str() {
                "--listen" => {
                    listen = Some(
                        value
                            .parse::<SocketAddr>()
                            .with_context(|| format!("--listen {value:?}"))?,
                    )
                }
                f if f == kind.upstream_flag() => {
                    if !value.starts_with("http://") {
                        bail!("{f} {value:?}: want an http:// URL");
                    }
                    upstream = Some(value.clone());
                }
                other => bail!("unknown argument {other:?}\n{}", usage()),
            }
        }
        Ok(Service {
            kind,
            listen: listen.with_context(usage)?,
            upstream: upstream.with_context(usage)?,
        })
    }

    /// Serves until the process is killed.
    pub fn run(&self) -> Result<()> {
        let server = tiny_http::Server::http(self.listen)
            .map_err(|e| anyhow!("{} cannot listen on {}: {e}", self.kind.name(), self.listen))?;
        let server = Arc::new(server);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(UPSTREAM_TIMEOUT))
            .proxy(None)
            .build()
            .into();
        println!(
            "yaobank-{} listening on {} (upstream {})",
            self.kind.name(),
            self.listen,
            self.upstream
        );
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (server, agent, svc) = (Arc::clone(&server), agent.clone(), self.clone());
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        svc.handle(&agent, request);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        Ok(())
    }

    fn handle(&self, agent: &ureq::Agent, request: tiny_http::Request) {
        let method = request.method().as_str().to_string();
        let path = request.url().split('?').next().unwrap_or("/").to_string();
        let reply = match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/") => match self.kind {
                Kind::Summary => summary_reply(fetch(agent, &self.balance_url())),
                Kind::Customer => customer_reply(fetch(agent, &self.upstream)),
            },
            (_, "/") => Reply::text(405, "method not allowed\n"),
            _ => Reply::text(404, "not found\n"),
        };
        println!("{method} {path} -> {}", reply.status);
        let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes());
        let mut response =
            tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
        if let Ok(h) = header("Content-Type", reply.content_type) {
            response.add_header(h);
        }
        if reply.status == 405 {
            if let Ok(h) = header("Allow", "GET, HEAD") {
                response.add_header(h);
            }
        }
        let _ = request.respond(response);
    }

    fn balance_url(&self) -> String {
        format!("{}{BALANCE_KEY}", self.upstream.trim_end_matches('/'))
    }
}

/// An upstream's answer: status and body, or why there was none.
pub type Fetched = std::result::Result<(u16, String), String>;

fn fetch(agent: &ureq::Agent, url: &str) -> Fetched {
    let mut resp = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: reading the body: {e}"))?;
    Ok((status, body))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }

    fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: format!("{body}\n"),
        }
    }
}

/// What summary answers, given the database's answer for the balance key.
pub fn summary_reply(database: Fetched) -> Reply {
    match database {
        Ok((200, body)) => {
            let value = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v.pointer("/node/value")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            match value {
                Some(balance) => Reply::json(200, &json!({ "balance": balance })),
                None => Reply::json(
                    502,
                    &json!({ "error": format!("the database's answer has no node.value: {}", body.trim()) }),
                ),
            }
        }
        Ok((status, body)) => Reply::json(
            502,
            &json!({ "error": format!("the database answered {status}: {}", body.trim()) }),
        ),
        Err(e) => Reply::json(
            502,
            &json!({ "error": format!("cannot reach the database: {e}") }),
        ),
    }
}

/// What customer answers, given summary's answer.
pub fn customer_reply(summary: Fetched) -> Reply {
    let problem = match summary {
        Ok((200, body)) => {
            let balance = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("balance").and_then(Value::as_str).map(str::to_string));
            match balance {
                Some(balance) => return page(200, &balance_html(&balance)),
                None => format!("summary's answer has no balance: {}", body.trim()),
            }
        }
        Ok((status, body)) => format!("summary answered {status}: {}", body.trim()),
        Err(e) => format!("cannot reach summary: {e}"),
    };
    page(
        502,
        &format!(
            "    <h3>Balance unavailable</h3>\n    <pre>{}</pre>\n",
            escape(&problem)
        ),
    )
}

fn balance_html(balance: &str) -> String {
    format!(
        "    <h3>Balance: {BALANCE_OPEN}{}{BALANCE_CLOSE}</h3>\n",
        escape(balance)
    )
}

fn page(status: u16, content: &str) -> Reply {
    Reply {
        status,
        content_type: "text/html; charset=utf-8",
        body: format!(
            "<!DOCTYPE html>\n<html>\n  <head><meta charset=\"utf-8\"><title>YAO Bank</title></head>\n  <body>\n    <h2>Welcome to YAO Bank</h2>\n    <h3>Name: {ACCOUNT_HOLDER}</h3>\n{content}  </body>\n</html>\n"
        ),
    }
}

/// The balance shown on a customer page, if it shows one.
pub fn balance_in_page(html: &str) -> Option<&str> {
    let start = html.find(BALANCE_OPEN)? + BALANCE_OPEN.len();
    let len = html.get(start..)?.find(BALANCE_CLOSE)?;
    html.get(start..start + len)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `main` of the two binaries (and of `krites-demo service <kind> ...`).
pub fn main_for(kind: Kind, args: &[String]) -> std::process::ExitCode {
    match Service::from_args(kind, args).and_then(|s| s.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yaobank-{}: {e:#}", kind.name());
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags() {
        let s = Service::from_args(
            Kind::Summary,
            &args(&[
                "--listen",
                "127.0.0.12:80",
                "--database",
                "http://127.0.0.12:1/",
            ]),
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.12:80".parse().unwrap());
        assert_eq!(
            s.balance_url(),
            "http://127.0.0.12:1/v2/keys/accounts/519940/balance"
        );
        assert!(Service::from_args(
            Kind::Customer,
            &args(&["--listen", "127.0.0.11:80", "--database", "http://x/"])
        )
        .is_err());
        assert!(Service::from_args(Kind::Customer, &args(&["--listen", "127.0.0.11:80"])).is_err());
        assert!(Service::from_args(
            Kind::Customer,
            &args(&["--summary", "ftp://x/", "--listen", "127.0.0.11:80"])
        )
        .is_err());
    }

    #[test]
    fn summary_reads_etcd_v2_answers() {
        let etcd = r#"{"action":"get","node":{"key":"/accounts/519940/balance","value":"1500.00","modifiedIndex":4,"createdIndex":4}}"#;
        let r = summary_reply(Ok((200, etcd.into())));
        assert_eq!(r.status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap(),
            json!({"balance": "1500.00"})
        );
        let r = summary_reply(Ok((403, "RBAC: access denied".into())));
        assert_eq!(r.status, 502);
        assert!(r.body.contains("403: RBAC: access denied"), "{}", r.body);
        assert_eq!(summary_reply(Err("refused".into())).status, 502);
    }

    #[test]
    fn customer_renders_the_balance_escaped() {
        let r = customer_reply(Ok((200, r#"{"balance": "<b>1</b>"}"#.into())));
        assert_eq!(r.status, 200);
        assert_eq!(balance_in_page(&r.body), Some("&lt;b&gt;1&lt;/b&gt;"));
        let r = customer_reply(Ok((502, r#"{"error": "x"}"#.into())));
        assert_eq!(r.status, 502);
        assert_eq!(balance_in_page(&r.body), None);
        assert!(r.body.contains("summary answered 502"));
    }
}
