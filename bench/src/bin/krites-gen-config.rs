//! Prints a generated plugin config as compact JSON.
//!
//! ```text
//! krites-gen-config --policies N --rules-per-policy R --endpoints E [--namespaces K] [--seed S]
//! krites-gen-config --preset tutorial|rules-10|rules-1000|rules-10000|calico [overrides...]
//! ```

use std::io::Write;
use std::process::ExitCode;

use krites_bench::{generate, Scale};

const USAGE: &str = "usage: krites-gen-config [--preset tutorial|rules-10|rules-1000|rules-10000|calico] \
[--policies N] [--rules-per-policy R] [--endpoints E] [--namespaces K] [--seed S]

Prints a deterministic Krites plugin config (JSON) to stdout. A preset sets every
field; the other flags override it. Without a preset: --policies, --rules-per-policy
and --endpoints are required (namespaces default to 20, the seed to the presets').";

fn parse_args(args: &[String]) -> Result<Scale, String> {
    let mut preset: Option<Scale> = None;
    let (mut policies, mut rules, mut endpoints, mut namespaces, mut seed) = (None, None, None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        if matches!(name, "-h" | "--help") {
            return Err(String::new());
        }
        if !matches!(name, "--preset" | "--policies" | "--rules-per-policy" | "--endpoints" | "--namespaces" | "--seed") {
            return Err(format!("unknown flag {name:?}"));
        }
        let value = match inline.or_else(|| it.next().cloned()) {
            Some(v) => v,
            None => return Err(format!("{name} needs a value")),
        };
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{name} {v:?}: {e}"));
        match name {
            "--preset" => preset = Some(Scale::preset(&value).ok_or_else(|| format!("unknown preset {value:?}"))?),
            "--policies" => policies = Some(number(&value)? as usize),
            "--rules-per-policy" => rules = Some(number(&value)? as usize),
            "--endpoints" => endpoints = Some(number(&value)? as usize),
            "--namespaces" => namespaces = Some(number(&value)? as usize),
            "--seed" => seed = Some(number(&value)?),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    let mut scale = match preset {
        Some(s) => s,
        None => match (policies, rules, endpoints) {
            (Some(_), Some(_), Some(_)) => Scale::rules(1),
            _ => return Err("--policies, --rules-per-policy and --endpoints are required without --preset".into()),
        },
    };
    scale.policies = policies.unwrap_or(scale.policies);
    scale.rules_per_policy = rules.unwrap_or(scale.rules_per_policy);
    scale.endpoints = endpoints.unwrap_or(scale.endpoints);
    scale.namespaces = namespaces.unwrap_or(scale.namespaces);
    scale.seed = seed.unwrap_or(scale.seed);
    if scale.namespaces == 0 || scale.endpoints == 0 {
        return Err("--namespaces and --endpoints must be at least 1".into());
    }
    Ok(scale)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale = match parse_args(&args) {
        Ok(s) => s,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("krites-gen-config: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = generate(&scale);
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &config).map_err(|e| e.to_string()).and_then(|()| {
        out.write_all(b"\n").and_then(|()| out.flush()).map_err(|e| e.to_string())
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krites-gen-config: writing the config: {e}");
            ExitCode::FAILURE
        }
    }
}
