//! Reading Kubernetes manifests: YAML or JSON files, folders of them,
//! multi-document YAML, and `kind: List` as `kubectl get -o yaml` prints.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One object and where it came from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub source: String,
    pub value: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: document {doc}: {problem}")]
    Parse { path: String, doc: usize, problem: String },
}

/// Loads every object from `paths` (files, folders searched recursively for
/// `.yaml`/`.yml`/`.json`, or `-` for standard input), in a stable order.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Manifest>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| LoadError::Io { path: "-".into(), source })?;
            parse_text("-", &text, &mut out)?;
        } else if path.is_dir() {
            for file in files_in(path)? {
                load_file(&file, &mut out)?;
            }
        } else {
            load_file(path, &mut out)?;
        }
    }
    Ok(out)
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io { path: dir.display().to_string(), source };
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir).map_err(io)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            files.extend(files_in(&entry)?);
        } else if matches!(entry.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            files.push(entry);
        }
    }
    Ok(files)
}

fn load_file(path: &Path, out: &mut Vec<Manifest>) -> Result<(), LoadError> {
    let text = fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.display().to_string(), source })?;
    parse_text(&path.display().to_string(), &text, out)
}

/// Parses YAML (a superset of JSON) documents, expanding `List`s.
pub fn parse_text(source: &str, text: &str, out: &mut Vec<Manifest>) -> Result<(), LoadError> {
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de)
            .map_err(|e| LoadError::Parse { path: source.to_string(), doc: doc + 1, problem: e.to_string() })?;
        push(format!("{source}#{}", doc + 1), value, out);
    }
    Ok(())
}

fn push(source: String, value: Value, out: &mut Vec<Manifest>) {
    match value {
        Value::Null => {}
        Value::Object(ref map) if is_list(map) => {
            if let Some(Value::Array(items)) = map.get("items") {
                for (i, item) in items.iter().enumerate() {
                    push(format!("{source}[{i}]"), item.clone(), out);
                }
            }
        }
        value => out.push(Manifest { source, value }),
    }
}

/// `kind: List`, or a typed list such as `PodList`.
fn is_list(map: &serde_json::Map<String, Value>) -> bool {
    map.get("kind").and_then(Value::as_str).is_some_and(|k| k == "List" || k.ends_with("List"))
        && map.get("items").is_some_and(Value::is_array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_lists() {
        let text = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\nkind: List\napiVersion: v1\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p1}}\n- {apiVersion: v1, kind: Pod, metadata: {name: p2}}\n";
        let mut out = Vec::new();
        parse_text("t.yaml", text, &mut out).unwrap();
        let names: Vec<&str> = out.iter().filter_map(|m| m.value.pointer("/metadata/name").and_then(Value::as_str)).collect();
        assert_eq!(names, ["a", "p1", "p2"]);
        assert_eq!(out[1].source, "t.yaml#3[0]");
        let mut json = Vec::new();
        parse_text("t.json", r#"{"kind": "PodList", "items": [{"kind": "Pod"}]}"#, &mut json).unwrap();
        assert_eq!(json.len(), 1);
        let err = parse_text("bad.yaml", "a: [", &mut Vec::new()).unwrap_err();
        assert!(err.to_string().starts_with("bad.yaml: document 1:"), "{err}");
    }
}
