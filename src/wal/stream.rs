//! The rkyv writer that serializes a record into the staging buffer, copying
//! large pieces (the tensors) with non-temporal stores.
//!
//! Why not rkyv's own `Buffer`: it copies each piece with `memcpy`, and
//! glibc's `memcpy` streams past the cache only above a threshold it derives
//! from the cache size (192 MiB on our 2-core EPYC VM, which reports a
//! 256 MiB L3). A state is written one tensor at a time, each below that
//! threshold, so each was copied through the cache: every destination line
//! is first read from memory (read-for-ownership), then written back when
//! evicted, half as much memory traffic again as a streaming copy. When
//! memory bandwidth is what limits the copy, the training pause was 1.5× a
//! `memcpy` of the whole payload (one copy, above the threshold, streamed);
//! BENCHMARKS.md has the measurements. Nothing reads the new record during
//! the pause, and a payload larger than the cache is evicted before
//! `persist` checksums it anyway.

use rkyv::rancor::{fail, Source};
use rkyv::ser::{Positional, Writer};

/// Pieces at least this long are copied with non-temporal stores; smaller
/// ones (names, shapes, the fixed-size parts of the archive) with
/// `copy_from_slice`, which is faster when the bytes fit in the cache.
pub const STREAM_MIN_BYTES: usize = 256 << 10;

/// Serializes into a fixed slice, like rkyv's `Buffer`, with
/// [`stream_copy`] for large pieces.
pub struct StreamWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> StreamWriter<'a> {
    /// A writer that fills `out` from its start.
    pub fn new(out: &'a mut [u8]) -> StreamWriter<'a> {
        StreamWriter { out, pos: 0 }
    }
}

impl Positional for StreamWriter<'_> {
    fn pos(&self) -> usize {
        self.pos
    }
}

#[derive(Debug)]
struct Overflow {
    needed: usize,
    room: usize,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the archive needs {} more bytes than the {} reserved for it",
            self.needed, self.room
        )
    }
}

impl std::error::Error for Overflow {}

impl<E: Source> Writer<E> for StreamWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let room = self.out.len() - self.pos;
        if bytes.len() > room {
            fail!(Overflow {
                needed: bytes.len() - room,
                room: self.out.len(),
            });
        }
        let dst = &mut self.out[self.pos..self.pos + bytes.len()];
        if bytes.len() >= STREAM_MIN_BYTES {
            stream_copy(dst, bytes);
        } else {
            dst.copy_from_slice(bytes);
        }
        self.pos += bytes.len();
        Ok(())
    }
}

/// `dst.copy_from_slice(src)` with non-temporal stores for the 16-byte
/// aligned body (SSE2, which every x86-64 has), followed by a store fence so
/// that the bytes are globally visible before any later store (the hand-over
/// to the persisting thread, which reads the buffer). Elsewhere a
/// plain copy.
pub fn stream_copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        const BLOCK: usize = 64;
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / BLOCK * BLOCK;
        let d = dst[head..head + body].as_mut_ptr();
        let s = src[head..head + body].as_ptr();
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 64 <= body`, so the four 16-byte loads and stores
            // stay inside `src[head..head + body]` and `dst[head..head +
            // body]`, which do not overlap (`&mut` and `&`). `d + i` is
            // 16-byte aligned (`head` aligned it, `i` is a multiple of 64),
            // as `_mm_stream_si128` requires; the loads may be unaligned.
            // SSE2 is part of the x86-64 baseline.
            unsafe {
                let a = _mm_loadu_si128(s.add(i).cast::<__m128i>());
                let b = _mm_loadu_si128(s.add(i + 16).cast::<__m128i>());
                let c = _mm_loadu_si128(s.add(i + 32).cast::<__m128i>());
                let e = _mm_loadu_si128(s.add(i + 48).cast::<__m128i>());
                _mm_stream_si128(d.add(i).cast::<__m128i>(), a);
                _mm_stream_si128(d.add(i + 16).cast::<__m128i>(), b);
                _mm_stream_si128(d.add(i + 32).cast::<__m128i>(), c);
                _mm_stream_si128(d.add(i + 48).cast::<__m128i>(), e);
            }
            i += BLOCK;
        }
        // SAFETY: a fence has no preconditions (SSE, x86-64 baseline).
        unsafe { _mm_sfence() };
        let tail = head + body;
        dst[tail..].copy_from_slice(&src[tail..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        AdamParamState, AdamState, DataState, ModelState, Tensor, TrainState, SCHEMA_VERSION,
    };
    use rkyv::rancor;

    #[test]
    fn stream_copy_copies_every_byte_whatever_the_alignment_and_length() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 31 + 7) as u8).collect();
        let mut dst = vec![0u8; 5100];
        for dst_off in [0, 1, 3, 8, 15, 16, 17] {
            for src_off in [0, 1, 5, 16] {
                for len in [0, 1, 15, 16, 63, 64, 65, 127, 128, 129, 4000, 4900] {
                    dst.fill(0xAA);
                    stream_copy(
                        &mut dst[dst_off..dst_off + len],
                        &src[src_off..src_off + len],
                    );
                    assert_eq!(&dst[dst_off..dst_off + len], &src[src_off..src_off + len]);
                    assert!(dst[..dst_off].iter().all(|&b| b == 0xAA), "before");
                    assert!(dst[dst_off + len..].iter().all(|&b| b == 0xAA), "after");
                }
            }
        }
    }

    /// A state with one tensor (and its two moments) per length in `lens`.
    fn state_with(lens: &[usize]) -> TrainState {
        let mut tensors = Vec::new();
        let mut params = Vec::new();
        for (i, &n) in lens.iter().enumerate() {
            let data: Vec<f32> = (0..n).map(|j| (j * 7 + i) as f32 * 0.5).collect();
            let name = format!("t{i}");
            params.push(AdamParamState {
                name: name.clone(),
                step: 1,
                exp_avg: data.iter().map(|x| x + 1.0).collect(),
                exp_avg_sq: data.iter().map(|x| x * x).collect(),
            });
            tensors.push(Tensor {
                name,
                shape: vec![n as u64],
                data,
            });
        }
        TrainState {
            schema_version: SCHEMA_VERSION,
            epoch: 1,
            global_step: 10,
            step_in_epoch: 0,
            model: ModelState {
                fingerprint: 1,
                description: "stream writer test".into(),
                architecture: String::new(),
                tensors,
            },
            optimizer: AdamState {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                params,
            },
            data: DataState {
                seed: 1,
                dataset_len: 10,
                rng: [1, 2, 3, 4],
            },
            last_loss: 0.5,
            wall_clock_unix_ns: 1,
            train_time_ms: 1,
            scaling: Default::default(),
            import: Default::default(),
            kind: crate::state::KIND_TRAINER,
            general: Default::default(),
        }
    }

    #[test]
    fn archives_written_by_stream_writer_equal_rkyv_to_bytes() {
        // Tensors below and above STREAM_MIN_BYTES, of odd lengths, so that
        // the archive places them at offsets that are not multiples of 16.
        let state = state_with(&[3, 70_001, 65_537, 1]);
        let expected = rkyv::to_bytes::<rancor::Error>(&state).unwrap();
        let mut out = vec![0u8; expected.len()];
        let w =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&state, StreamWriter::new(&mut out))
                .unwrap();
        assert_eq!(w.pos(), expected.len());
        assert!(out[..] == expected[..], "archives differ");
    }

    #[test]
    fn a_too_small_slice_is_an_error_not_a_panic() {
        let state = state_with(&[70_001]);
        let len = rkyv::to_bytes::<rancor::Error>(&state).unwrap().len();
        let mut out = vec![0u8; len - 1];
        let err =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&state, StreamWriter::new(&mut out))
                .map(|_| ())
                .unwrap_err();
        assert!(err.to_string().contains("more bytes than the"), "{err}");
    }
}
