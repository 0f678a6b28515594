//! A real S3 server for the replication tests: `s3s-fs` (an S3 wire-protocol
//! server over a directory) on a free loopback port, with its own temporary
//! root, credentials and bucket, killed when dropped.
//!
//! The binary is found through `EPOCHWAL_S3S_FS`, then `PATH`, then
//! `~/.cargo/bin`. Install it with
//! `cargo install s3s-fs@0.14.1 --features binary --locked`. Without it the
//! replication tests are skipped with a message, except when `CI` is set:
//! then a missing server fails them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "epochwal-test";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "epochwal-test-secret";
/// The bucket every server starts with.
pub const BUCKET: &str = "ckpt";

/// Path of the s3s-fs binary, if installed.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EPOCHWAL_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// A running s3s-fs.
pub struct S3Server {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    root: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

impl S3Server {
    /// Starts a server with an empty bucket [`BUCKET`]. `None` (after a note
    /// on stderr) when s3s-fs is not installed and `CI` is not set.
    pub fn start() -> Option<S3Server> {
        if binary().is_none() {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "s3s-fs is not installed but CI is set: the replication tests need it \
                     (cargo install s3s-fs@0.14.1 --features binary --locked)"
                );
            }
            eprintln!(
                "skipping: s3s-fs not found (cargo install s3s-fs@0.14.1 --features binary --locked)"
            );
            return None;
        }
        let root = tempfile::tempdir().expect("server root");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let mut server = S3Server {
            child: None,
            port: free_port(),
            root,
        };
        server.restart();
        Some(server)
    }

    /// (Re)starts the server on the same port and root.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = std::fs::File::create(self.root.path().join("server.log")).expect("log");
        let child = Command::new(binary().expect("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "s3s-fs exited with {status}: {}",
                    std::fs::read_to_string(self.root.path().join("server.log"))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id while it runs.
    #[allow(dead_code)] // used by the replicate bench only
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL); its files stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://ckpt/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The environment a client needs (credentials, region, endpoint, plain http).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// The file in which the server keeps object `key` of [`BUCKET`].
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// The server's data directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The pointer object of `prefix` as JSON, if present.
    pub fn pointer(&self, prefix: &str) -> Option<serde_json::Value> {
        let text = std::fs::read(self.object_file(&format!("{prefix}/HEAD"))).ok()?;
        Some(serde_json::from_slice(&text).expect("pointer is JSON"))
    }

    /// Record object keys of `prefix` (all logs), sorted.
    pub fn record_keys(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        let logs = self.object_file(&format!("{prefix}/logs"));
        for log in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            for obj in std::fs::read_dir(log.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = obj.file_name().to_string_lossy().into_owned();
                if name.ends_with(".rec") {
                    out.push(format!(
                        "{prefix}/logs/{}/{name}",
                        log.file_name().to_string_lossy()
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the epochwal binary with the server's environment; returns exit
/// code, stdout and stderr.
pub fn epochwal(server: &S3Server, args: &[&str]) -> (i32, String, String) {
    epochwal_env(&server.env(), args)
}

/// Runs the epochwal binary with exactly these `AWS_*` variables (the
/// test's own `AWS_*` environment is removed); returns exit code, stdout
/// and stderr.
pub fn epochwal_env(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(super::daemon::binary());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run epochwal");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The server's environment with `key` set to `value` (`None`: removed).
pub fn env_with(server: &S3Server, key: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut env = server.env();
    env.retain(|(k, _)| k != key);
    if let Some(v) = value {
        env.push((key.to_string(), v.to_string()));
    }
    env
}

/// Parts of unfinished multipart uploads the server holds: (parts of
/// uploads it still knows, which a client can abort; parts whose upload id
/// it has already forgotten; bytes of both). s3s-fs keeps a part as
/// `.upload_id-<id>.part-<n>` and an upload as `.upload-<id>.json` in its
/// root; its CompleteMultipartUpload forgets the id before it moves the
/// parts, so a client killed during that request leaves parts that no
/// client can abort any more (S3 itself completes or not, atomically).
pub fn leftover_parts(server: &S3Server) -> (usize, usize, u64) {
    let names: Vec<String> = std::fs::read_dir(server.root())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let (mut known, mut forgotten, mut bytes) = (0, 0, 0);
    for name in &names {
        let Some(rest) = name.strip_prefix(".upload_id-") else {
            continue;
        };
        let id = rest.split(".part-").next().unwrap_or_default();
        if names.contains(&format!(".upload-{id}.json")) {
            known += 1;
        } else {
            forgotten += 1;
        }
        bytes += std::fs::metadata(server.root().join(name)).map_or(0, |m| m.len());
    }
    (known, forgotten, bytes)
}

/// Starts `epochwal run --config CONFIG ARGS...` with the server's environment.
pub fn spawn_daemon(server: &S3Server, config: &Path, args: &[&str]) -> super::daemon::Daemon {
    let env = server.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    super::daemon::Daemon::spawn(config, args, &pairs)
}

/// A `[replicate]` table for `server` and `prefix`, with extra lines.
pub fn replicate_table(server: &S3Server, prefix: &str, extra: &str) -> String {
    format!(
        "[replicate]\nurl = \"{}\"\nallow_http = true\n{extra}\n",
        server.url(prefix)
    )
}

/// `[checkpoint]` of the replication tests: a record per epoch, 1 MiB
/// segments, every record kept.
pub const CHECKPOINT_ALL: &str = "every_epochs = 1\nsegment_bytes = 1048576\nkeep_records = 0";

/// A small synthetic run replicating to `prefix` of `server`, with extra
/// `[replicate]` lines.
pub fn replicated_config(
    server: &S3Server,
    prefix: &str,
    data: &Path,
    epochs: u64,
    extra: &str,
) -> String {
    format!(
        "{}{}",
        super::daemon::synthetic_config(data, epochs, CHECKPOINT_ALL),
        replicate_table(server, prefix, extra)
    )
}

/// Runs the daemon on `cfg` to its end; asserts success; its log lines.
pub fn run_to_end(server: &S3Server, cfg: &Path) -> Vec<String> {
    let d = spawn_daemon(server, cfg, &[]);
    let (status, lines) = d.wait(Duration::from_secs(180));
    assert!(status.success(), "run failed:\n{}", lines.join("\n"));
    lines
}

/// Trains `epochs` epochs one run at a time (`epochs = 1`, then 2, ...):
/// every run ends by waiting for its final record to reach the remote, so
/// every epoch's record goes up, however much shorter an epoch is than an
/// upload (within one run, latest wins would skip some).
pub fn run_epoch_by_epoch(server: &S3Server, dir: &Path, prefix: &str, epochs: u64) {
    for e in 1..=epochs {
        let cfg = super::daemon::write_config(
            dir.parent().unwrap(),
            "stepwise.toml",
            &replicated_config(server, prefix, dir, e, ""),
        );
        let lines = run_to_end(server, &cfg);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("reached the remote")
                    && super::daemon::field(l, "seq") == Some(e)),
            "{}",
            lines.join("\n")
        );
    }
}
