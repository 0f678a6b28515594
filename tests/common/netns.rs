//! Two "hosts" on one machine: network namespaces (`ip netns`) that have
//! only their own loopback, plus one bridge per host that makes a single
//! TCP port of the test's loopback (the S3 server's) reachable on the
//! host's own 127.0.0.1 under the same number. Nothing else of the
//! machine's network is reachable from a host.
//!
//! The bridge needs no veth pair or routing: a listening socket belongs to
//! the namespace it was created in, so a thread enters the host's namespace
//! (`setns`), binds 127.0.0.1:PORT there, and returns; the sockets of the
//! accepted connections are then forwarded to 127.0.0.1:PORT of the test's
//! namespace by threads that never left it.
//!
//! Commands run in a host through [`Host::command`]: `ip netns exec NAME
//! unshare --mount --propagation private sh -c ...`, which first mounts an
//! empty tmpfs over every directory the host must not see (the other
//! host's, the S3 server's files), so that the two hosts share nothing but
//! the S3 server's port.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A network namespace, deleted when dropped.
pub struct Host {
    /// `ip netns` name.
    pub name: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Host {
    /// Creates the namespace `ew-<tag>-<pid>` with its loopback up; the
    /// error says why it cannot (not root, no `ip`, no namespaces).
    pub fn create(tag: &str) -> Result<Host, String> {
        let name = format!("ew-{tag}-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        run(&["ip", "netns", "add", &name])?;
        let host = Host { name };
        run(&[
            "ip", "netns", "exec", &host.name, "ip", "link", "set", "lo", "up",
        ])?;
        Ok(host)
    }

    /// The network interfaces the host sees (`ip -o link` inside it).
    pub fn interfaces(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip", "-o", "link"])
            .output()
            .expect("ip -o link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
            .collect()
    }

    /// Makes 127.0.0.1:`port` of the test's namespace reachable at
    /// 127.0.0.1:`port` inside the host, until the test process exits.
    pub fn bridge_port(&self, port: u16) -> Result<(), String> {
        let ns = File::open(format!("/run/netns/{}", self.name))
            .map_err(|e| format!("/run/netns/{}: {e}", self.name))?;
        // Bound by a thread of its own, so that no thread of the test
        // changes namespace for longer than the bind.
        let listener = std::thread::spawn(move || -> Result<TcpListener, String> {
            let home = File::open("/proc/thread-self/ns/net")
                .map_err(|e| format!("/proc/thread-self/ns/net: {e}"))?;
            // SAFETY: setns only changes this thread's network namespace;
            // both descriptors are open namespace files.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            let bound = TcpListener::bind(("127.0.0.1", port));
            // SAFETY: as above, back to the namespace the thread started in.
            if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns back: {}", std::io::Error::last_os_error());
            }
            bound.map_err(|e| format!("binding 127.0.0.1:{port} in the host: {e}"))
        })
        .join()
        .map_err(|_| "the bridge's bind thread panicked".to_string())??;
        std::thread::spawn(move || {
            for inside in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let (Ok(a), Ok(b)) = (inside.try_clone(), outside.try_clone()) else {
                        return;
                    };
                    let up = std::thread::spawn(move || pipe(a, b));
                    pipe(outside, inside);
                    let _ = up.join();
                });
            }
        });
        Ok(())
    }

    /// `program args..` inside the host, in a mount namespace of its own
    /// where every directory of `hidden` is covered by an empty tmpfs.
    pub fn command(&self, hidden: &[PathBuf], program: &str) -> Command {
        let mut script = String::new();
        for (i, _) in hidden.iter().enumerate() {
            script.push_str(&format!(
                "mount -t tmpfs -o size=1m hidden \"${}\" && ",
                i + 1
            ));
        }
        script.push_str(&format!("shift {} && exec \"$@\"", hidden.len()));
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.name,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ]);
        cmd.args(hidden).arg(program);
        cmd
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
