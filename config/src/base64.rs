//! Standard base64 with padding, for the endpoint table and the compressed
//! config. Written here, not taken from the `base64` crate: its engine added
//! 4.6 KB to the Wasm module for one decode, and the module is over its size
//! budget.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            match k <= chunk.len() {
                true => out.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize])),
                false => out.push('='),
            }
        }
    }
    out
}

/// Decodes canonical base64: padding only at the end, and zero bits before it.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    if !text.len().is_multiple_of(4) {
        return Err(format!("a length of {} is not a multiple of 4", text.len()));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.chunks_exact(4);
    let last = quads.len().saturating_sub(1);
    for (i, quad) in quads.enumerate() {
        let pad = match (quad[2], quad[3]) {
            (b'=', b'=') if i == last => 2,
            (_, b'=') if i == last => 1,
            _ => 0,
        };
        let mut n = 0u32;
        for (j, &c) in quad.iter().enumerate() {
            let v = match sextet(c) {
                Some(v) => v,
                None if j >= 4 - pad => 0,
                None => {
                    return Err(format!(
                        "{:?} at {} is not a base64 character",
                        char::from(c),
                        i * 4 + j
                    ))
                }
            };
            n = n << 6 | v;
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
        // Bits that padding drops must be zero (canonical encoding).
        if (pad == 1 && bytes[3] != 0) || (pad == 2 && bytes[2] != 0) {
            return Err(format!("non-zero bits before the padding at {}", i * 4));
        }
    }
    Ok(out)
}
