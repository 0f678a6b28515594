//! The TOML configuration of `epochwal run`.
//!
//! Every key has a default (documented on its field and in
//! `config/epochwal.toml`), unknown keys are errors that name the key, and
//! command-line flags override the file. Only the `[checkpoint]` table can
//! change at run time (SIGHUP); everything else needs a restart.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::train::{DatasetConfig, ModelConfig, OptimizerConfig, TrainConfig};
use crate::wal::{LogOptions, Retention};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the checkpoint log (created if missing). Relative paths
    /// are relative to the working directory. Default `epochwal-data`.
    pub data_dir: PathBuf,
    /// Epochs to train before exiting; 0 trains until stopped. Default 0.
    pub epochs: u64,
    /// Seed of everything random (initialisation, data, data order). Default 42.
    pub seed: u64,
    /// Examples per mini-batch. Default 32.
    pub batch_size: usize,
    /// Longest the final checkpoint on shutdown may take before the daemon
    /// gives up on it (the log stays valid: the previous record is kept).
    /// Also what it asks systemd for with EXTEND_TIMEOUT_USEC. Default 300.
    pub shutdown_grace_seconds: u64,
    /// The training data. Default: the diabetes regression dataset that
    /// ships with linfa-datasets (`kind = "diabetes"`).
    pub dataset: DatasetConfig,
    /// The network.
    pub model: ModelConfig,
    /// Adam hyperparameters.
    pub optimizer: OptimizerConfig,
    /// When to checkpoint and what to keep.
    pub checkpoint: CheckpointConfig,
}

/// Checkpoint triggers, segment size and retention; reloadable with SIGHUP.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Checkpoint after every N completed epochs; 0 disables. Default 1.
    pub every_epochs: u64,
    /// Checkpoint after every N optimizer steps; 0 disables. Default 0.
    pub every_steps: u64,
    /// Checkpoint when this many seconds passed since the last one; 0
    /// disables. Default 0.
    pub every_seconds: u64,
    /// Size of a segment file; larger records get a segment of their own.
    /// Default 64 MiB.
    pub segment_bytes: u64,
    /// Keep at least the newest N records; 0 keeps all. Default 10.
    pub keep_records: u64,
    /// Keep the newest segments up to this many bytes; 0 = no byte limit.
    /// Default 0.
    pub keep_bytes: u64,
    /// Also keep the newest record of every epoch divisible by N; 0 = off.
    /// Default 0.
    pub keep_every_epochs: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every_epochs: 1,
            every_steps: 0,
            every_seconds: 0,
            segment_bytes: 64 << 20,
            keep_records: 10,
            keep_bytes: 0,
            keep_every_epochs: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("epochwal-data"),
            epochs: 0,
            seed: 42,
            batch_size: 32,
            shutdown_grace_seconds: 300,
            dataset: DatasetConfig::Diabetes {
                standardize_targets: true,
            },
            model: ModelConfig::default(),
            optimizer: OptimizerConfig::default(),
            checkpoint: CheckpointConfig::default(),
        }
    }
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read the configuration: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key is unknown or ill-typed.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range.
    #[error("{path}: `{key}` {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // toml's message names the key ("unknown field `x`", "invalid
            // type ... for key `y`") and shows the line.
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message: message.to_string(),
        };
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1"));
        }
        if self.checkpoint.segment_bytes < 16 * 4096 {
            return Err(invalid(
                "checkpoint.segment_bytes",
                "must be at least 65536 (16 pages)",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        Ok(())
    }

    /// The trainer's part of the configuration.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            dataset: self.dataset.clone(),
            model: self.model.clone(),
            optimizer: self.optimizer.clone(),
            batch_size: self.batch_size,
            seed: self.seed,
        }
    }

    /// The log's part of the configuration.
    pub fn log_options(&self) -> LogOptions {
        self.checkpoint.log_options()
    }
}

impl CheckpointConfig {
    /// Segment size and retention as the log takes them.
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_bytes: self.segment_bytes,
            retention: Retention {
                keep_records: self.keep_records,
                keep_bytes: self.keep_bytes,
                keep_every_epochs: self.keep_every_epochs,
            },
        }
    }

    /// Human-readable list of the keys that differ from `other`
    /// (`every_steps 0 -> 100`), for the SIGHUP log line.
    pub fn changes_from(&self, other: &CheckpointConfig) -> Vec<String> {
        let pairs = [
            ("every_epochs", self.every_epochs, other.every_epochs),
            ("every_steps", self.every_steps, other.every_steps),
            ("every_seconds", self.every_seconds, other.every_seconds),
            ("segment_bytes", self.segment_bytes, other.segment_bytes),
            ("keep_records", self.keep_records, other.keep_records),
            ("keep_bytes", self.keep_bytes, other.keep_bytes),
            (
                "keep_every_epochs",
                self.keep_every_epochs,
                other.keep_every_epochs,
            ),
        ];
        pairs
            .iter()
            .filter(|(_, new, old)| new != old)
            .map(|(k, new, old)| format!("checkpoint.{k} {old} -> {new}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[checkpoint]\nevery_epoch = 2\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml"), "{err}");
        assert!(err.contains("every_epoch"), "{err}");
    }

    #[test]
    fn ill_typed_key_is_named() {
        let err = Config::parse("epochs = \"ten\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("epochs"), "{err}");
    }

    #[test]
    fn zero_batch_size_is_refused_by_name() {
        let err = Config::parse("batch_size = 0\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn reload_changes_are_listed() {
        let old = CheckpointConfig::default();
        let new = CheckpointConfig {
            every_steps: 100,
            ..old
        };
        assert_eq!(
            new.changes_from(&old),
            vec!["checkpoint.every_steps 0 -> 100"]
        );
    }
}
