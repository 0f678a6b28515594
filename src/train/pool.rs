//! A small persistent thread pool that runs a fixed list of work pieces.
//!
//! The trainer splits every large product and every Adam update into pieces
//! whose boundaries depend only on the shapes, never on the number of
//! threads; the pool only decides which thread runs which piece. Every piece
//! writes its own disjoint part of the output and computes it the same way
//! wherever it runs, so results are bit-identical at any thread count (see
//! [`super::linalg`]).
//!
//! Workers sleep on a condition variable between jobs. A job is a borrowed
//! closure: [`Pool::run`] does not return before every worker has finished
//! with it, which is what makes lending a non-`'static` closure sound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A borrowed job with its lifetime erased (see the SAFETY note in
/// [`Pool::run`]).
#[derive(Clone, Copy)]
struct Task(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync` (so it may be called from several threads
// at once) and outlives every use, as `Pool::run` waits for all workers.
unsafe impl Send for Task {}

struct Job {
    /// Grows by one per job; a worker runs each generation once.
    generation: u64,
    task: Option<Task>,
    pieces: usize,
    /// Workers that have not yet finished the current generation.
    running: usize,
    /// A piece panicked in a worker.
    panicked: bool,
    shutdown: bool,
}

struct Shared {
    job: Mutex<Job>,
    /// Next piece to hand out in the current job.
    next: AtomicUsize,
    start: Condvar,
    done: Condvar,
}

fn lock(m: &Mutex<Job>) -> MutexGuard<'_, Job> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `threads - 1` worker threads plus the caller.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// A pool running jobs on `threads` threads (the caller counts as one);
    /// `threads` is clamped to at least 1.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(Job {
                generation: 0,
                task: None,
                pieces: 0,
                running: 0,
                panicked: false,
                shutdown: false,
            }),
            next: AtomicUsize::new(0),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("train-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a training worker thread")
            })
            .collect();
        Pool {
            threads,
            shared,
            workers,
        }
    }

    /// Number of threads, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i)` once for every `i` in `0..pieces`, spread over the
    /// pool's threads, and returns when all calls have returned. A panic in
    /// any piece is re-raised here.
    pub fn run(&self, pieces: usize, f: &(dyn Fn(usize) + Sync)) {
        if pieces == 0 {
            return;
        }
        if self.workers.is_empty() || pieces == 1 {
            (0..pieces).for_each(f);
            return;
        }
        // SAFETY: only the lifetime is erased. Before returning, this
        // function waits until `running == 0`, i.e. until every worker has
        // stopped calling the task and dropped its copy of the pointer; a
        // worker only reads `task` under the lock for the generation it is
        // counted in. So `f` outlives every call made through the pointer.
        let task = Task(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                f as *const _,
            )
        });
        {
            let mut job = lock(&self.shared.job);
            self.shared.next.store(0, Ordering::SeqCst);
            job.task = Some(task);
            job.pieces = pieces;
            job.running = self.workers.len();
            job.panicked = false;
            job.generation += 1;
        }
        self.shared.start.notify_all();
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            take_pieces(&self.shared, pieces, f)
        }));
        let mut job = lock(&self.shared.job);
        while job.running > 0 {
            job = self
                .shared
                .done
                .wait(job)
                .unwrap_or_else(|e| e.into_inner());
        }
        job.task = None;
        let worker_panicked = job.panicked;
        drop(job);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        assert!(!worker_panicked, "a training worker thread panicked");
    }
}

fn take_pieces(shared: &Shared, pieces: usize, f: &(dyn Fn(usize) + Sync)) {
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= pieces {
            break;
        }
        f(i);
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let (task, pieces) = {
            let mut job = lock(&shared.job);
            while job.generation == seen && !job.shutdown {
                job = shared.start.wait(job).unwrap_or_else(|e| e.into_inner());
            }
            if job.shutdown {
                return;
            }
            seen = job.generation;
            (job.task.expect("a job is posted with its task"), job.pieces)
        };
        // SAFETY: `Pool::run` keeps the closure alive until this worker
        // decrements `running` below.
        let f = unsafe { &*task.0 };
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            take_pieces(shared, pieces, f)
        }))
        .is_ok();
        let mut job = lock(&shared.job);
        if !ok {
            job.panicked = true;
        }
        job.running -= 1;
        if job.running == 0 {
            shared.done.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.job).shutdown = true;
        self.shared.start.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Lets pieces running on several threads write disjoint parts of one
/// buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);

// SAFETY: a `SharedMut` is only dereferenced through `slice`, whose callers
// promise that the ranges used by concurrent pieces are disjoint.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(crate) fn new(s: &mut [f32]) -> SharedMut {
        SharedMut(s.as_mut_ptr())
    }

    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }

    /// `len` elements from `offset`.
    ///
    /// # Safety
    /// The range must lie inside the buffer this was made from, the buffer
    /// must outlive the slice, and no other live slice may overlap it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_piece_runs_once_at_any_thread_count() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            for pieces in [0, 1, 2, 7, 64] {
                let hits: Vec<AtomicU64> = (0..pieces).map(|_| AtomicU64::new(0)).collect();
                pool.run(pieces, &|i| {
                    hits[i].fetch_add(1, Ordering::SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1));
            }
        }
    }

    #[test]
    fn a_panicking_piece_is_reported_to_the_caller() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "piece 5"));
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicU64::new(0);
        pool.run(4, &|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }
}
