//! epochwal: a trainer daemon whose training state survives crashes.
//!
//! The pieces, following the data (see ARCHITECTURE.md):
//! - [`state`]: the rkyv schema of one checkpoint record;
//! - [`wal`]: the memory-mapped, segment-rotating, crash-safe log of records;
//! - [`train`]: the model, Adam and the datasets;
//! - [`daemon`]: the long-running `epochwal run` (signals, triggers, systemd);
//! - [`replicate`]: the copy of the log in object storage, and restores;
//! - [`observe`]: Prometheus metrics, TensorBoard event files, journal fields;
//! - [`job`]: multi-rank jobs: one log per rank, and the common step to resume;
//! - [`tools`]: the operator commands `tail`, `inspect`, `verify`, `export`, `pull`;
//! - [`config`]: the TOML configuration;
//! - [`cli`]: the command line, shared by the binary and the Python package.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod job;
pub mod observe;
pub mod replicate;
pub mod state;
pub mod tools;
pub mod train;
pub mod wal;
