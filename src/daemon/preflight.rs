//! Checks made before training starts, so that a run that cannot work fails
//! at once with a message naming the cause, instead of after an interval of
//! training (or with SIGABRT): memory, foreign files in the data directory,
//! free disk space.

use std::path::{Path, PathBuf};

use crate::tools::human_bytes;
use crate::train::MemoryPlan;

/// The most memory this process can use, and where that limit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// `MemAvailable in /proc/meminfo`, `cgroup memory.max`, ...
    pub source: String,
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Physical memory from sysinfo(2): used when /proc/meminfo is hidden (the
/// shipped unit's `ProcSubset=pid`). It does not say how much of it is free,
/// so only a run larger than the machine is refused then.
fn total_ram() -> Option<u64> {
    // SAFETY: sysinfo fills the zeroed struct it is given and keeps no
    // pointer to it.
    unsafe {
        let mut info: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut info) != 0 {
            return None;
        }
        Some((info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1))))
    }
}

/// Limits at or above this mean "no limit" (cgroup v1 reports 2⁶³ − 4096).
const UNLIMITED: u64 = 1 << 62;

/// Room left under this process's cgroup memory limit, if any: cgroup v2
/// `memory.max` − (`memory.current` − page cache), or v1
/// `memory.limit_in_bytes` − (`memory.usage_in_bytes` − page cache).
/// Returns the room and the limit file.
fn cgroup_room() -> Option<(u64, PathBuf)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: &Path| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    // Page cache counts as used in a cgroup but is reclaimed under pressure
    // (MemAvailable counts it as available): leave it out, so that a busy
    // disk never makes a run look too large.
    let cache = |dir: &Path, key: &str| -> u64 {
        std::fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let room = |dir: &Path, max: &str, current: &str, cache_key: &str| -> Option<(u64, PathBuf)> {
        let max_path = dir.join(max);
        let limit = read(&max_path)?;
        if limit >= UNLIMITED {
            return None;
        }
        let used = read(&dir.join(current))
            .unwrap_or(0)
            .saturating_sub(cache(dir, cache_key));
        Some((limit.saturating_sub(used), max_path))
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, rel) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = rel.trim_start_matches('/');
        if controllers.is_empty() {
            // v2 ("0::/path"); "max" does not parse, so no limit gives None.
            if let Some(r) = room(
                &Path::new("/sys/fs/cgroup").join(rel),
                "memory.max",
                "memory.current",
                "file",
            ) {
                return Some(r);
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = Path::new("/sys/fs/cgroup/memory");
            // The path as seen from the root, or (in a cgroup namespace)
            // the mount is the process's own cgroup.
            for dir in [base.join(rel), base.to_path_buf()] {
                if let Some(r) = room(
                    &dir,
                    "memory.limit_in_bytes",
                    "memory.usage_in_bytes",
                    "total_cache",
                ) {
                    return Some(r);
                }
            }
        }
    }
    None
}

fn address_space_limit() -> Option<u64> {
    // SAFETY: getrlimit fills the struct it is given.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_AS, &mut r) != 0 || r.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        Some(r.rlim_cur)
    }
}

/// The tightest of: `MemAvailable` (or physical memory when /proc/meminfo
/// cannot be read), the room under the cgroup's `memory.max`, and
/// `RLIMIT_AS`.
pub fn memory_limit() -> Option<MemoryLimit> {
    let mut limits = Vec::new();
    match meminfo_available() {
        Some(b) => limits.push((b, "MemAvailable in /proc/meminfo".to_string())),
        None => {
            if let Some(b) = total_ram() {
                limits.push((b, "physical memory (sysinfo)".to_string()))
            }
        }
    }
    if let Some((b, path)) = cgroup_room() {
        limits.push((b, format!("room under the cgroup limit {}", path.display())));
    }
    if let Some(b) = address_space_limit() {
        limits.push((b, "RLIMIT_AS (ulimit -v)".to_string()));
    }
    limits
        .into_iter()
        .min_by_key(|(b, _)| *b)
        .map(|(bytes, source)| MemoryLimit { bytes, source })
}

/// Refuses a plan that does not fit under `limit`, naming the model's widths
/// and the bytes needed against the bytes available.
pub fn check_memory(plan: &MemoryPlan, limit: Option<&MemoryLimit>) -> Result<(), String> {
    let Some(limit) = limit else { return Ok(()) };
    let need = plan.total_bytes();
    if need <= u128::from(limit.bytes) {
        return Ok(());
    }
    let h = |b: u128| human_bytes(u64::try_from(b).unwrap_or(u64::MAX));
    Err(format!(
        "the model does not fit in memory: widths {} (`model.hidden` = {:?}) have {} parameters, \
         so the training state takes {} (weights and two Adam moments) and training needs {} more \
         (gradients, activations for `batch_size`, the dataset, the checkpoint's copy of the state): {} in all, but {} are available \
         ({}); make `model.hidden` smaller",
        plan.widths_text(),
        &plan.widths[1..plan.widths.len() - 1],
        plan.parameters,
        h(plan.state_bytes),
        h(plan.working_bytes),
        h(need),
        human_bytes(limit.bytes),
        limit.source
    ))
}

/// Is this a name epochwal writes into a log directory (or `lost+found`,
/// which a fresh file system has)?
fn is_ours(name: &str) -> bool {
    let seg = name.strip_suffix(".tmp").unwrap_or(name);
    crate::wal::format::parse_segment_file_name(seg).is_some()
        || matches!(name, "LOCK" | "COMMIT" | "COMMIT.tmp" | "lost+found")
        || name.strip_suffix(".tmp").unwrap_or(name) == crate::wal::format::RUNNING_CONFIG_FILE
        || name.strip_suffix(".tmp").unwrap_or(name) == crate::wal::format::REMOTE_FILE
        || name.strip_suffix(".tmp").unwrap_or(name) == crate::wal::format::UPLOAD_FILE
        // A restore's download interrupted by a crash (FORMAT.md §2).
        || name.starts_with(crate::wal::format::DOWNLOAD_PREFIX)
}

/// What is in `dir` that epochwal did not put there, when `dir` holds no
/// segment file at all (no log). Empty when the directory is missing, empty,
/// or holds a log.
pub fn foreign_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if crate::wal::format::parse_segment_file_name(&name).is_some() {
            return Ok(Vec::new());
        }
        if !is_ours(&name) {
            foreign.push(name);
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// Bytes available to an unprivileged user on the file system of `dir`.
pub fn disk_available(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads the NUL-terminated path and fills the zeroed
    // struct; neither pointer is kept.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_epochwal_writes_are_not_foreign() {
        for n in [
            "LOCK",
            "COMMIT",
            "COMMIT.tmp",
            "00000000000000000001.wal.tmp",
            "lost+found",
        ] {
            assert!(is_ours(n), "{n}");
        }
        for n in ["notes.txt", "1.wal", "LOCK2"] {
            assert!(!is_ours(n), "{n}");
        }
    }

    #[test]
    fn a_plan_larger_than_the_limit_is_refused_naming_widths_and_bytes() {
        let cfg = crate::train::TrainConfig {
            dataset: crate::train::DatasetConfig::Seed {
                n: 10,
                noise_std: 0.0,
            },
            model: crate::train::ModelConfig {
                hidden: vec![1000, 1000],
                ..Default::default()
            },
            optimizer: Default::default(),
            batch_size: 4,
            seed: 0,
            threads: 1,
            validation_fraction: 0.0,
        };
        let plan = MemoryPlan::new(&cfg, 10, 1, 1);
        assert_eq!(plan.parameters, 2000 + 1_001_000 + 1001);
        let limit = MemoryLimit {
            bytes: 1 << 20,
            source: "test".into(),
        };
        let err = check_memory(&plan, Some(&limit)).unwrap_err();
        assert!(
            err.contains("1-1000-1000-1") && err.contains("1.0 MiB"),
            "{err}"
        );
        assert!(check_memory(&plan, None).is_ok());
    }
}
