//! The compressed form of a config, for clusters whose plain config would not
//! fit a WasmPlugin (Istio delivers `pluginConfig` inside the listener
//! config, and Kubernetes stores an object up to ~1.5 MiB): at Calico's
//! production shape the plain document is ~3.6 MB and the compressed one
//! ~0.8 MB.
//!
//! As delivered it is still one JSON document, `{"version": 1,
//! "compressed": "<base64>"}`, so Istio's delivery is unchanged. The base64
//! text is zlib data (RFC 1950: deflate with an Adler-32 check, so damage is
//! found, not read as policy) of this payload:
//! ```text
//! format (1 byte, = 1)
//! JSON length (4 bytes, big-endian), then the config's JSON document
//! the rest: the endpoint table's bytes (see `crate::endpoint_table`), or nothing
//! ```
//! The table travels as bytes beside the JSON rather than as base64 inside
//! it: base64 hides the byte structure from deflate, and costs a third more
//! before compression. `control` writes this form when the plain JSON reaches
//! [`COMPRESS_FROM_BYTES`]; the filter and `control check` read both forms alike.

use crate::PluginConfig;

/// `control` compresses a config whose plain JSON reaches this many bytes;
/// below, the config stays readable as it is (`kubectl get wasmplugin -o yaml`).
pub const COMPRESS_FROM_BYTES: usize = 256 * 1024;

/// A compressed config that inflates past this is refused, unread: a broken
/// or hostile one cannot take the VM's memory. (Calico's production shape
/// inflates to ~3 MB.)
pub const MAX_INFLATED_BYTES: usize = 64 * 1024 * 1024;

const FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressedError {
    #[error("not base64: {0}")]
    Base64(String),
    #[error("not zlib data, or damaged: {0}")]
    Inflate(&'static str),
    #[error("inflates to more than {MAX_INFLATED_BYTES} bytes")]
    TooLarge,
    #[error("format {0} is not the compressed format this build reads ({FORMAT})")]
    Format(u8),
    #[error("the payload is cut short: {0}")]
    Truncated(&'static str),
}

/// A payload split into its JSON document and the table's bytes (empty: none).
pub(crate) struct Payload {
    bytes: Vec<u8>,
    json: std::ops::Range<usize>,
}

impl Payload {
    pub(crate) fn json(&self) -> &[u8] {
        self.bytes.get(self.json.clone()).unwrap_or(&[])
    }

    pub(crate) fn table(&self) -> &[u8] {
        self.bytes.get(self.json.end..).unwrap_or(&[])
    }

    /// The JSON document alone, the rest of the payload let go.
    pub(crate) fn into_json(self) -> Vec<u8> {
        let Payload { mut bytes, json } = self;
        bytes.truncate(json.end);
        bytes.drain(..json.start.min(bytes.len()));
        bytes.shrink_to_fit();
        bytes
    }
}

/// The payload of a `compressed` field's text.
pub(crate) fn unpack(text: &[u8]) -> Result<Payload, CompressedError> {
    use miniz_oxide::inflate::TINFLStatus;
    let zlib = crate::base64::decode(text).map_err(CompressedError::Base64)?;
    let bytes = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&zlib, MAX_INFLATED_BYTES)
        .map_err(|e| match e.status {
            TINFLStatus::HasMoreOutput => CompressedError::TooLarge,
            TINFLStatus::FailedCannotMakeProgress => {
                CompressedError::Inflate("the data ends early")
            }
            TINFLStatus::Adler32Mismatch => CompressedError::Inflate("the checksum does not match"),
            _ => CompressedError::Inflate("invalid deflate stream"),
        })?;
    let (&format, rest) = bytes
        .split_first()
        .ok_or(CompressedError::Truncated("no format byte"))?;
    if format != FORMAT {
        return Err(CompressedError::Format(format));
    }
    let length = rest
        .get(..4)
        .ok_or(CompressedError::Truncated("no JSON length"))?;
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    let end = 5usize
        .checked_add(length)
        .filter(|&end| end <= bytes.len())
        .ok_or(CompressedError::Truncated(
            "the JSON is shorter than its length",
        ))?;
    Ok(Payload {
        bytes,
        json: 5..end,
    })
}

/// The `compressed` text of `config`: its JSON without the endpoint table,
/// then the table's bytes. Deterministic for a config.
pub fn pack(config: &PluginConfig) -> Result<String, serde_json::Error> {
    let table = config
        .endpoint_table
        .as_ref()
        .map(crate::EndpointTable::to_bytes)
        .unwrap_or_default();
    let json = serde_json::to_vec(&PluginConfig {
        endpoint_table: None,
        ..config.clone()
    })?;
    let mut payload = Vec::with_capacity(5 + json.len() + table.len());
    payload.push(FORMAT);
    // A config is never near 4 GiB (MAX_INFLATED_BYTES); saturate rather than wrap.
    payload.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    payload.extend_from_slice(&json);
    payload.extend_from_slice(&table);
    // Level 9: control compresses once per change; every sidecar reads the result.
    Ok(crate::base64::encode(
        &miniz_oxide::deflate::compress_to_vec_zlib(&payload, 9),
    ))
}

impl PluginConfig {
    /// The compressed document: `{"version": .., "compressed": ..}`.
    pub fn to_compressed_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        Ok(serde_json::json!({"version": self.version, "compressed": pack(self)?}))
    }

    /// The document as `control` delivers it: plain JSON, or the compressed
    /// form when the plain one reaches [`COMPRESS_FROM_BYTES`].
    pub fn to_delivered_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        let plain = serde_json::to_vec(self)?;
        match plain.len() >= COMPRESS_FROM_BYTES {
            true => self.to_compressed_json(),
            false => serde_json::from_slice(&plain),
        }
    }
}

#[cfg(test)]
mod tests;
