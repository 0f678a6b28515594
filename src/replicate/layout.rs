//! The names and bytes of the remote copy: the one place that knows them
//! (FORMAT.md §7 describes the same layout for people).
//!
//! ```text
//! <prefix>/HEAD                                         the pointer (JSON)
//! <prefix>/logs/<log id, 32 hex>/<seq, 20 digits>-<epoch, 20 digits>.rec
//! ```
//!
//! A record object holds the record's 4096-byte header page followed by its
//! `payload_len` payload bytes, exactly as in the segment (without the zero
//! padding after the payload), so a remote record is checked by the same
//! decoder as a local one.

use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::wal::format::PAGE;
use crate::wal::RecordHeader;

/// Version of the remote layout and of the pointer document.
pub const REMOTE_FORMAT_VERSION: u32 = 1;

/// Name of the pointer object under the prefix.
pub const POINTER_NAME: &str = "HEAD";

/// Folder of the record objects of all logs under the prefix.
pub const LOGS_DIR: &str = "logs";

/// Suffix of record objects.
pub const RECORD_SUFFIX: &str = ".rec";

/// Bytes of the record object of a record with `payload_len` payload bytes.
pub fn object_bytes(payload_len: u64) -> u64 {
    PAGE + payload_len
}

/// `<prefix>/HEAD`.
pub fn pointer_path(prefix: &Path) -> Path {
    prefix.clone().join(POINTER_NAME)
}

/// `<prefix>/logs/<log id>`: where the records of one log live.
pub fn log_path(prefix: &Path, log_id: u128) -> Path {
    prefix.clone().join(LOGS_DIR).join(format!("{log_id:032x}"))
}

/// Name of a record object inside its log's folder.
pub fn record_name(sequence: u64, epoch: u64) -> String {
    format!("{sequence:020}-{epoch:020}{RECORD_SUFFIX}")
}

/// `<prefix>/logs/<log id>/<seq>-<epoch>.rec`.
pub fn record_path(prefix: &Path, log_id: u128, sequence: u64, epoch: u64) -> Path {
    log_path(prefix, log_id).join(record_name(sequence, epoch))
}

/// Parses a record object's name into (sequence, epoch).
pub fn parse_record_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(RECORD_SUFFIX)?;
    let (seq, epoch) = stem.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(seq) || !digits(epoch) {
        return None;
    }
    Some((seq.parse().ok()?, epoch.parse().ok()?))
}

/// The pointer: names the newest record object that is complete. It is
/// written only after that object's upload finished, so a reader that finds
/// the pointer finds the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// [`REMOTE_FORMAT_VERSION`].
    pub format: u32,
    /// The log's id, 32 lowercase hex digits.
    pub log_id: String,
    /// Sequence of the record.
    pub sequence: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Its global step.
    pub step: u64,
    /// Its snapshot time, ns since the Unix epoch.
    pub unix_ns: u64,
    /// Its payload length.
    pub payload_len: u64,
    /// Its payload checksum, 16 lowercase hex digits.
    pub payload_checksum: String,
    /// The record object's path relative to the prefix.
    pub object: String,
}

impl Pointer {
    /// The pointer naming `header`'s record.
    pub fn for_record(header: &RecordHeader) -> Pointer {
        Pointer {
            format: REMOTE_FORMAT_VERSION,
            log_id: format!("{:032x}", header.log_id),
            sequence: header.sequence,
            epoch: header.epoch,
            step: header.step,
            unix_ns: header.unix_ns,
            payload_len: header.payload_len,
            payload_checksum: format!("{:016x}", header.payload_checksum),
            object: format!(
                "{LOGS_DIR}/{:032x}/{}",
                header.log_id,
                record_name(header.sequence, header.epoch)
            ),
        }
    }

    /// The document's bytes (one line of JSON).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a pointer always serializes");
        v.push(b'\n');
        v
    }

    /// Parses and checks a pointer document.
    pub fn decode(bytes: &[u8]) -> Result<Pointer, String> {
        let p: Pointer =
            serde_json::from_slice(bytes).map_err(|e| format!("not a pointer document: {e}"))?;
        if p.format != REMOTE_FORMAT_VERSION {
            return Err(format!(
                "pointer format {} (this build reads {REMOTE_FORMAT_VERSION})",
                p.format
            ));
        }
        let id = p.log_id()?;
        if p.payload_checksum.len() != 16 || u64::from_str_radix(&p.payload_checksum, 16).is_err() {
            return Err("pointer payload_checksum is not 16 hex digits".into());
        }
        let expected = format!("{LOGS_DIR}/{id:032x}/{}", record_name(p.sequence, p.epoch));
        if p.object != expected {
            return Err(format!(
                "pointer names object {:?}, its fields say {expected:?}",
                p.object
            ));
        }
        Ok(p)
    }

    /// The log id as a number.
    pub fn log_id(&self) -> Result<u128, String> {
        if self.log_id.len() != 32 {
            return Err("pointer log_id is not 32 hex digits".into());
        }
        u128::from_str_radix(&self.log_id, 16)
            .map_err(|_| "pointer log_id is not 32 hex digits".into())
    }

    /// The record object's full path under `prefix`.
    pub fn object_path(&self, prefix: &Path) -> Path {
        let mut p = prefix.clone();
        for part in self.object.split('/') {
            p = p.join(part);
        }
        p
    }

    /// The payload checksum as a number.
    pub fn checksum(&self) -> u64 {
        u64::from_str_radix(&self.payload_checksum, 16).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RecordHeader {
        RecordHeader {
            log_id: 0xabcdef,
            segment_no: 3,
            sequence: 42,
            epoch: 7,
            step: 700,
            offset: 4096,
            payload_len: 1000,
            payload_checksum: 0x1234,
            unix_ns: 5,
            loss: 0.5,
            schema_version: 1,
            validation: None,
        }
    }

    #[test]
    fn record_names_sort_by_sequence_and_parse_back() {
        assert_eq!(
            record_name(42, 7),
            "00000000000000000042-00000000000000000007.rec"
        );
        assert_eq!(parse_record_name(&record_name(42, 7)), Some((42, 7)));
        assert!(record_name(9, 100) < record_name(10, 1));
        assert_eq!(parse_record_name("42-7.rec"), None);
        assert_eq!(parse_record_name("HEAD"), None);
    }

    #[test]
    fn pointer_round_trips_and_rejects_inconsistent_object() {
        let p = Pointer::for_record(&header());
        assert_eq!(Pointer::decode(&p.encode()).unwrap(), p);
        let prefix = Path::from("run/a");
        assert_eq!(
            p.object_path(&prefix),
            record_path(&prefix, 0xabcdef, 42, 7)
        );
        let mut bad = p.clone();
        bad.sequence = 43;
        let err = Pointer::decode(&bad.encode()).unwrap_err();
        assert!(err.contains("names object"), "{err}");
        assert!(Pointer::decode(b"{}").is_err());
    }
}
