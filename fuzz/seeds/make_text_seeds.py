#!/usr/bin/env python3
"""Writes the hand-made seeds of the text-input fuzz targets (selector, config,
path) into fuzz/corpus/<target>/, one file per seed, named after what it is.
Re-run after editing; the decide target's seeds come from `make fuzz-seeds`."""
import json, os, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
repo = os.path.dirname(root)

def write(target, name, data):
    d = os.path.join(root, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# --- selector: the tutorial's and Calico's documented selectors, edge cases of
# the grammar, and a few errors. After a NUL, bytes that shape the label sets.
selectors = {
    "yaobank-customer": "app == 'customer'",
    "yaobank-summary": "app == 'summary'",
    "yaobank-database": "app == 'database'",
    "calico-doc-role": "role == 'frontend'",
    "calico-doc-and": "role == 'database' && env == 'production'",
    "calico-doc-in": "type in {'frontend', 'backend'}",
    "calico-doc-notin": "type not in {'frontend', 'backend'}",
    "calico-doc-has": "has(projectcalico.org/namespace)",
    "calico-doc-nothas": "!has(label)",
    "calico-doc-all": "all()",
    "calico-doc-global": "global()",
    "calico-doc-contains": "k8s-app contains 'dns'",
    "calico-doc-starts": "app starts with 'kube'",
    "calico-doc-ends": "app ends with '-v1'",
    "calico-doc-or-paren": "(app == 'a' || app == 'b') && env != 'prod'",
    "calico-special-namespace": "projectcalico.org/namespace == 'yaobank'",
    "calico-special-sa": "projectcalico.org/serviceaccount == 'summary'",
    "calico-special-name": "projectcalico.org/name == 'default'",
    "calico-special-orchestrator": "projectcalico.org/orchestrator == 'k8s'",
    "k8s-metadata-name": "kubernetes.io/metadata.name == 'kube-system'",
    "knp-converted": "projectcalico.org/orchestrator == 'k8s' && app == 'db' && tier in {'a', 'b'}",
    "double-quoted": "quote == \"it's\"",
    "no-spaces": "app=='x'&&b!='y'||!has(c)",
    "compact-ops": "app notin {} && app startswith 'a' && app endswith 'z'",
    "word-operators-as-labels": "contains contains 'ye' && in in {'x'} && not not in {'y'}",
    "double-negation": "!!app == 'summary'",
    "triple-negation": "!!!app == 'summary'",
    "not-group": "! (app == 'summary' && version == 'v1')",
    "not-not-group": "!(!(a == 'x'))",
    "precedence": "a == 'x' && b == 'y' || c == 'z' && !d == 'w'",
    "empty-set-trailing-comma": "app in {'summary',}",
    "empty": "",
    "blank-tab": " \t ",
    "unicode-value": "app == 'caf\u00e9 \u2603'",
    "nested-64": "(" * 64 + "a == 'x'" + ")" * 64,
    "nested-64-mixed": "(" * 63 + "!(a == 'x' && b == 'y' || c == 'z')" + ")" * 63,
    "nested-65-error": "(" * 65 + "a == 'x'" + ")" * 65,
    "long-label-512": "a" * 512 + " == 'x'",
    "err-unterminated": "app == 'summary",
    "err-no-operator": "app",
    "err-single-equals": "app = 'x'",
    "err-newline": "app == 'x'\n&& b == 'y'",
    "err-has-space": "has (app)",
    "labels-shaped": "app in {'a', 'b'} && has(tier) && env != 'dev'\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b",
    "labels-shaped-or": "a starts with 'p' || b ends with 'q' || c contains 'r'\x00\x03\x04\x01\x00\x02\x05\x03\x01",
}
for name, text in selectors.items():
    write("selector", name, text)

# --- config: real configs (the tutorial as control compiles it, control's
# goldens) and small ones exercising each feature and each kind of error.
for path, name in [
    ("tests/fixtures/yaobank-plugin-config.json", "yaobank-fixture"),
    ("control/tests/golden/calico-tiers.json", "golden-calico-tiers"),
    ("control/tests/golden/kubernetes.json", "golden-kubernetes"),
    ("control/tests/golden/kubernetes.team-a.json", "golden-kubernetes-team-a"),
]:
    with open(os.path.join(repo, path), "rb") as f:
        write("config", name, f.read())

eps = [
    {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "role": "frontend"}, "ips": ["10.1.0.1"]},
    {"namespace": "prod", "serviceAccount": "api", "labels": {"app": "api"}, "ips": ["10.1.0.2", "fd00::2"]},
    {"namespace": "dev", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["::ffff:10.2.0.1"]},
    {"namespace": "dev", "serviceAccount": "tool", "labels": {"app": "tool"}, "ips": ["10.2.0.9"]},
]
nss = [{"name": "prod", "labels": {"env": "prod"}}, {"name": "dev", "labels": {"env": "dev"}}]
sas = [{"namespace": "prod", "name": "api", "labels": {"pci": "yes"}}]

def cfg(policies, **extra):
    c = {"version": 1, "policies": policies, "endpoints": eps, "namespaces": nss, "serviceAccounts": sas}
    c.update(extra)
    return json.dumps(c, separators=(",", ":"))

def pol(name, rules, **extra):
    p = {"name": name, "selector": "app == 'web'", "ingress": rules}
    p.update(extra)
    return p

A, D, L, P = "Allow", "Deny", "Log", "Pass"
configs = {
    "sa-names": cfg([pol("p", [{"action": A, "source": {"serviceAccounts": {"names": ["api"]}}}])]),
    "sa-selector": cfg([pol("p", [{"action": A, "source": {"serviceAccounts": {"selector": "pci == 'yes'"}}}])]),
    "source-selector": cfg([pol("p", [{"action": A, "source": {"selector": "app == 'api'"}}])]),
    "not-selector": cfg([pol("p", [{"action": A, "source": {"notSelector": "app == 'tool'"}}])]),
    "namespace-selector": cfg([pol("p", [{"action": A, "source": {"namespaceSelector": "env == 'prod'"}}])]),
    "namespace-selector-global": cfg([pol("p", [{"action": A, "source": {"namespaceSelector": "global()"}}])]),
    "namespaced-policy": cfg([pol("p", [{"action": A, "source": {"selector": "app == 'web'"}}], namespace="prod")]),
    "http-methods-paths": cfg([pol("p", [{"action": A, "http": {"methods": ["GET", "HEAD"], "paths": [{"exact": "/healthz"}, {"prefix": "/api/"}]}}])]),
    "http-encoded-rule-path": cfg([pol("p", [{"action": A, "http": {"paths": [{"prefix": "/caf%C3%A9/./x/../"}]}}])]),
    "nets-ports": cfg([pol("p", [{"action": A, "protocol": "TCP", "source": {"nets": ["10.1.0.0/16"], "notPorts": ["1:1023"]}, "destination": {"ports": [8080, "9000:9100", "http"]}}])]),
    "not-nets-v6": cfg([pol("p", [{"action": D, "ipVersion": 6, "source": {"notNets": ["fd00::/8"]}}])]),
    "deny-by-sa-then-allow": cfg([pol("p", [{"action": D, "source": {"serviceAccounts": {"names": ["tool"]}}}, {"action": A}])]),
    "log-pass-tiers": cfg(
        [pol("guard", [{"action": L, "source": {"selector": "app == 'tool'"}}, {"action": P, "source": {"namespaceSelector": "env == 'dev'"}}], tier="security", order=10),
         pol("base", [{"action": A, "source": {"serviceAccounts": {"names": ["web"]}}}], order=1000.5)],
        tiers=[{"name": "security", "order": 100, "defaultAction": "Pass"}]),
    "kube-admin-baseline": cfg([pol("a", [{"action": P}], tier="kube-admin"), pol("b", [{"action": D}], tier="kube-baseline")]),
    "protocol-udp-icmp": cfg([pol("p", [{"action": A, "protocol": "UDP"}, {"action": D, "protocol": "ICMP", "icmp": {"type": 8}}, {"action": A, "notProtocol": 6}])]),
    "types-egress-only": cfg([pol("p", [{"action": D}], types=["Egress"])]),
    "policy-ns-selector-sa-selector": cfg([pol("p", [{"action": A}], namespaceSelector="env == 'prod'", serviceAccountSelector="pci == 'yes'")]),
    "scope": cfg([pol("p", [{"action": A}])], scope=["prod"], revision="gen-7"),
    "empty-policies": '{"version":1}',
    "err-version": '{"version":2}',
    "err-array": '[{"version":1}]',
    "err-unknown-field": '{"version":1,"bogus":true}',
    "err-bad-selector": cfg([pol("p", [{"action": A, "source": {"selector": "app = 'x'"}}])]),
    "err-global-in-selector": cfg([pol("p", [{"action": A, "source": {"selector": "global()"}}])]),
    "err-bad-cidr": cfg([pol("p", [{"action": A, "source": {"nets": ["10.0.0.0/33", "fd00::/129", "x"]}}])]),
    "err-mixed-families": cfg([pol("p", [{"action": A, "source": {"nets": ["10.0.0.0/8"], "notNets": ["fd00::/8"]}}])]),
    "err-http-on-deny": cfg([pol("p", [{"action": D, "http": {"methods": ["GET"]}}])]),
    "err-ports-without-protocol": cfg([pol("p", [{"action": A, "destination": {"ports": [80]}}])]),
    "err-duplicate-ip": json.dumps({"version": 1, "endpoints": [eps[0], dict(eps[1], ips=["10.1.0.1"])]}),
    "err-duplicate-policy-tier": cfg([pol("p", []), pol("p", [])], tiers=[{"name": "t"}, {"name": "t"}]),
    "err-undeclared-tier": cfg([pol("p", [], tier="nope")]),
    "err-services": cfg([pol("p", [{"action": A, "source": {"services": {"name": "x"}}}])]),
    "err-path-not-absolute": cfg([pol("p", [{"action": A, "http": {"paths": [{"exact": "admin"}, {"exact": "/a", "prefix": "/b"}]}}])]),
    "err-order-nan": '{"version":1,"tiers":[{"name":"t","order":1e400}]}',
}
# The compressed form control delivers for large configs (config/src/compressed.rs):
# zlib of format byte 1, the JSON's length (4 bytes, big-endian), the JSON, and
# the endpoint table's bytes if any.
import base64, struct, zlib

def compressed(document, table=b"", format_byte=1, damage=False):
    payload = bytes([format_byte]) + struct.pack(">I", len(document)) + document.encode() + table
    data = bytearray(zlib.compress(payload, 9))
    if damage:
        data[-1] ^= 1
    return json.dumps({"version": 1, "compressed": base64.b64encode(bytes(data)).decode()})

# A table of one group: format 1; strings prod, web, app; group (0, 1, labels app=web)
# with one IPv4 run 10.3.0.1..10.3.0.2 (gap from 0.0.0.0, length - 1); no IPv6; no accounts.
def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

table = varint(1) + varint(3) + b"".join(varint(len(x)) + x for x in [b"prod", b"web", b"app"])
table += varint(1) + varint(0) + varint(1) + varint(1) + varint(2) + varint(1) + varint(1) + varint(0x0A030001) + varint(1) + varint(0) + varint(0)
configs["compressed-source-selector"] = compressed(configs["source-selector"])
configs["compressed-with-table"] = compressed(json.dumps({"version": 1, "policies": [pol("p", [{"action": A, "source": {"selector": "app == 'web'"}}])]}), table)
configs["err-compressed-checksum"] = compressed(configs["source-selector"], damage=True)
configs["err-compressed-format"] = compressed(configs["source-selector"], format_byte=2)
configs["err-compressed-nested"] = compressed(compressed('{"version":1}'))

for name, text in configs.items():
    write("config", name, text)

# --- path: request targets that servers read differently.
paths = {
    "root": "/", "plain": "/api/v1/accounts/42", "query": "/admin?x=/../y", "fragment": "/admin#/../x",
    "trailing-slash": "/admin/", "double-slash": "//admin", "dot": "/./admin", "dotdot": "/a/../../b",
    "dotdot-above-root": "/../../../etc/passwd", "encoded-dot": "/%2e%2e/admin", "encoded-dot-upper": "/%2E%2E/admin",
    "mixed-dot": "/.%2e/admin", "double-encoded-dot": "/%252e%252e/admin", "double-encoded-slash": "/a%252fb",
    "encoded-slash": "/admin%2f..", "encoded-backslash": "/a%5c..%5cadmin", "backslash": "/x\\..\\admin",
    "semicolon": "/public;/../admin", "semicolon-param": "/admin;jsessionid=1", "encoded-semicolon": "/admin%3bx",
    "overlong-dot": "/%c0%ae%c0%ae/admin", "overlong-slash": "/%c0%af", "invalid-utf8": "/%ff",
    "utf8": "/caf%C3%A9", "percent-literal": "/100%25", "percent-dot": "/%25%32%65", "bad-escape": "/%zz",
    "truncated-escape": "/%4", "lone-percent": "/%", "nul": "/adm%00in", "control": "/a%0ab", "space": "/a%20b",
    "encoded-question": "/a%3fb/..", "encoded-hash": "/a%23b", "not-absolute": "admin", "asterisk": "*",
    "dots-in-names": "/a.b/c..d/...", "trailing-dotdot": "/a/b/..", "case": "/ADMIN/../%41dmin",
    "tab-in-path": "/a\tb", "unicode-raw": "/\u00e9t\u00e9/\u2603",
}
for name, text in paths.items():
    write("path", name, text)
print("wrote", len(selectors), "selector,", len(configs) + 4, "config,", len(paths), "path seeds")
