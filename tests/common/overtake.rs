//! A log as a reader's walk finds it while a fast writer is at work: the
//! walk passes the header page of a record whose payload is written but
//! whose header is not yet, and finds the next record further on once the
//! writer has finished both. [`run_tool`] stages such a log (records 22 and
//! 23 missing, [`InFlight::stage`]; [`run_tool_past`] another pair) and runs `epochwal` on it with its walk
//! held (the fault shim's `pread` HOLD) at the later record's header while
//! the two records are written, then let go.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use epochwal::wal::{Log, LogOptions, LogReader, RecordHeader};

use super::follow::LINE_TIMEOUT;

/// The sequence of the record in flight; the next one is overtaken past it.
pub const IN_FLIGHT: u64 = 22;

/// A staged log (records 1..=N+1 in one segment, the header page of N, the
/// record in flight, and all of N+1 zeroed) and the bytes that finish it.
pub struct InFlight {
    segment: PathBuf,
    in_flight: RecordHeader,
    next: RecordHeader,
    headein_flight: Vec<u8>,
    whole_next: Vec<u8>,
    release: PathBuf,
}

impl InFlight {
    /// Writes records 1..=`in_flight` + 1 into `log_dir` and takes the
    /// header page of `in_flight` and all of the record after it away again.
    pub fn stage(log_dir: &Path, in_flight: u64) -> InFlight {
        let (mut log, _) = Log::open(
            log_dir,
            LogOptions {
                // One segment for every record, so one walk meets them all.
                segment_bytes: 8 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        for e in 1..=in_flight + 1 {
            log.append(&super::sample_state(20_000, e)).unwrap();
        }
        drop(log);
        let scan = LogReader::open(log_dir).unwrap().scan().unwrap();
        let seg = scan
            .segments
            .iter()
            .find(|s| s.records.iter().any(|r| r.sequence == in_flight + 1))
            .unwrap();
        let at = |seq: u64| *seg.records.iter().find(|r| r.sequence == seq).unwrap();
        let (in_flight, next) = (at(in_flight), at(in_flight + 1));
        let file = std::fs::File::open(&seg.path).unwrap();
        let saved = |from: u64, len: u64| {
            let mut b = vec![0u8; len as usize];
            file.read_exact_at(&mut b, from).unwrap();
            b
        };
        let staged = InFlight {
            segment: seg.path.clone(),
            headein_flight: saved(in_flight.offset, 4096),
            whole_next: saved(next.offset, next.end_offset() - next.offset),
            in_flight,
            next,
            release: log_dir.with_extension("release"),
        };
        staged.write(&[0u8; 4096], &vec![0u8; staged.whole_next.len()]);
        staged
    }

    fn write(&self, headein_flight: &[u8], whole_next: &[u8]) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.segment)
            .unwrap();
        file.write_all_at(headein_flight, self.in_flight.offset)
            .unwrap();
        file.write_all_at(whole_next, self.next.offset).unwrap();
    }

    /// Spawns `cmd` (stdout and stderr piped) with its walk held at the
    /// next record's header page; once it is held, finishes the record in
    /// flight, writes the next and lets the walk go on. Returns the child
    /// and its stdout and stderr lines.
    fn run_overtaken(
        &self,
        mut cmd: Command,
    ) -> (Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
        let name = self.segment.file_name().unwrap().to_str().unwrap();
        let spec = format!(
            "pread,{name},HOLD,range={}-{}",
            self.next.offset,
            self.next.offset + 1
        );
        let mut child = cmd
            .envs(super::faults::env(&spec))
            .env("EPOCHWAL_FAULTS_RELEASE", &self.release)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("child: {l}");
                let _ = err_tx.send(l);
            }
        });
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(l);
            }
        });
        loop {
            let line = err_rx
                .recv_timeout(LINE_TIMEOUT)
                .expect("the walk reached the next record's header page");
            if line.starts_with("epochwal-fault: HOLD") {
                break;
            }
        }
        // The writer finishes the record in flight and writes the next
        // while the walk is past the first.
        self.write(&self.headein_flight, &self.whole_next);
        std::fs::write(&self.release, b"").unwrap();
        (child, out_rx, err_rx)
    }
}

/// A command run by [`run_tool`]; its temporary directory lives as long as
/// it does.
pub struct Overtaken {
    _dir: tempfile::TempDir,
    pub child: Child,
    /// Its stdout, line by line.
    pub lines: mpsc::Receiver<String>,
    /// Its stderr after the walk was let go, line by line.
    errors: mpsc::Receiver<String>,
}

impl Overtaken {
    /// Waits (at most twice [`LINE_TIMEOUT`]) for a command that ends by
    /// itself: its status and whole stdout.
    pub fn finish(self) -> (ExitStatus, String) {
        let (status, out, _) = self.finish_with_stderr();
        (status, out)
    }

    /// [`Overtaken::finish`], with the stderr written after the walk was
    /// let go.
    pub fn finish_with_stderr(mut self) -> (ExitStatus, String, String) {
        let deadline = std::time::Instant::now() + 2 * LINE_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the command did not end in time");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let text = self.lines.iter().collect::<Vec<_>>().join("\n");
        let errors = self.errors.iter().collect::<Vec<_>>().join("\n");
        (status, text, errors)
    }
}

/// `epochwal ARGS LOG` on a log staged by [`InFlight::stage`] in a new
/// temporary directory, its walk overtaken (see [`InFlight::run_overtaken`])
/// past record [`IN_FLIGHT`].
pub fn run_tool(args: &[&str]) -> Overtaken {
    run_tool_past(args, IN_FLIGHT)
}

/// [`run_tool`], the walk overtaken past record `in_flight`.
pub fn run_tool_past(args: &[&str], in_flight: u64) -> Overtaken {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let staged = InFlight::stage(&log_dir, in_flight);
    let mut cmd = Command::new(super::daemon::binary());
    cmd.args(args).arg(&log_dir);
    let (child, lines, errors) = staged.run_overtaken(cmd);
    Overtaken {
        _dir: dir,
        child,
        lines,
        errors,
    }
}
