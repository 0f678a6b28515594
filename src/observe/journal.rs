//! Structured journal fields under systemd (`tracing-journald`).
//!
//! When stderr is the journal (systemd sets `JOURNAL_STREAM` to the device
//! and inode of the stream it connected to stderr), the checkpoint and
//! epoch lines go through the journal's native protocol: the message is the
//! text line stderr would carry, and each figure is also a journal field
//! named `EPOCHWAL_<FIELD>` (`EPOCHWAL_SEQ`, `EPOCHWAL_EPOCH`,
//! `EPOCHWAL_LOSS`, `EPOCHWAL_PERSIST_SECONDS`, ...), so that
//! `journalctl -u epochwal EPOCHWAL_SEQ=42` finds checkpoint 42. Every other
//! line stays text on stderr (which the journal stores as it did), and
//! anywhere else nothing changes at all.
//!
//! Those events use the target [`TARGET`]: the daemon routes that target to
//! the journal layer only, and everything else to the text layer only.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The `tracing` target of the events that carry journal fields.
pub const TARGET: &str = "epochwal::journal";

/// True when stderr is the stream systemd connected to the journal.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The journal layer when stderr is the journal and its socket can be
/// reached (then [`active`] is true from now on); `None` otherwise.
pub fn layer() -> Option<tracing_journald::Layer> {
    if !stderr_is_journal() {
        return None;
    }
    let layer = tracing_journald::layer().ok()?;
    ACTIVE.store(true, Ordering::Relaxed);
    Some(
        layer
            .with_field_prefix(Some("EPOCHWAL".into()))
            .with_syslog_identifier("epochwal".into())
            // INFO is syslog's "informational" (6), as the text lines on
            // stderr are stored; the crate's default would say "notice".
            .with_priority_mappings(tracing_journald::PriorityMappings {
                info: tracing_journald::Priority::Informational,
                debug: tracing_journald::Priority::Debug,
                ..tracing_journald::PriorityMappings::new()
            }),
    )
}

/// True when log events go to the journal with their fields.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}
