//! Seeing a run without reading its log lines: Prometheus metrics
//! ([`metrics`], served over HTTP by [`server`]), TensorBoard event files
//! ([`tensorboard`]) and structured journal fields ([`journal`]).
//!
//! This room sits beside the daemon, below it: the daemon feeds it figures
//! (plain numbers, never its own types), the tools use its event-file
//! writer for `epochwal tensorboard`. It reads record headers through the
//! log's public reader API and depends on nothing else in the crate; the log
//! knows nothing of it.
//!
//! The training thread only ever stores into atomics here (the epoch, the
//! step, the losses); histograms and event files are written by the
//! persisting thread after a record is durable; a scrape reads atomics and
//! the histograms' own short locks. So a slow or stuck scraper never holds
//! anything the training thread waits for.

pub mod journal;
pub mod metrics;
pub mod server;
pub mod tensorboard;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[metrics]` table: serve `/metrics` in the Prometheus text format.
/// Absent = off. Needs a restart to change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port to listen on. Default `127.0.0.1:9464` (loopback
    /// only; `0.0.0.0:9464` for a Prometheus on another host).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

/// The default `[metrics] listen` address.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_listen(),
        }
    }
}

/// The `[tensorboard]` table: write TensorBoard event files. Absent = off.
/// Needs a restart to change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TensorboardConfig {
    /// Directory of the event files (created if missing; relative to the
    /// configuration file's directory). One directory per run: point
    /// `tensorboard --logdir` at it or at its parent.
    pub dir: PathBuf,
}
