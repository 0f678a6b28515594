//! Reading a log: record headers, and records whose tensor bytes Python
//! views in place (the buffer protocol over the read-only mapping).

use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use epochwal::state::KIND_GENERAL;
use epochwal::wal::{self, LogReader, MappedRecord};

use crate::error;

/// A log directory opened for reading: never locks or writes anything.
#[pyclass(module = "epochwal._native", frozen)]
pub struct LogView {
    reader: LogReader,
}

/// Opens the log in `dir` for reading (any number of readers, beside the
/// writer).
#[pyfunction]
pub fn open_log(py: Python<'_>, dir: PathBuf) -> PyResult<LogView> {
    let reader = py
        .allow_threads(|| LogReader::open(&dir))
        .map_err(|e| error(e.to_string()))?;
    Ok(LogView { reader })
}

fn header_dict<'py>(
    py: Python<'py>,
    h: &wal::RecordHeader,
    segment: &std::path::Path,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("seq", h.sequence)?;
    d.set_item("epoch", h.epoch)?;
    d.set_item("step", h.step)?;
    d.set_item("loss", if h.loss.is_nan() { None } else { Some(h.loss) })?;
    d.set_item("val_loss", h.validation.map(|v| v.loss))?;
    d.set_item("unix_ns", h.unix_ns)?;
    d.set_item("segment", segment.display().to_string())?;
    d.set_item("offset", h.offset)?;
    d.set_item("payload_len", h.payload_len)?;
    d.set_item("schema_version", h.schema_version)?;
    Ok(d)
}

#[pymethods]
impl LogView {
    /// The directory.
    #[getter]
    fn dir(&self) -> PathBuf {
        self.reader.dir().to_path_buf()
    }

    /// Every record header that decodes, oldest first, as dicts (`seq`,
    /// `epoch`, `step`, `loss`, `val_loss`, `unix_ns`, `segment`, `offset`,
    /// `payload_len`, `schema_version`). Payloads are not read.
    fn records<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let scan = py
            .allow_threads(|| self.reader.scan())
            .map_err(|e| error(e.to_string()))?;
        let mut out = Vec::new();
        for s in &scan.segments {
            for h in &s.records {
                out.push(header_dict(py, h, &s.path)?);
            }
        }
        Ok(out)
    }

    /// The record recovery chooses (FORMAT.md §5), or None for an empty log.
    fn latest(&self, py: Python<'_>) -> PyResult<Option<RecordView>> {
        let dir = self.reader.dir().to_path_buf();
        let r = py
            .allow_threads(|| wal::recover(&dir))
            .map_err(|e| error(e.to_string()))?;
        Ok(r.record.map(RecordView::new))
    }

    /// The record with sequence number `seq` (validated).
    fn by_sequence(&self, py: Python<'_>, seq: u64) -> PyResult<RecordView> {
        let rec = py.allow_threads(|| -> Result<Option<MappedRecord>, String> {
            let scan = self.reader.scan().map_err(|e| e.to_string())?;
            for s in &scan.segments {
                for h in &s.records {
                    if h.sequence == seq {
                        return self
                            .reader
                            .load(&s.path, h)
                            .map(Some)
                            .map_err(|e| e.to_string());
                    }
                }
            }
            Ok(None)
        });
        match rec.map_err(error)? {
            Some(r) => Ok(RecordView::new(r)),
            None => Err(error(format!(
                "{}: no record with sequence {seq}",
                self.reader.dir().display()
            ))),
        }
    }
}

/// One validated record, mapped read-only. Its tensors are lent to Python
/// without copying; the mapping lives as long as any of them.
#[pyclass(module = "epochwal._native", frozen)]
#[derive(Clone)]
pub struct RecordView {
    rec: Arc<MappedRecord>,
}

impl RecordView {
    pub(crate) fn new(rec: MappedRecord) -> RecordView {
        RecordView { rec: Arc::new(rec) }
    }
}

#[pymethods]
impl RecordView {
    /// Sequence number.
    #[getter]
    fn seq(&self) -> u64 {
        self.rec.header().sequence
    }
    /// Epochs completed.
    #[getter]
    fn epoch(&self) -> u64 {
        self.rec.state().epoch.to_native()
    }
    /// Global step.
    #[getter]
    fn step(&self) -> u64 {
        self.rec.state().global_step.to_native()
    }
    /// Steps done of the unfinished epoch.
    #[getter]
    fn step_in_epoch(&self) -> u64 {
        self.rec.state().step_in_epoch.to_native()
    }
    /// Loss of the record (None when not given).
    #[getter]
    fn loss(&self) -> Option<f64> {
        let l = self.rec.header().loss;
        (!l.is_nan()).then_some(l)
    }
    /// Validation loss from the header (None when not given).
    #[getter]
    fn val_loss(&self) -> Option<f32> {
        self.rec.header().validation.map(|v| v.loss)
    }
    /// Wall-clock time of the snapshot, ns since the Unix epoch.
    #[getter]
    fn unix_ns(&self) -> u64 {
        self.rec.header().unix_ns
    }
    /// Training time accumulated over all runs, ms.
    #[getter]
    fn train_time_ms(&self) -> u64 {
        self.rec.state().train_time_ms.to_native()
    }
    /// "general" (written by this package) or "trainer" (by `epochwal run`).
    #[getter]
    fn kind(&self) -> &'static str {
        if self.rec.state().kind.to_native() == KIND_GENERAL {
            "general"
        } else {
            "trainer"
        }
    }
    /// The schema version the record was written with.
    #[getter]
    fn schema_version(&self) -> u32 {
        self.rec.schema_version()
    }
    /// The segment file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.rec.path().to_path_buf()
    }
    /// The JSON metadata document (text; "" for a trainer record).
    #[getter]
    fn meta(&self) -> String {
        self.rec.state().general.meta.as_str().to_string()
    }
    /// `(job_id, world_size, rank)`: ("", 0, 0) outside a multi-rank job.
    #[getter]
    fn job(&self) -> (String, u32, u32) {
        let g = &self.rec.state().general;
        (
            g.job_id.as_str().to_string(),
            g.world_size.to_native(),
            g.rank.to_native(),
        )
    }

    /// The tensors as `(name, dtype, shape, buffer)`, in record order. The
    /// buffer is read-only and views the mapping (no copy). A trainer
    /// record's model tensors come as `F32`.
    fn tensors(&self) -> Vec<(String, String, Vec<u64>, TensorBuffer)> {
        let state = self.rec.state();
        let mut out = Vec::new();
        let view = |bytes: &[u8]| TensorBuffer {
            rec: Arc::clone(&self.rec),
            addr: bytes.as_ptr() as usize,
            len: bytes.len(),
        };
        if state.kind.to_native() == KIND_GENERAL {
            for t in state.general.tensors.iter() {
                out.push((
                    t.name.as_str().to_string(),
                    t.dtype.as_str().to_string(),
                    t.dims(),
                    view(t.bytes()),
                ));
            }
        } else {
            for t in state.model.tensors.iter() {
                let values = t.values();
                // SAFETY: `values` is a live `&[f32]`; its bytes are the same
                // memory viewed as `u8`, which has no alignment or validity
                // requirement, for the same lifetime.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        values.as_ptr().cast::<u8>(),
                        std::mem::size_of_val(values),
                    )
                };
                out.push((
                    t.name.as_str().to_string(),
                    "F32".to_string(),
                    t.dims(),
                    view(bytes),
                ));
            }
        }
        out
    }

    fn __repr__(&self) -> String {
        format!(
            "<epochwal.RecordView seq={} epoch={} step={} kind={} {}@{}>",
            self.seq(),
            self.epoch(),
            self.step(),
            self.kind(),
            self.rec.path().display(),
            self.rec.header().offset
        )
    }
}

/// The bytes of one tensor of a record, lent through the buffer protocol
/// (read-only, one-dimensional, unsigned bytes). Holds the record's mapping.
#[pyclass(module = "epochwal._native", frozen)]
pub struct TensorBuffer {
    rec: Arc<MappedRecord>,
    /// Address of the first byte, inside memory `rec` owns.
    addr: usize,
    len: usize,
}

#[pymethods]
impl TensorBuffer {
    fn __len__(&self) -> usize {
        self.len
    }

    /// # Safety
    /// Called by the interpreter with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "the tensors of a record are read-only (they view the log's mapping)",
            ));
        }
        let this = slf.get();
        // Keeps the mapping alive at least as long as `this` does.
        let _ = &this.rec;
        // SAFETY: `addr..addr+len` lies inside the record's validated
        // payload (a read-only mapping or the upgraded copy), owned by
        // `this.rec`; `PyBuffer_FillInfo` stores a new reference to `slf`
        // in the view, so the memory outlives every consumer of the view.
        // The view is read-only (`readonly = 1`), so nobody writes to it.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.addr as *mut std::ffi::c_void,
                this.len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}
