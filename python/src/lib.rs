//! `epochwal._native`: the epochwal log bound into Python.
//!
//! A thin layer over the main crate: [`writer`] holds a `wal::Log` (the same
//! writer, lock and recovery as `epochwal run`) and persists on a Rust
//! thread; [`reader`] maps records read-only and lends their tensor bytes to
//! Python through the buffer protocol, without copying. Nothing here knows a
//! byte of the format: that is `src/wal` and `src/state`. torch lives in the
//! pure-Python `epochwal.torch`, which flattens state dicts into the named
//! tensors and JSON document this module takes.
//!
//! The GIL is released around every persist (the persist runs on its own
//! thread and never takes it), around the copy into the log and around
//! every read of a log.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

mod job;
mod reader;
mod set;
mod writer;

create_exception!(
    epochwal,
    EpochwalError,
    PyException,
    "Every failure of the log: the message names the file (or tensor) and the cause."
);

/// An [`EpochwalError`] with `message`.
pub(crate) fn error(message: impl Into<String>) -> PyErr {
    EpochwalError::new_err(message.into())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EpochwalError", m.py().get_type::<EpochwalError>())?;
    m.add("SCHEMA_VERSION", epochwal::state::SCHEMA_VERSION)?;
    m.add(
        "DTYPES",
        epochwal::state::DTYPES
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect::<Vec<_>>(),
    )?;
    m.add_class::<writer::Writer>()?;
    m.add_class::<reader::LogView>()?;
    m.add_class::<reader::RecordView>()?;
    m.add_class::<reader::TensorBuffer>()?;
    m.add_function(wrap_pyfunction!(reader::open_log, m)?)?;
    m.add_function(wrap_pyfunction!(set::restore_from_set, m)?)?;
    m.add_function(wrap_pyfunction!(job::rank_listing, m)?)?;
    m.add_function(wrap_pyfunction!(job::choose_common, m)?)?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    Ok(())
}

/// Runs the `epochwal` command line with `argv` (the program name first)
/// and returns its exit code: the same program as the `epochwal` binary
/// (`run` and every operator tool). The GIL is released while it runs.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> i32 {
    py.allow_threads(|| epochwal::cli::main_with_args(argv))
}
