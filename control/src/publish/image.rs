//! `control publish-image`: the control binary as a deterministic,
//! distroless-style OCI image, pushed with the same client as the module and
//! read back before it counts as published.
//!
//! The image is one `tar+gzip` layer and an OCI image config:
//! * `/control` (0755): the binary, which must be a static x86-64 ELF (the
//!   musl build, `make control-image`); there is no libc in the image;
//! * `/etc/passwd`, `/etc/group`: `root` and `nonroot` (65532), as distroless;
//! * `/home/nonroot/` (owned by 65532) and `/tmp/` (1777), as distroless.
//!
//! No CA bundle: `control run` only talks to the apiserver, with the
//! in-cluster CA from its service-account volume. The config runs
//! `/control run` as `65532:65532`; the Deployment's `args` replace `run`.
//!
//! Every entry has mtime 0, fixed owner and mode, and the entries are sorted;
//! gzip writes no timestamp or name; the config's `created` is the epoch. The
//! same binary always gives the same manifest digest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::json;

use super::{client, descriptor, digest_of, explain, gzip, parse_reference, pull, push_blobs_and_manifest, sha256_hex, Blob};
use super::{OCI_CONFIG_MEDIA_TYPE, OCI_LAYER_GZIP_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE};

/// The binary's path inside the image (and the entrypoint).
pub const BINARY_PATH: &str = "/control";
/// distroless' `nonroot` user and group; the Deployment's `runAsUser`.
pub const NONROOT: u32 = 65532;
pub const USER: &str = "65532:65532";
pub const DEFAULT_CMD: &str = "run";
/// The config's `created`: fixed, so it never changes the digest.
pub const CREATED: &str = "1970-01-01T00:00:00Z";

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";

/// What to push and where.
#[derive(Debug, Clone)]
pub struct Options {
    pub binary: PathBuf,
    /// `REGISTRY/REPO:TAG`.
    pub reference: String,
    pub plain_http: bool,
    pub credentials: Option<(String, String)>,
    pub dry_run: bool,
    /// Package a dynamically linked binary too (tests with the host build;
    /// such an image does not start: it has no libc).
    pub allow_dynamic: bool,
}

/// A built control image.
#[derive(Debug, Clone)]
pub struct ControlImage {
    /// The exact manifest bytes (their sha256 is the digest).
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`.
    pub digest: String,
    /// The config blob.
    pub config: Vec<u8>,
    /// The uncompressed layer (its sha256 is the config's `diff_ids[0]`).
    pub layer_tar: Vec<u8>,
    /// Layer then config, in upload order.
    pub blobs: Vec<Blob>,
}

impl ControlImage {
    /// The compressed layer, as pushed.
    pub fn layer(&self) -> &[u8] {
        &self.blobs[0].data
    }
}

/// The result of a (verified) push.
#[derive(Debug, Clone)]
pub struct PublishedImage {
    /// `registry/repo:tag`.
    pub reference: String,
    /// `registry/repo`.
    pub repository: String,
    /// Manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// `registry/repo@sha256:<hex>`: what the Deployment's `image:` gets.
    pub by_digest: String,
    /// Compressed layer + config + manifest bytes.
    pub size: usize,
    pub binary_sha256: String,
}

/// How an x86-64 ELF executable is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linking {
    /// No program interpreter: runs without a libc in the image (static or static-pie).
    Static,
    /// Has a `PT_INTERP` (e.g. `/lib64/ld-linux-x86-64.so.2`).
    Dynamic,
}

/// Checks that `bin` is a 64-bit little-endian x86-64 ELF executable and
/// tells whether it needs a dynamic loader (a `PT_INTERP` program header).
pub fn elf_linking(bin: &[u8]) -> Result<Linking> {
    let u16_at = |o: usize| bin.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bin.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| bin.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if bin.len() < 64 || &bin[..4] != b"\x7fELF" {
        bail!("not an ELF executable");
    }
    if bin[4] != 2 || bin[5] != 1 || u16_at(0x12) != Some(62) {
        bail!("not an x86-64 ELF executable (the image is linux/amd64)");
    }
    if !matches!(u16_at(0x10), Some(2 | 3)) {
        bail!("an ELF file, but not an executable");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).context("ELF program header offset")? + i * usize::from(phentsize);
        match u32_at(at) {
            Some(3) => return Ok(Linking::Dynamic), // PT_INTERP
            Some(_) => {}
            None => bail!("truncated ELF program headers"),
        }
    }
    Ok(Linking::Static)
}

fn header(path: &str, kind: tar::EntryType, mode: u32, owner: u32, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(owner.into());
    h.set_gid(owner.into());
    h.set_mtime(0);
    h.set_cksum();
    Ok(h)
}

/// The layer: sorted entries, mtime 0, fixed owners and modes.
pub fn layer_tar(binary: &[u8]) -> Result<Vec<u8>> {
    use tar::EntryType::{Directory, Regular};
    // path -> (type, mode, owner, contents); a BTreeMap keeps them sorted.
    let entries: BTreeMap<&str, (tar::EntryType, u32, u32, &[u8])> = BTreeMap::from([
        (&BINARY_PATH[1..], (Regular, 0o755, 0, binary)),
        ("etc/", (Directory, 0o755, 0, &[][..])),
        ("etc/group", (Regular, 0o644, 0, GROUP.as_bytes())),
        ("etc/passwd", (Regular, 0o644, 0, PASSWD.as_bytes())),
        ("home/", (Directory, 0o755, 0, &[][..])),
        ("home/nonroot/", (Directory, 0o700, NONROOT, &[][..])),
        ("tmp/", (Directory, 0o1777, 0, &[][..])),
    ]);
    let mut builder = tar::Builder::new(Vec::new());
    for (path, (kind, mode, owner, data)) in entries {
        builder.append(&header(path, kind, mode, owner, data.len() as u64)?, data)?;
    }
    Ok(builder.into_inner()?)
}

/// The image config: linux/amd64, non-root, `/control run`, epoch `created`.
pub fn image_config(layer_tar: &[u8]) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "User": USER,
            "Entrypoint": [BINARY_PATH],
            "Cmd": [DEFAULT_CMD],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "krites-control",
                "org.opencontainers.image.description": "Krites control plane (static musl build, distroless-style, non-root)"
            }
        },
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer_tar)]},
        "history": [{"created": CREATED, "created_by": "krites control publish-image"}]
    }))?)
}

/// Builds the image of `binary` (an x86-64 ELF; static unless `allow_dynamic`).
pub fn build_control_image(binary: &[u8], allow_dynamic: bool) -> Result<ControlImage> {
    if elf_linking(binary)? == Linking::Dynamic && !allow_dynamic {
        bail!(
            "the binary is dynamically linked (it has a program interpreter); the image has no libc, so it would not start. Build it static: `make control-image` (cargo build --release --target x86_64-unknown-linux-musl)"
        );
    }
    let tar = layer_tar(binary)?;
    let layer = gzip(&tar)?;
    let config = image_config(&tar)?;
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_MEDIA_TYPE.to_string()),
        config: descriptor(OCI_CONFIG_MEDIA_TYPE, &config, None),
        layers: vec![descriptor(OCI_LAYER_GZIP_MEDIA_TYPE, &layer, None)],
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    let bytes = serde_json::to_vec(&manifest)?;
    let blobs = vec![Blob { digest: digest_of(&layer), data: layer }, Blob { digest: digest_of(&config), data: config.clone() }];
    Ok(ControlImage { digest: digest_of(&bytes), manifest: bytes, config, layer_tar: tar, blobs })
}

/// The file at `path` (no leading slash) in a tar+gzip layer.
pub fn extract(gz: &[u8], path: &str) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    for entry in archive.entries().context("not a tar+gzip layer")? {
        let mut entry = entry.context("not a tar+gzip layer")?;
        if entry.path()?.as_os_str() == path {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    bail!("no {path} in the layer")
}

/// Reads the image back by tag with a fresh client: manifest digest and
/// bytes, one tar+gzip layer, the config's user and entrypoint, and the
/// binary inside, byte for byte.
pub async fn verify_control_image(image: &ControlImage, binary: &[u8], reference: &Reference, auth: &RegistryAuth, plain_http: bool) -> Result<()> {
    let registry = reference.registry().to_string();
    let c = client(plain_http)?;
    let (raw, digest) = c
        .pull_manifest_raw(reference, auth, &[OCI_MANIFEST_MEDIA_TYPE])
        .await
        .map_err(|e| explain(e, &registry, "reading the manifest back", auth))?;
    if digest != image.digest || raw != image.manifest {
        bail!("read-back mismatch: {} now resolves to manifest {digest}, but {} was pushed", reference.whole(), image.digest);
    }
    let manifest: OciImageManifest = serde_json::from_slice(&raw).context("read-back: not an OCI image manifest")?;
    let types: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
    if types != [OCI_LAYER_GZIP_MEDIA_TYPE] || manifest.config.media_type != OCI_CONFIG_MEDIA_TYPE {
        bail!("read-back: wrong media types (config {}, layers {types:?})", manifest.config.media_type);
    }
    let config: OciDescriptor = manifest.config.clone();
    let cfg = pull(&c, reference, Some(&config), &registry, auth).await?;
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).context("read-back: the image config is not JSON")?;
    if cfg["config"]["User"] != USER || cfg["config"]["Entrypoint"] != json!([BINARY_PATH]) {
        bail!("read-back: the config runs {} as {}, expected [{BINARY_PATH}] as {USER}", cfg["config"]["Entrypoint"], cfg["config"]["User"]);
    }
    let layer = pull(&c, reference, manifest.layers.first(), &registry, auth).await?;
    let inside = extract(&layer, &BINARY_PATH[1..]).context("read-back: the layer")?;
    if sha256_hex(&inside) != sha256_hex(binary) {
        bail!("read-back mismatch: {BINARY_PATH} in the registry hashes to {}, the file to {}", sha256_hex(&inside), sha256_hex(binary));
    }
    Ok(())
}

/// The whole command: read, check, build, push, verify (only build with `dry_run`).
pub fn publish_image(opts: &Options) -> Result<PublishedImage> {
    let binary = std::fs::read(&opts.binary).with_context(|| format!("cannot read {}", opts.binary.display()))?;
    let image = build_control_image(&binary, opts.allow_dynamic).with_context(|| format!("{} was not pushed", opts.binary.display()))?;
    let reference = parse_reference(&opts.reference)?;
    let auth = match &opts.credentials {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    if !opts.dry_run {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            push_blobs_and_manifest(&image.blobs, &image.manifest, &reference, &auth, opts.plain_http).await?;
            verify_control_image(&image, &binary, &reference, &auth, opts.plain_http).await
        })?;
    }
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    Ok(PublishedImage {
        reference: format!("{repository}:{}", reference.tag().unwrap_or("latest")),
        by_digest: format!("{repository}@{}", image.digest),
        repository,
        size: image.blobs.iter().map(|b| b.data.len()).sum::<usize>() + image.manifest.len(),
        digest: image.digest,
        binary_sha256: sha256_hex(&binary),
    })
}

/// Replaces the value of the one `image:` line of a control Deployment, in
/// the text: comments and layout stay. Fails unless exactly one line is an
/// `image:` field.
pub fn set_deployment_image(text: &str, image: &str) -> Result<String> {
    replace_lines(text, "image:", &format!("image: {image}"))
}

/// Sets `--module-url=` and `--sha256=` of the Deployment's `control run`
/// args, textually (each must be there once, as a `- --flag=value` line).
pub fn set_deployment_module(text: &str, url: &str, sha256: &str) -> Result<String> {
    let text = replace_lines(text, "- --module-url=", &format!("- --module-url={url}"))?;
    replace_lines(&text, "- --sha256=", &format!("- --sha256={sha256}"))
}

/// Replaces each line whose content (after indentation, and after a `- `
/// when `key` is a mapping key) starts with `key`; there must be exactly one.
fn replace_lines(text: &str, key: &str, new: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len() + new.len());
    let mut hits = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start().len();
        let rest = &body[indent..];
        let (prefix, rest) = match rest.strip_prefix("- ") {
            Some(r) if !key.starts_with("- ") => (&body[..indent + 2], r),
            _ => (&body[..indent], rest),
        };
        if rest.starts_with(key) {
            hits += 1;
            // A trailing comment stays.
            let comment = rest.find(" #").map(|i| &rest[i..]).unwrap_or("");
            out.push_str(prefix);
            out.push_str(new);
            out.push_str(comment);
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    if hits != 1 {
        bail!("expected exactly one `{key}` line, found {hits}");
    }
    Ok(out)
}

/// Applies `edit` to a file in place (write, then rename).
pub fn edit_file(path: &Path, edit: impl FnOnce(&str) -> Result<String>) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let out = edit(&text).with_context(|| format!("{}", path.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".krites-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal static x86-64 ELF header (no program headers).
    fn fake_elf(interp: bool) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x10] = 2;
        b[0x12] = 62;
        b[0x20] = 64; // phoff
        b[0x36] = 56; // phentsize
        b[0x38] = 1; // phnum
        b[64] = if interp { 3 } else { 1 };
        b
    }

    #[test]
    fn elf_checks() {
        assert_eq!(elf_linking(&fake_elf(false)).unwrap(), Linking::Static);
        assert_eq!(elf_linking(&fake_elf(true)).unwrap(), Linking::Dynamic);
        assert!(elf_linking(b"#!/bin/sh\n").is_err());
        assert!(build_control_image(&fake_elf(true), false).is_err());
        assert!(build_control_image(&fake_elf(true), true).is_ok());
    }

    #[test]
    fn layout_and_determinism() {
        let bin = fake_elf(false);
        let img = build_control_image(&bin, false).unwrap();
        assert_eq!(build_control_image(&bin, false).unwrap().digest, img.digest);
        let mut archive = tar::Archive::new(&img.layer_tar[..]);
        let entries: Vec<(String, u32, u64, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().display().to_string(), h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap())
            })
            .collect();
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(paths, ["control", "etc/", "etc/group", "etc/passwd", "home/", "home/nonroot/", "tmp/"]);
        assert_eq!(entries[0].1, 0o755);
        assert!(entries.iter().all(|e| e.4 == 0));
        assert_eq!(extract(img.layer(), "control").unwrap(), bin);
        assert!(String::from_utf8(extract(img.layer(), "etc/passwd").unwrap()).unwrap().contains("nonroot:x:65532:65532:"));
        let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(cfg["config"]["User"], USER);
        assert_eq!(cfg["config"]["Entrypoint"], json!(["/control"]));
        assert_eq!(cfg["rootfs"]["diff_ids"][0], digest_of(&img.layer_tar));
        // gzip header: no mtime (bytes 4..8), no name flag.
        assert_eq!(&img.layer()[4..8], &[0, 0, 0, 0]);
        assert_eq!(img.layer()[3] & 0x08, 0);
    }

    #[test]
    fn deployment_edits_keep_comments() {
        let text = "spec:\n  containers:\n  - name: control\n    # Built from control/.\n    image: old:1 # pinned\n    args:\n    - run\n    - --module-url=oci://a/b:1\n    # keep\n    - --sha256=00\n";
        let out = set_deployment_image(text, "r/c@sha256:ab").unwrap();
        assert_eq!(out, text.replace("image: old:1", "image: r/c@sha256:ab"));
        let out = set_deployment_module(&out, "oci://r/k:2", "ff").unwrap();
        assert!(out.contains("    - --module-url=oci://r/k:2\n    # keep\n    - --sha256=ff\n"), "{out}");
        assert!(out.contains("# Built from control/.\n"));
        assert!(set_deployment_image("a: 1\n", "x").is_err());
        assert!(set_deployment_image("- image: a\n- image: b\n", "x").is_err());
    }
}
