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
/// `payload_len` bytes. Each chunk is hashed, written with `pwrite`, and its
/// write-back started ([`sys::start_writeback`]) before the next chunk, so
/// the device works while the CPU hashes and copies. Nothing here is a
/// barrier: the `fdatasync` that follows is.
pub fn write_payload(file: &File, offset: u64, padded: &[u8], payload_len: u64) -> io::Result<u64> {
    debug_assert_eq!(padded.len() as u64 % PAGE, 0, "whole pages");
    debug_assert_eq!(offset % PAGE, 0, "page-aligned offset");
    let mut stream = format::ChecksumStream::new();
    let mut hint = true;
    let payload_len = payload_len as usize;
    for (i, chunk) in padded.chunks(WRITE_CHUNK_BYTES).enumerate() {
        let at = i * WRITE_CHUNK_BYTES;
        let hashed = payload_len.saturating_sub(at).min(chunk.len());
        stream.update(&chunk[..hashed]);
        file.write_all_at(chunk, offset + at as u64)?;
        if hint {
            hint = sys::start_writeback(file, offset + at as u64, chunk.len() as u64)?;
        }
    }
    Ok(stream.finish())
}
