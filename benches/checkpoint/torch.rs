//! The PyTorch peer: `benches/torch_peer.py`, a long-lived Python process
//! holding the same tensors as the bench's state, which saves and loads them
//! with `torch.save` / `torch.load` on request. Keeping it alive lets the
//! bench interleave each torch call with its own append or recovery, run by
//! run, like every other side of a figure.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use epochwal::state::TrainState;

/// A running `torch_peer.py`.
pub struct TorchPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `torch.__version__` of the peer.
    pub version: String,
}

/// What one `torch.save` cost.
pub struct Save {
    /// `torch.save` itself: serializing into the file (the trainer blocks
    /// for this much at least).
    pub save: Duration,
    /// The `fsync` after it.
    pub fsync: Duration,
}

impl TorchPeer {
    /// Writes `state`'s tensors to `dir/torch-peer-state.safetensors` and
    /// starts the peer on them. `Err(reason)` when Python or torch is not
    /// there (the bench then prints "skipped: no torch").
    pub fn start(dir: &Path, state: &TrainState) -> Result<TorchPeer, String> {
        let input = dir.join("torch-peer-state.safetensors");
        crate::safetensors_write(&input, state);
        let python = std::env::var("EPOCHWAL_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_peer.py");
        let spawned = Command::new(&python)
            .arg(script)
            .arg(&input)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&input);
                return Err(format!("cannot run {python}: {e}"));
            }
        };
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        let read = stdout.read_line(&mut first);
        // The peer holds its own copy of the tensors now.
        let _ = std::fs::remove_file(&input);
        let first = first.trim().to_string();
        if read.is_err() || !first.starts_with("ready ") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if first.is_empty() {
                format!("{script} exited without answering")
            } else {
                first
            });
        }
        let version = field(&first, "torch").unwrap_or("?").to_string();
        Ok(TorchPeer {
            child,
            stdin,
            stdout,
            version,
        })
    }

    fn call(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("writing to the torch peer");
        self.stdin.flush().expect("writing to the torch peer");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading from the torch peer");
        assert!(
            !line.is_empty() && !line.starts_with("error"),
            "torch peer failed on {command:?}: {line:?}"
        );
        line.trim().to_string()
    }

    /// `torch.save` of the tensors to `path`, then `fsync`.
    pub fn save(&mut self, path: &Path) -> Save {
        let line = self.call(&format!("save {}", path.display()));
        Save {
            save: ms_field(&line, "save_ms"),
            fsync: ms_field(&line, "fsync_ms"),
        }
    }

    /// `torch.load(path, weights_only=True)`.
    pub fn load(&mut self, path: &Path) -> Duration {
        let line = self.call(&format!("load {}", path.display()));
        ms_field(&line, "load_ms")
    }
}

impl Drop for TorchPeer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn ms_field(line: &str, key: &str) -> Duration {
    let v: f64 = field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("torch peer answered {line:?}, without {key}"));
    Duration::from_secs_f64(v / 1e3)
}
