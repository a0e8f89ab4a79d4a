//! Compact storage of audit entry bodies in the SQLite audit log.
//!
//! An AuditEvent body is about 1.7 kB, most of it the same codings and
//! systems in every entry. Under audited load the log is written at the rate
//! of requests, and its volume (written twice: the write-ahead log, then the
//! database) delayed the audit journal's syncs on the same disk: storing
//! bodies uncompressed, audited reads reached 12.9k/s with a p99 of 29 ms;
//! storing nothing of them, 16.3k/s and 5.6 ms. So bodies are stored as LZ4
//! blocks against a fixed dictionary of typical entries.
//!
//! A stored body is either the JSON text itself (it starts with `{`: entries
//! written before this encoding, and the PostgreSQL backend) or the byte
//! [`LZ4_DICT_V1`] followed by an LZ4 block (size-prepended) compressed with
//! [`DICTIONARY_V1`]. The dictionary is part of the stored format: it must
//! never change; a better one gets a new leading byte. The hash chain is
//! over the JSON text, so the encoding does not affect `audit verify`.

/// Leading byte of a body compressed with [`DICTIONARY_V1`].
const LZ4_DICT_V1: u8 = 1;

/// Typical entries (a batch, an ingest, a search and a read) of synthetic
/// test data, the most frequent kind last (nearest to what is compressed).
const DICTIONARY_V1: &[u8] = include_bytes!("audit_dictionary_v1.txt");

/// The stored form of a body.
pub(crate) fn pack(body: &str) -> Vec<u8> {
    let compressed = lz4_flex::block::compress_prepend_size_with_dict(body.as_bytes(), DICTIONARY_V1);
    let mut out = Vec::with_capacity(compressed.len() + 1);
    out.push(LZ4_DICT_V1);
    out.extend_from_slice(&compressed);
    out
}

/// The largest body a compressed one may claim to be: a damaged size must
/// not become a huge allocation.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The JSON text of a stored body.
pub(crate) fn unpack(stored: &[u8]) -> Result<String, String> {
    let bytes = match stored.first() {
        Some(&LZ4_DICT_V1) => {
            let size = stored.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let size = size.filter(|&n| n <= MAX_BODY).ok_or("a compressed audit body has a damaged size")?;
            let out = lz4_flex::block::decompress_with_dict(&stored[5..], size, DICTIONARY_V1)
                .map_err(|e| format!("a compressed audit body does not decompress: {e}"))?;
            if out.len() != size {
                return Err("a compressed audit body is shorter than it says".into());
            }
            out
        }
        Some(b'{') => stored.to_vec(),
        _ => return Err("an audit body is neither JSON nor in a known compressed form".into()),
    };
    String::from_utf8(bytes).map_err(|_| "an audit body is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_typical_ones_shrink() {
        let read = std::str::from_utf8(DICTIONARY_V1).unwrap().lines().last().unwrap();
        // Another read: other ids and times, same shape.
        let other = read.replace("01a23041", "0b1c2d3e").replace("06:1", "07:2");
        for body in [read, other.as_str(), "{}", r#"{"resourceType":"AuditEvent","text":"åäö \u0000"}"#] {
            let packed = pack(body);
            assert_eq!(unpack(&packed).unwrap(), body);
        }
        let packed = pack(&other);
        assert!(packed.len() * 4 < other.len(), "{} bytes packed from {}", packed.len(), other.len());
        assert_eq!(unpack(other.as_bytes()).unwrap(), other, "plain JSON text is read as it is");
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let mut packed = pack(r#"{"resourceType":"AuditEvent"}"#);
        packed.truncate(packed.len() - 3);
        assert!(unpack(&packed).is_err());
        assert!(unpack(&[LZ4_DICT_V1, 0xff, 0xff, 0xff, 0x7f, 0]).is_err());
        assert!(unpack(b"").is_err());
        assert!(unpack(&[9, 1, 2]).is_err());
    }
}
