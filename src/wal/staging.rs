//! The staging buffer a record is serialized into during the training pause,
//! and the writes that take it from there to the segment file.
//!
//! Why not serialize straight into a shared writable mapping of the segment,
//! as the writer once did: every record lands on file pages that were never
//! touched, so each page first had to be faulted in (page-cache allocation
//! and zeroing), and when write-back cleaned the pages the kernel
//! write-protected each one in the mapping, which on a multi-core machine
//! sends a TLB-shootdown interrupt to every core running the process,
//! training threads included. That came to about 60× the cost of copying
//! and checksumming the record (BENCHMARKS.md, "Where the checkpoint's CPU
//! goes"). Here the pause copies into an anonymous buffer that stays
//! populated from one checkpoint to the next (no faults), and the persisting
//! thread hands it to the kernel with `pwrite`, which writes whole new
//! pages into the page cache without zeroing them and leaves no mapping of
//! the file in this process to write-protect. Readers still map segments
//! read-only.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use memmap2::MmapMut;

use super::format::{self, page_align, PAGE};
use super::sys;

/// How much of a payload is written and handed to write-back at a time: the
/// checksum of one chunk is computed just before it is written (so its bytes
/// are still in the cache for the copy into the page cache), and the
/// device writes one chunk while the next is hashed and copied. One system
/// call pair per 4 MiB costs nothing measurable.
pub const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// A page-aligned anonymous buffer, kept from one record to the next.
pub struct Staging {
    map: MmapMut,
    /// Bytes from the start whose pages have been touched for writing.
    populated: usize,
}

impl Staging {
    /// A buffer of at least `bytes` (rounded up to a page), not yet
    /// populated.
    pub fn new(bytes: u64) -> io::Result<Staging> {
        let len = usize::try_from(page_align(bytes.max(PAGE)))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "staging buffer too large"))?;
        let map = MmapMut::map_anon(len)?;
        // Transparent huge pages, where the system allows them on request
        // ("madvise" mode): a 2 MiB page is one fault instead of 512, and the
        // copy of the pause misses the TLB 512 times less often. Only advice.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Staging { map, populated: 0 })
    }

    /// Capacity in bytes (a multiple of the page size).
    pub fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    /// Touches every page of the first `bytes` for writing, so that the
    /// pause that fills them takes no page fault. A page stays populated
    /// for the life of the buffer (unless the system swaps it out).
    pub fn populate(&mut self, bytes: u64) {
        let end = (bytes.min(self.capacity())) as usize;
        let base = self.map.as_mut_ptr();
        let mut at = self.populated;
        while at < end {
            // SAFETY: `at < end <= len`, inside the mapping, which this
            // buffer owns exclusively (`&mut self`). Writing back the byte
            // just read changes nothing but makes the kernel provide the page.
            unsafe {
                let p = base.add(at);
                std::ptr::write_volatile(p, std::ptr::read_volatile(p));
            }
            at += PAGE as usize;
        }
        self.populated = self.populated.max(end);
    }

    /// The first `len` bytes, to serialize into.
    pub fn bytes_mut(&mut self, len: u64) -> &mut [u8] {
        &mut self.map[..len as usize]
    }

    /// The first `len` bytes.
    pub fn bytes(&self, len: u64) -> &[u8] {
        &self.map[..len as usize]
    }

    /// Zeroes `[payload_len, page_align(payload_len))`, the padding written
    /// after a payload (FORMAT.md §4.2: zero up to the next page).
    pub fn zero_padding(&mut self, payload_len: u64) {
        let end = page_align(payload_len);
        self.map[payload_len as usize..end as usize].fill(0);
    }
}

/// Where a writer keeps its staging buffer while no append holds it. An
/// append takes it in `begin_append` and gives it back when its
/// `PendingAppend` is dropped, whichever thread that happens on.
pub type StagingSlot = Arc<Mutex<Option<Staging>>>;

/// Takes the buffer out of `slot`, or makes one, with room for `bytes`.
pub fn take(slot: &StagingSlot, bytes: u64) -> io::Result<Staging> {
    let held = slot.lock().ok().and_then(|mut s| s.take());
    match held {
        Some(s) if s.capacity() >= bytes => Ok(s),
        _ => Staging::new(bytes),
    }
}

/// Puts `staging` back into `slot` for the next append.
pub fn give_back(slot: &StagingSlot, staging: Staging) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(staging);
    }
}

/// Writes `padded` (a payload followed by its zero padding, a whole number
/// of pages) at `offset` of `file`, and returns the checksum of its first
/// `payload_len` bytes, and whether `direct` refused a write.
///
/// With `direct` (the same file opened `O_DIRECT`), each chunk goes from the
/// staging buffer to the device without a copy into the page cache: no page
/// is allocated, copied into or later written back and reclaimed, which is
/// most of the CPU a buffered write costs. The buffer and every offset and
/// length are page-aligned, as `O_DIRECT` requires. A file system that
/// refuses a direct write (`EINVAL`) gets that chunk and the rest through
/// the page cache, and the caller stops trying for the segment.
///
/// Without it, each chunk is written with `pwrite` and its write-back started
/// ([`sys::start_writeback`]), so the device works while the CPU hashes and
/// copies the next. Either way a chunk is hashed just before it is written,
/// and nothing here is a barrier: the `fdatasync` that follows is (it also
/// commits the metadata a direct write into preallocated space changes).
pub fn write_payload(
    file: &File,
    direct: Option<&File>,
    offset: u64,
    padded: &[u8],
    payload_len: u64,
) -> io::Result<(u64, bool)> {
    debug_assert_eq!(padded.len() as u64 % PAGE, 0, "whole pages");
    debug_assert_eq!(offset % PAGE, 0, "page-aligned offset");
    let mut stream = format::ChecksumStream::new();
    let mut hint = true;
    let mut direct = direct;
    let mut refused = false;
    let payload_len = payload_len as usize;
    for (i, chunk) in padded.chunks(WRITE_CHUNK_BYTES).enumerate() {
        let at = i * WRITE_CHUNK_BYTES;
        let hashed = payload_len.saturating_sub(at).min(chunk.len());
        stream.update(&chunk[..hashed]);
        if let Some(d) = direct {
            match sys::write_all_at_counted(d, chunk, offset + at as u64) {
                Ok(()) => continue,
                Err((done, e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // Refused (a file system that takes the open but not
                    // the write): what was written stays, the rest goes
                    // through the page cache, which sees the same bytes.
                    direct = None;
                    refused = true;
                    let rest = &chunk[done..];
                    file.write_all_at(rest, offset + (at + done) as u64)?;
                    continue;
                }
                Err((_, e)) => return Err(e),
            }
        }
        file.write_all_at(chunk, offset + at as u64)?;
        if hint {
            hint = sys::start_writeback(file, offset + at as u64, chunk.len() as u64)?;
        }
    }
    Ok((stream.finish(), refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_in(dir: &tempfile::TempDir, len: u64) -> (std::path::PathBuf, File) {
        let path = dir.path().join("seg");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        (path, file)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn direct_and_buffered_writes_leave_the_same_bytes_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let len = 2 * WRITE_CHUNK_BYTES + 3 * PAGE as usize;
        let mut staging = Staging::new(len as u64).unwrap();
        staging.bytes_mut(len as u64).copy_from_slice(&pattern(len));
        let payload_len = len as u64 - 100;
        staging.zero_padding(payload_len);
        let (path, file) = file_in(&dir, PAGE + len as u64);
        let direct = sys::open_direct(&path).expect("this file system takes O_DIRECT");
        let (sum_direct, refused) = write_payload(
            &file,
            Some(&direct),
            PAGE,
            staging.bytes(len as u64),
            payload_len,
        )
        .unwrap();
        assert!(!refused);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[PAGE as usize..], staging.bytes(len as u64));
        let (path2, file2) = {
            let d2 = dir.path().join("b");
            std::fs::create_dir(&d2).unwrap();
            let p = d2.join("seg");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&p)
                .unwrap();
            f.set_len(PAGE + len as u64).unwrap();
            (p, f)
        };
        let (sum_buffered, _) =
            write_payload(&file2, None, PAGE, staging.bytes(len as u64), payload_len).unwrap();
        assert_eq!(sum_direct, sum_buffered);
        assert_eq!(std::fs::read(&path2).unwrap(), on_disk);
        let mut expect = format::ChecksumStream::new();
        expect.update(&staging.bytes(len as u64)[..payload_len as usize]);
        assert_eq!(sum_direct, expect.finish());
    }

    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let len = 2 * PAGE as usize;
        // A buffer one byte off page alignment: O_DIRECT refuses it (EINVAL).
        let mut staging = Staging::new(len as u64 + PAGE).unwrap();
        let bytes = pattern(len + 1);
        staging.bytes_mut(len as u64 + 1).copy_from_slice(&bytes);
        let misaligned = &staging.bytes(len as u64 + 1)[1..];
        let (path, file) = file_in(&dir, PAGE + len as u64);
        let direct = sys::open_direct(&path).expect("this file system takes O_DIRECT");
        let (sum, refused) =
            write_payload(&file, Some(&direct), PAGE, misaligned, len as u64).unwrap();
        assert!(refused, "a misaligned direct write is refused");
        assert_eq!(&std::fs::read(&path).unwrap()[PAGE as usize..], misaligned);
        let mut expect = format::ChecksumStream::new();
        expect.update(misaligned);
        assert_eq!(sum, expect.finish());
    }
}
