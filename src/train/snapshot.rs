//! A read-only view of the trainer's state at one moment, shared with the
//! thread that persists it, so that a checkpoint does not copy the state on
//! the training thread.
//!
//! The trainer keeps its state behind an `Arc`. [`Snapshot`] holds a second
//! reference; while one is alive the state cannot change, because every
//! write the trainer makes goes through [`unique`], which first waits until
//! every snapshot has been dropped. A training step writes the state only
//! in its optimizer update, after its forward and backward passes, so the
//! persisting thread copies the state while the next step computes its
//! gradients, and the step waits only if the copy is not finished by then.
//! Should an `Arc` be shared some other way, `Arc::make_mut` copies the
//! state rather than change what another thread reads.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::state::TrainState;

/// Counts the snapshots alive and wakes a writer when the last goes.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    alive: Mutex<usize>,
    released: Condvar,
}

impl Gate {
    fn alive(&self) -> MutexGuard<'_, usize> {
        self.alive.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The trainer's state as it was when [`crate::train::Trainer::snapshot`]
/// was called. Reading it costs nothing; the trainer's next write to its
/// state waits until this is dropped, so drop it as soon as it is copied.
///
/// ```no_run
/// # fn demo(trainer: &epochwal::train::Trainer, log: &mut epochwal::wal::Log) -> epochwal::wal::Result<()> {
/// let snapshot = trainer.snapshot();
/// let mut pending = log.begin_append_unfilled(&snapshot, None)?;
/// // On the persisting thread:
/// pending.fill(&snapshot)?;
/// drop(snapshot); // the trainer may write its state again
/// let durable = pending.persist()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Snapshot {
    state: Option<Arc<TrainState>>,
    gate: Arc<Gate>,
}

impl Snapshot {
    pub(crate) fn new(state: &Arc<TrainState>, gate: &Arc<Gate>) -> Snapshot {
        *gate.alive() += 1;
        Snapshot {
            state: Some(Arc::clone(state)),
            gate: Arc::clone(gate),
        }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = TrainState;

    fn deref(&self) -> &TrainState {
        self.state
            .as_deref()
            .expect("a snapshot holds its state until it is dropped")
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // The reference goes first, so that a writer woken below finds the
        // state unshared.
        drop(self.state.take());
        let mut alive = self.gate.alive();
        *alive = alive.saturating_sub(1);
        if *alive == 0 {
            self.gate.released.notify_all();
        }
    }
}

/// The state, for writing: waits until no [`Snapshot`] of it is alive
/// (adding the time waited to `waited`), then returns it. Never changes a
/// state another thread reads: a state still shared is copied first.
pub(crate) fn unique<'a>(
    state: &'a mut Arc<TrainState>,
    gate: &Gate,
    waited: &mut Duration,
) -> &'a mut TrainState {
    if Arc::get_mut(state).is_none() {
        let started = Instant::now();
        let mut alive = gate.alive();
        while *alive > 0 {
            alive = gate.released.wait(alive).unwrap_or_else(|e| e.into_inner());
        }
        drop(alive);
        *waited += started.elapsed();
    }
    Arc::make_mut(state)
}
