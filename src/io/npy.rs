//! NumPy `.npy` files and model export for NumPy/SciPy/MATLAB/R users.
//!
//! # `.npy` as written here
//!
//! Format version 1.0: the magic `\x93NUMPY`, bytes `1, 0`, a little-endian `u16` header
//! length, then an ASCII Python-dict header
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (rows, cols), }` padded with spaces
//! and a final `\n` so that the data starts at a multiple of 64 bytes, then the values in
//! C (row-major) order, little-endian (`'<f8'` for `f64`, `'<f4'` for `f32`). A vector is
//! written with shape `(n,)`. `numpy.load` reads these files directly.
//!
//! The reader ([`read_npy`]) accepts versions 1.0, 2.0 and 3.0 with dtype `'<f8'` or
//! `'<f4'` in C order; anything else is a clean error.
//!
//! # Model export ([`export_model`])
//!
//! Writes into a directory:
//! * `params.npy` (or `params.csv`): the flat parameter vector
//!   `[vec(W1), b1, bn1.weight, bn1.bias, vec(W2), ...]`, `vec` the row-major flatten of
//!   the `(out x in)` matrix (PyTorch's `named_parameters()` order);
//! * one file per named tensor, `layers.{p}.weight.npy` (shape `(out, in)`),
//!   `layers.{p}.bias.npy` (shape `(out,)`), BatchNorm parameters and running
//!   statistics (`layers.{p}.bn.running_mean.npy`, ...);
//! * `manifest.json`: `format` = `"landscape-export"`, `format_version` = 1, `dtype`,
//!   `file_format`, `num_params`, `config` (the [`MlpConfig`](crate::nn::MlpConfig) JSON),
//!   `params_file`, and `tensors`: a list of `{name, file, kind ("param" or "buffer"),
//!   shape, offset, size}` where `params[offset .. offset + size]` is the tensor's
//!   row-major flatten (`offset` is `null` for buffers, which are not parameters), plus
//!   `provenance` when one is given.
//!
//! With [`ExportFormat::Csv`] the same files are written as text (`.csv`): a matrix as
//! one line per row, a vector as one value per line, numbers in Rust's shortest
//! round-trip representation (reading them back gives the same bits).

use super::provenance::Provenance;
use crate::error::{Error, Result};
use crate::nn::Mlp;
use crate::tensor::{Matrix, Scalar};
use serde::Serialize;
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// File format of [`export_model`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// NumPy `.npy` (binary, the model's dtype).
    #[default]
    Npy,
    /// Comma-separated text, full precision.
    Csv,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Npy => "npy",
            ExportFormat::Csv => "csv",
        }
    }
}

/// `.npy` bytes of a C-order array with the given shape (`&[]` for a scalar).
pub fn npy_bytes<T: Scalar>(shape: &[usize], data: &[T]) -> Result<Vec<u8>> {
    let numel: usize = shape.iter().product();
    if numel != data.len() {
        return Err(Error::Shape(format!(
            "npy: shape {shape:?} holds {numel} values, got {}",
            data.len()
        )));
    }
    let descr = if T::DTYPE == "f32" { "<f4" } else { "<f8" };
    let shape_txt = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic (6) + version (2) + header length (2) + header, padded to 64 with a final '\n'.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    if header.len() > u16::MAX as usize {
        return Err(Error::Shape(format!(
            "npy: shape {shape:?} makes the header too long"
        )));
    }
    let width = if T::DTYPE == "f32" { 4 } else { 8 };
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * width);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        if T::DTYPE == "f32" {
            out.extend_from_slice(&(v.to_f64() as f32).to_le_bytes());
        } else {
            out.extend_from_slice(&v.to_f64().to_le_bytes());
        }
    }
    Ok(out)
}

/// Writes a C-order array to a `.npy` file.
pub fn write_npy<T: Scalar>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let bytes = npy_bytes(shape, data)?;
    super::write_atomic(path, &bytes)
}

/// Writes a vector as a 1-D `.npy` array of shape `(n,)`.
pub fn write_vector_npy<T: Scalar>(path: &Path, v: &[T]) -> Result<()> {
    write_npy(path, &[v.len()], v)
}

/// Writes a matrix as a 2-D `.npy` array of shape `(rows, cols)`.
pub fn write_matrix_npy<T: Scalar>(path: &Path, m: &Matrix<T>) -> Result<()> {
    write_npy(path, &[m.rows(), m.cols()], m.as_slice())
}

/// Element type of an `.npy` file read by [`read_npy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F64,
    /// Integers (signed or not) of 1, 2, 4 or 8 bytes: values widened to `f64`
    /// (exact up to 2^53).
    Int {
        signed: bool,
        bytes: u8,
    },
    Bool,
}

impl NpyDtype {
    pub fn is_integer(self) -> bool {
        matches!(self, NpyDtype::Int { .. } | NpyDtype::Bool)
    }
}

/// An array read from an `.npy` file; values widened to `f64`, C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl NpyArray {
    /// The array as a matrix: 2-D as is, 1-D as a `1 x n` row vector.
    pub fn to_matrix<T: Scalar>(&self) -> Result<Matrix<T>> {
        let (r, c) = match self.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            s => {
                return Err(Error::Shape(format!(
                    "npy array of shape {s:?} is not a matrix"
                )))
            }
        };
        Ok(Matrix::from_vec(
            r,
            c,
            self.data.iter().map(|&v| T::from_f64(v)).collect(),
        ))
    }
}

/// Reads an `.npy` file (versions 1-3; floats `f4`/`f8`, integers `i1`..`i8`,
/// `u1`..`u8`, `b1`, either byte order; C order).
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(path, &bytes)
}

/// Parses `.npy` bytes (`path` only names the file in errors).
pub fn parse_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    let bad = |what: String, loc: &str| Error::malformed(path, what, loc);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not an .npy file (bad magic)".into(), "byte 0"));
    }
    let major = bytes[6];
    let (hlen, hstart): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header length".into(), "byte 8"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(format!("unsupported .npy version {v}"), "byte 6")),
    };
    let header = bytes
        .get(hstart..hstart.saturating_add(hlen))
        .ok_or_else(|| bad("header runs past the end of the file".into(), "header"))?;
    let header =
        std::str::from_utf8(header).map_err(|_| bad("header is not text".into(), "header"))?;
    let descr =
        dict_value(header, "descr").ok_or_else(|| bad("header has no 'descr'".into(), "header"))?;
    let code = descr.trim_matches(|c| c == '\'' || c == '"');
    let (order, kind) = code.split_at(code.len().min(1));
    let big = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(bad(format!("unsupported dtype '{code}'"), "header 'descr'")),
    };
    let dtype = match kind {
        "f8" => NpyDtype::F64,
        "f4" => NpyDtype::F32,
        "b1" => NpyDtype::Bool,
        k if (k.starts_with('i') || k.starts_with('u'))
            && matches!(&k[1..], "1" | "2" | "4" | "8") =>
        {
            NpyDtype::Int {
                signed: k.starts_with('i'),
                bytes: k[1..].parse().expect("1, 2, 4 or 8"),
            }
        }
        _ => {
            return Err(bad(
                format!(
                "unsupported dtype '{code}' (expected floats f4/f8, integers i1..i8/u1..u8 or b1)"
            ),
                "header 'descr'",
            ))
        }
    };
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| bad("header has no 'fortran_order'".into(), "header"))?;
    if fortran.trim() != "False" {
        return Err(bad(
            "Fortran-order arrays are not supported".into(),
            "header 'fortran_order'",
        ));
    }
    let shape_txt =
        dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'".into(), "header"))?;
    let inner = shape_txt
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(format!("bad shape '{shape_txt}'"), "header 'shape'"))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        shape.push(
            part.parse::<usize>()
                .map_err(|_| bad(format!("bad shape '{shape_txt}'"), "header 'shape'"))?,
        );
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows"), "header 'shape'"))?;
    let width = match dtype {
        NpyDtype::F32 => 4,
        NpyDtype::F64 => 8,
        NpyDtype::Int { bytes, .. } => bytes as usize,
        NpyDtype::Bool => 1,
    };
    let body = &bytes[hstart + hlen..];
    if numel.checked_mul(width) != Some(body.len()) {
        return Err(bad(
            format!(
                "data has {} bytes, shape {shape:?} of {descr} needs {}",
                body.len(),
                numel.saturating_mul(width)
            ),
            "data",
        ));
    }
    let data = body
        .chunks_exact(width)
        .map(|c| {
            // Little-endian bytes of the element.
            let mut le = [0u8; 8];
            le[..width].copy_from_slice(c);
            if big {
                le[..width].reverse();
            }
            match dtype {
                NpyDtype::F64 => f64::from_le_bytes(le),
                NpyDtype::F32 => f32::from_le_bytes(le[..4].try_into().expect("4 bytes")) as f64,
                NpyDtype::Bool => (le[0] != 0) as u8 as f64,
                NpyDtype::Int { signed, bytes } => {
                    let bits = 8 * bytes as u32;
                    let u = u64::from_le_bytes(le);
                    if signed && bits < 64 && (u >> (bits - 1)) & 1 == 1 {
                        // Sign-extend.
                        (u | (!0u64 << bits)) as i64 as f64
                    } else if signed {
                        u as i64 as f64
                    } else {
                        u as f64
                    }
                }
            }
        })
        .collect();
    Ok(NpyArray { dtype, shape, data })
}

/// The text of `'key': value` in a Python dict literal (value up to the next top-level
/// comma or the closing brace; parentheses nest).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}'");
    let pat_double = format!("\"{key}\"");
    let pos = header
        .find(&pat_single)
        .map(|p| p + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|p| p + pat_double.len()))?;
    let rest = header[pos..].trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// CSV text: one line per row of a `rows x cols` C-order array (a vector: one per line).
fn csv_text<T: Scalar>(shape: &[usize], data: &[T]) -> String {
    let cols = if shape.len() == 2 { shape[1].max(1) } else { 1 };
    let mut s = String::new();
    for row in data.chunks(cols) {
        let line: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        s.push_str(&line.join(","));
        s.push('\n');
    }
    s
}

#[derive(Serialize)]
struct ManifestTensor {
    name: String,
    file: String,
    kind: &'static str,
    shape: Vec<usize>,
    offset: Option<usize>,
    size: usize,
}

/// Exports `model` into `dir` (created if needed); see the module docs for the layout.
pub fn export_model<T: Scalar>(model: &Mlp<T>, dir: &Path, format: ExportFormat) -> Result<()> {
    export_model_with_provenance(model, dir, format, None)
}

/// [`export_model`] with a `provenance` entry in `manifest.json`.
pub fn export_model_with_provenance<T: Scalar>(
    model: &Mlp<T>,
    dir: &Path,
    format: ExportFormat,
    provenance: Option<&Provenance>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let ext = format.extension();
    let write = |file: &str, shape: &[usize], data: &[T]| -> Result<()> {
        let path = dir.join(file);
        match format {
            ExportFormat::Npy => write_npy(&path, shape, data),
            ExportFormat::Csv => super::write_atomic(&path, csv_text(shape, data).as_bytes()),
        }
    };
    let shape_of = |name: &str, m: &Matrix<T>| -> Vec<usize> {
        let is_linear_weight = name.ends_with(".weight") && !name.ends_with(".bn.weight");
        if is_linear_weight {
            vec![m.rows(), m.cols()]
        } else {
            vec![m.len()]
        }
    };
    let params = model.param_vector();
    let params_file = format!("params.{ext}");
    write(&params_file, &[params.len()], &params)?;
    let mut tensors = Vec::new();
    let mut offset = 0;
    for (name, m) in model.named_params() {
        let file = format!("{name}.{ext}");
        let shape = shape_of(&name, m);
        write(&file, &shape, m.as_slice())?;
        tensors.push(ManifestTensor {
            name,
            file,
            kind: "param",
            shape,
            offset: Some(offset),
            size: m.len(),
        });
        offset += m.len();
    }
    for (name, m) in model.named_buffers() {
        let file = format!("{name}.{ext}");
        let shape = vec![m.len()];
        write(&file, &shape, m.as_slice())?;
        tensors.push(ManifestTensor {
            name,
            file,
            kind: "buffer",
            shape,
            offset: None,
            size: m.len(),
        });
    }
    let mut manifest = serde_json::json!({
        "format": "landscape-export",
        "format_version": 1,
        "file_format": format,
        "dtype": T::DTYPE,
        "num_params": params.len(),
        "param_order": "[vec(W1), b1, bn1.weight, bn1.bias, vec(W2), ...]; vec = row-major flatten of the (out x in) weight",
        "config": model.config,
        "params_file": params_file,
        "tensors": tensors,
    });
    if let Some(p) = provenance {
        manifest["provenance"] = serde_json::to_value(p).expect("provenance serialises");
    }
    let mut text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    text.push('\n');
    super::write_atomic(&dir.join("manifest.json"), text.as_bytes())
}

/// Exports any network: an MLP exactly as [`export_model`]; other architectures
/// as `params.{npy,csv}` (the flat parameter vector), one file per state-dict
/// tensor in its PyTorch shape (conv weights `(out, in, k, k)`), and a manifest
/// with the architecture and each BatchNorm's `num_batches_tracked`.
pub fn export_network<T: Scalar>(
    net: &crate::nn::Network<T>,
    dir: &Path,
    format: ExportFormat,
    provenance: Option<&Provenance>,
) -> Result<()> {
    use crate::nn::arch::TensorKind;
    if let Some(m) = net.to_mlp() {
        return export_model_with_provenance(&m, dir, format, provenance);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let ext = format.extension();
    let write = |file: &str, shape: &[usize], data: &[T]| -> Result<()> {
        let path = dir.join(file);
        match format {
            ExportFormat::Npy => write_npy(&path, shape, data),
            ExportFormat::Csv => super::write_atomic(&path, csv_text(shape, data).as_bytes()),
        }
    };
    let params = net.param_vector();
    let params_file = format!("params.{ext}");
    write(&params_file, &[params.len()], &params)?;
    let lay = net.arch.layout()?;
    let mut offsets = Vec::with_capacity(net.params.len());
    let mut off = 0;
    for p in &net.params {
        offsets.push(off);
        off += p.len();
    }
    let mut tensors = Vec::new();
    let mut counts = serde_json::Map::new();
    for t in &lay.tensors {
        let (m, kind, offset) = match t.kind {
            TensorKind::Param(i) => (&net.params[i], "param", Some(offsets[i])),
            TensorKind::RunningMean(b) => (&net.bn[b].running_mean, "buffer", None),
            TensorKind::RunningVar(b) => (&net.bn[b].running_var, "buffer", None),
            TensorKind::NumBatchesTracked(b) => {
                counts.insert(
                    t.name.clone(),
                    serde_json::json!(net.bn[b].num_batches_tracked),
                );
                continue;
            }
        };
        let file = format!("{}.{ext}", t.name);
        write(&file, &t.shape, m.as_slice())?;
        tensors.push(ManifestTensor {
            name: t.name.clone(),
            file,
            kind,
            shape: t.shape.clone(),
            offset,
            size: m.len(),
        });
    }
    let mut manifest = serde_json::json!({
        "format": "landscape-export",
        "format_version": 1,
        "file_format": format,
        "dtype": T::DTYPE,
        "num_params": params.len(),
        "param_order": "state-dict order of the trainable tensors, each flattened row-major in its PyTorch shape",
        "arch": net.arch,
        "params_file": params_file,
        "tensors": tensors,
        "num_batches_tracked": counts,
    });
    if let Some(p) = provenance {
        manifest["provenance"] = serde_json::to_value(p).expect("provenance serialises");
    }
    let mut text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    text.push('\n');
    super::write_atomic(&dir.join("manifest.json"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_alignment() {
        let p = Path::new("x.npy");
        for shape in [vec![], vec![3], vec![2, 3], vec![0, 4]] {
            let n: usize = shape.iter().product();
            let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.1 - 0.3).collect();
            let b = npy_bytes(&shape, &data).unwrap();
            let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
            assert_eq!(b[10 + hlen - 1], b'\n');
            let a = parse_npy(p, &b).unwrap();
            assert_eq!(a.shape, shape);
            assert_eq!(a.data, data);
            assert_eq!(a.dtype, NpyDtype::F64);
            let d32: Vec<f32> = data.iter().map(|&v| v as f32).collect();
            let a = parse_npy(p, &npy_bytes(&shape, &d32).unwrap()).unwrap();
            assert_eq!(a.dtype, NpyDtype::F32);
            assert_eq!(a.data, d32.iter().map(|&v| v as f64).collect::<Vec<_>>());
        }
        let b = npy_bytes(&[3], &[1.0f64, 2.0, 3.0]).unwrap();
        assert!(std::str::from_utf8(&b[10..74])
            .unwrap()
            .starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }"));
        assert!(parse_npy(p, &b[..b.len() - 1]).is_err());
        assert!(parse_npy(p, b"garbage").is_err());
        assert!(npy_bytes(&[2, 2], &[1.0f64]).is_err());
    }

    #[test]
    fn csv_is_shortest_round_trip() {
        let t = csv_text(&[2, 2], &[0.1f64, -2.0, 1e-300, 3.0]);
        assert_eq!(t, "0.1,-2.0\n1e-300,3.0\n");
        assert_eq!(csv_text(&[2], &[1.5f32, 2.0]), "1.5\n2.0\n");
    }
}
