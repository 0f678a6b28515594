//! TensorBoard event files: the curves of a run, written by the daemon with
//! `[tensorboard]` and by `epochwal tensorboard` from a log's record headers.
//!
//! # The file format
//! An event file (`events.out.tfevents.*`) is a sequence of TFRecords:
//! `u64` length (little-endian), `u32` masked CRC-32C of those 8 bytes,
//! the data, `u32` masked CRC-32C of the data, where masked means
//! `rotate_right(crc, 15) + 0xa282ead8`. Each record's data is one
//! `tensorflow.Event` protocol buffer (`wall_time` = 1, `step` = 2,
//! `file_version` = 3, `summary` = 5; a `Summary` holds repeated `Value`s
//! of `tag` = 1 and `simple_value` = 2). The first event names the version
//! (`brain.Event:2`).
//!
//! # The curves
//! One event per durable record, at the record's global step, holding every
//! scalar of that record, so a record's point is written whole or (cut off
//! by a crash) not at all. From the record header: `loss/train` (the loss
//! of the last mini-batch before the snapshot), `loss/validation` and
//! `accuracy/validation` (records taken at the end of an epoch), `epoch`.
//! From the live daemon only: `checkpoint/pause_seconds`,
//! `checkpoint/persist_seconds`, `replication/lag_seconds` and
//! `replication/lag_records`.
//!
//! # After a crash
//! Points are written after their record is durable, and never one at a
//! step at or below the highest step already in the directory. A writer
//! starts by reading the event files there (cutting off a record a crash
//! tore at the end of one of ours), then writes the points of the durable
//! records above that step (what a SIGKILL between durability and the
//! write left out), into a new file. So a resumed run continues the same
//! curves: no point twice, none backwards, none lost.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::wal::RecordHeader;

/// What event files written here end with.
const OUR_SUFFIX: &str = ".epochwal";

/// `tensorflow.Event`, with the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` holding a `simple_value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// One point of every curve: a record's scalars at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Global step.
    pub step: u64,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub scalars: Vec<(&'static str, f32)>,
}

impl Point {
    /// The scalars a record header holds.
    pub fn from_header(h: &RecordHeader) -> Point {
        let mut scalars = vec![("loss/train", h.loss as f32), ("epoch", h.epoch as f32)];
        if let Some(v) = h.validation {
            scalars.push(("loss/validation", v.loss));
            if let Some(a) = v.accuracy {
                scalars.push(("accuracy/validation", a));
            }
        }
        Point {
            step: h.step,
            wall_time: h.unix_ns as f64 / 1e9,
            scalars,
        }
    }
}

fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The events of a file's bytes, and the length of the intact prefix
/// (shorter than the input when the file ends in a torn or damaged record).
pub fn parse_events(bytes: &[u8]) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 12 {
        let len_bytes = &bytes[at..at + 8];
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap_or_default());
        if masked_crc(len_bytes) != crc {
            break;
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default());
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| (at + 12).checked_add(l))
            .filter(|e| e.checked_add(4).is_some_and(|x| x <= bytes.len()))
        else {
            break;
        };
        let data = &bytes[at + 12..end];
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap_or_default());
        if masked_crc(data) != crc {
            break;
        }
        match Event::decode(data) {
            Ok(e) => events.push(e),
            Err(_) => break,
        }
        at = end + 4;
    }
    (events, at)
}

/// True for the name of an event file (`*tfevents*`, as TensorBoard reads).
fn is_event_file(name: &str) -> bool {
    name.contains("tfevents")
}

/// The highest step of any summary in the event files of `dir` (`None`: no
/// point yet, or no directory). A file of ours that ends in a torn record
/// is cut back to its intact prefix.
pub fn highest_step(dir: &Path) -> io::Result<Option<u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut highest: Option<u64> = None;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_event_file(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        let path = entry.path();
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        let (events, intact) = parse_events(&bytes);
        if intact < bytes.len() && name.ends_with(OUR_SUFFIX) {
            // What a crash left in the middle of a write: never a whole
            // point, so nothing is lost by cutting it.
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(intact as u64)?;
            tracing::info!(
                file = %path.display(),
                cut_bytes = bytes.len() - intact,
                "tensorboard: cut a torn record off the end of an event file"
            );
        }
        for e in events.iter().filter(|e| e.summary.is_some()) {
            let step = u64::try_from(e.step).unwrap_or(0);
            highest = Some(highest.map_or(step, |h| h.max(step)));
        }
    }
    Ok(highest)
}

/// Appends points to a new event file of its own, never at or below the
/// highest step already written in the directory.
pub struct EventWriter {
    file: File,
    path: PathBuf,
    /// Highest step written in the directory (`None`: none yet).
    last_step: Option<u64>,
}

impl EventWriter {
    /// Creates `dir` if needed, reads where the curves stand, and opens a
    /// new event file.
    pub fn open(dir: &Path) -> io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let last_step = highest_step(dir)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', '.'], "_"))
            .unwrap_or_else(|_| "localhost".into());
        // Sorted by name, newer files come last (as TensorBoard reads them).
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.{:09}.{host}.{}{OUR_SUFFIX}",
            now.as_secs(),
            now.subsec_nanos(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)?;
        let mut w = EventWriter {
            file,
            path,
            last_step,
        };
        let version = Event {
            wall_time: now.as_secs_f64(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        };
        w.file.write_all(&frame(&version.encode_to_vec()))?;
        Ok(w)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Highest step written in the directory.
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }

    /// Writes a point in one `write` (TensorBoard sees it at once); false,
    /// writing nothing, when its step is not above the last one.
    pub fn write(&mut self, p: &Point) -> io::Result<bool> {
        if self.last_step.is_some_and(|s| p.step <= s) {
            return Ok(false);
        }
        let event = Event {
            wall_time: p.wall_time,
            step: i64::try_from(p.step).unwrap_or(i64::MAX),
            file_version: None,
            summary: Some(Summary {
                value: p
                    .scalars
                    .iter()
                    .map(|(tag, v)| SummaryValue {
                        tag: (*tag).to_string(),
                        simple_value: Some(*v),
                    })
                    .collect(),
            }),
        };
        self.file.write_all(&frame(&event.encode_to_vec()))?;
        self.last_step = Some(p.step);
        Ok(true)
    }

    /// Writes the points of `headers` (any order) above the last step, in
    /// step order; returns how many were written.
    pub fn write_headers(&mut self, headers: &[RecordHeader]) -> io::Result<u64> {
        let mut sorted: Vec<&RecordHeader> = headers.iter().collect();
        sorted.sort_by_key(|h| (h.step, h.sequence));
        let mut n = 0;
        for h in sorted {
            if self.write(&Point::from_header(h))? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The headers of the newest log in a scan (segments of another log id are
/// left out), one per sequence.
pub fn newest_log_headers(scan: &crate::wal::LogScan) -> Vec<RecordHeader> {
    let current = scan
        .segments
        .iter()
        .rev()
        .find_map(|s| s.header.map(|h| h.log_id));
    let mut out: Vec<RecordHeader> = scan
        .segments
        .iter()
        .filter(|s| s.header.map(|h| h.log_id) == current)
        .flat_map(|s| s.records.iter().copied())
        .collect();
    out.sort_by_key(|h| h.sequence);
    out.dedup_by_key(|h| h.sequence);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: u64) -> Point {
        Point {
            step,
            wall_time: 1.5e9 + step as f64,
            scalars: vec![("loss/train", 1.0 / (step as f32 + 1.0))],
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn written_points_read_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::open(dir.path()).unwrap();
        for s in [1, 2, 3] {
            assert!(w.write(&point(s)).unwrap());
        }
        assert!(!w.write(&point(3)).unwrap(), "no point twice");
        assert!(!w.write(&point(2)).unwrap(), "no point backwards");
        let path = w.path().to_path_buf();
        drop(w);
        let bytes = std::fs::read(&path).unwrap();
        let (events, intact) = parse_events(&bytes);
        assert_eq!(intact, bytes.len());
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[3].step, 3);
        assert_eq!(
            events[3].summary.as_ref().unwrap().value[0].simple_value,
            Some(0.25)
        );
        // A crash in the middle of the next write.
        let mut torn = bytes.clone();
        torn.extend_from_slice(&frame(b"not a whole record")[..9]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(highest_step(dir.path()).unwrap(), Some(3));
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "torn tail cut");
        // The next writer goes on above step 3, in a new file.
        let mut w = EventWriter::open(dir.path()).unwrap();
        assert_eq!(w.last_step(), Some(3));
        assert!(!w.write(&point(3)).unwrap());
        assert!(w.write(&point(4)).unwrap());
        assert_ne!(w.path(), path);
    }
}
