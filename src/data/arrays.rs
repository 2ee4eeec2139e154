//! NumPy datasets: `.npy` feature arrays with a labels `.npy`, and `.npz`
//! archives holding both (`x`/`y` by default, `x_test`/`y_test` as the test set).
//!
//! Features: floats (`f4`/`f8`), integers or booleans of shape `(n, d)` (feature
//! vectors), `(n, H, W)` (one-channel images) or `(n, C, H, W)` (images, NCHW, the
//! row order the network engine expects). Labels: a 1-D integer array, or a float
//! array whose values are exact non-negative integers. Non-finite features are an
//! error. `uint8` features have the value range `[0, 255]` (as IDX and CIFAR
//! images); other features are normalised with their training min/max, as CSV.

use super::readers::Raw;
use crate::error::{Error, Result};
use crate::io::npy::{parse_npy, NpyArray, NpyDtype};
use crate::tensor::Matrix;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Features of an array file: matrix, image shape and known value range.
pub struct Features {
    pub x: Matrix<f64>,
    pub image_shape: Option<[usize; 3]>,
    pub range: Option<(f64, f64)>,
}

/// Reads a feature array (`where_` names the file, or `archive:member`).
pub fn features(where_: &Path, a: &NpyArray) -> Result<Features> {
    let bad = |what: String| Error::malformed(where_, what, "shape");
    let (n, image_shape) = match a.shape.as_slice() {
        [n, _] => (*n, None),
        [n, h, w] => (*n, Some([1, *h, *w])),
        [n, c, h, w] => (*n, Some([*c, *h, *w])),
        s => {
            return Err(bad(format!(
                "features must have shape (n, d), (n, H, W) or (n, C, H, W), got {s:?}"
            )))
        }
    };
    if n == 0 {
        return Err(bad("the feature array has no samples".into()));
    }
    let d = a.data.len() / n;
    if d == 0 {
        return Err(bad("the feature array has no features".into()));
    }
    if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
        return Err(Error::malformed(
            where_,
            format!(
                "non-finite value ({}) at sample {}, feature {}",
                a.data[i],
                i / d,
                i % d
            ),
            format!("element {i}"),
        ));
    }
    let range = (a.dtype
        == NpyDtype::Int {
            signed: false,
            bytes: 1,
        })
    .then_some((0.0, 255.0));
    Ok(Features {
        x: Matrix::from_vec(n, d, a.data.clone()),
        image_shape,
        range,
    })
}

/// Reads a label array: 1-D, exact non-negative integers.
pub fn labels(where_: &Path, a: &NpyArray) -> Result<Vec<usize>> {
    if a.shape.len() != 1 {
        return Err(Error::malformed(
            where_,
            format!("labels must be a 1-D array, got shape {:?}", a.shape),
            "shape",
        ));
    }
    a.data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1e15 {
                Ok(v as usize)
            } else {
                Err(Error::malformed(
                    where_,
                    format!("label {v} is not a non-negative integer"),
                    format!("element {i}"),
                ))
            }
        })
        .collect()
}

/// `.npy` features plus a labels `.npy`.
pub fn load_npy_pair(
    path: &Path,
    bytes: &[u8],
    labels_path: Option<&Path>,
    hashed: &mut Vec<u8>,
) -> Result<(Raw, Features)> {
    let a = parse_npy(path, bytes)?;
    let f = features(path, &a)?;
    let lpath = labels_path.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{}: an .npy feature file needs its labels: pass --labels LABELS.npy (or use an .npz with x and y)",
            path.display()
        ))
    })?;
    let lbytes = std::fs::read(lpath).map_err(|e| Error::io(lpath, e))?;
    hashed.extend_from_slice(&lbytes);
    let la = parse_npy(lpath, &lbytes)?;
    let y = labels(lpath, &la)?;
    let raw = Raw::arrays(lpath, f.x.clone(), y)?;
    Ok((raw, f))
}

/// The members of a zip archive (stored or deflated), by name.
pub fn zip_members(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |what: String, loc: String| Error::malformed(path, what, loc);
    let u16_at = |o: usize| -> Result<usize> {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| bad("truncated zip structure".into(), format!("byte {o}")))
    };
    let u32_at = |o: usize| -> Result<usize> {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| bad("truncated zip structure".into(), format!("byte {o}")))
    };
    // End of central directory: the last "PK\x05\x06" within the final 64 KiB + 22 bytes.
    let start = bytes.len().saturating_sub(65_557);
    let eocd = (start..bytes.len().saturating_sub(21))
        .rev()
        .find(|&o| bytes[o..o + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| {
            bad(
                "not a zip archive (no end-of-central-directory record; truncated?)".into(),
                "end of file".into(),
            )
        })?;
    let count = u16_at(eocd + 10)?;
    let mut off = u32_at(eocd + 16)?;
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        if u32_at(off)? != 0x0201_4b50 {
            return Err(bad(
                format!("bad central-directory entry {k}"),
                format!("byte {off}"),
            ));
        }
        let method = u16_at(off + 10)?;
        let csize = u32_at(off + 20)?;
        let usize_ = u32_at(off + 24)?;
        let nlen = u16_at(off + 28)?;
        let elen = u16_at(off + 30)?;
        let clen = u16_at(off + 32)?;
        let local = u32_at(off + 42)?;
        let name = bytes
            .get(off + 46..off + 46 + nlen)
            .map(|b| String::from_utf8_lossy(b).to_string())
            .ok_or_else(|| bad("truncated member name".into(), format!("byte {}", off + 46)))?;
        if csize == 0xFFFF_FFFF || usize_ == 0xFFFF_FFFF || local == 0xFFFF_FFFF {
            return Err(bad(
                format!("member '{name}' uses ZIP64 (over 4 GiB), which is not supported"),
                format!("byte {off}"),
            ));
        }
        if u32_at(local)? != 0x0403_4b50 {
            return Err(bad(
                format!("bad local header of member '{name}'"),
                format!("byte {local}"),
            ));
        }
        let data_start = local + 30 + u16_at(local + 26)? + u16_at(local + 28)?;
        let data = bytes.get(data_start..data_start + csize).ok_or_else(|| {
            bad(
                format!("member '{name}' runs past the end of the file"),
                format!("byte {data_start}"),
            )
        })?;
        let content = match method {
            0 => data.to_vec(),
            8 => {
                let mut v = Vec::with_capacity(usize_);
                flate2::read::DeflateDecoder::new(data)
                    .read_to_end(&mut v)
                    .map_err(|e| bad(format!("member '{name}' does not inflate: {e}"), format!("byte {data_start}")))?;
                v
            }
            m => return Err(bad(format!("member '{name}' uses compression method {m} (only stored and deflate are supported)"), format!("byte {off}"))),
        };
        if content.len() != usize_ {
            return Err(bad(
                format!(
                    "member '{name}' has {} bytes, the directory says {usize_}",
                    content.len()
                ),
                format!("byte {data_start}"),
            ));
        }
        out.push((name, content));
        off += 46 + nlen + elen + clen;
    }
    Ok(out)
}

/// An `.npz` archive: features `keys.0`, labels `keys.1` (default `x`, `y`), and
/// the test set `{x}_test`/`{y}_test` when present.
pub fn load_npz(
    path: &Path,
    bytes: &[u8],
    keys: Option<&(String, String)>,
) -> Result<(Raw, Features, Option<Raw>)> {
    let members = zip_members(path, bytes)?;
    let (kx, ky) = keys.map_or(("x", "y"), |(a, b)| (a.as_str(), b.as_str()));
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    let get = |k: &str| -> Result<(PathBuf, NpyArray)> {
        let (n, b) = members
            .iter()
            .find(|(n, _)| n == &format!("{k}.npy") || n == k)
            .ok_or_else(|| {
                Error::malformed(
                    path,
                    format!(
                        "no array '{k}' in the archive (it holds {names:?}; use --npz-keys X,Y)"
                    ),
                    "central directory",
                )
            })?;
        let p = PathBuf::from(format!("{}:{n}", path.display()));
        let a = parse_npy(&p, b)?;
        Ok((p, a))
    };
    let (px, ax) = get(kx)?;
    let (py, ay) = get(ky)?;
    let f = features(&px, &ax)?;
    let raw = Raw::arrays(&py, f.x.clone(), labels(&py, &ay)?)?;
    let has = |k: &str| {
        members
            .iter()
            .any(|(n, _)| n == &format!("{k}.npy") || n == k)
    };
    let (kxt, kyt) = (format!("{kx}_test"), format!("{ky}_test"));
    let test = match (has(&kxt), has(&kyt)) {
        (true, true) => {
            let (ptx, atx) = get(&kxt)?;
            let (pty, aty) = get(&kyt)?;
            let ft = features(&ptx, &atx)?;
            if ft.image_shape != f.image_shape {
                return Err(Error::malformed(
                    &ptx,
                    format!(
                        "test images have shape {:?}, training images {:?}",
                        ft.image_shape, f.image_shape
                    ),
                    "shape",
                ));
            }
            Some(Raw::arrays(&pty, ft.x, labels(&pty, &aty)?)?)
        }
        (false, false) => None,
        _ => {
            return Err(Error::malformed(
                path,
                format!("the archive has only one of '{kx}_test' and '{ky}_test'"),
                "central directory",
            ))
        }
    };
    Ok((raw, f, test))
}
