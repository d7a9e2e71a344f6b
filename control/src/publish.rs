//! `control publish`: push the filter module to an OCI registry in a shape
//! Istio's image fetcher (`pkg/wasm/imagefetcher.go`) accepts, then read it
//! back and verify it.
//!
//! Two variants, both a single OCI image manifest (never an index: Istio
//! resolves an index to its linux/amd64 child, whose digest then differs from
//! the one pinned in `WasmPlugin.sha256`):
//! * `oci`: exactly two layers, the runtime config
//!   (`application/vnd.module.wasm.config.v1+json`) and the raw module
//!   (`application/vnd.module.wasm.content.layer.v1+wasm`). Istio rejects
//!   any other layer count.
//! * `compat`: one `application/vnd.oci.image.layer.v1.tar+gzip` layer
//!   holding `plugin.wasm`, with a real image config (`rootfs.diff_ids`) so
//!   container tooling handles it too.
//!
//! Images are reproducible: the same module gives the same manifest digest.
//! For `oci://` URLs `WasmPlugin.sha256` is the manifest digest (without the
//! `sha256:` prefix), not the hash of the `.wasm` file.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::wasmplugin::PEER_ADDRESS_ROOT_ID;

pub mod image;

pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The module layer of the `oci` variant (raw, uncompressed wasm).
pub const WASM_CONTENT_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The runtime-config layer (and manifest config) of the `oci` variant.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
/// The file Istio looks for inside a compat layer.
pub const COMPAT_FILE: &str = "plugin.wasm";
/// Istio's default `ISTIO_WASM_MAX_BINARY_SIZE_BYTES`.
pub const MAX_MODULE_BYTES: usize = 256 << 20;

const TITLE: &str = "org.opencontainers.image.title";

/// Image layout; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Two layers: wasm runtime config + raw module (Istio's "oci" variant).
    Oci,
    /// One tar+gzip layer holding plugin.wasm (Istio's "compat" variant).
    Compat,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Oci => "oci",
            Variant::Compat => "compat",
        }
    }
}

/// What to push and where.
#[derive(Debug, Clone)]
pub struct Options {
    pub wasm: PathBuf,
    /// `REGISTRY/REPO:TAG`, optionally prefixed with `oci://`.
    pub reference: String,
    pub plain_http: bool,
    /// Basic credentials (`--username` + `--password-stdin`); anonymous if `None`.
    pub credentials: Option<(String, String)>,
    pub variant: Variant,
    /// Build the image and report its digest without pushing.
    pub dry_run: bool,
}

/// A blob of the image and its digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub data: Vec<u8>,
}

/// A built image, ready to push.
#[derive(Debug, Clone)]
pub struct Image {
    pub variant: Variant,
    /// The exact manifest bytes pushed (their sha256 is the image digest).
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of `manifest`.
    pub digest: String,
    /// Layers and config, in upload order (config last).
    pub blobs: Vec<Blob>,
}

/// The result of a verified push.
#[derive(Debug, Clone)]
pub struct Published {
    /// `registry/repo:tag`.
    pub reference: String,
    /// Manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// `oci://registry/repo:tag`.
    pub url: String,
    /// `oci://registry/repo@sha256:<hex>`.
    pub url_by_digest: String,
    /// sha256 of the module file (hex).
    pub module_sha256: String,
    pub module_bytes: usize,
    /// The manifest as pushed.
    pub manifest: Vec<u8>,
}

impl Published {
    /// What goes in `WasmPlugin.sha256`: the manifest digest's hex.
    pub fn wasmplugin_sha256(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Refuses anything that is not a core WebAssembly module before it reaches a
/// registry (Envoy would only fail later, on every proxy).
pub fn check_module(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly module (the file does not start with the \\0asm magic)");
    }
    if bytes[4..8] != [1, 0, 0, 0] {
        bail!(
            "not a core WebAssembly module (version bytes {:02x?}; a component or a future format?): Envoy loads core modules only",
            &bytes[4..8]
        );
    }
    if bytes.len() > MAX_MODULE_BYTES {
        bail!("the module is {} bytes, over Istio's {MAX_MODULE_BYTES}-byte limit", bytes.len());
    }
    Ok(())
}

fn descriptor(media_type: &str, data: &[u8], title: Option<&str>) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: digest_of(data),
        size: data.len() as i64,
        urls: None,
        artifact_type: None,
        annotations: title.map(|t| BTreeMap::from([(TITLE.to_string(), t.to_string())])),
    }
}

/// The `oci` variant's runtime config (solo.io Wasm image spec): read by no
/// one in Istio, but tools show it.
fn runtime_config() -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&json!({
        "type": "envoy_proxy",
        "abi_version": "proxy_abi_version_0_2_1",
        "config": {"root_ids": ["", PEER_ADDRESS_ROOT_ID]}
    }))?)
}

/// A deterministic tar (one regular file, root-owned, mtime 0) of the module
/// as `plugin.wasm`.
fn compat_tar(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(COMPAT_FILE)?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm)?;
    Ok(builder.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // GzEncoder writes mtime 0 and no file name: reproducible.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Builds the manifest and blobs for `wasm` (which must pass [`check_module`]).
pub fn build_image(wasm: &[u8], variant: Variant) -> Result<Image> {
    check_module(wasm)?;
    // (manifest config descriptor, its bytes), [(layer descriptor, its bytes)], manifest annotations
    let (config, layers, annotations) = match variant {
        Variant::Oci => {
            let cfg = runtime_config()?;
            let layers = vec![
                (descriptor(WASM_CONFIG_MEDIA_TYPE, &cfg, Some("runtime-config.json")), cfg.clone()),
                (descriptor(WASM_CONTENT_MEDIA_TYPE, wasm, Some(COMPAT_FILE)), wasm.to_vec()),
            ];
            ((descriptor(WASM_CONFIG_MEDIA_TYPE, &cfg, None), cfg), layers, None)
        }
        Variant::Compat => {
            let tar = compat_tar(wasm)?;
            let layer = gzip(&tar)?;
            let cfg = serde_json::to_vec(&json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [digest_of(&tar)]},
                "history": [{"created_by": "krites control publish", "comment": COMPAT_FILE}]
            }))?;
            let layers = vec![(descriptor(OCI_LAYER_GZIP_MEDIA_TYPE, &layer, None), layer)];
            // The solo.io compat spec asks OCI-typed compat images to say so.
            let ann = BTreeMap::from([("module.wasm.image/variant".to_string(), "compat".to_string())]);
            ((descriptor(OCI_CONFIG_MEDIA_TYPE, &cfg, None), cfg), layers, Some(ann))
        }
    };
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_MEDIA_TYPE.to_string()),
        config: config.0.clone(),
        layers: layers.iter().map(|(d, _)| d.clone()).collect(),
        subject: None,
        artifact_type: None,
        annotations,
    };
    let bytes = serde_json::to_vec(&manifest)?;
    let mut blobs: Vec<Blob> = Vec::new();
    for (d, data) in layers.into_iter().chain([config]) {
        // The oci variant's config layer is also the manifest config: upload it once.
        if !blobs.iter().any(|b| b.digest == d.digest) {
            blobs.push(Blob { digest: d.digest, data });
        }
    }
    Ok(Image { variant, digest: digest_of(&bytes), manifest: bytes, blobs })
}

/// Parses `REGISTRY/REPO:TAG` (an `oci://` prefix is allowed).
pub fn parse_reference(text: &str) -> Result<Reference> {
    let bare = text.strip_prefix("oci://").unwrap_or(text);
    let reference: Reference = bare.parse().with_context(|| format!("{text:?} is not an image reference (REGISTRY/REPO:TAG)"))?;
    if reference.digest().is_some() {
        bail!("give a tag, not a digest: REGISTRY/REPO:TAG (got {text:?})");
    }
    if reference.tag().is_none() || !bare.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        bail!("give a tag: REGISTRY/REPO:TAG (got {text:?}); Istio re-pulls a `:latest` image on every WasmPlugin change, so name a version");
    }
    Ok(reference)
}

/// "connection refused" and the like; `None` where the io kind says nothing
/// useful (DNS failures are "uncategorized").
fn io_kind_text(e: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable)
        .then(|| e.kind().to_string())
}

/// A registry's error body, short: `CODE: message` from an OCI error envelope,
/// else the text (cut).
fn brief(body: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let errors = parsed.as_ref().and_then(|v| v.get("errors")).and_then(|e| e.as_array());
    match errors {
        Some(errors) if !errors.is_empty() => errors
            .iter()
            .map(|e| format!("{}: {}", e["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.trim().chars().take(300).collect(),
    }
}

const PUSH_MANIFEST: &str = "pushing the manifest";

/// Turns an oci-client error into the message a user acts on.
fn explain(err: OciDistributionError, registry: &str, step: &str, auth: &RegistryAuth) -> anyhow::Error {
    let refused = |detail: String| {
        let hint = match auth {
            RegistryAuth::Basic(user, _) => format!("check the password of user {user:?} (read by --password-stdin)"),
            _ => "pass --username/--password-stdin".to_string(),
        };
        anyhow::anyhow!("registry refused credentials while {step} on {registry} ({detail}); {hint}")
    };
    match err {
        OciDistributionError::RequestError(e) => {
            // Walk to the innermost cause: io errors say "connection refused".
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut io: Option<&std::io::Error> = None;
            let mut tls = false;
            let mut innermost = e.to_string();
            while let Some(s) = source {
                if let Some(x) = s.downcast_ref::<std::io::Error>() {
                    io.get_or_insert(x);
                    // io::Error::source() skips the error it wraps.
                    tls |= x.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
                }
                tls |= s.downcast_ref::<rustls::Error>().is_some();
                innermost = s.to_string();
                source = s.source();
            }
            let not_tls = innermost.contains("InvalidContentType") || innermost.contains("corrupt message");
            if tls || not_tls {
                let hint = if not_tls { "; it seems to serve plain HTTP: pass --plain-http" } else { "" };
                anyhow::anyhow!("cannot reach registry {registry}: TLS failed ({innermost}){hint}")
            } else if e.is_timeout() {
                anyhow::anyhow!("cannot reach registry {registry}: timed out while {step}")
            } else if e.is_connect() {
                let why = io.and_then(io_kind_text).unwrap_or(innermost);
                anyhow::anyhow!("cannot reach registry {registry}: {why}")
            } else {
                anyhow::anyhow!("registry {registry}: request failed while {step}: {innermost}")
            }
        }
        OciDistributionError::UnauthorizedError { url } => refused(format!("HTTP 401 for {url}")),
        OciDistributionError::AuthenticationFailure(m) => refused(format!("token request failed: {}", m.trim())),
        OciDistributionError::ServerError { code: code @ (401 | 403), url, message } => {
            refused(format!("HTTP {code} for {url}: {}", brief(&message)))
        }
        OciDistributionError::RegistryError { envelope, url }
            if envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            refused(format!("{envelope} for {url}"))
        }
        OciDistributionError::ServerError { code, url, message } if (400..500).contains(&code) && step == PUSH_MANIFEST => anyhow::anyhow!(
            "registry {registry} rejected the manifest (HTTP {code} for {url}: {}); if it does not accept custom OCI media types, try --variant compat",
            brief(&message)
        ),
        OciDistributionError::ServerError { code, url, message } => {
            anyhow::anyhow!("registry {registry} answered HTTP {code} while {step} ({url}): {}", brief(&message))
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let hint = if step == PUSH_MANIFEST && envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::ManifestInvalid | OciErrorCode::Unsupported)) {
                "; if it does not accept custom OCI media types, try --variant compat"
            } else {
                ""
            };
            anyhow::anyhow!("registry {registry} refused {step} ({url}): {envelope}{hint}")
        }
        OciDistributionError::DigestError(e) => anyhow::anyhow!("digest mismatch while {step} on {registry}: {e}"),
        other => anyhow::anyhow!("registry {registry}: {step} failed: {other}"),
    }
}

fn client(plain_http: bool) -> Result<Client> {
    // reqwest is built without a default TLS provider: use ring (as kube does).
    // An error here only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: if plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        // Istio never sees an index from us, and we never read one.
        platform_resolver: None,
        ..ClientConfig::default()
    };
    Client::try_from(config).context("cannot create the registry client")
}

/// Pushes `image` to `reference`, then reads it back by tag with a fresh
/// client and checks it against `wasm`.
pub async fn push_and_verify(image: &Image, wasm: &[u8], reference: &Reference, auth: &RegistryAuth, plain_http: bool) -> Result<()> {
    push_blobs_and_manifest(&image.blobs, &image.manifest, reference, auth, plain_http).await?;
    verify(image, wasm, reference, auth, plain_http).await
}

/// Uploads `blobs`, then `manifest` (an OCI image manifest) under `reference`'s tag.
async fn push_blobs_and_manifest(blobs: &[Blob], manifest: &[u8], reference: &Reference, auth: &RegistryAuth, plain_http: bool) -> Result<()> {
    let registry = reference.registry().to_string();
    let c = client(plain_http)?;
    c.auth(reference, auth, RegistryOperation::Push)
        .await
        .map_err(|e| explain(e, &registry, "authenticating", auth))?;
    for blob in blobs {
        c.push_blob(reference, blob.data.clone(), &blob.digest)
            .await
            .map_err(|e| explain(e, &registry, &format!("uploading blob {}", blob.digest), auth))?;
    }
    c.push_manifest_raw(reference, manifest.to_vec(), http::HeaderValue::from_static(OCI_MANIFEST_MEDIA_TYPE))
        .await
        .map_err(|e| explain(e, &registry, PUSH_MANIFEST, auth))?;
    Ok(())
}

/// Reads the image back by tag and checks the manifest digest and bytes, the
/// layer media types Istio needs, and that the module inside hashes like
/// the file.
pub async fn verify(image: &Image, wasm: &[u8], reference: &Reference, auth: &RegistryAuth, plain_http: bool) -> Result<()> {
    let registry = reference.registry().to_string();
    let c = client(plain_http)?;
    let step = "reading the manifest back";
    let (raw, digest) = c
        .pull_manifest_raw(reference, auth, &[OCI_MANIFEST_MEDIA_TYPE])
        .await
        .map_err(|e| explain(e, &registry, step, auth))?;
    if digest != image.digest || sha256_hex(&raw) != sha256_hex(&image.manifest) {
        bail!(
            "read-back mismatch: {} now resolves to manifest {digest} (sha256 of the bytes: sha256:{}), but {} was pushed; another push raced this one, or the registry rewrote the manifest",
            reference.whole(),
            sha256_hex(&raw),
            image.digest
        );
    }
    let manifest: OciImageManifest = serde_json::from_slice(&raw).context("read-back: the manifest is not an OCI image manifest")?;
    if manifest.media_type.as_deref() != Some(OCI_MANIFEST_MEDIA_TYPE) {
        bail!("read-back: wrong manifest media type {:?}, expected {OCI_MANIFEST_MEDIA_TYPE}", manifest.media_type);
    }
    let types: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
    let module = match image.variant {
        Variant::Oci => {
            if types.len() != 2 || !types.contains(&WASM_CONTENT_MEDIA_TYPE) {
                bail!("read-back: wrong layer media types {types:?}; Istio's oci variant needs exactly two layers, one {WASM_CONTENT_MEDIA_TYPE}");
            }
            let layer = manifest.layers.iter().find(|l| l.media_type == WASM_CONTENT_MEDIA_TYPE);
            pull(&c, reference, layer, &registry, auth).await?
        }
        Variant::Compat => {
            if types != [OCI_LAYER_GZIP_MEDIA_TYPE] {
                bail!("read-back: wrong layer media types {types:?}; the compat variant is one {OCI_LAYER_GZIP_MEDIA_TYPE} layer");
            }
            let gz = pull(&c, reference, manifest.layers.first(), &registry, auth).await?;
            extract_compat(&gz).context("read-back: the compat layer")?
        }
    };
    if sha256_hex(&module) != sha256_hex(wasm) {
        bail!(
            "read-back mismatch: the module in the registry hashes to {} ({} bytes), the file to {} ({} bytes)",
            sha256_hex(&module),
            module.len(),
            sha256_hex(wasm),
            wasm.len()
        );
    }
    Ok(())
}

async fn pull(c: &Client, reference: &Reference, layer: Option<&OciDescriptor>, registry: &str, auth: &RegistryAuth) -> Result<Vec<u8>> {
    let Some(layer) = layer else { bail!("read-back: the module layer is missing") };
    let mut out = Vec::new();
    // pull_blob checks the bytes against the layer digest.
    c.pull_blob(reference, layer, &mut out)
        .await
        .map_err(|e| explain(e, registry, &format!("reading blob {} back", layer.digest), auth))?;
    Ok(out)
}

/// Istio's rule: gunzip, untar, first entry whose basename is `plugin.wasm`.
pub fn extract_compat(gz: &[u8]) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    for entry in archive.entries().context("not a tar+gzip layer")? {
        let mut entry = entry.context("not a tar+gzip layer")?;
        let path = entry.path()?.into_owned();
        if path.file_name().is_some_and(|n| n == COMPAT_FILE) {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    bail!("no {COMPAT_FILE} in the archive")
}

/// The whole command: read and check the module, build, push, verify. With
/// `dry_run`, only build: the image is deterministic, so its digest is the one
/// a push of the same module gives.
pub fn publish(opts: &Options) -> Result<Published> {
    let wasm = std::fs::read(&opts.wasm).with_context(|| format!("cannot read {}", opts.wasm.display()))?;
    check_module(&wasm).with_context(|| format!("{} was not pushed", opts.wasm.display()))?;
    let reference = parse_reference(&opts.reference)?;
    let image = build_image(&wasm, opts.variant)?;
    let auth = match &opts.credentials {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    if !opts.dry_run {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(push_and_verify(&image, &wasm, &reference, &auth, opts.plain_http))?;
    }
    let base = format!("{}/{}", reference.registry(), reference.repository());
    let tag = reference.tag().unwrap_or("latest");
    Ok(Published {
        reference: format!("{base}:{tag}"),
        url: format!("oci://{base}:{tag}"),
        url_by_digest: format!("oci://{base}@{}", image.digest),
        digest: image.digest,
        module_sha256: sha256_hex(&wasm),
        module_bytes: wasm.len(),
        manifest: image.manifest,
    })
}

/// Sets `spec.url` and `spec.sha256` of every `WasmPlugin` in a multi-document
/// YAML text (also inside `kind: List`), and the `--module-url`/`--sha256` of a
/// Deployment running `control run`. A URL pinned by digest stays pinned
/// (`url_by_digest`), otherwise it becomes the tag URL. Returns the new text
/// and how many objects changed.
///
/// Each document is edited textually where it can be (a top-level WasmPlugin
/// in block style: its `url:`/`sha256:` lines), so comments and layout stay;
/// the edit is kept only if it parses to exactly what the structured rewrite
/// gives. A Deployment's flag lines are edited the same way. Other documents
/// (a `List`, flow style) are re-serialized, without their comments.
pub fn rewrite_wasmplugins(text: &str, published: &Published) -> Result<(String, usize)> {
    use serde::Deserialize;
    let mut out = String::new();
    let mut count = 0;
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let mut value = serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(doc))
            .with_context(|| format!("document {}: not valid YAML", i + 1))?;
        if value.is_null() {
            out.push_str(doc);
            continue;
        }
        let mut n = 0;
        visit_published(&mut value, published, &mut n);
        count += n;
        if n == 0 {
            out.push_str(doc);
            continue;
        }
        let edited = match value.get("kind").and_then(|k| k.as_str()) {
            Some("WasmPlugin") => edit_wasmplugin_text(doc, published),
            Some("Deployment") => image::set_deployment_module(doc, &published.url, published.wasmplugin_sha256()).ok(),
            _ => None,
        };
        let kept = edited.filter(|edited| {
            serde_yaml::Value::deserialize(serde_yaml::Deserializer::from_str(edited)).is_ok_and(|v| v == value)
        });
        match kept {
            Some(edited) => out.push_str(&edited),
            None => {
                if !out.is_empty() && !out.ends_with("---\n") {
                    out.push_str("---\n");
                }
                out.push_str(&serde_yaml::to_string(&value)?);
            }
        }
    }
    Ok((out, count))
}

/// The structured rewrite of one parsed document.
fn visit_published(v: &mut serde_yaml::Value, p: &Published, n: &mut usize) {
    match v.get("kind").and_then(|k| k.as_str()) {
        Some("List") => {
            if let Some(items) = v.get_mut("items").and_then(|i| i.as_sequence_mut()) {
                for item in items {
                    visit_published(item, p, n);
                }
            }
        }
        Some("Deployment") => control_args(v, p, n),
        Some("WasmPlugin") => {
            let Some(map) = v.as_mapping_mut() else { return };
            let spec = map.entry("spec".into()).or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
            let Some(spec) = spec.as_mapping_mut() else { return };
            spec.insert("url".into(), published_url(spec.get("url").and_then(|u| u.as_str()), p).into());
            spec.insert("sha256".into(), p.wasmplugin_sha256().into());
            *n += 1;
        }
        _ => {}
    }
}

/// The URL a WasmPlugin gets: pinned by digest if it was.
fn published_url(old: Option<&str>, p: &Published) -> String {
    let pinned = old.is_some_and(|u| u.contains("@sha256:"));
    if pinned { p.url_by_digest.clone() } else { p.url.clone() }
}

/// The documents of a YAML stream, each with its own `---` line (if any) and
/// comments, so that joining them gives the text back.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let is_separator = line.trim_end() == "---" || line.starts_with("--- ");
        if is_separator && at > start && !text[start..at].lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim_end() == "---") {
            docs.push(&text[start..at]);
            start = at;
        }
        at += line.len();
    }
    if start < text.len() {
        docs.push(&text[start..]);
    }
    docs
}

/// The textual edit of a top-level, block-style WasmPlugin document: its
/// `spec:` block's `url:` line replaced, and its `sha256:` line replaced or
/// added after `url:`. `None` where the layout is not that simple.
fn edit_wasmplugin_text(doc: &str, p: &Published) -> Option<String> {
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let spec = lines.iter().position(|l| l.trim_end() == "spec:")?;
    let end = lines[spec + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && !l.starts_with(' ') && !l.starts_with('#'))
        .map_or(lines.len(), |i| spec + 1 + i);
    let first = lines[spec + 1..end].iter().find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
    let indent = first.len() - first.trim_start().len();
    let key_at = |key: &str| {
        (spec + 1..end).find(|&i| {
            let l = lines[i];
            l.len() > indent && l[..indent].trim().is_empty() && !l[indent..].starts_with(' ') && l[indent..].starts_with(key)
        })
    };
    let url_line = key_at("url:")?;
    let old_url = lines[url_line][indent + 4..].trim().trim_matches(['\'', '"']);
    let new_url = published_url(Some(old_url), p);
    let pad = " ".repeat(indent);
    let sha_line = key_at("sha256:");
    let mut out = String::with_capacity(doc.len() + 160);
    for (i, l) in lines.iter().enumerate() {
        if i == url_line {
            out.push_str(&format!("{pad}url: {new_url}\n"));
            if sha_line.is_none() {
                out.push_str(&format!("{pad}sha256: {}\n", p.wasmplugin_sha256()));
            }
        } else if Some(i) == sha_line {
            out.push_str(&format!("{pad}sha256: {}\n", p.wasmplugin_sha256()));
        } else {
            out.push_str(l);
        }
    }
    Some(out)
}

/// `control run` writes the WasmPlugins from its own `--module-url`/`--sha256`:
/// a Deployment running it must follow the publish too, or it would put the
/// old digest back (and a fail-closed plugin that cannot fetch denies all).
fn control_args(deployment: &mut serde_yaml::Value, p: &Published, n: &mut usize) {
    let containers = deployment
        .get_mut("spec")
        .and_then(|s| s.get_mut("template"))
        .and_then(|t| t.get_mut("spec"))
        .and_then(|s| s.get_mut("containers"))
        .and_then(|c| c.as_sequence_mut());
    for container in containers.into_iter().flatten() {
        let Some(args) = container.get_mut("args").and_then(|a| a.as_sequence_mut()) else { continue };
        if args.first().and_then(|a| a.as_str()) != Some("run") {
            continue;
        }
        args.retain(|a| !a.as_str().is_some_and(|a| a.starts_with("--module-url=") || a.starts_with("--sha256=")));
        args.insert(1, format!("--module-url={}", p.url).into());
        args.insert(2, format!("--sha256={}", p.wasmplugin_sha256()).into());
        *n += 1;
    }
}

/// [`rewrite_wasmplugins`] on a file, in place (write then rename).
pub fn update_manifest(path: &Path, published: &Published) -> Result<usize> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (out, count) = rewrite_wasmplugins(&text, published).with_context(|| format!("{}", path.display()))?;
    if count == 0 {
        bail!("no WasmPlugin or control Deployment in {}; nothing updated (the image was pushed)", path.display());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".krites-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn module_checks() {
        assert!(check_module(MINIMAL).is_ok());
        assert!(check_module(b"hello world").is_err());
        assert!(check_module(b"\0asm\x0d\0\x01\0").is_err());
        assert!(check_module(b"\0asm").is_err());
    }

    #[test]
    fn oci_variant_layout() {
        let img = build_image(MINIMAL, Variant::Oci).unwrap();
        let m: OciImageManifest = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m.layers.len(), 2);
        assert_eq!(m.layers[1].media_type, WASM_CONTENT_MEDIA_TYPE);
        assert_eq!(m.layers[1].digest, digest_of(MINIMAL));
        assert_eq!(m.layers[0].media_type, WASM_CONFIG_MEDIA_TYPE);
        assert_eq!(m.config.media_type, WASM_CONFIG_MEDIA_TYPE);
        // config layer and manifest config are one blob, uploaded once
        assert_eq!(img.blobs.len(), 2);
        assert_eq!(img.digest, digest_of(&img.manifest));
        // reproducible
        assert_eq!(build_image(MINIMAL, Variant::Oci).unwrap().digest, img.digest);
    }

    #[test]
    fn compat_variant_layout() {
        let img = build_image(MINIMAL, Variant::Compat).unwrap();
        let m: OciImageManifest = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].media_type, OCI_LAYER_GZIP_MEDIA_TYPE);
        assert_eq!(m.config.media_type, OCI_CONFIG_MEDIA_TYPE);
        let layer = img.blobs.iter().find(|b| b.digest == m.layers[0].digest).unwrap();
        assert_eq!(extract_compat(&layer.data).unwrap(), MINIMAL);
        let cfg = img.blobs.iter().find(|b| b.digest == m.config.digest).unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&cfg.data).unwrap();
        let tar = compat_tar(MINIMAL).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], digest_of(&tar));
        assert_eq!(build_image(MINIMAL, Variant::Compat).unwrap().digest, img.digest);
    }

    #[test]
    fn references() {
        let r = parse_reference("oci://127.0.0.1:5000/krites/krites:0.1.0").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "krites/krites");
        assert_eq!(r.tag(), Some("0.1.0"));
        assert!(parse_reference("127.0.0.1:5000/krites/krites").is_err());
        assert!(parse_reference(&format!("127.0.0.1:5000/krites/krites@sha256:{}", "a".repeat(64))).is_err());
    }

    fn published() -> Published {
        Published {
            reference: "r/k:1".into(),
            digest: format!("sha256:{}", "b".repeat(64)),
            url: "oci://r/k:1".into(),
            url_by_digest: format!("oci://r/k@sha256:{}", "b".repeat(64)),
            module_sha256: String::new(),
            module_bytes: 0,
            manifest: Vec::new(),
        }
    }

    fn parse_all(text: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
    }

    #[test]
    fn keeps_comments_and_layout_of_block_wasmplugins() {
        let p = published();
        let text = "# The header.\n# Two lines.\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: krites # inline\nspec:\n  # the image\n  url: oci://old/k:0\n  sha256: 00\n  phase: AUTHZ\n  pluginConfig:\n    url: not-this-one\n---\n# second\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: b}\nspec:\n    url: \"oci://old/k@sha256:00\"\n    type: NETWORK\n";
        let (out, n) = rewrite_wasmplugins(text, &p).unwrap();
        assert_eq!(n, 2);
        let want = "# The header.\n# Two lines.\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: krites # inline\nspec:\n  # the image\n  url: oci://r/k:1\n  sha256: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n  phase: AUTHZ\n  pluginConfig:\n    url: not-this-one\n---\n# second\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: b}\nspec:\n    url: oci://r/k@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n    sha256: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n    type: NETWORK\n";
        assert_eq!(out, want);
    }

    #[test]
    fn the_shipped_manifests_keep_every_comment() {
        let p = published();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("istio-manifests");
        for file in ["wasmplugin.yaml", "control/deployment.yaml"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let (out, n) = rewrite_wasmplugins(&text, &p).unwrap();
            assert!(n > 0, "{file}");
            let comments = |t: &str| t.lines().filter(|l| l.trim_start().starts_with('#')).map(str::to_string).collect::<Vec<_>>();
            assert_eq!(comments(&out), comments(&text), "{file}");
            assert_eq!(out.lines().count(), text.lines().count(), "{file}: only lines replaced");
            // And the structured reading is the rewrite's.
            let mut want = parse_all(&text);
            let mut count = 0;
            want.iter_mut().for_each(|v| visit_published(v, &p, &mut count));
            assert_eq!(parse_all(&out), want, "{file}");
        }
    }

    #[test]
    fn rewrites_wasmplugins() {
        let p = Published {
            reference: "r/k:1".into(),
            digest: format!("sha256:{}", "b".repeat(64)),
            url: "oci://r/k:1".into(),
            url_by_digest: format!("oci://r/k@sha256:{}", "b".repeat(64)),
            module_sha256: String::new(),
            module_bytes: 0,
            manifest: Vec::new(),
        };
        let text = "# c\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: a}\nspec: {url: 'oci://old/k:0', phase: AUTHZ}\n---\nkind: List\nitems:\n- kind: WasmPlugin\n  spec: {url: 'oci://old/k@sha256:00', sha256: '00'}\n";
        let (out, n) = rewrite_wasmplugins(text, &p).unwrap();
        assert_eq!(n, 2);
        let docs: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(&out).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["kind"], "ConfigMap");
        assert_eq!(docs[1]["spec"]["url"], "oci://r/k:1");
        assert_eq!(docs[1]["spec"]["sha256"], "b".repeat(64).as_str());
        assert_eq!(docs[1]["spec"]["phase"], "AUTHZ");
        assert_eq!(docs[2]["items"][0]["spec"]["url"], p.url_by_digest.as_str());
    }
}
