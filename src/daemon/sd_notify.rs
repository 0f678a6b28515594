//! The systemd notify protocol (`sd_notify(3)`), written by hand.
//!
//! Why: the unit in `systemd/epochwal.service` is `Type=notify`. With that type
//! systemd does not consider the service started when the process is forked, but
//! when the daemon sends `READY=1`, which epochwal does only *after* recovery has
//! found and validated the newest intact record and the trainer has restored it.
//! Units ordered `After=epochwal.service` therefore never see a half-recovered
//! daemon, and `TimeoutStartSec=` bounds recovery rather than `fork()`.
//!
//! The same channel carries the rest of the daemon's conversation with the
//! service manager:
//! - `STATUS=...`: a human-readable line shown by `systemctl status` (epoch and
//!   last durable sequence number);
//! - `WATCHDOG=1`: sent while training makes progress. With `WatchdogSec=` set,
//!   systemd kills and restarts a daemon that stops pinging (a wedged trainer
//!   or persistence thread), and recovery then resumes from the log;
//! - `STOPPING=1` on SIGTERM, followed by `EXTEND_TIMEOUT_USEC=...` while the
//!   final (possibly multi-GiB) checkpoint is being flushed, so that
//!   `TimeoutStopSec=` does not SIGKILL a flush that is still progressing;
//! - `RELOADING=1` on SIGHUP (then `READY=1` when the reload is done).
//!
//! The protocol: `$NOTIFY_SOCKET` names an `AF_UNIX` datagram socket, either a
//! filesystem path (starting with `/`) or an abstract socket (starting with `@`,
//! which stands for the leading NUL byte). Each message is one datagram of
//! newline-separated `KEY=VALUE` assignments. systemd identifies the sender with
//! `SCM_CREDENTIALS`, which the kernel attaches on its own because the receiving
//! socket has `SO_PASSCRED` set; with `NotifyAccess=main` the message must come
//! from the main PID (any thread of it).
//!
//! The watchdog interval comes from `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, which
//! names the process the watchdog is meant for). [`watchdog_interval_from_env`]
//! returns half of it, the ping period `sd_watchdog_enabled(3)` recommends.
//!
//! Nothing here unsets the environment variables: mutating the environment of a
//! multi-threaded process is unsound, and the daemon spawns no children that
//! could mistake them for their own (`$WATCHDOG_PID` guards against that anyway).

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The environment variable naming the notify socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The environment variable holding the watchdog timeout in microseconds.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The environment variable naming the process the watchdog is meant for.
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// A connected handle to the service manager's notify socket.
///
/// Cheap to clone (the socket is shared behind an [`Arc`]) and `Send + Sync`, so
/// the trainer, persistence and signal tasks can each hold one.
#[derive(Clone, Debug)]
pub struct Notifier {
    socket: Arc<UnixDatagram>,
}

impl Notifier {
    /// The notifier systemd asked for through `$NOTIFY_SOCKET`.
    ///
    /// `Ok(None)` when the variable is unset or empty (not started by systemd,
    /// or not `Type=notify`): callers then simply skip notifications. An error
    /// when the variable is set but unusable (neither `/path` nor `@abstract`,
    /// or the socket cannot be reached), because then systemd is waiting for a
    /// `READY=1` that would never arrive and the unit would time out.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        Self::from_socket_value(std::env::var_os(NOTIFY_SOCKET_ENV).as_deref())
    }

    /// [`Notifier::from_env`] with the value of `$NOTIFY_SOCKET` passed in.
    pub fn from_socket_value(value: Option<&OsStr>) -> io::Result<Option<Notifier>> {
        match parse_notify_socket(value)? {
            None => Ok(None),
            Some(addr) => Self::connect_addr(&addr).map(Some),
        }
    }

    /// Connect to a notify socket bound at a filesystem path.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Notifier> {
        let path = path.as_ref();
        let addr = SocketAddr::from_pathname(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("invalid notify socket path {}: {e}", path.display()),
            )
        })?;
        Self::connect_addr(&addr)
    }

    /// Connect to a notify socket in the abstract namespace. `name` is without
    /// the leading `@` (or NUL byte).
    pub fn connect_abstract(name: impl AsRef<[u8]>) -> io::Result<Notifier> {
        let addr = SocketAddr::from_abstract_name(name)?;
        Self::connect_addr(&addr)
    }

    /// Connect to a notify socket at an already-built address.
    pub fn connect_addr(addr: &SocketAddr) -> io::Result<Notifier> {
        // std creates the socket with SOCK_CLOEXEC: it is not leaked to children.
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to notify socket {}: {e}", describe(addr)),
            )
        })?;
        // A notification must never stall training: if the receiver's queue
        // is full, the message is dropped (send returns WouldBlock).
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket: Arc::new(socket),
        })
    }

    /// Send `msg` as one datagram. Several assignments go in one message
    /// separated by `\n`, e.g. `"READY=1\nSTATUS=recovered seq 42"`.
    pub fn notify(&self, msg: &str) -> io::Result<()> {
        if msg.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty sd_notify message",
            ));
        }
        let sent = self.socket.send(msg.as_bytes())?;
        if sent != msg.len() {
            // Datagrams are all-or-nothing; this is only a guard.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "sd_notify datagram truncated: {sent} of {} bytes",
                    msg.len()
                ),
            ));
        }
        Ok(())
    }

    /// `READY=1`: startup (recovery) is finished, or a reload is done.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// `STATUS=...`: one line for `systemctl status`. Newlines in `status`
    /// are replaced by spaces, so that it cannot inject other assignments.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&status_message(status))
    }

    /// `WATCHDOG=1`: the daemon is alive and making progress.
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    /// `STOPPING=1`: shutdown has begun (final checkpoint being written).
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`: a reload (SIGHUP) has begun; send
    /// [`Notifier::ready`] when it is done.
    pub fn reloading(&self) -> io::Result<()> {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `EXTEND_TIMEOUT_USEC=...`: ask for `extra` more time, counted from now,
    /// before the current start/stop/runtime timeout fires. Used while flushing
    /// a large final checkpoint on shutdown. Resend before `extra` runs out.
    pub fn extend_timeout(&self, extra: Duration) -> io::Result<()> {
        self.notify(&extend_timeout_message(extra))
    }
}

/// The watchdog ping period systemd expects from this process, if any: half of
/// `$WATCHDOG_USEC`, and only when `$WATCHDOG_PID` is unset or equals our pid.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    let usec = std::env::var_os(WATCHDOG_USEC_ENV);
    let pid = std::env::var_os(WATCHDOG_PID_ENV);
    watchdog_interval(
        usec.as_deref().and_then(OsStr::to_str),
        pid.as_deref().and_then(OsStr::to_str),
        std::process::id(),
    )
}

/// Pure form of [`watchdog_interval_from_env`]: `usec` and `pid` are the values
/// of `$WATCHDOG_USEC` and `$WATCHDOG_PID` (or `None` when unset). Returns half
/// the timeout; `None` when the watchdog is off (unset, zero or garbage) or
/// meant for another process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != our_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

/// Parse a `$NOTIFY_SOCKET` value: `None` or empty is "no socket", `/path` is a
/// filesystem socket, `@name` an abstract one; anything else is an error.
pub fn parse_notify_socket(value: Option<&OsStr>) -> io::Result<Option<SocketAddr>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let addr = match bytes[0] {
        b'/' => SocketAddr::from_pathname(Path::new(value)),
        b'@' => SocketAddr::from_abstract_name(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "must be an absolute path or start with '@'",
        )),
    };
    addr.map(Some).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("unusable ${NOTIFY_SOCKET_ENV}={value:?}: {e}"),
        )
    })
}

fn status_message(status: &str) -> String {
    let line: String = status
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={line}")
}

fn extend_timeout_message(extra: Duration) -> String {
    // systemd treats 0 as "no extension"; round sub-microsecond requests up.
    let usec = u64::try_from(extra.as_micros()).unwrap_or(u64::MAX).max(1);
    format!("EXTEND_TIMEOUT_USEC={usec}")
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

fn describe(addr: &SocketAddr) -> String {
    if let Some(path) = addr.as_pathname() {
        path.display().to_string()
    } else if let Some(name) = addr.as_abstract_name() {
        format!("@{}", String::from_utf8_lossy(name))
    } else {
        "(unnamed)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn receiver_in(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (rx, path)
    }

    fn recv(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn unique_abstract_name() -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "epochwal-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    #[test]
    fn notifier_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Notifier>();
    }

    #[test]
    fn convenience_methods_send_one_datagram_each_with_the_protocol_assignment() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, path) = receiver_in(dir.path());
        let n = Notifier::connect(&path).unwrap();

        n.ready().unwrap();
        assert_eq!(recv(&rx), "READY=1");
        n.status("epoch 3, durable seq 17").unwrap();
        assert_eq!(recv(&rx), "STATUS=epoch 3, durable seq 17");
        n.watchdog().unwrap();
        assert_eq!(recv(&rx), "WATCHDOG=1");
        n.stopping().unwrap();
        assert_eq!(recv(&rx), "STOPPING=1");
        n.extend_timeout(Duration::from_secs(90)).unwrap();
        assert_eq!(recv(&rx), "EXTEND_TIMEOUT_USEC=90000000");
    }

    #[test]
    fn multi_line_message_arrives_as_a_single_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, path) = receiver_in(dir.path());
        let n = Notifier::connect(&path).unwrap();
        n.notify("READY=1\nSTATUS=recovered seq 42").unwrap();
        assert_eq!(recv(&rx), "READY=1\nSTATUS=recovered seq 42");
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, path) = receiver_in(dir.path());
        Notifier::connect(&path).unwrap().reloading().unwrap();
        let msg = recv(&rx);
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let ts = lines
            .next()
            .unwrap()
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap();
        assert!(ts.parse::<u64>().unwrap() > 0);
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn status_cannot_inject_other_assignments_through_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, path) = receiver_in(dir.path());
        let n = Notifier::connect(&path).unwrap();
        n.status("ok\nREADY=1\r\nX").unwrap();
        assert_eq!(recv(&rx), "STATUS=ok READY=1  X");
    }

    #[test]
    fn clones_share_the_socket_and_work_from_other_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, path) = receiver_in(dir.path());
        let n = Notifier::connect(&path).unwrap();
        let n2 = n.clone();
        std::thread::spawn(move || n2.watchdog().unwrap())
            .join()
            .unwrap();
        assert_eq!(recv(&rx), "WATCHDOG=1");
        n.ready().unwrap();
        assert_eq!(recv(&rx), "READY=1");
    }

    #[test]
    fn from_socket_value_connects_to_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let (rx, path) = receiver_in(dir.path());
        let n = Notifier::from_socket_value(Some(path.as_os_str()))
            .unwrap()
            .expect("a notifier");
        n.ready().unwrap();
        assert_eq!(recv(&rx), "READY=1");
    }

    #[test]
    fn abstract_socket_named_with_at_sign_receives_notifications() {
        let name = unique_abstract_name();
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        let value = format!("@{name}");
        let n = Notifier::from_socket_value(Some(OsStr::new(&value)))
            .unwrap()
            .expect("a notifier");
        n.ready().unwrap();
        assert_eq!(recv(&rx), "READY=1");

        let direct = Notifier::connect_abstract(&name).unwrap();
        direct.watchdog().unwrap();
        assert_eq!(recv(&rx), "WATCHDOG=1");
    }

    #[test]
    fn unset_or_empty_notify_socket_means_no_notifier() {
        assert!(Notifier::from_socket_value(None).unwrap().is_none());
        assert!(Notifier::from_socket_value(Some(OsStr::new("")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn relative_notify_socket_is_an_error_naming_the_variable() {
        let err = Notifier::from_socket_value(Some(OsStr::new("run/notify"))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("NOTIFY_SOCKET"), "{err}");
    }

    #[test]
    fn missing_notify_socket_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = Notifier::connect(&path).unwrap_err();
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }

    #[test]
    fn empty_message_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (_rx, path) = receiver_in(dir.path());
        let n = Notifier::connect(&path).unwrap();
        assert_eq!(
            n.notify("").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn extend_timeout_is_in_microseconds_and_never_zero() {
        assert_eq!(
            extend_timeout_message(Duration::from_millis(1500)),
            "EXTEND_TIMEOUT_USEC=1500000"
        );
        assert_eq!(
            extend_timeout_message(Duration::from_nanos(1)),
            "EXTEND_TIMEOUT_USEC=1"
        );
        assert_eq!(
            extend_timeout_message(Duration::ZERO),
            "EXTEND_TIMEOUT_USEC=1"
        );
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        assert_eq!(
            watchdog_interval(Some("60000000"), None, 42),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(Some("3"), None, 42),
            Some(Duration::from_nanos(1500))
        );
    }

    #[test]
    fn watchdog_interval_applies_when_watchdog_pid_is_ours() {
        assert_eq!(
            watchdog_interval(Some("10000000"), Some("42"), 42),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn watchdog_interval_is_none_when_watchdog_pid_is_another_process() {
        assert_eq!(watchdog_interval(Some("10000000"), Some("41"), 42), None);
        assert_eq!(watchdog_interval(Some("10000000"), Some("nope"), 42), None);
    }

    #[test]
    fn watchdog_interval_is_none_when_unset_zero_or_garbage() {
        assert_eq!(watchdog_interval(None, None, 42), None);
        assert_eq!(watchdog_interval(None, Some("42"), 42), None);
        assert_eq!(watchdog_interval(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval(Some(""), None, 42), None);
        assert_eq!(watchdog_interval(Some("-5"), None, 42), None);
        assert_eq!(watchdog_interval(Some("60s"), None, 42), None);
    }
}
