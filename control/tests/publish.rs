//! `control publish` against a real registry (Debian's `docker-registry`, the
//! CNCF distribution registry) started by each test on 127.0.0.1, read back
//! with an independent client (`skopeo`). Both are installed by
//! scripts/setup.sh; a missing one fails the test rather than skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use krites_control::publish::{self, Variant};
use sha2::{Digest, Sha256};

const REPO: &str = "krites/krites";

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/sbin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed; the publish tests need it (Debian: apt-get install docker-registry skopeo; scripts/setup.sh does it)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A registry process on 127.0.0.1 with its storage in a temp dir; killed on drop.
struct Registry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// `auth`: (user, password) for htpasswd basic auth.
    fn start(auth: Option<(&str, &str)>) -> Registry {
        let bin = tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  secret: krites-test\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            // The registry takes bcrypt lines, as `htpasswd -B` writes them.
            let hash = bcrypt::hash_with_result(password, 4).unwrap().format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n", htpasswd.display()));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin).arg("serve").arg(&cfg).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let mut reg = Registry { child, host, dir };
        let start = Instant::now();
        while TcpStream::connect(&reg.host).is_err() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", reg.log());
            }
            assert!(start.elapsed() < Duration::from_secs(15), "docker-registry did not listen on {}:\n{}", reg.host, reg.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn reference(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real module when `make build` has made one, else the smallest valid
/// module. Copied, so a concurrent rebuild cannot change it under the test.
fn module(dir: &Path) -> (PathBuf, Vec<u8>) {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("wasm-out/krites.wasm");
    let bytes = std::fs::read(&built).ok().filter(|b| b.starts_with(b"\0asm")).unwrap_or_else(|| b"\0asm\x01\0\0\0".to_vec());
    let path = dir.join("krites.wasm");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn control(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_control"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

struct Printed {
    pushed: String,
    digest: String,
    sha256: String,
    url: String,
}

fn printed(out: &Output) -> Printed {
    assert!(out.status.success(), "publish failed:\n{}", text(out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    let field = |name: &str| {
        lines.iter().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or_else(|| panic!("no `{name}:` line in\n{stdout}")).to_string()
    };
    let pushed = lines.first().and_then(|l| l.strip_prefix("pushed ")).unwrap_or_else(|| panic!("first line is not `pushed REF`:\n{stdout}"));
    Printed { pushed: pushed.to_string(), digest: field("digest"), sha256: field("sha256"), url: field("url") }
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new(tool("skopeo")).args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}:\n{}", text(&out));
    out.stdout
}

/// skopeo's view of the image: the raw manifest and the blobs, copied to `dir:`.
struct ReadBack {
    manifest: serde_json::Value,
    manifest_digest: String,
    blobs: PathBuf,
}

fn read_back(reference: &str, creds: Option<&str>, into: &Path) -> ReadBack {
    let src = format!("docker://{reference}");
    let mut inspect = vec!["inspect", "--tls-verify=false", "--raw"];
    let mut copy = vec!["copy", "--insecure-policy", "--src-tls-verify=false"];
    if let Some(c) = creds {
        inspect.extend(["--creds", c]);
        copy.extend(["--src-creds", c]);
    }
    inspect.push(&src);
    let raw = skopeo(&inspect);
    let blobs = into.join("skopeo-dir");
    let dest = format!("dir:{}", blobs.display());
    copy.extend([src.as_str(), dest.as_str()]);
    skopeo(&copy);
    // dir: keeps the manifest byte for byte.
    assert_eq!(std::fs::read(blobs.join("manifest.json")).unwrap(), raw, "skopeo copy and inspect disagree on the manifest");
    ReadBack { manifest: serde_json::from_slice(&raw).unwrap(), manifest_digest: format!("sha256:{}", hex(&raw)), blobs }
}

impl ReadBack {
    fn layer_types(&self) -> Vec<String> {
        self.manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap().to_string()).collect()
    }
    fn blob(&self, digest: &str) -> Vec<u8> {
        let data = std::fs::read(self.blobs.join(digest.strip_prefix("sha256:").unwrap())).unwrap();
        assert_eq!(format!("sha256:{}", hex(&data)), digest, "blob bytes do not hash to their digest");
        data
    }
    fn layer(&self, media_type: &str) -> Vec<u8> {
        let layers = self.manifest["layers"].as_array().unwrap();
        let l = layers.iter().find(|l| l["mediaType"] == media_type).unwrap_or_else(|| panic!("no {media_type} layer in {}", self.manifest));
        self.blob(l["digest"].as_str().unwrap())
    }
}

fn check_printed(p: &Printed, reg: &Registry, tag: &str, back: &ReadBack) {
    assert_eq!(p.pushed, reg.reference(tag));
    assert_eq!(p.url, format!("oci://{}", reg.reference(tag)));
    // WasmPlugin.sha256 for oci:// is the manifest digest, as skopeo computes it.
    assert_eq!(p.digest, back.manifest_digest);
    assert_eq!(format!("sha256:{}", p.sha256), p.digest);
    assert_eq!(p.sha256.len(), 64);
    assert_eq!(back.manifest["mediaType"], publish::OCI_MANIFEST_MEDIA_TYPE, "a single image manifest, never an index");
}

#[test]
fn oci_variant_round_trip() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, bytes) = module(tmp.path());
    let out = control(&["publish", wasm.to_str().unwrap(), &reg.reference("test"), "--plain-http"], None);
    let p = printed(&out);
    let back = read_back(&reg.reference("test"), None, tmp.path());
    check_printed(&p, &reg, "test", &back);
    // Istio's oci variant: exactly two layers, the raw module and the runtime config.
    assert_eq!(back.layer_types(), [publish::WASM_CONFIG_MEDIA_TYPE, publish::WASM_CONTENT_MEDIA_TYPE]);
    assert_eq!(back.layer(publish::WASM_CONTENT_MEDIA_TYPE), bytes, "the wasm layer is the file, byte for byte");
    let cfg: serde_json::Value = serde_json::from_slice(&back.layer(publish::WASM_CONFIG_MEDIA_TYPE)).unwrap();
    assert_eq!(cfg["type"], "envoy_proxy");
    assert_ne!(p.sha256, hex(&bytes), "the WasmPlugin sha256 is the manifest digest, not the file hash");

    // Same module, same image: a second push (another tag) prints the same digest.
    let again = printed(&control(&["publish", wasm.to_str().unwrap(), &reg.reference("again"), "--plain-http"], None));
    assert_eq!(again.digest, p.digest);
}

#[test]
fn compat_variant_round_trip() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, bytes) = module(tmp.path());
    let out = control(&["publish", wasm.to_str().unwrap(), &reg.reference("compat"), "--plain-http", "--variant", "compat"], None);
    let p = printed(&out);
    let back = read_back(&reg.reference("compat"), None, tmp.path());
    check_printed(&p, &reg, "compat", &back);
    assert_eq!(back.layer_types(), [publish::OCI_LAYER_GZIP_MEDIA_TYPE]);
    let gz = back.layer(publish::OCI_LAYER_GZIP_MEDIA_TYPE);
    // Unpacked the way Istio does: gunzip, untar, the entry named plugin.wasm.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut found = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().file_name().is_some_and(|n| n == "plugin.wasm") {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            found = Some(data);
        }
    }
    assert_eq!(found.expect("plugin.wasm in the layer"), bytes);
    let cfg_digest = back.manifest["config"]["digest"].as_str().unwrap().to_string();
    let cfg: serde_json::Value = serde_json::from_slice(&back.blob(&cfg_digest)).unwrap();
    assert_eq!(back.manifest["config"]["mediaType"], publish::OCI_CONFIG_MEDIA_TYPE);
    assert_eq!((cfg["os"].as_str(), cfg["architecture"].as_str()), (Some("linux"), Some("amd64")));
    assert_eq!(back.manifest["annotations"]["module.wasm.image/variant"], "compat");
}

#[test]
fn unreachable_registry_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, _) = module(tmp.path());
    let port = free_port(); // nothing listens there
    let out = control(&["publish", wasm.to_str().unwrap(), &format!("127.0.0.1:{port}/{REPO}:x"), "--plain-http"], None);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot reach registry 127.0.0.1:{port}: connection refused")), "{}", text(&out));
    assert!(out.stdout.is_empty(), "nothing printed as if pushed:\n{}", text(&out));
}

#[test]
fn plain_http_registry_without_flag_says_so() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, _) = module(tmp.path());
    let out = control(&["publish", wasm.to_str().unwrap(), &reg.reference("x")], None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plain-http"), "{}", text(&out));
}

#[test]
fn credentials_required_refused_and_accepted() {
    let reg = Registry::start(Some(("krites", "s3cret-pw")));
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, bytes) = module(tmp.path());
    let w = wasm.to_str().unwrap();
    let r = reg.reference("auth");

    let anonymous = control(&["publish", w, &r, "--plain-http"], None);
    assert!(!anonymous.status.success(), "{}", text(&anonymous));
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("registry refused credentials") && stderr.contains("--username/--password-stdin"), "{}", text(&anonymous));

    let wrong = control(&["publish", w, &r, "--plain-http", "--username", "krites", "--password-stdin"], Some("nope\n"));
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("registry refused credentials"), "{}", text(&wrong));

    let ok = control(&["publish", w, &r, "--plain-http", "--username", "krites", "--password-stdin"], Some("s3cret-pw\n"));
    let p = printed(&ok);
    let back = read_back(&r, Some("krites:s3cret-pw"), tmp.path());
    check_printed(&p, &reg, "auth", &back);
    assert_eq!(back.layer(publish::WASM_CONTENT_MEDIA_TYPE), bytes);
}

#[test]
fn non_wasm_input_is_refused_before_any_network() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("krites.wasm");
    std::fs::write(&bad, "#!/bin/sh\necho not wasm\n").unwrap();
    // An unreachable registry: a network attempt would give another message.
    let out = control(&["publish", bad.to_str().unwrap(), &format!("127.0.0.1:{}/{REPO}:x", free_port()), "--plain-http"], None);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a WebAssembly module") && !stderr.contains("cannot reach"), "{}", text(&out));
}

#[test]
fn update_manifest_rewrites_url_and_sha256() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, _) = module(tmp.path());
    let yaml = tmp.path().join("wasmplugins.yaml");
    std::fs::write(
        &yaml,
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: krites\n  namespace: istio-system\nspec:\n  url: oci://ghcr.io/krites-project/krites:0.1.0\n  phase: AUTHZ\n  pluginConfig:\n    revision: abc\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: krites-peer-address\n  namespace: istio-system\nspec:\n  url: oci://ghcr.io/krites-project/krites@sha256:0000000000000000000000000000000000000000000000000000000000000000\n  sha256: 0000000000000000000000000000000000000000000000000000000000000000\n  pluginName: krites_peer_address\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: untouched\n",
    )
    .unwrap();
    let out = control(&["publish", wasm.to_str().unwrap(), &reg.reference("v2"), "--plain-http", "--update-manifest", yaml.to_str().unwrap()], None);
    let p = printed(&out);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&yaml).unwrap())
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0]["spec"]["url"].as_str(), Some(p.url.as_str()));
    assert_eq!(docs[0]["spec"]["sha256"].as_str(), Some(p.sha256.as_str()));
    assert_eq!(docs[0]["spec"]["pluginConfig"]["revision"].as_str(), Some("abc"));
    // A URL pinned by digest stays pinned, to the new digest.
    assert_eq!(docs[1]["spec"]["url"].as_str(), Some(format!("oci://{}/{REPO}@{}", reg.host, p.digest).as_str()));
    assert_eq!(docs[1]["spec"]["sha256"].as_str(), Some(p.sha256.as_str()));
    assert_eq!(docs[1]["spec"]["pluginName"].as_str(), Some("krites_peer_address"));
    assert_eq!(docs[2]["metadata"]["name"].as_str(), Some("untouched"));
}

/// `make publish` updates the shipped manifests: the WasmPlugins and the
/// control Deployment's flags (control rewrites the WasmPlugins from them).
#[test]
fn update_manifest_keeps_the_control_deployment_in_step() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, _) = module(tmp.path());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("istio-manifests");
    let plugins = tmp.path().join("wasmplugin.yaml");
    let deployment = tmp.path().join("deployment.yaml");
    std::fs::copy(root.join("wasmplugin.yaml"), &plugins).unwrap();
    std::fs::copy(root.join("control/deployment.yaml"), &deployment).unwrap();
    let out = control(
        &["publish", wasm.to_str().unwrap(), &reg.reference("v3"), "--plain-http", "--update-manifest", plugins.to_str().unwrap(), "--update-manifest", deployment.to_str().unwrap()],
        None,
    );
    let p = printed(&out);
    let docs = |f: &std::path::Path| -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(&std::fs::read_to_string(f).unwrap()).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
    };
    for plugin in docs(&plugins) {
        assert_eq!(plugin["spec"]["url"].as_str(), Some(p.url.as_str()));
        assert_eq!(plugin["spec"]["sha256"].as_str(), Some(p.sha256.as_str()));
    }
    let d = &docs(&deployment)[0];
    let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"].as_sequence().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&format!("--module-url={}", p.url).as_str()), "{args:?}");
    assert!(args.contains(&format!("--sha256={}", p.sha256).as_str()), "{args:?}");
    assert_eq!(args.iter().filter(|a| a.starts_with("--sha256=")).count(), 1);
    assert!(args.contains(&"--mesh-namespace=istio-system"), "other flags kept: {args:?}");
}

/// The read-back checks themselves, against what the registry really holds.
#[test]
fn read_back_detects_mismatches() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, bytes) = module(tmp.path());
    printed(&control(&["publish", wasm.to_str().unwrap(), &reg.reference("held"), "--plain-http"], None));
    let reference = publish::parse_reference(&reg.reference("held")).unwrap();
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let held = publish::build_image(&bytes, Variant::Oci).unwrap();
    rt.block_on(publish::verify(&held, &bytes, &reference, &auth, true)).unwrap();

    // The tag holds another image than the one we think we pushed.
    let other = publish::build_image(&bytes, Variant::Compat).unwrap();
    let err = rt.block_on(publish::verify(&other, &bytes, &reference, &auth, true)).unwrap_err().to_string();
    assert!(err.contains("read-back mismatch") && err.contains(&held.digest), "{err}");

    // Right manifest, wrong expectations about its layers.
    let mut as_compat = held.clone();
    as_compat.variant = Variant::Compat;
    let err = rt.block_on(publish::verify(&as_compat, &bytes, &reference, &auth, true)).unwrap_err().to_string();
    assert!(err.contains("wrong layer media types"), "{err}");

    // The module in the registry is not the file.
    let mut other_module = bytes.clone();
    other_module.extend_from_slice(b"\0");
    let err = rt.block_on(publish::verify(&held, &other_module, &reference, &auth, true)).unwrap_err().to_string();
    assert!(err.contains("read-back mismatch: the module in the registry hashes to"), "{err}");
}

/// The image build is deterministic: `--dry-run` (no registry) names the digest a push gives.
#[test]
fn dry_run_names_the_digest_a_push_gives() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (wasm, _) = module(tmp.path());
    let dry = control(&["publish", wasm.to_str().unwrap(), "unreachable.invalid:1/krites/krites:1", "--dry-run"], None);
    assert!(dry.status.success(), "{}", text(&dry));
    let dry_digest = String::from_utf8_lossy(&dry.stdout).lines().find_map(|l| l.strip_prefix("digest: ").map(str::to_string)).unwrap();
    let pushed = printed(&control(&["publish", wasm.to_str().unwrap(), &reg.reference("same"), "--plain-http"], None));
    assert_eq!(pushed.digest, dry_digest);
}
