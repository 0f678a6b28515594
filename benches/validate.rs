//! What it costs to checksum a record's payload with `pread` (what recovery
//! and the tools do, so that a bad sector is an EIO naming the record)
//! instead of through a read-only mapping (which a bad sector turns into a
//! SIGBUS, unless a SIGBUS handler is installed for the validation pass: the
//! alternative the choice was measured against; in the good case such a
//! handler costs nothing, so the mapping figures below are its cost).
//!
//! Run: `cargo bench --bench validate [-- MiB [rounds]]` (default 256 MiB,
//! 7 rounds). Prints the median of each way, warm (page cache) and cold
//! (pages dropped with POSIX_FADV_DONTNEED before each pass), interleaved
//! round by round so that a noisy neighbour hits both alike.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::time::Instant;

use epochwal::wal::format::{checksum, ChecksumStream};

const CHUNK: usize = 256 << 10;

fn by_pread(file: &File, len: u64, buf: &mut [u8]) -> u64 {
    let mut s = ChecksumStream::new();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], done).expect("pread");
        s.update(&buf[..n]);
        done += n as u64;
    }
    s.finish()
}

fn by_mapping(file: &File, len: u64) -> u64 {
    // SAFETY: read-only mapping of a file this process created and nobody
    // truncates while the bench runs.
    let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(file) }.expect("mmap");
    checksum(&map)
}

fn drop_cache(file: &File) {
    file.sync_all().expect("fsync");
    // SAFETY: posix_fadvise only reads its integer arguments.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mib: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(256);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let len = mib << 20;
    let dir =
        tempfile::tempdir_in(std::env::var("EPOCHWAL_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let path = dir.path().join("payload");
    {
        let mut f = File::create(&path).expect("create");
        let mut block = vec![0u8; 1 << 20];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..mib {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    let file = File::open(&path).expect("open");
    let mut buf = vec![0u8; CHUNK];
    let reference = by_pread(&file, len, &mut buf);
    assert_eq!(reference, by_mapping(&file, len));

    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Alternate which way goes first, so that neither always runs right
        // after the other has warmed something up.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for &way in &order {
            // warm
            let t0 = Instant::now();
            let sum = if way == 0 {
                by_pread(&file, len, &mut buf)
            } else {
                by_mapping(&file, len)
            };
            t[way].push(t0.elapsed().as_secs_f64());
            assert_eq!(sum, reference);
        }
        for &way in &order {
            // cold
            drop_cache(&file);
            let t0 = Instant::now();
            let sum = if way == 0 {
                by_pread(&file, len, &mut buf)
            } else {
                by_mapping(&file, len)
            };
            t[2 + way].push(t0.elapsed().as_secs_f64());
            assert_eq!(sum, reference);
        }
    }
    let gib = len as f64 / (1u64 << 30) as f64;
    let names = [
        "warm, pread 256 KiB chunks",
        "warm, through a mapping   ",
        "cold, pread 256 KiB chunks",
        "cold, through a mapping   ",
    ];
    let mut med = [0.0; 4];
    println!("checksum of a {mib} MiB payload, median of {rounds} interleaved rounds");
    for i in 0..4 {
        med[i] = median(&mut t[i]);
        println!(
            "  {}  {:8.1} ms  {:6.2} GiB/s   (min {:.1} ms, max {:.1} ms)",
            names[i],
            med[i] * 1e3,
            gib / med[i],
            t[i][0] * 1e3,
            t[i][t[i].len() - 1] * 1e3
        );
    }
    println!(
        "  pread / mapping: warm {:.2}x, cold {:.2}x",
        med[0] / med[1],
        med[2] / med[3]
    );
}
