//! The TOML configuration of `epochwal run`.
//!
//! Every key has a default (documented on its field and in
//! `config/epochwal.toml`), unknown keys are errors that name the key, and
//! command-line flags override the file. Only the `[checkpoint]` table can
//! change at run time (SIGHUP); everything else needs a restart.
//!
//! The daemon writes the configuration it runs with to
//! [`RUNNING_CONFIG_FILE`] in its log directory, so that
//! `epochwal check-config --running` can name the keys a reload would not
//! apply.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::observe::{MetricsConfig, TensorboardConfig};
use crate::train::{DatasetConfig, ModelConfig, OptimizerConfig, TrainConfig};
use crate::wal::format::RUNNING_CONFIG_FILE;
use crate::wal::{LogOptions, Retention};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the checkpoint log (created if missing). A relative path
    /// is relative to the directory of the configuration file (`--data-dir`
    /// on the command line: to the working directory). Default
    /// `epochwal-data`.
    pub data_dir: PathBuf,
    /// Epochs to train before exiting; 0 trains until stopped. Default 0.
    pub epochs: u64,
    /// Seed of everything random (initialisation, data, data order). Default 42.
    pub seed: u64,
    /// Examples per mini-batch. Default 32.
    pub batch_size: usize,
    /// Threads the trainer computes on (the training thread included), at
    /// most the number of cores this process may run on. Results do not
    /// depend on it. Default (absent): all of those cores.
    pub threads: Option<usize>,
    /// Share of the examples held out for validation, in `[0, 0.9]`, chosen
    /// by the seed; 0 turns validation off. Default (absent): 0.1 for a new
    /// log; a log written without validation resumes without it.
    pub validation_fraction: Option<f64>,
    /// Longest the final checkpoint on shutdown may take before the daemon
    /// gives up on it (the log stays valid: the previous record is kept).
    /// Also what it asks systemd for with EXTEND_TIMEOUT_USEC, and the bound
    /// on waiting for the final record's upload with `[replicate]` (what is
    /// left of it after SIGTERM; all of it after a run's last epoch).
    /// Default 300.
    pub shutdown_grace_seconds: u64,
    /// What to do when the loss or a parameter becomes NaN or infinite.
    /// Default `"stop"`.
    pub on_nonfinite: OnNonFinite,
    /// The training data. Default: the diabetes regression dataset that
    /// ships with linfa-datasets (`kind = "diabetes"`).
    pub dataset: DatasetConfig,
    /// The network.
    pub model: ModelConfig,
    /// Adam hyperparameters.
    pub optimizer: OptimizerConfig,
    /// When to checkpoint and what to keep.
    pub checkpoint: CheckpointConfig,
    /// Copying the log to object storage; absent = local only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicate: Option<ReplicateConfig>,
    /// Prometheus metrics over HTTP; absent = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// TensorBoard event files; absent = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensorboard: Option<TensorboardConfig>,
}

/// The `[replicate]` table: copy every durable record to object storage and
/// restore from it on an empty machine. Needs a restart to change.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicateConfig {
    /// Where the copy lives: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` or `file:///absolute/path`. Credentials,
    /// region and endpoint come from the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
    pub url: String,
    /// Allow plain `http://` endpoints (a local S3 server). Unset: what
    /// `AWS_ALLOW_HTTP` says (default false); set, it must agree with
    /// `AWS_ALLOW_HTTP` if that is set too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// When the remote cannot be reached (or refuses us) at start: `true`
    /// refuses to start, naming the URL and the cause; `false` trains
    /// locally with a loud warning while uploads retry. Default true.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Remote retention: keep at least the newest N record objects; 0 keeps
    /// all. Default: `checkpoint.keep_records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_records: Option<u64>,
    /// Remote retention: also keep the newest record of every epoch
    /// divisible by N; 0 = off. Default: `checkpoint.keep_every_epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_every_epochs: Option<u64>,
    /// Remote retention: also keep the N record objects with the lowest
    /// validation loss. Default: `checkpoint.keep_best`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_best: Option<u64>,
    /// Records larger than this are uploaded in parts of this size
    /// (multipart upload); at least 5 MiB, S3's smallest part. Default 16 MiB.
    #[serde(default = "default_part_bytes")]
    pub part_bytes: u64,
    /// Longest wait between two attempts of a failing upload. Default 30.
    #[serde(default = "default_retry_max_seconds")]
    pub retry_max_seconds: u64,
}

fn default_true() -> bool {
    true
}

fn default_part_bytes() -> u64 {
    16 << 20
}

fn default_retry_max_seconds() -> u64 {
    30
}

/// `on_nonfinite`: what a diverging run does.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Write no record of the bad state and exit with
    /// [`crate::daemon::EXIT_DIVERGED`], naming the step and the tensor.
    #[default]
    Stop,
    /// Drop the step (weights, moments and Adam's step count stay as they
    /// were; the mini-batch is consumed) and warn, at most every 10 seconds.
    Skip,
    /// Train on and checkpoint non-finite states (warnings rate-limited).
    Continue,
}

/// Checkpoint triggers, segment size and retention; reloadable with SIGHUP.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Checkpoint after every N completed epochs; 0 disables. Default 1.
    pub every_epochs: u64,
    /// Checkpoint after every N optimizer steps; 0 disables. Default 0.
    pub every_steps: u64,
    /// Checkpoint when this many seconds passed since the last one; 0
    /// disables. Default 0.
    pub every_seconds: u64,
    /// Size of a segment file: `"auto"` (default) sizes each segment to
    /// hold a few records of the current size, so that retention, which
    /// deletes whole segments, keeps close to what it is asked for; a number
    /// fixes the size in bytes (larger records get a segment of their own).
    pub segment_bytes: SegmentBytes,
    /// Keep at least the newest N records; 0 keeps all. Default 10.
    pub keep_records: u64,
    /// Keep the newest segments up to this many bytes; 0 = no byte limit.
    /// Default 0.
    pub keep_bytes: u64,
    /// Also keep the newest record of every epoch divisible by N; 0 = off.
    /// Default 0.
    pub keep_every_epochs: u64,
    /// Also keep the N records with the lowest validation loss (needs
    /// validation); 0 = off. Default 0.
    pub keep_best: u64,
    /// An epoch, step or timer trigger is skipped when the last checkpoint
    /// began less than this many seconds ago (SIGUSR1 and shutdown are
    /// never skipped). Above 0 a due checkpoint also never stalls training:
    /// while the previous one is still being persisted it is deferred to
    /// the next epoch end (or step) at which the persister is free. 0 = no
    /// limit, and every trigger is written (training waits if it must).
    /// Default 0 (what logs written before this key existed expect); the
    /// shipped `config/epochwal.toml` sets 0.1, at most about ten
    /// checkpoints a second.
    pub min_seconds_between: f64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every_epochs: 1,
            every_steps: 0,
            every_seconds: 0,
            segment_bytes: SegmentBytes::Auto,
            keep_records: 10,
            keep_bytes: 0,
            keep_every_epochs: 0,
            keep_best: 0,
            min_seconds_between: 0.0,
        }
    }
}

/// `checkpoint.segment_bytes`: `"auto"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentBytes {
    /// Sized to the records: room for a few of them (see
    /// [`crate::wal::segment_bytes_for`]).
    #[default]
    Auto,
    /// A fixed size in bytes.
    Bytes(u64),
}

impl SegmentBytes {
    /// The value `LogOptions::segment_bytes` takes.
    pub fn log_value(self) -> u64 {
        match self {
            SegmentBytes::Auto => crate::wal::AUTO_SEGMENT_BYTES,
            SegmentBytes::Bytes(n) => n,
        }
    }
}

impl std::fmt::Display for SegmentBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentBytes::Auto => f.write_str("\"auto\""),
            SegmentBytes::Bytes(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for SegmentBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SegmentBytes::Auto => s.serialize_str("auto"),
            SegmentBytes::Bytes(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for SegmentBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SegmentBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SegmentBytes, E> {
                if v == "auto" {
                    Ok(SegmentBytes::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SegmentBytes, E> {
                Ok(SegmentBytes::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SegmentBytes, E> {
                u64::try_from(v)
                    .map(SegmentBytes::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("epochwal-data"),
            epochs: 0,
            seed: 42,
            batch_size: 32,
            threads: None,
            validation_fraction: None,
            shutdown_grace_seconds: 300,
            on_nonfinite: OnNonFinite::Stop,
            dataset: DatasetConfig::Diabetes {
                standardize_inputs: true,
                standardize_targets: true,
            },
            model: ModelConfig::default(),
            optimizer: OptimizerConfig::default(),
            checkpoint: CheckpointConfig::default(),
            replicate: None,
            metrics: None,
            tensorboard: None,
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
    /// Reads and validates a configuration file. Relative paths in it
    /// (`data_dir`, a csv dataset's `path`) are made relative to the file's
    /// directory, so the same file works from any working directory (and
    /// under systemd).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        config.resolve_paths(base);
        Ok(config)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.data_dir);
        if let DatasetConfig::Csv { path, .. } = &mut self.dataset {
            resolve(path);
        }
        if let Some(t) = &mut self.tensorboard {
            resolve(&mut t.dir);
        }
    }

    /// Settings that are valid but defeat the purpose of the daemon, as
    /// sentences naming the key, for warnings at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.shutdown_grace_seconds == 0 {
            w.push(
                "shutdown_grace_seconds = 0: a stop (SIGTERM) will not wait for the final checkpoint, \
                 so every stop loses the training done since the last one"
                    .to_string(),
            );
        }
        let c = &self.checkpoint;
        if c.every_epochs == 0 && c.every_steps == 0 && c.every_seconds == 0 {
            w.push(
                "checkpoint.every_epochs, every_steps and every_seconds are all 0: no checkpoint \
                 is written until SIGUSR1 or shutdown, so a crash loses the whole run"
                    .to_string(),
            );
        }
        w
    }

    /// Parses and validates configuration text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            // One line, as a journal shows it: the line number and its text
            // (which names the key when toml's message does not, as for
            // "invalid type"), then toml's message ("unknown field `x`").
            message: match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line_no = text[..start].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    format!(
                        "line {line_no} (`{line}`): {}",
                        e.message().trim_end().replace('\n', " ")
                    )
                }
                None => e.message().trim_end().replace('\n', " "),
            },
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
        match self.threads {
            Some(0) => return Err(invalid("threads", "must be at least 1")),
            Some(n) if n > available_cores() => {
                return Err(invalid(
                    "threads",
                    &format!(
                        "is {n}, but this process may run on {} cores; use at most {} \
                         (or leave it out to use all of them)",
                        available_cores(),
                        available_cores()
                    ),
                ))
            }
            _ => {}
        }
        if let Some(f) = self.validation_fraction {
            if !(0.0..=crate::train::MAX_VALIDATION_FRACTION).contains(&f) {
                return Err(invalid(
                    "validation_fraction",
                    &format!("is {f}; it must be in [0, 0.9] (0 turns validation off)"),
                ));
            }
        }
        let m = self.checkpoint.min_seconds_between;
        if !(m.is_finite() && m >= 0.0) {
            return Err(invalid(
                "checkpoint.min_seconds_between",
                &format!("is {m}; it must be a number of seconds >= 0 (0 = no limit)"),
            ));
        }
        if self.checkpoint.keep_best > 0 && self.validation_fraction == Some(0.0) {
            return Err(invalid(
                "checkpoint.keep_best",
                "needs validation figures, but validation_fraction = 0 turns validation off; \
                 set validation_fraction > 0 or keep_best = 0",
            ));
        }
        if self
            .replicate
            .as_ref()
            .and_then(|r| r.keep_best)
            .is_some_and(|k| k > 0)
            && self.validation_fraction == Some(0.0)
        {
            return Err(invalid(
                "replicate.keep_best",
                "needs validation figures, but validation_fraction = 0 turns validation off; \
                 set validation_fraction > 0 or keep_best = 0",
            ));
        }
        if matches!(self.checkpoint.segment_bytes, SegmentBytes::Bytes(n) if n < 16 * 4096) {
            return Err(invalid(
                "checkpoint.segment_bytes",
                "must be \"auto\" or at least 65536 (16 pages)",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self
            .tensorboard
            .as_ref()
            .is_some_and(|t| t.dir.as_os_str().is_empty())
        {
            return Err(invalid("tensorboard.dir", "must not be empty"));
        }
        if let Some(r) = &self.replicate {
            if let Err(e) = crate::replicate::RemoteUrl::parse(&r.url) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: "replicate.url",
                    message: e,
                });
            }
            if r.part_bytes < 5 << 20 {
                return Err(invalid(
                    "replicate.part_bytes",
                    "must be at least 5242880 (5 MiB, the smallest part S3 accepts)",
                ));
            }
            if r.retry_max_seconds == 0 {
                return Err(invalid("replicate.retry_max_seconds", "must be at least 1"));
            }
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
            threads: self.threads.unwrap_or_else(available_cores),
            validation_fraction: self
                .validation_fraction
                .unwrap_or(DEFAULT_VALIDATION_FRACTION),
        }
    }

    /// The log's part of the configuration.
    pub fn log_options(&self) -> LogOptions {
        self.checkpoint.log_options()
    }
}

impl Config {
    /// Keys outside `[checkpoint]` whose values differ between `running` and
    /// this configuration (`batch_size 32 -> 64`): a reload does not apply
    /// them, only a restart does.
    pub fn restart_only_changes(&self, running: &Config) -> Vec<String> {
        differences(running, self)
            .into_iter()
            .filter(|c| !c.starts_with("checkpoint."))
            .collect()
    }

    /// Path of the running configuration in the log directory `data_dir`.
    pub fn running_path(data_dir: &Path) -> PathBuf {
        data_dir.join(RUNNING_CONFIG_FILE)
    }

    /// Writes this configuration as the one the daemon runs with into
    /// `data_dir` (replaced atomically; not fsynced: it is a note for
    /// `check-config --running`, not part of recovery).
    pub fn write_running(&self, data_dir: &Path) -> std::io::Result<()> {
        let mut config = self.clone();
        config.make_paths_absolute();
        let body = toml::to_string(&config).map_err(std::io::Error::other)?;
        let text = format!(
            "# The configuration epochwal is running with (file plus command-line\n\
             # flags, [checkpoint] as last reloaded). Written by the daemon for\n\
             # `epochwal check-config --running`; editing it changes nothing.\n{body}"
        );
        let path = Config::running_path(data_dir);
        let tmp = data_dir.join(format!("{RUNNING_CONFIG_FILE}.tmp"));
        crate::wal::write_private(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &path)
    }

    /// Reads the configuration a daemon wrote into `data_dir` (its paths
    /// are absolute).
    pub fn read_running(data_dir: &Path) -> Result<Config, ConfigError> {
        let path = Config::running_path(data_dir);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Config::parse(&text, &path)
    }

    /// Makes the paths absolute against the working directory, so that two
    /// processes started in different directories compare them correctly.
    pub fn make_paths_absolute(&mut self) {
        let absolute = |p: &mut PathBuf| {
            if let Ok(a) = std::path::absolute(&*p) {
                *p = a;
            }
        };
        absolute(&mut self.data_dir);
        if let DatasetConfig::Csv { path, .. } = &mut self.dataset {
            absolute(path);
        }
        if let Some(t) = &mut self.tensorboard {
            absolute(&mut t.dir);
        }
    }
}

/// Dotted keys whose values differ between `old` and `new`, each as
/// `key old -> new` (`(unset)` for a key one side lacks).
fn differences(old: &Config, new: &Config) -> Vec<String> {
    fn walk(
        prefix: &str,
        old: Option<&toml::Value>,
        new: Option<&toml::Value>,
        out: &mut Vec<String>,
    ) {
        match (old, new) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, a.get(k), b.get(k), out);
                }
            }
            (a, b) if a != b => {
                let show =
                    |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
                out.push(format!("{prefix} {} -> {}", show(a), show(b)));
            }
            _ => {}
        }
    }
    let as_value =
        |c: &Config| toml::Value::try_from(c).expect("a configuration serializes to TOML");
    let mut out = Vec::new();
    walk("", Some(&as_value(old)), Some(&as_value(new)), &mut out);
    out
}

/// `validation_fraction` when the file does not set it.
pub const DEFAULT_VALIDATION_FRACTION: f64 = 0.1;

/// Cores this process may run on (its CPU affinity), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl CheckpointConfig {
    /// Segment size and retention as the log takes them.
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_bytes: self.segment_bytes.log_value(),
            retention: Retention {
                keep_records: self.keep_records,
                keep_bytes: self.keep_bytes,
                keep_every_epochs: self.keep_every_epochs,
                keep_best: self.keep_best,
            },
        }
    }

    /// Human-readable list of the keys that differ from `other`
    /// (`every_steps 0 -> 100`), for the SIGHUP log line.
    pub fn changes_from(&self, other: &CheckpointConfig) -> Vec<String> {
        let s = |v: &dyn std::fmt::Display| v.to_string();
        let pairs = [
            (
                "every_epochs",
                s(&self.every_epochs),
                s(&other.every_epochs),
            ),
            ("every_steps", s(&self.every_steps), s(&other.every_steps)),
            (
                "every_seconds",
                s(&self.every_seconds),
                s(&other.every_seconds),
            ),
            (
                "segment_bytes",
                s(&self.segment_bytes),
                s(&other.segment_bytes),
            ),
            (
                "keep_records",
                s(&self.keep_records),
                s(&other.keep_records),
            ),
            ("keep_bytes", s(&self.keep_bytes), s(&other.keep_bytes)),
            (
                "keep_every_epochs",
                s(&self.keep_every_epochs),
                s(&other.keep_every_epochs),
            ),
            ("keep_best", s(&self.keep_best), s(&other.keep_best)),
            (
                "min_seconds_between",
                s(&self.min_seconds_between),
                s(&other.min_seconds_between),
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
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
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
    fn segment_bytes_is_auto_or_a_number() {
        let parse = |t: &str| Config::parse(t, Path::new("c.toml"));
        assert_eq!(
            parse("[checkpoint]\nsegment_bytes = \"auto\"\n")
                .unwrap()
                .checkpoint
                .segment_bytes,
            SegmentBytes::Auto
        );
        assert_eq!(
            parse("[checkpoint]\nsegment_bytes = 1048576\n")
                .unwrap()
                .checkpoint
                .segment_bytes,
            SegmentBytes::Bytes(1 << 20)
        );
        for bad in ["\"big\"", "-1", "4096"] {
            let err = parse(&format!("[checkpoint]\nsegment_bytes = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("segment_bytes"), "{bad}: {err}");
        }
    }

    #[test]
    fn restart_only_changes_name_every_key_outside_checkpoint() {
        let running = Config::default();
        let mut new = running.clone();
        new.batch_size = 64;
        new.model.hidden = vec![8];
        new.checkpoint.every_steps = 5;
        assert_eq!(
            new.restart_only_changes(&running),
            vec!["batch_size 32 -> 64", "model.hidden [] -> [8]"]
        );
        assert!(running.restart_only_changes(&running).is_empty());
    }

    #[test]
    fn a_changed_dataset_kind_names_the_keys_it_adds_and_removes() {
        let running = Config::default();
        let new = Config::parse("[dataset]\nkind = \"seed\"\n", Path::new("c.toml")).unwrap();
        let changes = new.restart_only_changes(&running);
        assert!(
            changes.contains(&"dataset.kind \"diabetes\" -> \"seed\"".to_string()),
            "{changes:?}"
        );
        assert!(
            changes.contains(&"dataset.n (unset) -> 256".to_string()),
            "{changes:?}"
        );
        assert!(
            changes.contains(&"dataset.standardize_targets true -> (unset)".to_string()),
            "{changes:?}"
        );
    }

    #[test]
    fn the_running_configuration_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::parse(
            "epochs = 3\n[dataset]\nkind = \"synthetic\"\n[model]\nhidden = [4]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        c.data_dir = PathBuf::from("relative/dir");
        c.write_running(dir.path()).unwrap();
        let back = Config::read_running(dir.path()).unwrap();
        assert_eq!(
            back.data_dir,
            std::env::current_dir().unwrap().join("relative/dir")
        );
        c.make_paths_absolute();
        assert_eq!(back, c);
    }

    #[test]
    fn threads_zero_or_beyond_the_cores_is_refused_by_name() {
        let err = Config::parse("threads = 0\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`threads`") && err.contains("at least 1"),
            "{err}"
        );
        let too_many = available_cores() + 1;
        let err = Config::parse(&format!("threads = {too_many}\n"), Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`threads`") && err.contains("cores"), "{err}");
        let cfg = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(cfg.train_config().threads, available_cores());
        let cfg = Config::parse("threads = 1\n", Path::new("c.toml")).unwrap();
        assert_eq!(cfg.train_config().threads, 1);
    }

    #[test]
    fn validation_fraction_out_of_range_is_refused_by_name() {
        for v in ["-0.5", "0.95", "1.0", "nan"] {
            let err = Config::parse(&format!("validation_fraction = {v}\n"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`validation_fraction`") && err.contains("[0, 0.9]"),
                "{err}"
            );
        }
        let cfg = Config::parse("validation_fraction = 0.25\n", Path::new("c.toml")).unwrap();
        assert_eq!(cfg.train_config().validation_fraction, 0.25);
        let cfg = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(cfg.train_config().validation_fraction, 0.1);
    }

    #[test]
    fn keep_best_without_validation_is_refused() {
        let err = Config::parse(
            "validation_fraction = 0.0\n[checkpoint]\nkeep_best = 3\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`checkpoint.keep_best`") && err.contains("validation"),
            "{err}"
        );
        let ok = Config::parse("[checkpoint]\nkeep_best = 3\n", Path::new("c.toml")).unwrap();
        assert_eq!(ok.log_options().retention.keep_best, 3);
    }

    #[test]
    fn remote_keep_best_without_validation_is_refused() {
        let err = Config::parse(
            "validation_fraction = 0.0\n[replicate]\nurl = \"file:///tmp/x\"\nkeep_best = 2\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`replicate.keep_best`") && err.contains("validation"),
            "{err}"
        );
    }

    #[test]
    fn negative_min_seconds_between_is_refused_by_name() {
        let err = Config::parse(
            "[checkpoint]\nmin_seconds_between = -1\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`checkpoint.min_seconds_between`"), "{err}");
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
