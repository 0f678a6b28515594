//! Datasets: the tutorial line, CSV files, two real tabular datasets shipped
//! by `linfa-datasets`, and synthetic data of any size.
//!
//! Every dataset ends up as f32 inputs `[n, input_dim]` plus either f32
//! regression targets `[n, output_dim]` (for MSE) or class indices (for
//! cross-entropy). Generated data comes from generators derived from the
//! seed, so rebuilding a dataset after a restart gives the same bits.

use std::path::Path;

use super::model::Loss;
use super::rng::{stream, Xoshiro256};
use super::{DatasetConfig, TrainError};
use crate::state::Scaling;

/// What the model is trained to produce for each example.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Regression targets, `dim` per example, row-major.
    Values {
        /// Values per example (the model's output width).
        dim: usize,
        /// `[n, dim]` targets.
        data: Vec<f32>,
    },
    /// Class labels in `0..classes`.
    Classes {
        /// Number of classes (the model's output width).
        classes: usize,
        /// One label per example.
        labels: Vec<u32>,
    },
}

/// An in-memory dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The configuration `kind` it came from (`seed`, `csv`, ...).
    pub kind: &'static str,
    /// Number of examples.
    pub n: usize,
    /// Features per example.
    pub input_dim: usize,
    /// `[n, input_dim]` inputs.
    pub inputs: Vec<f32>,
    /// Targets.
    pub targets: Targets,
    /// The standardisation applied to the raw inputs and targets (empty
    /// where none was).
    pub scaling: Scaling,
}

impl Dataset {
    /// The model's output width: target values or classes per example.
    pub fn output_dim(&self) -> usize {
        match &self.targets {
            Targets::Values { dim, .. } => *dim,
            Targets::Classes { classes, .. } => *classes,
        }
    }

    /// A canonical description of the dataset's dimensions (not its values),
    /// part of the architecture fingerprint.
    pub fn signature(&self) -> String {
        let targets = match &self.targets {
            Targets::Values { dim, .. } => format!("values:{dim}"),
            Targets::Classes { classes, .. } => format!("classes:{classes}"),
        };
        format!(
            "dataset={} n={} inputs={} targets={targets}",
            self.kind, self.n, self.input_dim
        )
    }

    /// Copies the examples `idx` into `x` (inputs) and `y`/`c` (targets,
    /// depending on the kind).
    pub fn gather(&self, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<f32>, c: &mut Vec<u32>) {
        let d = self.input_dim;
        x.clear();
        y.clear();
        c.clear();
        for &i in idx {
            x.extend_from_slice(&self.inputs[i * d..(i + 1) * d]);
        }
        match &self.targets {
            Targets::Values { dim, data } => {
                for &i in idx {
                    y.extend_from_slice(&data[i * dim..(i + 1) * dim]);
                }
            }
            Targets::Classes { labels, .. } => c.extend(idx.iter().map(|&i| labels[i])),
        }
    }
}

impl Dataset {
    /// The examples `idx`, in that order, as a dataset of their own.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let (mut x, mut y, mut c) = (Vec::new(), Vec::new(), Vec::new());
        self.gather(idx, &mut x, &mut y, &mut c);
        let targets = match &self.targets {
            Targets::Values { dim, .. } => Targets::Values { dim: *dim, data: y },
            Targets::Classes { classes, .. } => Targets::Classes {
                classes: *classes,
                labels: c,
            },
        };
        Dataset {
            kind: self.kind,
            n: idx.len(),
            input_dim: self.input_dim,
            inputs: x,
            targets,
            scaling: self.scaling.clone(),
        }
    }

    /// Splits off `round(n * fraction)` examples for validation, chosen by
    /// a shuffle driven by the seed alone; both parts keep the dataset's
    /// order. Returns `(training, validation)`; with `fraction == 0` the
    /// validation part is empty.
    pub fn split(self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), TrainError> {
        let n = self.n;
        let n_val = (n as f64 * fraction).round() as usize;
        if fraction == 0.0 {
            let empty = self.subset(&[]);
            return Ok((self, empty));
        }
        let n_train = n.saturating_sub(n_val);
        if n_val == 0 || n_train == 0 {
            return Err(TrainError::Dataset {
                kind: self.kind.to_string(),
                message: format!(
                    "{n} examples with validation_fraction = {fraction} leave {n_train} for \
                     training and {n_val} for validation; at least one of each is needed \
                     (use more data, change validation_fraction, or set it to 0 to train without validation)"
                ),
            });
        }
        let order = super::rng::epoch_permutation_in(seed, super::rng::stream::SPLIT, 0, n);
        let mut val: Vec<usize> = order[..n_val].to_vec();
        let mut train: Vec<usize> = order[n_val..].to_vec();
        val.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(&train), self.subset(&val)))
    }
}

/// Builds the dataset described by `cfg` for a model trained with `loss`.
pub fn build(cfg: &DatasetConfig, loss: Loss, seed: u64) -> Result<Dataset, TrainError> {
    let ds = match cfg {
        DatasetConfig::Seed { n, noise_std } => seed_line(*n, *noise_std, loss, seed)?,
        DatasetConfig::Synthetic {
            n,
            input_dim,
            output_dim,
            noise_std,
            data_seed,
        } => synthetic(
            *n,
            *input_dim,
            *output_dim,
            *noise_std,
            loss,
            data_seed.unwrap_or(seed),
        )?,
        DatasetConfig::Csv {
            path,
            targets,
            inputs,
            classes,
            standardize_inputs,
            standardize_targets,
        } => load_csv(
            path,
            targets,
            inputs.as_deref(),
            *classes,
            *standardize_inputs,
            *standardize_targets,
            loss,
        )?,
        DatasetConfig::Diabetes {
            standardize_inputs,
            standardize_targets,
        } => diabetes(loss, *standardize_inputs, *standardize_targets)?,
        DatasetConfig::Winequality { standardize_inputs } => {
            winequality(loss, *standardize_inputs)?
        }
    };
    if ds.n == 0 {
        return Err(dataset_error(ds.kind, "the dataset has no examples"));
    }
    if ds.input_dim == 0 {
        return Err(dataset_error(ds.kind, "the dataset has no input columns"));
    }
    Ok(ds)
}

fn dataset_error(kind: &str, message: impl Into<String>) -> TrainError {
    TrainError::Dataset {
        kind: kind.to_string(),
        message: message.into(),
    }
}

/// The tutorial data: `y = 10 x + 1 + noise`, `x` uniform in `[-1, 1)`.
fn seed_line(n: usize, noise_std: f32, loss: Loss, seed: u64) -> Result<Dataset, TrainError> {
    if loss != Loss::Mse {
        return Err(dataset_error(
            "seed",
            "the seed dataset is a regression: use loss = \"mse\"",
        ));
    }
    if !(noise_std >= 0.0 && noise_std.is_finite()) {
        return Err(dataset_error(
            "seed",
            format!("noise_std must be a finite number >= 0, got {noise_std}"),
        ));
    }
    let mut rng = Xoshiro256::derive(seed, stream::DATA, 0);
    let mut inputs = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    for _ in 0..n {
        let x = rng.uniform(-1.0, 1.0);
        inputs.push(x);
        data.push(10.0 * x + 1.0 + noise_std * rng.normal());
    }
    Ok(Dataset {
        kind: "seed",
        n,
        input_dim: 1,
        inputs,
        targets: Targets::Values { dim: 1, data },
        scaling: Scaling::default(),
    })
}

/// Random inputs (uniform with unit variance) and targets from a fixed random
/// linear "teacher": its outputs for MSE, or their argmax for cross-entropy.
fn synthetic(
    n: usize,
    input_dim: usize,
    output_dim: usize,
    noise_std: f32,
    loss: Loss,
    data_seed: u64,
) -> Result<Dataset, TrainError> {
    if input_dim == 0 || output_dim == 0 {
        return Err(dataset_error(
            "synthetic",
            format!(
                "input_dim and output_dim must be at least 1 (got {input_dim} and {output_dim})"
            ),
        ));
    }
    if loss == Loss::CrossEntropy && output_dim < 2 {
        return Err(dataset_error(
            "synthetic",
            "with cross_entropy, output_dim is the number of classes and must be at least 2",
        ));
    }
    if !(noise_std >= 0.0 && noise_std.is_finite()) {
        return Err(dataset_error(
            "synthetic",
            format!("noise_std must be a finite number >= 0, got {noise_std}"),
        ));
    }
    let len = n.checked_mul(input_dim).ok_or_else(|| {
        dataset_error(
            "synthetic",
            format!("n * input_dim = {n} * {input_dim} is too large"),
        )
    })?;
    let mut rng = Xoshiro256::derive(data_seed, stream::DATA, 0);
    let bound = 3f32.sqrt();
    let inputs: Vec<f32> = (0..len).map(|_| rng.uniform(-bound, bound)).collect();
    let scale = 1.0 / (input_dim as f32).sqrt();
    let teacher: Vec<f32> = (0..output_dim * input_dim)
        .map(|_| rng.uniform(-scale, scale) * bound)
        .collect();
    let mut out = vec![0.0f32; output_dim];
    let targets = match loss {
        Loss::Mse => {
            let mut data = Vec::with_capacity(n * output_dim);
            for x in inputs.chunks_exact(input_dim) {
                for w in teacher.chunks_exact(input_dim) {
                    let noise = if noise_std > 0.0 {
                        noise_std * rng.normal()
                    } else {
                        0.0
                    };
                    data.push(dot(x, w) + noise);
                }
            }
            Targets::Values {
                dim: output_dim,
                data,
            }
        }
        Loss::CrossEntropy => {
            let mut labels = Vec::with_capacity(n);
            for x in inputs.chunks_exact(input_dim) {
                for (o, w) in out.iter_mut().zip(teacher.chunks_exact(input_dim)) {
                    let noise = if noise_std > 0.0 {
                        noise_std * rng.normal()
                    } else {
                        0.0
                    };
                    *o = dot(x, w) + noise;
                }
                labels.push(argmax(&out) as u32);
            }
            Targets::Classes {
                classes: output_dim,
                labels,
            }
        }
    };
    Ok(Dataset {
        kind: "synthetic",
        n,
        input_dim,
        inputs,
        targets,
        scaling: Scaling::default(),
    })
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Standardises each column of `raw` (`[n, d]`) to zero mean and unit
/// (population) variance with the statistics of the data itself; a constant
/// column is only centred (its std is taken as 1). Sums are taken in f64 in
/// row order. Returns the data and each column's mean and std.
fn standardize(raw: &[f64], d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = raw.len() / d.max(1);
    let mut mean = vec![0.0f64; d];
    let mut var = vec![0.0f64; d];
    for row in raw.chunks_exact(d) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    for row in raw.chunks_exact(d) {
        for ((v, x), m) in var.iter_mut().zip(row).zip(&mean) {
            *v += (x - m) * (x - m);
        }
    }
    let std: Vec<f64> = var
        .iter()
        .map(|v| {
            let s = (v / n as f64).sqrt();
            if s > 1e-12 {
                s
            } else {
                1.0
            }
        })
        .collect();
    let data = raw
        .chunks_exact(d)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .zip(&std)
                .map(|((x, m), s)| ((x - m) / s) as f32)
        })
        .collect();
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect();
    (data, f32s(&mean), f32s(&std))
}

/// The inputs, standardised when `on` (with their statistics), else as f32.
fn scale_inputs(raw: &[f64], d: usize, on: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    if on {
        standardize(raw, d)
    } else {
        (
            raw.iter().map(|&x| x as f32).collect(),
            Vec::new(),
            Vec::new(),
        )
    }
}

/// Turns raw f64 targets into [`Targets`]: values for MSE (optionally
/// standardised), class indices for cross-entropy. `locate(row, col)` names
/// the place of a bad value in error messages.
fn make_targets(
    raw: &[f64],
    k: usize,
    loss: Loss,
    classes: Option<usize>,
    standardize_targets: bool,
    scaling: &mut Scaling,
    locate: &dyn Fn(usize, usize, String) -> TrainError,
) -> Result<Targets, TrainError> {
    match loss {
        Loss::Mse => {
            let (data, mean, std) = scale_inputs(raw, k, standardize_targets);
            scaling.target_mean = mean;
            scaling.target_std = std;
            Ok(Targets::Values { dim: k, data })
        }
        Loss::CrossEntropy => {
            if k != 1 {
                return Err(locate(
                    0,
                    usize::MAX,
                    format!("cross_entropy needs exactly one target column (the class), got {k}"),
                ));
            }
            let mut labels = Vec::with_capacity(raw.len());
            for (row, &v) in raw.iter().enumerate() {
                if v.fract() != 0.0 || !(0.0..=f64::from(u32::MAX >> 1)).contains(&v) {
                    return Err(locate(
                        row,
                        0,
                        format!("class label {v} is not a non-negative integer"),
                    ));
                }
                labels.push(v as u32);
            }
            let max = labels.iter().copied().max().unwrap_or(0) as usize;
            let classes = match classes {
                Some(c) => {
                    if let Some(row) = labels.iter().position(|&l| l as usize >= c) {
                        return Err(locate(
                            row,
                            0,
                            format!(
                                "class label {} is out of range for classes = {c}",
                                labels[row]
                            ),
                        ));
                    }
                    c
                }
                None => max + 1,
            };
            if classes < 2 {
                return Err(locate(
                    0,
                    usize::MAX,
                    format!("cross_entropy needs at least 2 classes, got {classes}"),
                ));
            }
            Ok(Targets::Classes { classes, labels })
        }
    }
}

/// Splits one CSV line into fields: comma-separated, surrounding whitespace
/// trimmed, double-quoted fields may contain commas and `""` for a quote.
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".to_string()),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_string());
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field.trim().to_string());
                        break;
                    }
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

/// Loads a CSV file with a header row and numeric columns.
fn load_csv(
    path: &Path,
    target_names: &[String],
    input_names: Option<&[String]>,
    classes: Option<usize>,
    standardize_inputs: bool,
    standardize_targets: bool,
    loss: Loss,
) -> Result<Dataset, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let csv_err = |line: usize, column: &str, message: String| TrainError::Csv {
        path: path.to_path_buf(),
        line,
        column: column.to_string(),
        message,
    };
    // (line number, content) of the non-blank lines.
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let (header_line, header) = lines.next().ok_or_else(|| {
        csv_err(
            1,
            "-",
            "the file is empty (a header row is expected)".into(),
        )
    })?;
    let header = split_csv_line(header.trim_start_matches('\u{feff}'))
        .map_err(|m| csv_err(header_line, "-", m))?;
    for (i, name) in header.iter().enumerate() {
        if name.is_empty() {
            return Err(csv_err(
                header_line,
                &format!("#{}", i + 1),
                "empty column name".into(),
            ));
        }
        if header[..i].contains(name) {
            return Err(csv_err(header_line, name, "duplicate column name".into()));
        }
    }
    if target_names.is_empty() {
        return Err(TrainError::Config(format!(
            "dataset.targets is empty: name the target column(s) of {}",
            path.display()
        )));
    }
    let find = |name: &String, what: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            csv_err(
                header_line,
                name,
                format!(
                    "{what} column not found in the header (columns: {})",
                    header.join(", ")
                ),
            )
        })
    };
    let target_cols = target_names
        .iter()
        .map(|n| find(n, "target"))
        .collect::<Result<Vec<_>, _>>()?;
    let input_cols: Vec<usize> = match input_names {
        Some(names) => names
            .iter()
            .map(|n| find(n, "input"))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..header.len())
            .filter(|i| !target_cols.contains(i))
            .collect(),
    };
    if let Some(c) = input_cols.iter().find(|c| target_cols.contains(c)) {
        return Err(csv_err(
            header_line,
            &header[*c],
            "column is both an input and a target".into(),
        ));
    }
    if input_cols.is_empty() {
        return Err(csv_err(
            header_line,
            "-",
            "no input columns remain besides the targets".into(),
        ));
    }

    let (d, k) = (input_cols.len(), target_cols.len());
    let mut raw_x = Vec::new();
    let mut raw_y = Vec::new();
    let mut row_lines = Vec::new();
    for (line_no, line) in lines {
        let fields = split_csv_line(line).map_err(|m| csv_err(line_no, "-", m))?;
        if fields.len() != header.len() {
            return Err(csv_err(
                line_no,
                "-",
                format!(
                    "expected {} fields as in the header, found {}",
                    header.len(),
                    fields.len()
                ),
            ));
        }
        let parse = |c: usize| -> Result<f64, TrainError> {
            let f = &fields[c];
            if f.is_empty() {
                return Err(csv_err(line_no, &header[c], "empty value".into()));
            }
            match f.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(csv_err(
                    line_no,
                    &header[c],
                    format!("{f:?} is not a finite number"),
                )),
            }
        };
        for &c in &input_cols {
            raw_x.push(parse(c)?);
        }
        for &c in &target_cols {
            raw_y.push(parse(c)?);
        }
        row_lines.push(line_no);
    }
    let n = row_lines.len();
    if n == 0 {
        return Err(csv_err(
            header_line,
            "-",
            "no data rows after the header".into(),
        ));
    }
    let locate = |row: usize, col: usize, message: String| {
        let column = if col == usize::MAX {
            "-"
        } else {
            &header[target_cols[col]]
        };
        let line = if col == usize::MAX {
            header_line
        } else {
            row_lines[row]
        };
        csv_err(line, column, message)
    };
    assemble(
        "csv",
        (n, d, k),
        (&raw_x, &raw_y),
        (loss, classes),
        (standardize_inputs, standardize_targets),
        &locate,
    )
}

/// The diabetes regression dataset (442 patients, 10 features, disease
/// progression after one year) shipped with `linfa-datasets`.
fn diabetes(
    loss: Loss,
    standardize_inputs: bool,
    standardize_targets: bool,
) -> Result<Dataset, TrainError> {
    if loss != Loss::Mse {
        return Err(dataset_error(
            "diabetes",
            "the diabetes dataset is a regression: use loss = \"mse\"",
        ));
    }
    let ds = linfa_datasets::diabetes();
    let (n, d) = (ds.records.nrows(), ds.records.ncols());
    let raw_x: Vec<f64> = ds.records.iter().copied().collect();
    let raw_y: Vec<f64> = ds.targets.iter().copied().collect();
    let locate = |row: usize, _col: usize, message: String| {
        dataset_error("diabetes", format!("example {row}: {message}"))
    };
    assemble(
        "diabetes",
        (n, d, 1),
        (&raw_x, &raw_y),
        (loss, None),
        (standardize_inputs, standardize_targets),
        &locate,
    )
}

/// The red wine quality dataset (1599 wines, 11 features, quality score 3–8)
/// shipped with `linfa-datasets`: the score is the class for cross-entropy
/// (classes `0..=8`, of which 3–8 occur) or the value for MSE.
fn winequality(loss: Loss, standardize_inputs: bool) -> Result<Dataset, TrainError> {
    let ds = linfa_datasets::winequality();
    let (n, d) = (ds.records.nrows(), ds.records.ncols());
    let raw_x: Vec<f64> = ds.records.iter().copied().collect();
    let raw_y: Vec<f64> = ds.targets.iter().map(|&q| q as f64).collect();
    let locate = |row: usize, _col: usize, message: String| {
        dataset_error("winequality", format!("example {row}: {message}"))
    };
    assemble(
        "winequality",
        (n, d, 1),
        (&raw_x, &raw_y),
        (loss, None),
        (standardize_inputs, false),
        &locate,
    )
}

/// A dataset from raw row-major inputs (`n × d`) and targets (`n × k`):
/// targets made for `loss` (scaled when asked, for MSE), inputs scaled when
/// asked, the scaling recorded.
fn assemble(
    kind: &'static str,
    (n, d, k): (usize, usize, usize),
    (raw_x, raw_y): (&[f64], &[f64]),
    (loss, classes): (Loss, Option<usize>),
    (standardize_inputs, standardize_targets): (bool, bool),
    locate: &dyn Fn(usize, usize, String) -> TrainError,
) -> Result<Dataset, TrainError> {
    let mut scaling = Scaling::default();
    let targets = make_targets(
        raw_y,
        k,
        loss,
        classes,
        standardize_targets,
        &mut scaling,
        locate,
    )?;
    let (inputs, input_mean, input_std) = scale_inputs(raw_x, d, standardize_inputs);
    scaling.input_mean = input_mean;
    scaling.input_std = input_std;
    Ok(Dataset {
        kind,
        n,
        input_dim: d,
        inputs,
        targets,
        scaling,
    })
}

/// Dot product with sixteen fixed partial sums combined in a fixed order
/// (the synthetic teacher's outputs, so generated data never changes).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..L {
            acc[k] += x[k] * y[k];
        }
    }
    // Fixed pairwise tree over the sixteen lanes.
    let mut width = L / 2;
    while width > 0 {
        for k in 0..width {
            acc[k] += acc[k + width];
        }
        width /= 2;
    }
    let mut sum = acc[0];
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_csv(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".csv")
            .tempfile()
            .expect("temp file");
        f.write_all(content.as_bytes()).expect("write");
        f
    }

    fn csv_cfg(path: &Path, targets: &[&str]) -> DatasetConfig {
        DatasetConfig::Csv {
            path: path.to_path_buf(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            inputs: None,
            classes: None,
            standardize_inputs: true,
            standardize_targets: false,
        }
    }

    #[test]
    fn split_handles_quotes_and_spaces() {
        assert_eq!(split_csv_line(" a , b,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_csv_line("\"x, y\" ,\"q\"\"\"").unwrap(),
            ["x, y", "q\""]
        );
        assert_eq!(split_csv_line("1,,2").unwrap(), ["1", "", "2"]);
        assert!(split_csv_line("\"open").is_err());
    }

    #[test]
    fn csv_regression_is_parsed_and_standardised() {
        let f = write_csv("x1,x2,y\n1,10,0.5\n\n2,10,1.5\n3,10,2.5\n");
        let ds = build(&csv_cfg(f.path(), &["y"]), Loss::Mse, 0).expect("loads");
        assert_eq!((ds.n, ds.input_dim, ds.output_dim()), (3, 2, 1));
        let s = 1.5f64.sqrt();
        let want = [-s, 0.0, 0.0, 0.0, s, 0.0];
        for (g, w) in ds.inputs.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{:?}", ds.inputs);
        }
        assert_eq!(
            ds.targets,
            Targets::Values {
                dim: 1,
                data: vec![0.5, 1.5, 2.5]
            }
        );
        assert!(ds.signature().contains("n=3 inputs=2 targets=values:1"));
    }

    #[test]
    fn csv_classification_labels() {
        let f = write_csv("a,label,b\n0.1,2,5\n0.2,0,6\n0.3,1,7\n");
        let ds = build(&csv_cfg(f.path(), &["label"]), Loss::CrossEntropy, 0).expect("loads");
        assert_eq!(
            ds.targets,
            Targets::Classes {
                classes: 3,
                labels: vec![2, 0, 1]
            }
        );
        assert_eq!(ds.input_dim, 2);
    }

    fn csv_error(content: &str, targets: &[&str], loss: Loss) -> String {
        let f = write_csv(content);
        let err = build(&csv_cfg(f.path(), targets), loss, 0).expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains(&f.path().display().to_string()),
            "message should name the file: {msg}"
        );
        msg
    }

    #[test]
    fn csv_errors_name_file_line_and_column() {
        let m = csv_error("x,y\n1,2\n3,abc\n", &["y"], Loss::Mse);
        assert!(
            m.contains(":3:") && m.contains("column y") && m.contains("abc"),
            "{m}"
        );
        let m = csv_error("x,y\n1,2\n3\n", &["y"], Loss::Mse);
        assert!(m.contains(":3:") && m.contains("expected 2 fields"), "{m}");
        let m = csv_error("x,y\n1,2\n", &["z"], Loss::Mse);
        assert!(
            m.contains(":1:") && m.contains("column z") && m.contains("not found"),
            "{m}"
        );
        let m = csv_error("x,y\n1,\n", &["y"], Loss::Mse);
        assert!(m.contains(":2:") && m.contains("empty value"), "{m}");
        let m = csv_error("x,c\n1,0\n2,1.5\n", &["c"], Loss::CrossEntropy);
        assert!(
            m.contains(":3:") && m.contains("column c") && m.contains("1.5"),
            "{m}"
        );
        let m = csv_error("x,y\n", &["y"], Loss::Mse);
        assert!(m.contains("no data rows"), "{m}");
        let m = csv_error("x,x,y\n1,2,3\n", &["y"], Loss::Mse);
        assert!(m.contains("duplicate"), "{m}");
        let m = csv_error("x,y\n1,inf\n", &["y"], Loss::Mse);
        assert!(m.contains("not a finite number"), "{m}");
    }

    #[test]
    fn missing_csv_file_names_the_path() {
        let err = build(
            &csv_cfg(Path::new("/nonexistent/data.csv"), &["y"]),
            Loss::Mse,
            0,
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/data.csv"), "{err}");
    }

    #[test]
    fn synthetic_is_deterministic_and_sized() {
        let cfg = DatasetConfig::Synthetic {
            n: 100,
            input_dim: 7,
            output_dim: 3,
            noise_std: 0.1,
            data_seed: None,
        };
        let a = build(&cfg, Loss::Mse, 5).unwrap();
        let b = build(&cfg, Loss::Mse, 5).unwrap();
        let c = build(&cfg, Loss::Mse, 6).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.inputs, c.inputs);
        assert_eq!((a.n, a.input_dim, a.output_dim()), (100, 7, 3));
        let ce = build(&cfg, Loss::CrossEntropy, 5).unwrap();
        match ce.targets {
            Targets::Classes { classes, labels } => {
                assert_eq!(classes, 3);
                assert!(labels.iter().all(|&l| l < 3));
                // A random teacher should use more than one class.
                assert!(labels.iter().any(|&l| l != labels[0]));
            }
            other => panic!("expected classes, got {other:?}"),
        }
    }

    #[test]
    fn linfa_datasets_load() {
        let d = build(
            &DatasetConfig::Diabetes {
                standardize_inputs: true,
                standardize_targets: false,
            },
            Loss::Mse,
            0,
        )
        .unwrap();
        assert_eq!((d.input_dim, d.output_dim()), (10, 1));
        assert!(d.n > 400);
        let w = build(
            &DatasetConfig::Winequality {
                standardize_inputs: true,
            },
            Loss::CrossEntropy,
            0,
        )
        .unwrap();
        assert_eq!((w.n, w.input_dim, w.output_dim()), (1599, 11, 9));
        assert!(build(
            &DatasetConfig::Diabetes {
                standardize_inputs: true,
                standardize_targets: false
            },
            Loss::CrossEntropy,
            0
        )
        .is_err());
    }
}
