//! `control publish-image`: the control binary as a distroless-style OCI
//! image, pushed to a real registry (Debian's `docker-registry`) started on
//! 127.0.0.1 and read back with an independent client (`skopeo`).
//!
//! What "the Deployment's digest is the one just built" means here: the
//! binary changes with every source change, so the committed
//! `istio-manifests/control/deployment.yaml` cannot pin the digest of the
//! current tree. The tests check instead that (1) the image is deterministic,
//! (2) `--update-deployment` (what `make publish` runs) writes exactly the
//! digest it pushed and skopeo read back, changing only the `image:` line, and
//! (3) the shipped Deployment references its image by `@sha256:` digest.
//!
//! The host test binary is dynamically linked, so the round trips pass
//! `--allow-dynamic`; `musl_build_is_static_and_runs_alone` builds the real
//! static binary when the musl target and musl-gcc are installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const REPO: &str = "krites/krites-control";

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/sbin"]) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed; the image tests need it (Debian: apt-get install docker-registry skopeo; scripts/setup.sh does it)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A registry on 127.0.0.1 with its storage in a temp dir; killed on drop.
struct Registry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  secret: krites-test\n",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(tool("docker-registry")).arg("serve").arg(&cfg).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let mut reg = Registry { child, host, dir };
        let start = Instant::now();
        while TcpStream::connect(&reg.host).is_err() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default());
            }
            assert!(start.elapsed() < Duration::from_secs(15), "docker-registry did not listen on {}", reg.host);
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
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

fn control(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_control")).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `field: value` from the command's stdout.
fn field(out: &Output, name: &str) -> String {
    assert!(out.status.success(), "publish-image failed:\n{}", text(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or_else(|| panic!("no `{name}:` in\n{stdout}")).to_string()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new(tool("skopeo")).args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}:\n{}", text(&out));
    out.stdout
}

/// The first 4 MiB of the host-built control binary: a real (dynamic) ELF
/// header, and small enough that the debug-built gzip of the tests stays fast
/// (the whole debug binary is ~250 MB). Packaging never runs it; the real
/// static binary is `musl_build_is_static_and_runs_alone`'s.
fn host_binary(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_control")).unwrap();
    bytes.truncate(4 << 20);
    let path = dir.join("control");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Everything skopeo says about the image at `reference`, checked: manifest
/// digest, one tar+gzip layer, config (non-root, entrypoint, linux/amd64),
/// and the layer's entries. Returns the binary inside.
fn check_with_skopeo(reference: &str, digest: &str, tmp: &Path) -> Vec<u8> {
    let src = format!("docker://{reference}");
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &src]);
    assert_eq!(format!("sha256:{}", hex(&raw)), digest, "skopeo's manifest is not the one control pushed");
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let inspect: serde_json::Value = serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &src])).unwrap();
    assert_eq!(inspect["Digest"], digest);
    assert_eq!((inspect["Os"].as_str(), inspect["Architecture"].as_str()), (Some("linux"), Some("amd64")));
    let config: serde_json::Value = serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", "--config", &src])).unwrap();
    assert_eq!(config["config"]["User"], "65532:65532", "non-root");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/control"]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");

    let dir = tmp.join(format!("skopeo-{}", &digest[7..19]));
    skopeo(&["copy", "--insecure-policy", "--src-tls-verify=false", &src, &format!("dir:{}", dir.display())]);
    let layer_digest = layers[0]["digest"].as_str().unwrap();
    let gz = std::fs::read(dir.join(&layer_digest[7..])).unwrap();
    assert_eq!(format!("sha256:{}", hex(&gz)), layer_digest);
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0].as_str().unwrap(), format!("sha256:{}", hex(&tar)));
    let mut binary = None;
    let mut paths = Vec::new();
    for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let h = entry.header().clone();
        assert_eq!(h.mtime().unwrap(), 0, "{path}: fixed mtime");
        match path.as_str() {
            "control" => {
                assert_eq!((h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0o755, 0, 0));
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                binary = Some(data);
            }
            "etc/passwd" | "etc/group" => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
                assert!(s.lines().any(|l| l.starts_with("nonroot:x:65532:")), "{path}: {s}");
            }
            _ => {}
        }
        paths.push(path);
    }
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "sorted entries");
    binary.expect("/control in the layer")
}

#[test]
fn control_image_round_trip_is_deterministic_and_non_root() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (bin, bytes) = host_binary(tmp.path());
    let b = bin.to_str().unwrap();
    let out = control(&["publish-image", b, &reg.reference("t1"), "--plain-http", "--allow-dynamic"]);
    let digest = field(&out, "digest");
    assert_eq!(field(&out, "image"), format!("{}/{REPO}@{digest}", reg.host));
    assert_eq!(check_with_skopeo(&reg.reference("t1"), &digest, tmp.path()), bytes, "/control is the binary, byte for byte");

    // Same binary, same image: another push, and a dry run, give the same digest.
    let again = control(&["publish-image", b, &reg.reference("t2"), "--plain-http", "--allow-dynamic"]);
    assert_eq!(field(&again, "digest"), digest);
    let dry = control(&["publish-image", b, "unreachable.invalid:1/x/y:1", "--dry-run", "--allow-dynamic"]);
    assert_eq!(field(&dry, "digest"), digest);
    // Another binary, another digest.
    let mut other = bytes.clone();
    other.extend_from_slice(b"\0");
    let other_path = tmp.path().join("control-other");
    std::fs::write(&other_path, other).unwrap();
    let dry = control(&["publish-image", other_path.to_str().unwrap(), "unreachable.invalid:1/x/y:1", "--dry-run", "--allow-dynamic"]);
    assert_ne!(field(&dry, "digest"), digest);
}

#[test]
fn dynamic_or_foreign_binaries_are_refused_before_any_network() {
    let tmp = tempfile::tempdir().unwrap();
    let (bin, _) = host_binary(tmp.path());
    let unreachable = format!("127.0.0.1:{}/{REPO}:x", free_port());
    let out = control(&["publish-image", bin.to_str().unwrap(), &unreachable, "--plain-http"]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dynamically linked") && !stderr.contains("cannot reach"), "{}", text(&out));
    let script = tmp.path().join("script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let out = control(&["publish-image", script.to_str().unwrap(), &unreachable, "--plain-http", "--allow-dynamic"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ELF executable"), "{}", text(&out));
}

/// What `make publish` runs on the shipped Deployment: the module push sets
/// `--module-url`/`--sha256`, the image push sets `image:` to the digest it
/// pushed (and skopeo read back); every other line, comments included, stays.
#[test]
fn make_publish_pins_the_deployment_to_the_digest_it_pushed() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (bin, _) = host_binary(tmp.path());
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("istio-manifests/control/deployment.yaml");
    let deployment = tmp.path().join("deployment.yaml");
    std::fs::copy(&shipped, &deployment).unwrap();
    let before = std::fs::read_to_string(&deployment).unwrap();

    let out = control(&["publish-image", bin.to_str().unwrap(), &reg.reference("v1"), "--plain-http", "--allow-dynamic", "--update-deployment", deployment.to_str().unwrap()]);
    let digest = field(&out, "digest");
    check_with_skopeo(&reg.reference("v1"), &digest, tmp.path());
    let wasm = tmp.path().join("krites.wasm");
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
    let module = control(&["publish", wasm.to_str().unwrap(), &format!("{}/krites/krites:v1", reg.host), "--plain-http", "--update-deployment", deployment.to_str().unwrap()]);
    let sha256 = field(&module, "sha256");

    let after = std::fs::read_to_string(&deployment).unwrap();
    let changed: Vec<(&str, &str)> = before.lines().zip(after.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(before.lines().count(), after.lines().count());
    assert_eq!(changed.len(), 3, "only image:, --module-url and --sha256 change: {changed:?}");
    let image_line = format!("image: {}/{REPO}@{digest}", reg.host);
    assert_eq!(after.lines().filter(|l| l.trim() == image_line).count(), 1, "{after}");
    assert!(after.contains(&format!("- --module-url=oci://{}/krites/krites:v1\n", reg.host)), "{after}");
    assert!(after.contains(&format!("- --sha256={sha256}\n")), "{after}");
    let comments = |t: &str| t.lines().filter(|l| l.trim_start().starts_with('#')).count();
    assert_eq!(comments(&after), comments(&before));
    // Still a Deployment whose container runs that image.
    let d: serde_yaml::Value = serde_yaml::from_str(&after).unwrap();
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"].as_str(), Some(format!("{}/{REPO}@{digest}", reg.host).as_str()));
    assert_eq!(container["args"][0].as_str(), Some("run"));
}

/// The shipped Deployment pins its image by digest (`make publish` writes it).
#[test]
fn shipped_deployment_references_the_image_by_digest() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("istio-manifests/control/deployment.yaml");
    let d: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(shipped).unwrap()).unwrap();
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string();
    let (repo, digest) = image.split_once("@sha256:").unwrap_or_else(|| panic!("image {image:?} is not pinned by digest"));
    assert!(repo.ends_with("/krites-control") || repo.ends_with("/krites/krites-control"), "{image}");
    assert!(digest.len() == 64 && digest.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{image}");
    let sc = &d["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(sc["runAsUser"].as_u64(), Some(65532), "the image's user");
}

/// The real build: `control` for x86_64-unknown-linux-musl is static (no
/// program interpreter, `file` says so) and the image takes it without
/// `--allow-dynamic`; as root, it runs alone in the unpacked layer (chroot:
/// no libc anywhere). Skipped, with a note, unless the musl target and
/// musl-gcc are installed (scripts/setup.sh installs both). A debug build in
/// its own target dir (the outer cargo holds the main one).
#[test]
fn musl_build_is_static_and_runs_alone() {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if !installed.is_some_and(|t| t.lines().any(|l| l == "x86_64-unknown-linux-musl")) || Command::new("musl-gcc").arg("--version").output().is_err() {
        eprintln!("skipped: the x86_64-unknown-linux-musl target or musl-gcc is missing (scripts/setup.sh installs them)");
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // target/debug/control -> target/musl-check
    let target_dir = Path::new(env!("CARGO_BIN_EXE_control")).parent().unwrap().parent().unwrap().join("musl-check");
    let build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace)
        .args(["build", "-q", "-p", "krites-control", "--bin", "control", "--target", "x86_64-unknown-linux-musl"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .output()
        .unwrap();
    assert!(build.status.success(), "musl build:\n{}", text(&build));
    let bin = target_dir.join("x86_64-unknown-linux-musl/debug/control");
    let file = Command::new("file").arg("-L").arg(&bin).output();
    if let Ok(file) = file {
        let says = String::from_utf8_lossy(&file.stdout).into_owned();
        assert!(says.contains("statically linked") || says.contains("static-pie linked"), "{says}");
    }
    let bytes = std::fs::read(&bin).unwrap();
    assert_eq!(krites_control::publish::image::elf_linking(&bytes).unwrap(), krites_control::publish::image::Linking::Static);
    let image = krites_control::publish::image::build_control_image(&bytes, false).unwrap();

    // Unpack the layer and run /control in it with nothing else around.
    let root = tempfile::tempdir().unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(image.layer())).unpack(root.path()).unwrap();
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if is_root {
        let run = Command::new("chroot").arg(root.path()).args(["/control", "--version"]).output().unwrap();
        assert!(run.status.success(), "the static binary runs alone in the image's filesystem:\n{}", text(&run));
        assert!(String::from_utf8_lossy(&run.stdout).starts_with("control "), "{}", text(&run));
    } else {
        eprintln!("not root: skipped running /control in a chroot of the layer");
    }
}
