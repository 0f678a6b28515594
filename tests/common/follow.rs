//! A running `epochwal tail -f` whose lines a test reads with generous
//! waits (a loaded machine) that end as soon as the line arrives.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a line may take: generous for a loaded machine (load 10 on 2
/// cores); every wait ends as soon as the line arrives.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `epochwal tail DIR -f`, killed on drop if still running.
pub struct Follower {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Follower {
    /// `epochwal tail DIR -f EXTRA...`.
    pub fn spawn(dir: &Path, extra: &[&str]) -> Follower {
        Follower::spawn_env(dir, extra, &[])
    }

    /// The same, with extra environment variables.
    pub fn spawn_env(dir: &Path, extra: &[&str], env: &[(String, String)]) -> Follower {
        let mut cmd = Command::new(super::daemon::binary());
        cmd.arg("tail")
            .arg(dir)
            .arg("-f")
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)));
        Follower::spawn_command(cmd)
    }

    /// A prepared follower command (another program than the binary).
    pub fn spawn_command(mut cmd: Command) -> Follower {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next line, within [`LINE_TIMEOUT`].
    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("tail -f printed no line in time")
    }

    /// The next line as JSON (`--json`).
    pub fn next_json(&self) -> serde_json::Value {
        let line = self.next_line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
    }

    /// The next lines name exactly these sequences, in order.
    pub fn expect_sequences(&self, seqs: impl IntoIterator<Item = u64>) {
        for want in seqs {
            let v = self.next_json();
            assert_eq!(v["sequence"], want, "line {v}");
        }
    }

    /// No line for `for_`.
    pub fn assert_quiet(&self, for_: Duration) {
        if let Ok(line) = self.lines.recv_timeout(for_) {
            panic!("unexpected line {line}");
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
