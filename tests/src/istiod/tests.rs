#![allow(clippy::unwrap_used)]
use serde_json::json;

use super::*;

#[test]
fn plugin_config_goes_through_istiods_transform() {
    let got = plugin_config_transform(r#"{"b": {"z": 1, "a": 2.5}, "a": "x && y <z>", "n": 1e21, "m": 100000000000000000000, "f": 0.0000001}"#).unwrap();
    assert_eq!(
        got,
        r#"{"a":"x \u0026\u0026 y \u003cz\u003e","b":{"a":2.5,"z":1},"f":1e-7,"m":100000000000000000000,"n":1e+21}"#
    );
    assert_eq!(plugin_config_transform("{}").unwrap(), "");
    assert_eq!(plugin_config_transform("").unwrap(), "");
}

fn proxy(mtls: MtlsMode) -> Proxy {
    Proxy {
        pod_name: "database-6d4b9f8c5b-vm7rs".into(),
        namespace: "default".into(),
        service_account: "database".into(),
        labels: [
            ("app".to_string(), "database".to_string()),
            ("pod-template-hash".to_string(), "6d4b9f8c5b".to_string()),
        ]
        .into(),
        ip: Ipv4Addr::new(10, 1, 2, 3),
        ports: vec![
            ContainerPort::new("http", 8080, Some(Protocol::Http)),
            ContainerPort::new("db", 5432, Some(Protocol::Tcp)),
            ContainerPort::new("raw", 9000, Some(Protocol::Auto)),
            ContainerPort::new("debug", 7000, None),
        ],
        mtls,
        port_mtls: BTreeMap::new(),
        path_normalization: PathNormalization::Base,
        trust_domain: "cluster.local".into(),
        identity: Identity {
            cert: "/c".into(),
            key: "/k".into(),
            uri: None,
        },
        ca: "/ca".into(),
        capture: CaptureMode::Iptables,
        authz: Authorization::krites(),
        outbound: vec![],
        admin: "127.0.0.1:15000".parse().unwrap(),
        extra_stat_tags: Vec::new(),
        envoy_filters: Vec::new(),
        files: ProxyFiles::under(std::path::Path::new("/e")),
    }
}

fn chains(b: &Value) -> Vec<Value> {
    b["static_resources"]["listeners"][0]["filter_chains"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn strict_chains_follow_istio() {
    let b = build_sidecar_bootstrap(&proxy(MtlsMode::Strict));
    let c = chains(&b);
    // blackhole + 2 passthrough + http 1 + tcp 1 + auto 2
    assert_eq!(c.len(), 7, "{c:#?}");
    let auto: Vec<&Value> = c
        .iter()
        .filter(|c| c["filter_chain_match"]["destination_port"] == 9000)
        .collect();
    assert_eq!(
        auto[0]["filter_chain_match"]["application_protocols"],
        json!(MTLS_HTTP_ALPNS)
    );
    assert!(auto[1]["filter_chain_match"]
        .get("application_protocols")
        .is_none());
    // TCP chain: Krites network filter then tcp_proxy to inbound|9000||
    assert_eq!(
        auto[1]["filters"][0]["name"],
        "extensions.istio.io/wasmplugin/istio-system.krites-peer-address"
    );
    assert!(auto[1]["filters"][0]["config_discovery"].is_object());
    assert_eq!(
        auto[1]["filters"][1]["typed_config"]["cluster"],
        "inbound|9000||"
    );
    let lf = b["static_resources"]["listeners"][0]["listener_filters"]
        .as_array()
        .unwrap();
    // No plaintext chains in STRICT: no HTTP inspector, as in Istio.
    assert_eq!(lf.len(), 2);
    let labels = &b["node"]["metadata"]["LABELS"];
    assert!(labels.get("pod-template-hash").is_none());
    assert!(b["node"]["metadata"]["POD_PORTS"].is_string());
}

#[test]
fn permissive_adds_plaintext_and_sniffing() {
    let b = build_sidecar_bootstrap(&proxy(MtlsMode::Permissive));
    let c = chains(&b);
    // blackhole + 5 passthrough + http 2 + tcp 3 + auto 5
    assert_eq!(c.len(), 16);
    let lf = b["static_resources"]["listeners"][0]["listener_filters"]
        .as_array()
        .unwrap();
    assert_eq!(lf.len(), 3);
    // The HTTP inspector is off on the ports declared TCP and HTTP.
    assert!(lf[2]["filter_disabled"].to_string().contains("5432"));
    let hcm =
        &c.iter().find(|c| c["name"] == "0.0.0.0_8080").unwrap()["filters"][1]["typed_config"];
    assert_eq!(hcm["forward_client_cert_details"], "APPEND_FORWARD");
    assert_eq!(hcm["use_remote_address"], false);
    assert_eq!(hcm["normalize_path"], true);
    assert_eq!(
        hcm["http_filters"][0]["name"],
        "extensions.istio.io/wasmplugin/istio-system.krites"
    );
    assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.rbac");
}

#[test]
fn without_capture_each_port_listens_on_the_pod_ip() {
    let mut p = proxy(MtlsMode::Permissive);
    let ingress = |port, protocol, default_endpoint| IngressListener { port, protocol, bind: p.ip.into(), default_endpoint };
    p.capture = CaptureMode::None {
        ingress: vec![
            ingress(5432, Protocol::Tcp, InboundEndpoint::Address("127.0.0.9:5432".parse().unwrap())),
            ingress(8080, Protocol::Http, InboundEndpoint::Echo),
            ingress(9000, Protocol::Auto, InboundEndpoint::Ok),
        ],
        egress: vec![],
    };
    p.port_mtls = [(8080, MtlsMode::Strict)].into();
    let b = build_sidecar_bootstrap(&p);
    let listeners = b["static_resources"]["listeners"].as_array().unwrap();
    let names: Vec<&str> = listeners.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["10.1.2.3_5432", "10.1.2.3_8080", "10.1.2.3_9000"]);
    // STRICT on 8080 by portLevelMtls: one TLS chain, no original_dst, no HTTP inspector.
    let http = &listeners[1];
    assert_eq!(http["filter_chains"].as_array().unwrap().len(), 1);
    let lf: Vec<&str> = http["listener_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(lf, ["envoy.filters.listener.tls_inspector"]);
    let hcm = &http["filter_chains"][0]["filters"][1]["typed_config"];
    assert_eq!(hcm["route_config"]["virtual_hosts"][0]["routes"][0]["direct_response"]["status"], 200);
    assert!(hcm["local_reply_config"].is_object());
    let clusters = b["static_resources"]["clusters"].as_array().unwrap();
    let db = clusters.iter().find(|c| c["name"] == "inbound|5432||").unwrap();
    assert_eq!(db["type"], "STATIC");
    assert!(clusters.iter().all(|c| c["name"] != PASSTHROUGH_CLUSTER));
    assert_eq!(b["node"]["metadata"]["INTERCEPTION_MODE"], "NONE");
}

#[test]
fn network_and_http_plugins_come_by_ecds() {
    let http = build_http_ecds(3, std::path::Path::new("/m.wasm"), Some("{}"));
    assert_eq!(http["resources"][0]["name"], "extensions.istio.io/wasmplugin/istio-system.krites");
    let net = build_network_ecds(1, std::path::Path::new("/m.wasm"));
    assert_eq!(net["resources"][0]["typed_config"]["config"]["root_id"], "krites_peer_address");
    assert_eq!(net["resources"][0]["typed_config"]["@type"], "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm");
}

fn calling_pods(h2_upgrade: bool) -> client_sidecars::ClientSidecars {
    use client_sidecars::{CallingPod, ClientSidecars, Destination};
    let id = |name: &str| Identity {
        cert: format!("/pki/{name}.crt").into(),
        key: format!("/pki/{name}.key").into(),
        uri: Some(format!("spiffe://cluster.local/ns/shop/sa/{name}")),
    };
    ClientSidecars {
        name: "loadgen".into(),
        namespace: "bench".into(),
        listen: "127.0.60.10:9000".parse().unwrap(),
        admin: "127.0.60.10:9001".parse().unwrap(),
        ca: "/pki/ca.crt".into(),
        pods: vec![
            CallingPod { name: "frontend".into(), ip: Ipv4Addr::new(127, 0, 61, 1), identity: Some(id("frontend")) },
            CallingPod { name: "plain".into(), ip: Ipv4Addr::new(127, 0, 61, 2), identity: None },
        ],
        destinations: vec![Destination {
            name: "krites".into(),
            upstream: Upstream {
                host: "database.shop.svc.cluster.local".into(),
                ip: Ipv4Addr::new(127, 0, 60, 4),
                port: 8080,
                protocol: Protocol::Http,
                identity: "spiffe://cluster.local/ns/shop/sa/database".into(),
                endpoints: Vec::new(),
            },
        }],
        h2_upgrade,
        access_log: None,
    }
}

#[test]
fn client_sidecars_originate_istio_mtls_per_pod() {
    let b = client_sidecars::build_client_sidecars_bootstrap(&calling_pods(true));
    let clusters = b["static_resources"]["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2, "{clusters:#?}");
    let (mtls, plain) = (&clusters[0], &clusters[1]);
    assert_eq!(mtls["name"], "frontend~outbound|8080||database.shop.svc.cluster.local");
    // Each pod's connections leave from its own address.
    assert_eq!(mtls["upstream_bind_config"]["source_address"]["address"], "127.0.61.1");
    assert_eq!(plain["upstream_bind_config"]["source_address"]["address"], "127.0.61.2");
    // Istio's outbound TLS: the pod's certificate, the outbound SNI, istio.alpn's HTTP/2
    // ALPN, the destination's exact SPIFFE id.
    let tls = &mtls["transport_socket"]["typed_config"];
    assert_eq!(tls["sni"], "outbound_.8080_._.database.shop.svc.cluster.local");
    let common = &tls["common_tls_context"];
    assert_eq!(common["alpn_protocols"], json!(["istio-h2", "istio"]));
    assert_eq!(common["tls_certificates"][0]["certificate_chain"]["filename"], "/pki/frontend.crt");
    assert_eq!(
        common["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        "spiffe://cluster.local/ns/shop/sa/database"
    );
    // A pod without a certificate has no sidecar: plaintext.
    assert!(plain.get("transport_socket").is_none(), "{plain:#}");
    for c in clusters {
        assert!(c["typed_extension_protocol_options"].is_object(), "HTTP/2 upstream: {c:#}");
    }
    let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
    assert_eq!(routes[0]["match"]["prefix"], "/krites/frontend/");
    assert_eq!(routes[0]["route"]["cluster"], mtls["name"]);
    assert_eq!(routes[0]["route"]["prefix_rewrite"], "/");
    assert_eq!(routes[1]["match"]["prefix"], "/krites/plain/");
    assert_eq!(b["node"]["metadata"]["INSTANCE_IPS"], "127.0.61.1,127.0.61.2");
}

#[test]
fn client_sidecars_without_h2_upgrade_offer_the_ports_alpn() {
    let b = client_sidecars::build_client_sidecars_bootstrap(&calling_pods(false));
    let mtls = &b["static_resources"]["clusters"][0];
    assert_eq!(
        mtls["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"],
        json!(cluster::outbound_alpn(Protocol::Http))
    );
    assert!(mtls.get("typed_extension_protocol_options").is_none(), "{mtls:#}");
}

#[test]
fn extra_stat_tags_render_as_istio_renders_them() {
    let mut p = proxy(MtlsMode::Permissive);
    assert!(build_sidecar_bootstrap(&p).get("stats_config").is_none(), "none unless asked for");
    p.extra_stat_tags = vec!["krites_tier".into(), "krites_policy".into()];
    let b = build_sidecar_bootstrap(&p);
    assert_eq!(b["stats_config"]["use_all_default_tags"], false);
    assert_eq!(b["stats_config"]["stats_tags"][0]["tag_name"], "krites_tier");
    assert_eq!(b["stats_config"]["stats_tags"][0]["regex"], r"(krites_tier=\.=(.*?);\.;)");
    assert_eq!(b["stats_config"]["stats_tags"][1]["regex"], r"(krites_policy=\.=(.*?);\.;)");
}

#[test]
fn outbound_listeners_carry_krites_as_istio_inserts_client_mode_plugins() {
    let mut p = proxy(MtlsMode::Strict);
    let service = |name: &str, vip: [u8; 4], protocol: Protocol| Upstream {
        host: format!("{name}.bookinfo.svc.cluster.local"),
        ip: Ipv4Addr::from(vip),
        port: if protocol == Protocol::Http { 9080 } else { 3306 },
        protocol,
        identity: format!("spiffe://cluster.local/ns/bookinfo/sa/{name}"),
        endpoints: vec!["10.1.2.9:9080".parse().unwrap(), "10.1.2.10:9080".parse().unwrap()],
    };
    p.outbound = vec![
        service("ratings", [10, 96, 0, 11], Protocol::Http),
        service("details", [10, 96, 0, 12], Protocol::Http),
        service("mysql", [10, 96, 0, 13], Protocol::Tcp),
    ];
    let network_name = ecds_resource_name(PLUGIN_NAMESPACE, NETWORK_PLUGIN);
    let http_name = ecds_resource_name(PLUGIN_NAMESPACE, HTTP_PLUGIN);
    let listeners = |p: &Proxy| build_sidecar_bootstrap(p)["static_resources"]["listeners"].as_array().unwrap().clone();
    let named = |all: &[Value], name: &str| all.iter().find(|l| l["name"] == name).cloned().unwrap();

    let all = listeners(&p);
    // Both HTTP Services share 0.0.0.0_9080: the NETWORK filter first, then the HCM whose
    // HTTP filters are Krites then the router; virtual hosts by Host, allow_any last.
    let http = named(&all, "0.0.0.0_9080");
    assert_eq!(http["traffic_direction"], "OUTBOUND");
    assert_eq!(http["bind_to_port"], false);
    let filters = http["filter_chains"][0]["filters"].as_array().unwrap();
    assert_eq!(filters[0]["name"], network_name.as_str());
    let hcm = &filters[1]["typed_config"];
    let http_filters: Vec<&str> = hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(http_filters, [http_name.as_str(), "envoy.filters.http.router"]);
    let vhosts = hcm["route_config"]["virtual_hosts"].as_array().unwrap();
    assert_eq!(vhosts.len(), 3);
    let ratings_domains = vhosts[0]["domains"].as_array().unwrap();
    for d in ["ratings.bookinfo.svc.cluster.local", "ratings", "ratings:9080", "ratings.bookinfo", "10.96.0.11:9080"] {
        assert!(ratings_domains.iter().any(|x| x == d), "{d} in {ratings_domains:?}");
    }
    assert_eq!(vhosts[0]["routes"][0]["route"]["cluster"], "outbound|9080||ratings.bookinfo.svc.cluster.local");
    assert_eq!(vhosts[2]["name"], "allow_any");
    assert_eq!(vhosts[2]["routes"][0]["route"]["cluster"], PASSTHROUGH_CLUSTER);
    // A TCP Service: <ClusterIP>_<port>, the NETWORK filter before tcp_proxy.
    let tcp = named(&all, "10.96.0.13_3306");
    let filters = tcp["filter_chains"][0]["filters"].as_array().unwrap();
    assert_eq!(filters[0]["name"], network_name.as_str());
    assert_eq!(filters[1]["typed_config"]["cluster"], "outbound|3306||mysql.bookinfo.svc.cluster.local");
    // The Service's cluster reaches every endpoint.
    let clusters = build_sidecar_bootstrap(&p)["static_resources"]["clusters"].as_array().unwrap().clone();
    let ratings = clusters.iter().find(|c| c["name"] == "outbound|9080||ratings.bookinfo.svc.cluster.local").unwrap();
    assert_eq!(ratings["load_assignment"]["endpoints"][0]["lb_endpoints"].as_array().unwrap().len(), 2);

    // Istio's catch-all chain has no WasmPlugin; Krites' EnvoyFilter adds the NETWORK filter.
    let catch_all = |p: &Proxy| named(&listeners(p), "virtualOutbound")["filter_chains"][0]["filters"].as_array().unwrap().clone();
    assert_eq!(catch_all(&p).len(), 1);
    assert_eq!(catch_all(&p)[0]["typed_config"]["cluster"], PASSTHROUGH_CLUSTER);
    p.envoy_filters = vec![envoyfilter::EnvoyFilter::egress_passthrough().unwrap()];
    assert_eq!(catch_all(&p)[0]["name"], network_name.as_str());
    assert_eq!(catch_all(&p)[1]["typed_config"]["cluster"], PASSTHROUGH_CLUSTER);

    // Without capture (the loopback rig, the benchmark) the outbound side runs no Krites.
    let mut pod_upstream = service("ratings", [10, 1, 2, 9], Protocol::Http);
    pod_upstream.endpoints.clear();
    p.capture = CaptureMode::None {
        ingress: vec![],
        egress: vec![EgressListener { port: 15001, endpoints: vec!["10.1.2.9:9080".parse().unwrap()] }],
    };
    p.outbound = vec![pod_upstream];
    let egress = named(&listeners(&p), "10.1.2.9_9080");
    let filters = egress["filter_chains"][0]["filters"].as_array().unwrap();
    assert_eq!(filters.len(), 1, "no NETWORK filter: {filters:?}");
    let http_filters = filters[0]["typed_config"]["http_filters"].as_array().unwrap();
    assert_eq!(http_filters.len(), 1);
    assert_eq!(http_filters[0]["name"], "envoy.filters.http.router");
}

#[test]
fn the_shipped_egress_passthrough_envoyfilter_is_what_the_mesh_applies() {
    use envoyfilter::{EnvoyFilter, PatchContext};
    let f = EnvoyFilter::egress_passthrough().unwrap();
    assert_eq!((f.name.as_str(), f.namespace.as_str()), ("krites-egress-passthrough", PLUGIN_NAMESPACE));
    assert_eq!(f.patches.len(), 1);
    let patch = &f.patches[0];
    assert_eq!(patch.context, PatchContext::SidecarOutbound);
    assert_eq!(patch.listener.as_deref(), Some("virtualOutbound"));
    assert_eq!(patch.filter_chain.as_deref(), Some(listener_outbound::VIRTUAL_OUTBOUND_CATCHALL_CHAIN));
    // The filter is the NETWORK WasmPlugin's ECDS resource, by the type URLs Istio uses.
    let inline = networkfilter::krites_network_filter(&proxy(MtlsMode::Strict));
    assert_eq!(patch.value["name"], inline["name"]);
    assert_eq!(patch.value["config_discovery"]["type_urls"], inline["config_discovery"]["type_urls"]);
    assert_eq!(patch.value["config_discovery"]["config_source"]["initial_fetch_timeout"], "0s");

    // Applied: first on the catch-all chain, delivered from the proxy's ECDS file; nowhere else.
    let mut p = proxy(MtlsMode::Strict);
    p.outbound = vec![Upstream {
        host: "mysql.bookinfo.svc.cluster.local".into(),
        ip: Ipv4Addr::new(10, 96, 0, 13),
        port: 3306,
        protocol: Protocol::Tcp,
        identity: "spiffe://cluster.local/ns/bookinfo/sa/mysql".into(),
        endpoints: vec!["10.1.2.9:3306".parse().unwrap()],
    }];
    let before = build_sidecar_bootstrap(&p);
    p.envoy_filters = vec![f.clone()];
    let after = build_sidecar_bootstrap(&p);
    let listeners = |b: &Value| b["static_resources"]["listeners"].as_array().unwrap().clone();
    let named = |all: &[Value], name: &str| all.iter().find(|l| l["name"] == name).cloned().unwrap();
    for (b, a) in listeners(&before).iter().zip(listeners(&after).iter()) {
        if a["name"] != "virtualOutbound" {
            assert_eq!(a, b, "{} unchanged", a["name"]);
        }
    }
    let catch_all = named(&listeners(&after), "virtualOutbound")["filter_chains"][0]["filters"].as_array().unwrap().clone();
    assert_eq!(catch_all.len(), 2);
    assert_eq!(catch_all[0], inline, "the same filter as Istio's own NETWORK plugin placement");
    assert_eq!(catch_all[1]["typed_config"]["cluster"], PASSTHROUGH_CLUSTER);

    // A name no WasmPlugin delivers keeps its ADS source (Envoy then refuses the bootstrap).
    let mut wrong = f.clone();
    wrong.patches[0].value["name"] = json!("extensions.istio.io/wasmplugin/istio-system.other");
    p.envoy_filters = vec![wrong];
    let catch_all = named(&listeners(&build_sidecar_bootstrap(&p)), "virtualOutbound")["filter_chains"][0]["filters"].as_array().unwrap().clone();
    assert!(catch_all[0]["config_discovery"]["config_source"]["ads"].is_object());
}

#[test]
fn envoyfilters_the_mesh_cannot_apply_are_errors_naming_the_field() {
    use envoyfilter::EnvoyFilter;
    let shipped = envoyfilter::EGRESS_PASSTHROUGH_MANIFEST;
    for (edit, field) in [
        (("operation: INSERT_FIRST", "operation: MERGE"), "patch.operation"),
        (("applyTo: NETWORK_FILTER", "applyTo: HTTP_FILTER"), "applyTo"),
        (("context: SIDECAR_OUTBOUND", "context: GATEWAY"), "match.context"),
        (("        name: virtualOutbound-catchall-tcp", "        transportProtocol: tls"), "match.listener.filterChain.transportProtocol"),
        (("kind: EnvoyFilter", "kind: Sidecar"), "apiVersion/kind"),
    ] {
        assert!(shipped.contains(edit.0), "{edit:?}");
        let err = format!("{:#}", EnvoyFilter::parse(&shipped.replace(edit.0, edit.1)).unwrap_err());
        assert!(err.contains(field), "{field}: {err}");
    }
}
