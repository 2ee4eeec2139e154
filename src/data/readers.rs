//! File-format readers. Each takes the file's bytes (gzip is detected by its
//! `1f 8b` magic, not by the extension) and returns features and labels, or an
//! error that names the file, the problem and its location.
//!
//! * IDX images: magic `0x00000803`, big-endian `u32` dims `n, rows, cols`, then
//!   `n * rows * cols` unsigned bytes. IDX labels: magic `0x00000801`, `n`, then `n` bytes.
//! * CIFAR-10: records of 1 label byte + 3,072 pixel bytes (`R`, `G`, `B` planes of 32 x 32);
//!   CIFAR-100: coarse label byte, fine label byte (used), 3,072 pixel bytes.
//! * CSV: comma-separated numeric features and an integer label column (the last
//!   by default); a first row with a non-numeric feature cell is a header.

use crate::error::{Error, Result};
use crate::tensor::Matrix;
use byteorder::{BigEndian, ByteOrder};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where each label came from, for error messages.
#[derive(Clone, Debug)]
enum LabelOrigin {
    /// Byte offset of label `i` is `base + i * stride`.
    Bytes { base: usize, stride: usize },
    /// Element `i` of a named array.
    Element,
    /// 1-based line number of each row.
    Lines(Vec<usize>),
}

/// Features and labels as read from a file.
#[derive(Clone, Debug)]
pub struct Raw {
    pub x: Matrix<f64>,
    pub y: Vec<usize>,
    /// The file the labels came from.
    pub label_path: PathBuf,
    origin: LabelOrigin,
}

impl Raw {
    /// Pairs IDX images with IDX labels (counts must match).
    pub fn pair(label_path: &Path, x: Matrix<f64>, y: Vec<usize>) -> Result<Self> {
        if x.rows() != y.len() {
            return Err(Error::malformed(
                label_path,
                format!("{} labels for {} images", y.len(), x.rows()),
                "byte 4 (label count)",
            ));
        }
        Ok(Self {
            x,
            y,
            label_path: label_path.to_path_buf(),
            origin: LabelOrigin::Bytes { base: 8, stride: 1 },
        })
    }

    /// Human-readable location of label `i`.
    pub fn label_location(&self, i: usize) -> String {
        match &self.origin {
            LabelOrigin::Bytes { base, stride } if *stride == 1 => {
                format!("byte {}, label {i}", base + i)
            }
            LabelOrigin::Bytes { base, stride } => {
                format!("record {i}, byte {}", base + i * stride)
            }
            LabelOrigin::Lines(lines) => format!("line {}", lines[i]),
            LabelOrigin::Element => format!("element {i}"),
        }
    }

    /// Features and labels from arrays (`.npy` / `.npz`); counts must match.
    pub fn arrays(label_path: &Path, x: Matrix<f64>, y: Vec<usize>) -> Result<Self> {
        if x.rows() != y.len() {
            return Err(Error::malformed(
                label_path,
                format!("{} labels for {} samples", y.len(), x.rows()),
                "shape",
            ));
        }
        Ok(Self {
            x,
            y,
            label_path: label_path.to_path_buf(),
            origin: LabelOrigin::Element,
        })
    }
}

/// Decompresses gzip data (detected by magic); other data is returned as is.
pub fn maybe_gunzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::malformed(
                    path,
                    format!("corrupt gzip stream: {e}"),
                    format!("gzip stream (decompressed {} bytes)", out.len()),
                )
            })?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

fn idx_header(
    path: &Path,
    data: &[u8],
    magic: u32,
    ndims: usize,
    what: &str,
) -> Result<Vec<usize>> {
    if data.is_empty() {
        return Err(Error::malformed(path, "empty file", "byte 0"));
    }
    let header = 4 + 4 * ndims;
    if data.len() < header {
        return Err(Error::malformed(
            path,
            format!(
                "truncated header: {} bytes, an IDX {what} header has {header}",
                data.len()
            ),
            format!("byte {}", data.len()),
        ));
    }
    let got = BigEndian::read_u32(&data[0..4]);
    if got != magic {
        return Err(Error::malformed(
            path,
            format!("wrong magic 0x{got:08x}: expected 0x{magic:08x} (IDX {what})"),
            "byte 0",
        ));
    }
    Ok((0..ndims)
        .map(|d| BigEndian::read_u32(&data[4 + 4 * d..8 + 4 * d]) as usize)
        .collect())
}

/// IDX image file → `(n x rows*cols` features, `(rows, cols))`.
pub fn parse_idx_images(path: &Path, bytes: &[u8]) -> Result<(Matrix<f64>, (usize, usize))> {
    let data = maybe_gunzip(path, bytes)?;
    let dims = idx_header(path, &data, 0x0000_0803, 3, "unsigned-byte 3-D images")?;
    let (n, r, c) = (dims[0], dims[1], dims[2]);
    if r == 0 || c == 0 {
        return Err(Error::malformed(
            path,
            format!("wrong dimensions: images of {r} x {c} pixels"),
            "byte 8",
        ));
    }
    let expected = n
        .checked_mul(r)
        .and_then(|v| v.checked_mul(c))
        .ok_or_else(|| {
            Error::malformed(
                path,
                format!("dimensions {n} x {r} x {c} overflow"),
                "byte 4",
            )
        })?;
    let payload = data.len() - 16;
    if payload != expected {
        let what = if payload < expected {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(Error::malformed(
            path,
            format!("{what}: payload is {payload} bytes, {n} images of {r} x {c} need {expected}"),
            format!("byte {}", 16 + payload.min(expected)),
        ));
    }
    let x = Matrix::from_vec(n, r * c, data[16..].iter().map(|&b| b as f64).collect());
    Ok((x, (r, c)))
}

/// IDX label file → labels.
pub fn parse_idx_labels(path: &Path, bytes: &[u8]) -> Result<Vec<usize>> {
    let data = maybe_gunzip(path, bytes)?;
    let dims = idx_header(path, &data, 0x0000_0801, 1, "unsigned-byte labels")?;
    let n = dims[0];
    let payload = data.len() - 8;
    if payload != n {
        let what = if payload < n {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(Error::malformed(
            path,
            format!("{what}: {payload} label bytes, the header says {n}"),
            format!("byte {}", 8 + payload.min(n)),
        ));
    }
    Ok(data[8..].iter().map(|&b| b as usize).collect())
}

/// CIFAR-10 (`hundred = false`) or CIFAR-100 binary batch.
pub fn parse_cifar(path: &Path, bytes: &[u8], hundred: bool) -> Result<Raw> {
    let data = maybe_gunzip(path, bytes)?;
    let label_bytes = if hundred { 2 } else { 1 };
    let rec = label_bytes + 3072;
    if data.is_empty() {
        return Err(Error::malformed(path, "empty file", "byte 0"));
    }
    if data.len() % rec != 0 {
        let full = data.len() / rec;
        return Err(Error::malformed(
            path,
            format!(
                "truncated record: {} bytes is not a multiple of the {rec}-byte {} record",
                data.len(),
                if hundred { "CIFAR-100" } else { "CIFAR-10" }
            ),
            format!("record {full}, byte {}", full * rec),
        ));
    }
    let n = data.len() / rec;
    let mut x = Vec::with_capacity(n * 3072);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let r = &data[i * rec..(i + 1) * rec];
        y.push(r[label_bytes - 1] as usize);
        x.extend(r[label_bytes..].iter().map(|&b| b as f64));
    }
    Ok(Raw {
        x: Matrix::from_vec(n, 3072, x),
        y,
        label_path: path.to_path_buf(),
        origin: LabelOrigin::Bytes {
            base: label_bytes - 1,
            stride: rec,
        },
    })
}

/// CSV of numeric features and an integer label column.
pub fn parse_csv(path: &Path, bytes: &[u8], label_column: Option<usize>) -> Result<Raw> {
    let data = maybe_gunzip(path, bytes)?;
    let text = std::str::from_utf8(&data).map_err(|e| {
        Error::malformed(path, "not UTF-8 text", format!("byte {}", e.valid_up_to()))
    })?;
    let rows: Vec<(usize, Vec<&str>)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.split(',').map(str::trim).collect()))
        .collect();
    if rows.is_empty() {
        return Err(Error::malformed(path, "empty file: no rows", "line 1"));
    }
    let ncols = rows[0].1.len();
    if ncols < 2 {
        return Err(Error::malformed(
            path,
            format!("{ncols} column: need at least one feature and a label"),
            format!("line {}", rows[0].0),
        ));
    }
    let lc = label_column.unwrap_or(ncols - 1);
    if lc >= ncols {
        return Err(Error::malformed(
            path,
            format!("label column {lc} does not exist ({ncols} columns)"),
            format!("line {}", rows[0].0),
        ));
    }
    let is_header = rows[0]
        .1
        .iter()
        .enumerate()
        .any(|(j, c)| j != lc && c.parse::<f64>().is_err());
    let body = if is_header { &rows[1..] } else { &rows[..] };
    if body.is_empty() {
        return Err(Error::malformed(
            path,
            "no data rows after the header",
            format!("line {}", rows[0].0 + 1),
        ));
    }
    let mut x = Vec::with_capacity(body.len() * (ncols - 1));
    let mut y = Vec::with_capacity(body.len());
    let mut lines = Vec::with_capacity(body.len());
    for (line, cells) in body {
        if cells.len() != ncols {
            return Err(Error::malformed(
                path,
                format!("row has {} columns, expected {ncols}", cells.len()),
                format!("line {line}"),
            ));
        }
        for (j, c) in cells.iter().enumerate() {
            let v: f64 = c.parse().map_err(|_| {
                Error::malformed(
                    path,
                    format!("cell '{c}' is not a number"),
                    format!("line {line}, column {}", j + 1),
                )
            })?;
            if !v.is_finite() {
                return Err(Error::malformed(
                    path,
                    format!("non-finite value '{c}'"),
                    format!("line {line}, column {}", j + 1),
                ));
            }
            if j == lc {
                if v < 0.0 || v.fract() != 0.0 || v > u32::MAX as f64 {
                    return Err(Error::malformed(
                        path,
                        format!("label '{c}' is not a non-negative integer"),
                        format!("line {line}, column {}", j + 1),
                    ));
                }
                y.push(v as usize);
            } else {
                x.push(v);
            }
        }
        lines.push(*line);
    }
    Ok(Raw {
        x: Matrix::from_vec(y.len(), ncols - 1, x),
        y,
        label_path: path.to_path_buf(),
        origin: LabelOrigin::Lines(lines),
    })
}
