//! A stateful mock API server behind a real `kube::Client` (tower-test), for
//! scenarios the scripted mock of `controller.rs` cannot express: restarts
//! against the same cluster state, other writers, deletes, discovery.
//!
//! What it enforces as a real API server would:
//! - RBAC: every request is checked against the shipped ClusterRole
//!   (`istio-manifests/control/rbac.yaml`); a server-side apply of a missing
//!   object needs `create` as well as `patch`. Refused requests get 403 and
//!   are recorded in [`State::denied`].
//! - Server-side apply merges: it keeps the keys other managers set (a
//!   deep merge of objects), which is why repairing a foreign edit by apply
//!   alone would leave a foreign `scope` in `pluginConfig`.
//! - Replace (PUT) needs the current `resourceVersion` (409 otherwise).
//! - Discovery serves only the Calico group/versions it is told to.
//!
//! Watches of the inputs are held open (nothing changes); WasmPlugin watches
//! get an event line for each change, then end (the watcher re-watches).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

pub const PLUGINS: &str = "/apis/extensions.istio.io/v1alpha1";

/// A request control sent, as recorded.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
pub struct State {
    /// Collection path (`/api/v1/pods`) -> items.
    pub inputs: BTreeMap<String, Vec<Value>>,
    /// `group/version` served by discovery -> resource names.
    pub served: BTreeMap<String, Vec<String>>,
    /// (namespace, name) -> WasmPlugin.
    pub plugins: BTreeMap<(String, String), Value>,
    rv: u64,
    /// Every write to WasmPlugins (by anyone going through the client).
    pub writes: Vec<Write>,
    /// Events POSTed.
    pub events: Vec<Value>,
    /// Requests RBAC refused: `group/resource:verb path`.
    pub denied: Vec<String>,
    grants: BTreeSet<String>,
    plugin_watches: Vec<Reply>,
    input_watches: Vec<Reply>,
}

/// The fake cluster; clone it to share.
#[derive(Clone)]
pub struct Cluster(Arc<Mutex<State>>);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `group/resource:verb` for every rule of the shipped ClusterRole.
pub fn shipped_grants() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("istio-manifests/control/rbac.yaml")).unwrap();
    let mut grants = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        grants.insert(format!("{}/{}:{}", g.as_str().unwrap(), r.as_str().unwrap(), verb.as_str().unwrap()));
                    }
                }
            }
        }
    }
    grants
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn send(reply: Reply, code: StatusCode, body: &Value) {
    reply.send_response(Response::builder().status(code).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap());
}

/// Server-side apply's effect on keys: objects merge, the rest is replaced.
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(old) => merge(old, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, from) => *into = from.clone(),
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn managed(v: &Value) -> bool {
    v.pointer("/metadata/labels/app.kubernetes.io~1managed-by") == Some(&json!("krites-control"))
}

impl Cluster {
    /// A cluster serving `served` (`group/version` -> resource names), with
    /// `inputs` (manifests) listed under their collection paths.
    pub fn new(inputs: &[Value], served: &[(&str, &[&str])]) -> Cluster {
        let mut s = State { grants: shipped_grants(), ..State::default() };
        for p in [
            "/api/v1/pods",
            "/api/v1/serviceaccounts",
            "/api/v1/namespaces",
            "/apis/networking.k8s.io/v1/networkpolicies",
            "/api/v1/services",
            "/apis/discovery.k8s.io/v1/endpointslices",
        ] {
            s.inputs.insert(p.to_string(), Vec::new());
        }
        for (gv, resources) in served {
            s.served.insert(gv.to_string(), resources.iter().map(ToString::to_string).collect());
            for r in *resources {
                s.inputs.insert(format!("/apis/{gv}/{r}"), Vec::new());
            }
        }
        let cluster = Cluster(Arc::new(Mutex::new(s)));
        for v in inputs {
            cluster.put_input(v.clone());
        }
        cluster
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn collection(v: &Value) -> Option<String> {
        let api_version = v["apiVersion"].as_str()?;
        let plural = match v["kind"].as_str()? {
            "Pod" => "pods",
            "ServiceAccount" => "serviceaccounts",
            "Namespace" => "namespaces",
            "NetworkPolicy" => "networkpolicies",
            "GlobalNetworkPolicy" => "globalnetworkpolicies",
            "Tier" => "tiers",
            "Service" => "services",
            "EndpointSlice" => "endpointslices",
            _ => return None,
        };
        let prefix = if api_version == "v1" { "/api/v1".to_string() } else { format!("/apis/{api_version}") };
        Some(format!("{prefix}/{plural}"))
    }

    /// Adds or replaces an input object (by namespace and name) in its list
    /// (for the next list: a restarted controller sees it).
    pub fn put_input(&self, v: Value) {
        let Some(path) = Self::collection(&v) else { return };
        let mut s = self.state();
        let Some(items) = s.inputs.get_mut(&path) else { return };
        let id = |o: &Value| (o["metadata"]["namespace"].clone(), o["metadata"]["name"].clone());
        items.retain(|o| id(o) != id(&v));
        items.push(v);
    }

    /// A client talking to this cluster; serves until the client is dropped.
    pub fn client(&self) -> Client {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(self.clone().serve(handle));
        Client::new(service, "default")
    }

    async fn serve(self, mut handle: Handle) {
        while let Some((req, reply)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            self.handle(method, path, query, body, reply);
        }
    }

    fn authorize(&self, s: &mut State, grant: &str, path: &str) -> bool {
        if s.grants.contains(grant) {
            return true;
        }
        s.denied.push(format!("{grant} {path}"));
        false
    }

    fn handle(&self, method: Method, path: String, query: String, body: Value, reply: Reply) {
        let mut s = self.state();
        let watch = query.contains("watch=true");
        // Discovery: open to every authenticated user (system:discovery).
        if method == Method::GET && (path.matches('/').count() == 3 && path.starts_with("/apis/")) {
            let gv = path.trim_start_matches("/apis/").to_string();
            let served = s.served.get(&gv).cloned().or_else(|| (gv == "extensions.istio.io/v1alpha1").then(|| vec!["wasmplugins".into()]));
            match served {
                Some(resources) => {
                    let list: Vec<Value> = resources
                        .iter()
                        .map(|r| json!({"name": r, "singularName": "", "namespaced": r != "globalnetworkpolicies" && r != "tiers", "kind": "X", "verbs": ["list", "watch"]}))
                        .collect();
                    send(reply, StatusCode::OK, &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}));
                }
                None => send(reply, StatusCode::NOT_FOUND, &status(404, "NotFound", "the server could not find the requested resource")),
            }
            return;
        }
        if let Some(rest) = path.strip_prefix(PLUGINS) {
            return self.plugins(&mut s, method, &path, rest, &query, body, reply, watch);
        }
        if path.starts_with("/apis/events.k8s.io/v1/namespaces/") && method == Method::POST {
            if self.authorize(&mut s, "events.k8s.io/events:create", &path) {
                s.events.push(body.clone());
                send(reply, StatusCode::CREATED, &body);
            } else {
                send(reply, StatusCode::FORBIDDEN, &status(403, "Forbidden", "forbidden"));
            }
            return;
        }
        // An input kind: list or watch.
        let (group, resource) = {
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                ["api", "v1", r] => (String::new(), (*r).to_string()),
                ["apis", g, _, r] => ((*g).to_string(), (*r).to_string()),
                _ => panic!("unexpected {method} {path}?{query}"),
            }
        };
        let verb = if watch { "watch" } else { "list" };
        if !self.authorize(&mut s, &format!("{group}/{resource}:{verb}"), &path) {
            send(reply, StatusCode::FORBIDDEN, &status(403, "Forbidden", "forbidden"));
            return;
        }
        match s.inputs.get(&path) {
            None => send(reply, StatusCode::NOT_FOUND, &status(404, "NotFound", "the server could not find the requested resource")),
            Some(_) if watch => s.input_watches.push(reply),
            Some(items) => {
                let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items});
                send(reply, StatusCode::OK, &list);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plugins(&self, s: &mut State, method: Method, path: &str, rest: &str, query: &str, body: Value, reply: Reply, watch: bool) {
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let key = match parts.as_slice() {
            ["wasmplugins"] => None,
            ["namespaces", ns, "wasmplugins", name] => Some(((*ns).to_string(), (*name).to_string())),
            _ => panic!("unexpected {method} {path}"),
        };
        let verb = match (&method, &key, watch) {
            (&Method::GET, None, true) => "watch",
            (&Method::GET, None, false) => "list",
            (&Method::GET, Some(_), _) => "get",
            (&Method::PATCH, ..) => "patch",
            (&Method::PUT, ..) => "update",
            (&Method::POST, ..) => "create",
            (&Method::DELETE, ..) => "delete",
            _ => panic!("unexpected {method} {path}"),
        };
        let forbidden = |s: &mut State, grant: &str| !self.authorize(s, &format!("extensions.istio.io/wasmplugins:{grant}"), path);
        if forbidden(s, verb) {
            return send(reply, StatusCode::FORBIDDEN, &status(403, "Forbidden", "forbidden"));
        }
        if method != Method::GET {
            s.writes.push(Write { method: method.clone(), path: path.to_string(), query: query.to_string(), body: body.clone() });
        }
        match (method, key) {
            (Method::GET, None) if watch => s.plugin_watches.push(reply),
            (Method::GET, None) => {
                let selected = query_param(query, "labelSelector").is_some();
                let items: Vec<&Value> = s.plugins.values().filter(|p| !selected || managed(p)).collect();
                let list = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPluginList",
                                  "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
                send(reply, StatusCode::OK, &list);
            }
            (Method::GET, Some(k)) => match s.plugins.get(&k) {
                Some(p) => send(reply, StatusCode::OK, p),
                None => send(reply, StatusCode::NOT_FOUND, &status(404, "NotFound", "not found")),
            },
            (Method::PATCH, Some(k)) => {
                // Server-side apply of a missing object is a create.
                if !s.plugins.contains_key(&k) && forbidden(s, "create") {
                    return send(reply, StatusCode::FORBIDDEN, &status(403, "Forbidden", "forbidden"));
                }
                let out = Self::apply_locked(s, &k, &body);
                send(reply, StatusCode::OK, &out);
            }
            (Method::PUT, Some(k)) => {
                let current = s.plugins.get(&k).map(|p| p["metadata"]["resourceVersion"].clone());
                if current.is_none() || current.as_ref() != body.pointer("/metadata/resourceVersion") {
                    return send(reply, StatusCode::CONFLICT, &status(409, "Conflict", "the object has been modified"));
                }
                let out = Self::store_locked(s, &k, body, "MODIFIED");
                send(reply, StatusCode::OK, &out);
            }
            (Method::DELETE, Some(k)) => match s.plugins.remove(&k) {
                Some(old) => {
                    Self::notify_locked(s, "DELETED", &old);
                    send(reply, StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}));
                }
                None => send(reply, StatusCode::NOT_FOUND, &status(404, "NotFound", "not found")),
            },
            (m, k) => panic!("unexpected {m} {k:?}"),
        }
    }

    fn apply_locked(s: &mut State, k: &(String, String), body: &Value) -> Value {
        let (merged, kind) = match s.plugins.get(k) {
            Some(old) => {
                let mut m = old.clone();
                merge(&mut m, body);
                (m, "MODIFIED")
            }
            None => (body.clone(), "ADDED"),
        };
        Self::store_locked(s, k, merged, kind)
    }

    fn store_locked(s: &mut State, k: &(String, String), mut obj: Value, kind: &str) -> Value {
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        obj["metadata"]["uid"] = json!(format!("uid-{}-{}", k.0, k.1));
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        s.plugins.insert(k.clone(), obj.clone());
        Self::notify_locked(s, kind, &obj);
        obj
    }

    /// Sends a watch event to the WasmPlugin watches (label-selected on
    /// control's label, as control's watch is: an object losing it is DELETED).
    fn notify_locked(s: &mut State, kind: &str, obj: &Value) {
        let kind = if kind == "MODIFIED" && !managed(obj) { "DELETED" } else { kind };
        if kind == "ADDED" && !managed(obj) {
            return;
        }
        let line = format!("{}\n", json!({"type": kind, "object": obj}));
        for reply in s.plugin_watches.drain(..) {
            reply.send_response(Response::builder().status(StatusCode::OK).body(Body::from(line.clone().into_bytes())).unwrap());
        }
    }

    /// Another field manager's server-side apply (forced) into a WasmPlugin.
    pub fn foreign_apply(&self, namespace: &str, name: &str, patch: &Value) {
        let mut s = self.state();
        Self::apply_locked(&mut s, &(namespace.into(), name.into()), patch);
    }

    /// Someone deletes a WasmPlugin.
    pub fn foreign_delete(&self, namespace: &str, name: &str) {
        let mut s = self.state();
        let old = s.plugins.remove(&(namespace.into(), name.into())).unwrap();
        Self::notify_locked(&mut s, "DELETED", &old);
    }

    pub fn plugin(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state().plugins.get(&(namespace.into(), name.into())).cloned()
    }

    /// Writes control made (field manager krites-control) to WasmPlugins.
    pub fn control_writes(&self) -> Vec<Write> {
        self.state().writes.iter().filter(|w| w.query.contains("fieldManager=krites-control")).cloned().collect()
    }

    pub fn watching_plugins(&self) -> bool {
        !self.state().plugin_watches.is_empty()
    }
}

/// Polls `f` every 20 ms until it holds, for up to `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
