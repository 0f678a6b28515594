//! A real Prometheus for the metrics tests: Debian's `prometheus` package
//! (`apt-get install prometheus`), started on a free loopback port with its
//! own temporary storage and a scrape configuration for the daemon under
//! test, killed when dropped. Queries go over its HTTP API.
//!
//! The binary is found through `EPOCHWAL_PROMETHEUS`, then `PATH`. Without
//! it the tests are skipped with a message, except when `CI` is set: then a
//! missing Prometheus fails them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http;

/// Path of the prometheus binary, if installed.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EPOCHWAL_PROMETHEUS") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// A running Prometheus that scrapes one target every second.
pub struct Prometheus {
    child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// One sample of an instant-vector query: labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`127.0.0.1:PORT`) as job
    /// `epochwal` every second. `None` (after a note on stderr) when it is
    /// not installed and `CI` is not set.
    pub fn start(target: &str) -> Option<Prometheus> {
        let Some(bin) = binary() else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "prometheus is not installed but CI is set: the metrics tests need it \
                     (apt-get install prometheus)"
                );
            }
            eprintln!("skipping: prometheus not found (apt-get install prometheus)");
            return None;
        };
        let dir = tempfile::tempdir().expect("prometheus dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: epochwal\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        // Ready when its API answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http::get(port, "/-/ready") {
                return Some(p);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus did not become ready within 60 s:\n{}", p.log());
    }

    /// What Prometheus wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant PromQL query and returns its samples.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http::get(self.port, &path).expect("query prometheus");
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(v["status"], "success", "query {promql}: {body}");
        v["data"]["result"]
            .as_array()
            .expect("vector result")
            .iter()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// The single value of `promql`, if it has exactly one sample.
    pub fn value(&self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [s] => Some(s.value),
            _ => None,
        }
    }

    /// Polls `promql` every 200 ms until `accept` takes its single value,
    /// for at most `timeout`; returns the accepted value.
    pub fn wait_value(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.value(promql).filter(|v| accept(*v)) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
