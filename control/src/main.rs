//! `control`: the Krites CLI. `compile` and `check` work offline on manifests
//! (`kubectl get -o yaml` dumps); `run` keeps a cluster's WasmPlugins current.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use krites_control::check::{self, Source, Target};
use krites_control::compile::{self, Options, PlanOptions, MAX_CONFIG_BYTES};
use krites_control::inventory::Inventory;
use krites_control::{manifests, publish, wasmplugin};
use krites_policy::Verdict;

#[derive(Parser)]
#[command(name = "control", version, about = "Krites control plane: compile policies for the Envoy filter, explain decisions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// The filter's JSON config.
    PluginConfig,
    /// Istio WasmPlugin manifests (YAML) carrying it.
    Wasmplugin,
}

#[derive(Subcommand)]
enum Command {
    /// Compile policies and cluster state into the filter's config.
    Compile {
        /// Manifest files or folders (YAML/JSON, multi-document, `kind: List`); `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "plugin-config")]
        format: Format,
        /// Only what workloads of this namespace need (a per-namespace WasmPlugin).
        #[arg(long)]
        namespace: Option<String>,
        /// Module URL for `--format wasmplugin`.
        #[arg(long, default_value = "oci://ghcr.io/krites-project/krites:0.1.0")]
        module_url: String,
        /// WasmPlugin `sha256`: the image manifest digest for oci:// URLs.
        #[arg(long)]
        sha256: Option<String>,
        /// Leave invalid objects out (with a warning) instead of failing.
        #[arg(long)]
        skip_invalid: bool,
        /// Accept `http` matches in Calico egress rules and enforce them on the
        /// client's sidecar (a Krites extension: Calico accepts them on ingress only).
        #[arg(long)]
        allow_egress_http: bool,
    },
    /// Decide one request with the filter's engine. With staged policies
    /// in the inputs, each side also prints its `staged` verdict (the policies
    /// with the staged changes applied) and, where it differs, the staged
    /// policy it is counted against; the first line and the exit code stay
    /// the enforced verdict.
    Check {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Destination pod, NAMESPACE/POD.
        #[arg(long, conflicts_with_all = ["to_ip", "to_service"])]
        to: Option<String>,
        /// Destination address (a pod's, a ClusterIP, or one outside the
        /// cluster); needs --from: the egress decision of the client's sidecar.
        #[arg(long, conflicts_with = "to_service")]
        to_ip: Option<IpAddr>,
        /// Destination Service, NAMESPACE/NAME, as Istio routes to it (its
        /// outbound cluster); needs --from. The ingress side is checked at each
        /// endpoint pod.
        #[arg(long)]
        to_service: Option<String>,
        /// Source pod, NAMESPACE/POD (mTLS as its service account unless --plaintext).
        #[arg(long, conflicts_with = "from_ip")]
        from: Option<String>,
        /// Source address, e.g. an attacker's pod IP.
        #[arg(long)]
        from_ip: Option<IpAddr>,
        /// SPIFFE id of the client certificate (a stolen one, say).
        #[arg(long, conflicts_with = "plaintext")]
        principal: Option<String>,
        /// No client certificate (Istio PERMISSIVE plaintext).
        #[arg(long)]
        plaintext: bool,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// Destination port (default: the pod's first TCP container port, the
        /// Service's first port, else 80).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// As for `compile`: accept `http` in Calico egress rules.
        #[arg(long)]
        allow_egress_http: bool,
    },
    /// In-cluster controller: watch policies and the cluster, keep the WasmPlugins current.
    Run(krites_control::controller::RunArgs),
    /// Push the module to an OCI registry as an image Istio's WasmPlugin can load.
    ///
    /// Pushes one OCI image manifest (never an index), reads it back by tag and
    /// checks its digest, layer media types and the module bytes. Prints
    /// `pushed REF`, `digest: sha256:...` (the manifest digest), `sha256: HEX`
    /// (what goes in WasmPlugin.sha256 for oci:// URLs; not the .wasm file's
    /// hash) and `url: oci://...`. The same module always gives the same digest.
    Publish {
        /// The module, e.g. wasm-out/krites.wasm (must be a core wasm module).
        wasm: PathBuf,
        /// Where to push: REGISTRY/REPO:TAG (an oci:// prefix is allowed).
        reference: String,
        /// Talk plain HTTP to the registry (local or insecure registries).
        #[arg(long)]
        plain_http: bool,
        /// Registry user (HTTP basic auth; token realms are followed); needs --password-stdin.
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password or token from stdin (one line).
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Image layout: `oci` = two layers (wasm runtime config + raw module,
        /// Istio's "oci" variant); `compat` = one tar+gzip layer holding
        /// plugin.wasm (for registries or tools that refuse custom media types).
        #[arg(long, value_enum, default_value = "oci")]
        variant: publish::Variant,
        /// After a verified push, set spec.url and spec.sha256 of every WasmPlugin,
        /// and the --module-url/--sha256 of a Deployment running `control run`, in
        /// this YAML file (multi-document, `kind: List` too), in place; repeatable.
        /// A URL pinned by @sha256: stays pinned. The lines are edited in place, so
        /// comments and layout stay (a `kind: List` or flow-style object is
        /// re-serialized instead, without its comments).
        #[arg(long, value_name = "FILE")]
        update_manifest: Vec<PathBuf>,
        /// Build the image and print its digest without pushing (the build is
        /// deterministic: the same module always gives the same digest).
        #[arg(long)]
        dry_run: bool,
        /// After a verified push, set the `- --module-url=` and `- --sha256=` lines of
        /// this control Deployment, textually (comments and layout stay); repeatable.
        #[arg(long, value_name = "FILE")]
        update_deployment: Vec<PathBuf>,
    },
    /// Push the control binary as a distroless-style OCI image (static x86-64 ELF,
    /// one layer, user 65532, entrypoint /control, Cmd run).
    ///
    /// Reads it back by tag (manifest digest, config user and entrypoint, the
    /// binary's bytes). Prints `pushed REF`, `digest: sha256:...`, `image:
    /// REPO@sha256:...`. The same binary always gives the same digest.
    PublishImage {
        /// The static control binary (`make control-image` builds it for x86_64-unknown-linux-musl).
        binary: PathBuf,
        /// Where to push: REGISTRY/REPO:TAG.
        reference: String,
        #[arg(long)]
        plain_http: bool,
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Build and print the digest without pushing.
        #[arg(long)]
        dry_run: bool,
        /// Accept a dynamically linked binary (tests only: the image has no libc).
        #[arg(long)]
        allow_dynamic: bool,
        /// After a verified push, set the `image:` line of this Deployment to
        /// REPO@sha256:..., textually (comments and layout stay); repeatable.
        #[arg(long, value_name = "FILE")]
        update_deployment: Vec<PathBuf>,
    },
}

/// `--username` + `--password-stdin`: one line of stdin.
fn read_credentials(username: Option<String>, password_stdin: bool) -> Result<Option<(String, String)>> {
    match username {
        Some(user) if password_stdin => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            if password.is_empty() {
                bail!("--password-stdin: stdin gave an empty password");
            }
            Ok(Some((user, password)))
        }
        _ => Ok(None),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(files: &[PathBuf], skip_invalid: bool, allow_egress_http: bool) -> Result<Inventory> {
    let manifests = manifests::load(files)?;
    let inv = Inventory::from_manifests_with(&manifests, allow_egress_http);
    for note in &inv.notes {
        eprintln!("note: {note}");
    }
    for e in &inv.errors {
        eprintln!("{}: {e}", if skip_invalid { "warning" } else { "error" });
    }
    if !inv.errors.is_empty() && !skip_invalid {
        bail!("{} problem(s) in the inputs; fix them or pass --skip-invalid to leave those objects out", inv.errors.len());
    }
    Ok(inv)
}

fn report(config: &krites_policy::PluginConfig, emitted: usize, known: usize, bytes: usize, revision: &str) {
    let (policies, tiers, services) = (config.policies.len(), config.tiers.len(), config.services.len());
    let staged = match config.staged_policies.len() {
        0 => String::new(),
        n => format!(" ({n} staged)"),
    };
    eprintln!("compiled {policies} policies{staged}, {tiers} tiers, {services} services; {emitted} of {known} pod addresses referenced; {bytes} bytes; revision {revision}");
}

fn split(what: &str, text: &str) -> Result<(String, String)> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_string(), name.to_string())),
        _ => bail!("{what} must be NAMESPACE/POD, got {text:?}"),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Compile { files, format, namespace, module_url, sha256, skip_invalid, allow_egress_http } => {
            let inv = load(&files, skip_invalid, allow_egress_http)?;
            for warning in compile::selector_warnings(&inv) {
                eprintln!("warning: {warning}");
            }
            let module = wasmplugin::Module { url: module_url, sha256 };
            match format {
                Format::PluginConfig => {
                    let whole = compile::compile(&inv, &Options { namespace: namespace.clone(), ..Options::default() })?;
                    report(&whole.config, whole.addresses_emitted, whole.addresses_known, whole.bytes, &whole.revision);
                    if whole.bytes > MAX_CONFIG_BYTES {
                        bail!(
                            "the config is {} bytes, over the {MAX_CONFIG_BYTES} a WasmPlugin can carry; compile per namespace with --namespace NS, or use --format wasmplugin, which shards per namespace",
                            whole.bytes
                        );
                    }
                    println!("{}", serde_json::to_string_pretty(&whole.delivered)?);
                }
                Format::Wasmplugin => {
                    let opts = PlanOptions {
                        namespace: namespace.as_deref(),
                        mesh_namespace: wasmplugin::MESH_NAMESPACE,
                        per_namespace: false,
                        limit: MAX_CONFIG_BYTES,
                    };
                    let plan = compile::plan(&inv, &opts, &module)?;
                    if plan.sharded {
                        eprintln!(
                            "note: one config would exceed {MAX_CONFIG_BYTES} bytes; sharded into one WasmPlugin pair per namespace ({} namespaces, largest {} bytes), each scoped to its namespace",
                            plan.revisions.len(),
                            plan.max_bytes
                        );
                    } else {
                        eprintln!("compiled {} bytes of config; revision {}", plan.max_bytes, plan.revisions.values().next().map(String::as_str).unwrap_or(""));
                    }
                    for o in plan.objects {
                        print!("---\n{}", serde_yaml::to_string(&o)?);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { files, to, to_ip, to_service, from, from_ip, principal, plaintext, method, path, port, trust_domain, allow_egress_http } => {
            let inv = load(&files, false, allow_egress_http)?;
            let from = match (from, from_ip) {
                (Some(f), _) => {
                    let (ns, name) = split("--from", &f)?;
                    Source::Pod(ns, name)
                }
                (None, Some(ip)) => Source::Address(ip),
                (None, None) => bail!("give --from NAMESPACE/POD or --from-ip IP"),
            };
            let to = match (to, to_ip, to_service) {
                (Some(t), _, _) => {
                    let (ns, name) = split("--to", &t)?;
                    Target::Pod(ns, name)
                }
                (None, Some(ip), _) => Target::Address(ip),
                (None, None, Some(s)) => {
                    let (ns, name) = split("--to-service", &s).map_err(|_| anyhow::anyhow!("--to-service must be NAMESPACE/NAME, got {s:?}"))?;
                    Target::Service(ns, name)
                }
                (None, None, None) => bail!("give --to NAMESPACE/POD, --to-ip IP or --to-service NAMESPACE/NAME"),
            };
            let req = check::Request { to, from, principal, plaintext, method, path, port, trust_domain };
            let outcome = check::check(&inv, &req).context("check")?;
            print!("{}", outcome.report);
            Ok(match outcome.verdict {
                Verdict::Allow => ExitCode::SUCCESS,
                Verdict::Deny => ExitCode::from(1),
            })
        }
        Command::Run(args) => {
            krites_control::controller::run_blocking(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { wasm, reference, plain_http, username, password_stdin, variant, update_manifest, dry_run, update_deployment } => {
            let credentials = read_credentials(username, password_stdin)?;
            let opts = publish::Options { wasm, reference, plain_http, credentials, variant, dry_run };
            let done = publish::publish(&opts)?;
            println!("{} {}", if dry_run { "would push" } else { "pushed" }, done.reference);
            println!("digest: {}", done.digest);
            println!("sha256: {}", done.wasmplugin_sha256());
            println!("url: {}", done.url);
            if !dry_run {
                eprintln!(
                    "verified: read back by tag, manifest {} ({} variant), module {} bytes, file sha256 {}",
                    done.digest,
                    opts.variant.name(),
                    done.module_bytes,
                    done.module_sha256
                );
            }
            for file in update_manifest {
                let n = publish::update_manifest(&file, &done)?;
                eprintln!("updated {n} object(s) in {}", file.display());
            }
            for file in update_deployment {
                publish::image::edit_file(&file, |t| publish::image::set_deployment_module(t, &done.url, done.wasmplugin_sha256()))?;
                eprintln!("updated --module-url and --sha256 in {}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::PublishImage { binary, reference, plain_http, username, password_stdin, dry_run, allow_dynamic, update_deployment } => {
            let credentials = read_credentials(username, password_stdin)?;
            let opts = publish::image::Options { binary, reference, plain_http, credentials, dry_run, allow_dynamic };
            let done = publish::image::publish_image(&opts)?;
            println!("{} {}", if dry_run { "would push" } else { "pushed" }, done.reference);
            println!("digest: {}", done.digest);
            println!("image: {}", done.by_digest);
            println!("size: {}", done.size);
            if !dry_run {
                eprintln!("verified: read back by tag, manifest {}, /control sha256 {}", done.digest, done.binary_sha256);
            }
            for file in update_deployment {
                publish::image::edit_file(&file, |t| publish::image::set_deployment_image(t, &done.by_digest))?;
                eprintln!("updated image: in {}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
