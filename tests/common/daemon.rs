//! Driving the real `epochwal run` binary from tests: spawn, read its log
//! lines, send signals, compare final states.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use epochwal::state::TrainState;

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_epochwal")
}

/// Writes a configuration file into `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write config");
    path
}

/// A small synthetic run: ~260 KiB of state, 32 steps per epoch.
pub fn synthetic_config(data_dir: &Path, epochs: u64, checkpoint: &str) -> String {
    format!(
        r#"data_dir = "{}"
epochs = {epochs}
seed = 7
batch_size = 32
[dataset]
kind = "synthetic"
n = 1024
input_dim = 32
output_dim = 8
[model]
hidden = [128, 128]
activation = "tanh"
[checkpoint]
{checkpoint}
"#,
        data_dir.display()
    )
}

/// A running daemon whose stderr is collected line by line.
pub struct Daemon {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `epochwal run --config CONFIG ARGS...` with extra environment.
    pub fn spawn(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(binary());
        cmd.arg("run").arg("--config").arg(config).args(args);
        // Routine checkpoint lines are DEBUG; tests count them.
        cmd.env("RUST_LOG", "info,epochwal=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Daemon::spawn_command(cmd)
    }

    /// Starts a prepared command with stderr captured.
    pub fn spawn_command(mut cmd: Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn epochwal");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Lines read so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line containing `needle` appears.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill only reads its arguments; the pid is our child's.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit (killing it after `timeout`) and returns status and
    /// every stderr line.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let lines = self.lines();
                panic!(
                    "epochwal did not exit within {timeout:?}; its log:\n{}",
                    lines.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.lines())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extracts `key=value` (value up to the next space) from a log line.
pub fn field(line: &str, key: &str) -> Option<u64> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

/// Sequences the daemon reported durable, in order.
pub fn durable_seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.contains("checkpoint durable"))
        .filter_map(|l| field(l, "seq"))
        .collect()
}

/// The newest record of a log, fully deserialized.
pub fn newest_state(dir: &Path) -> Option<(u64, TrainState)> {
    let r = epochwal::wal::recover(dir).expect("recover");
    r.record.map(|m| {
        (
            m.header().sequence,
            m.to_owned_state().expect("deserialize"),
        )
    })
}

/// Asserts that two states hold bit-identical training state (weights, Adam
/// moments and steps, counters, data state); wall-clock fields may differ.
pub fn assert_same_training_state(a: &TrainState, b: &TrainState) {
    assert_eq!(a.epoch, b.epoch, "epoch");
    assert_eq!(a.global_step, b.global_step, "global_step");
    assert_eq!(a.step_in_epoch, b.step_in_epoch, "step_in_epoch");
    assert_eq!(a.data, b.data, "data state");
    assert_eq!(a.model.tensors.len(), b.model.tensors.len());
    for (x, y) in a.model.tensors.iter().zip(&b.model.tensors) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.shape, y.shape);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&x.data) == bits(&y.data),
            "tensor {} differs bitwise",
            x.name
        );
    }
    for (x, y) in a.optimizer.params.iter().zip(&b.optimizer.params) {
        assert_eq!(x.step, y.step, "adam step of {}", x.name);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&x.exp_avg) == bits(&y.exp_avg),
            "exp_avg of {}",
            x.name
        );
        assert!(
            bits(&x.exp_avg_sq) == bits(&y.exp_avg_sq),
            "exp_avg_sq of {}",
            x.name
        );
    }
    assert_eq!(a.last_loss.to_bits(), b.last_loss.to_bits(), "last_loss");
}

/// Runs a config to completion without interruption and returns the final
/// state.
pub fn reference_run(dir: &Path, config_body: impl Fn(&Path) -> String) -> TrainState {
    let data = dir.join("reference-data");
    let config = write_config(dir, "reference.toml", &config_body(&data));
    let d = Daemon::spawn(&config, &[], &[]);
    let (status, lines) = d.wait(Duration::from_secs(120));
    assert!(
        status.success(),
        "reference run failed:\n{}",
        lines.join("\n")
    );
    newest_state(&data).expect("reference run left a record").1
}
