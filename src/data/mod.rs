//! Datasets: IDX (MNIST/FashionMNIST, plain or gzip), CIFAR-10/100 binary
//! batches, CSV feature files, and the two embedded datasets (`mnist10k`,
//! `digits`); normalisation and subsets.
//!
//! A dataset is a feature matrix (one row per sample, f64) and integer labels.
//! Every malformed file gives [`Error::MalformedData`] naming the file, what is
//! wrong and where (byte offset, record or line).

mod arrays;
mod readers;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Matrix;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use readers::{parse_cifar, parse_csv, parse_idx_images, parse_idx_labels, Raw};

/// Input normalisation. The value range of a source is known for images
/// (`[0, 255]` for IDX and CIFAR, `[0, 16]` for the UCI digits); a generic CSV
/// uses the min/max of its training features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Values as given.
    None,
    /// `(x - lo) / (hi - lo)`: `[0, 1]`.
    Unit,
    /// `2 (x - lo) / (hi - lo) - 1`: `[-1, 1]` (the seed experiments' `Normalize((0.5,), (0.5,))`).
    Symmetric,
    /// Per feature `(x - mean) / std` with the training set's mean and population std;
    /// a constant feature becomes 0.
    Standardize,
}

/// File format of a dataset path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Auto,
    Idx,
    Cifar10,
    Cifar100,
    Csv,
    /// NumPy `.npy` features (labels from `--labels`).
    Npy,
    /// NumPy `.npz` archive with `x` and `y` (or `--npz-keys`), optionally `x_test`, `y_test`.
    Npz,
}

/// Which samples to keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subset {
    All,
    /// The first `n`.
    First(usize),
    /// `n` without replacement: `Rng::new(seed).permutation(len)`, truncated to `n`, sorted.
    Random {
        n: usize,
        seed: u64,
    },
}

/// How to load a dataset.
#[derive(Clone, Debug)]
pub struct DataOptions {
    pub normalize: Normalize,
    pub format: Format,
    /// Label file for an IDX image file.
    pub labels: Option<PathBuf>,
    /// Test-set file (same format as the training file).
    pub test: Option<PathBuf>,
    pub test_labels: Option<PathBuf>,
    /// CSV label column (0-based; default the last).
    pub label_column: Option<usize>,
    /// Number of classes; labels must be smaller.
    pub classes: Option<usize>,
    pub train_subset: Subset,
    pub test_subset: Subset,
    /// For data without a test set: the fraction held out (seeded by `split_seed`).
    pub test_split: f64,
    pub split_seed: u64,
    /// Names of the feature and label arrays in an `.npz` archive (default `x`, `y`).
    pub npz_keys: Option<(String, String)>,
    /// `[C, H, W]` of each sample, for feature files (CSV, `.npy`) holding images;
    /// overrides the shape a file implies. `C H W` must equal the feature count.
    pub input_shape: Option<[usize; 3]>,
    /// `F x F` average pooling of every image channel before normalisation
    /// (see [`avg_pool`]); `F` must divide the image's height and width.
    pub downsample: Option<usize>,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            normalize: Normalize::Unit,
            format: Format::Auto,
            labels: None,
            test: None,
            test_labels: None,
            label_column: None,
            classes: None,
            train_subset: Subset::All,
            test_subset: Subset::All,
            test_split: 0.0,
            split_seed: 0,
            npz_keys: None,
            input_shape: None,
            downsample: None,
        }
    }
}

/// Features (rows are samples) and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub x: Matrix<f64>,
    pub y: Vec<usize>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// The samples with the given indices, in that order.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset {
            x: self.x.select_rows(idx),
            y: idx.iter().map(|&i| self.y[i]).collect(),
        }
    }
}

/// A loaded dataset with its description.
#[derive(Clone, Debug)]
pub struct DataBundle {
    /// `mnist10k`, `digits`, or the path as given.
    pub name: String,
    /// `embedded` or the resolved file paths.
    pub source: String,
    /// SHA-256 (hex) over the raw bytes of every file read, in a fixed order.
    pub content_hash: String,
    pub classes: usize,
    pub features: usize,
    /// `(channels, rows, cols)` for images.
    pub image_shape: Option<[usize; 3]>,
    /// The `F` of `F x F` average pooling applied to the images, if any.
    pub downsample: Option<usize>,
    pub normalize: Normalize,
    pub train_subset: Subset,
    pub test_subset: Subset,
    pub train: Dataset,
    pub test: Option<Dataset>,
}

impl DataBundle {
    /// Description for result files and provenance.
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "source": self.source,
            "sha256": self.content_hash,
            "classes": self.classes,
            "features": self.features,
            "image_shape": self.image_shape,
            "downsample": self.downsample,
            "n_train": self.train.len(),
            "n_test": self.test.as_ref().map_or(0, |t| t.len()),
            "normalize": self.normalize,
            "train_subset": self.train_subset,
            "test_subset": self.test_subset,
        })
    }
}

const MNIST_TRAIN_IMAGES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/mnist10k/train-images-idx3-ubyte.gz"
));
const MNIST_TRAIN_LABELS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/mnist10k/train-labels-idx1-ubyte.gz"
));
const MNIST_TEST_IMAGES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/mnist10k/t10k-images-idx3-ubyte.gz"
));
const MNIST_TEST_LABELS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/mnist10k/t10k-labels-idx1-ubyte.gz"
));
const DIGITS_CSV: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/uci-digits/digits.csv.gz"
));

/// One file's contents: features and labels, image shape, known value range, default class count.
type Loaded = (Raw, Option<[usize; 3]>, Option<(f64, f64)>, Option<usize>);

/// A loaded source before normalisation: features, labels and the known value range.
struct Source {
    train: Raw,
    test: Option<Raw>,
    classes: usize,
    /// Known value range of the raw features (images), or `None` (use the data's).
    range: Option<(f64, f64)>,
    image_shape: Option<[usize; 3]>,
    hashed: Vec<u8>,
    source: String,
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads `spec` (`mnist10k`, `digits`, or a file path).
pub fn load(spec: &str, opts: &DataOptions) -> Result<DataBundle> {
    if !(0.0..1.0).contains(&opts.test_split) {
        return Err(Error::InvalidArgument(format!(
            "--test-split must be in [0, 1), got {}",
            opts.test_split
        )));
    }
    if opts.classes == Some(0) {
        return Err(Error::InvalidArgument(
            "the number of classes must be positive".into(),
        ));
    }
    let src = match spec {
        "mnist10k" => {
            let p = |n: &str| PathBuf::from(format!("embedded:mnist10k/{n}"));
            let (train_x, shape) =
                parse_idx_images(&p("train-images-idx3-ubyte.gz"), MNIST_TRAIN_IMAGES)?;
            let train_y = parse_idx_labels(&p("train-labels-idx1-ubyte.gz"), MNIST_TRAIN_LABELS)?;
            let (test_x, _) = parse_idx_images(&p("t10k-images-idx3-ubyte.gz"), MNIST_TEST_IMAGES)?;
            let test_y = parse_idx_labels(&p("t10k-labels-idx1-ubyte.gz"), MNIST_TEST_LABELS)?;
            let mut hashed = Vec::new();
            for b in [
                MNIST_TRAIN_IMAGES,
                MNIST_TRAIN_LABELS,
                MNIST_TEST_IMAGES,
                MNIST_TEST_LABELS,
            ] {
                hashed.extend_from_slice(b);
            }
            Source {
                train: Raw::pair(&p("train-labels-idx1-ubyte.gz"), train_x, train_y)?,
                test: Some(Raw::pair(&p("t10k-labels-idx1-ubyte.gz"), test_x, test_y)?),
                classes: 10,
                range: Some((0.0, 255.0)),
                image_shape: Some([1, shape.0, shape.1]),
                hashed,
                source: "embedded".into(),
            }
        }
        "digits" => {
            let raw = parse_csv(
                Path::new("embedded:uci-digits/digits.csv.gz"),
                DIGITS_CSV,
                None,
            )?;
            Source {
                train: raw,
                test: None,
                classes: 10,
                range: Some((0.0, 16.0)),
                image_shape: Some([1, 8, 8]),
                hashed: DIGITS_CSV.to_vec(),
                source: "embedded".into(),
            }
        }
        path => load_path(Path::new(path), opts)?,
    };
    finish(spec, src, opts)
}

fn detect_format(path: &Path, bytes: &[u8], forced: Format) -> Result<Format> {
    if forced != Format::Auto {
        return Ok(forced);
    }
    let name = path.to_string_lossy().to_lowercase();
    if name.ends_with(".csv") || name.ends_with(".csv.gz") {
        return Ok(Format::Csv);
    }
    if bytes.starts_with(b"\x93NUMPY") || name.ends_with(".npy") {
        return Ok(Format::Npy);
    }
    if bytes.starts_with(b"PK\x03\x04") || name.ends_with(".npz") {
        return Ok(Format::Npz);
    }
    let head = readers::maybe_gunzip(path, bytes)?;
    if head.len() >= 4
        && head[0] == 0
        && head[1] == 0
        && head[2] == 0x08
        && (head[3] == 1 || head[3] == 3)
    {
        return Ok(Format::Idx);
    }
    if name.ends_with(".bin") {
        if !head.is_empty() && head.len() % 3073 == 0 {
            return Ok(Format::Cifar10);
        }
        if !head.is_empty() && head.len() % 3074 == 0 {
            return Ok(Format::Cifar100);
        }
    }
    Err(Error::malformed(
        path,
        "cannot tell the format (not an IDX file, not .csv, not a CIFAR .bin whose size is a multiple of 3073 or 3074 bytes); use --format",
        "byte 0",
    ))
}

/// The IDX label file beside an image file: `images-idx3` -> `labels-idx1` in the name.
fn idx_label_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().to_string();
    let swapped = name
        .replace("images-idx3", "labels-idx1")
        .replace("images.idx3", "labels.idx1");
    (swapped != name).then(|| images.with_file_name(swapped))
}

fn load_one(
    path: &Path,
    labels: Option<&Path>,
    format: Format,
    opts: &DataOptions,
    hashed: &mut Vec<u8>,
) -> Result<Loaded> {
    let bytes = read_file(path)?;
    hashed.extend_from_slice(&bytes);
    match format {
        Format::Idx | Format::Auto => {
            let (x, shape) = parse_idx_images(path, &bytes)?;
            let lpath = match labels {
                Some(l) => l.to_path_buf(),
                None => idx_label_path(path).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{}: cannot find the IDX label file from the name (expected 'images-idx3' in it); pass --labels",
                        path.display()
                    ))
                })?,
            };
            let lbytes = read_file(&lpath)?;
            hashed.extend_from_slice(&lbytes);
            let y = parse_idx_labels(&lpath, &lbytes)?;
            Ok((
                Raw::pair(&lpath, x, y)?,
                Some([1, shape.0, shape.1]),
                Some((0.0, 255.0)),
                Some(10),
            ))
        }
        Format::Cifar10 => Ok((
            parse_cifar(path, &bytes, false)?,
            Some([3, 32, 32]),
            Some((0.0, 255.0)),
            Some(10),
        )),
        Format::Cifar100 => Ok((
            parse_cifar(path, &bytes, true)?,
            Some([3, 32, 32]),
            Some((0.0, 255.0)),
            Some(100),
        )),
        Format::Csv => Ok((
            parse_csv(path, &bytes, opts.label_column)?,
            None,
            None,
            None,
        )),
        Format::Npy => {
            let (raw, f) = arrays::load_npy_pair(path, &bytes, labels, hashed)?;
            Ok((raw, f.image_shape, f.range, None))
        }
        Format::Npz => {
            let (raw, f, _) = arrays::load_npz(path, &bytes, opts.npz_keys.as_ref())?;
            Ok((raw, f.image_shape, f.range, None))
        }
    }
}

fn load_path(path: &Path, opts: &DataOptions) -> Result<Source> {
    let bytes = read_file(path)?;
    let format = detect_format(path, &bytes, opts.format)?;
    let mut hashed = Vec::new();
    let (train, image_shape, range, default_classes) =
        load_one(path, opts.labels.as_deref(), format, opts, &mut hashed)?;
    let test = match &opts.test {
        Some(t) => Some(load_one(t, opts.test_labels.as_deref(), format, opts, &mut hashed)?.0),
        // An .npz archive may hold its own test split.
        None if format == Format::Npz => arrays::load_npz(path, &bytes, opts.npz_keys.as_ref())?.2,
        None => None,
    };
    let classes = match default_classes {
        Some(c) => c,
        None => {
            let max_train = train.y.iter().max().copied().unwrap_or(0);
            let max_test = test
                .as_ref()
                .and_then(|t| t.y.iter().max().copied())
                .unwrap_or(0);
            max_train.max(max_test) + 1
        }
    };
    let mut source = path.display().to_string();
    if let Some(t) = &opts.test {
        source.push_str(&format!(" + {}", t.display()));
    }
    Ok(Source {
        train,
        test,
        classes,
        range,
        image_shape,
        hashed,
        source,
    })
}

fn check_labels(raw: &Raw, classes: usize) -> Result<()> {
    if let Some((i, &y)) = raw.y.iter().enumerate().find(|(_, &y)| y >= classes) {
        return Err(Error::malformed(
            &raw.label_path,
            format!("label {y} is out of range for {classes} classes"),
            raw.label_location(i),
        ));
    }
    Ok(())
}

fn pick(n: usize, subset: &Subset, what: &str) -> Result<Option<Vec<usize>>> {
    match *subset {
        Subset::All => Ok(None),
        Subset::First(k) | Subset::Random { n: k, .. } if k == 0 => Err(Error::InvalidArgument(
            format!("empty subset: 0 {what} samples requested"),
        )),
        Subset::First(k) | Subset::Random { n: k, .. } if k > n => Err(Error::InvalidArgument(
            format!("{k} {what} samples requested but the set has {n}"),
        )),
        Subset::First(k) => Ok(Some((0..k).collect())),
        Subset::Random { n: k, seed } => {
            let mut idx = Rng::new(seed).permutation(n);
            idx.truncate(k);
            idx.sort_unstable();
            Ok(Some(idx))
        }
    }
}

fn finish(name: &str, src: Source, opts: &DataOptions) -> Result<DataBundle> {
    let classes = opts.classes.unwrap_or(src.classes);
    check_labels(&src.train, classes)?;
    if let Some(t) = &src.test {
        check_labels(t, classes)?;
        if t.x.cols() != src.train.x.cols() {
            return Err(Error::Shape(format!(
                "the test set has {} features, the training set {}",
                t.x.cols(),
                src.train.x.cols()
            )));
        }
    }
    let mut train = Dataset {
        x: src.train.x,
        y: src.train.y,
    };
    let mut test = src.test.map(|t| Dataset { x: t.x, y: t.y });
    if train.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{name}: the training set is empty"
        )));
    }
    if test.is_none() && opts.test_split > 0.0 {
        let n = train.len();
        let n_test = ((n as f64) * opts.test_split).round() as usize;
        if n_test == 0 || n_test >= n {
            return Err(Error::InvalidArgument(format!(
                "--test-split {} leaves an empty split of {n} samples",
                opts.test_split
            )));
        }
        let perm = Rng::new(opts.split_seed).permutation(n);
        let mut te: Vec<usize> = perm[..n_test].to_vec();
        let mut tr: Vec<usize> = perm[n_test..].to_vec();
        te.sort_unstable();
        tr.sort_unstable();
        test = Some(train.subset(&te));
        train = train.subset(&tr);
    }
    if let Some(idx) = pick(train.len(), &opts.train_subset, "training")? {
        train = train.subset(&idx);
    }
    if let Some(t) = &test {
        if let Some(idx) = pick(t.len(), &opts.test_subset, "test")? {
            test = Some(t.subset(&idx));
        }
    }
    let mut image_shape = src.image_shape;
    if let Some(shape) = opts.input_shape {
        let d: usize = shape.iter().product();
        if d != train.x.cols() || shape.contains(&0) {
            return Err(Error::Shape(format!(
                "--input-shape {},{},{} has {d} values per sample, the data have {} features",
                shape[0],
                shape[1],
                shape[2],
                train.x.cols()
            )));
        }
        image_shape = Some(shape);
    }
    if let Some(f) = opts.downsample {
        let shape = image_shape.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--downsample needs images, and {name} has no image shape (give one with --input-shape C,H,W)"
            ))
        })?;
        let (x, pooled) = avg_pool(&train.x, shape, f)?;
        train.x = x;
        if let Some(t) = test.as_mut() {
            t.x = avg_pool(&t.x, shape, f)?.0;
        }
        image_shape = Some(pooled);
    }
    normalize(&mut train, test.as_mut(), opts.normalize, src.range);
    Ok(DataBundle {
        name: name.to_string(),
        source: src.source,
        content_hash: sha256_hex(&src.hashed),
        classes,
        features: train.x.cols(),
        image_shape,
        downsample: opts.downsample,
        normalize: opts.normalize,
        train_subset: opts.train_subset.clone(),
        test_subset: opts.test_subset.clone(),
        train,
        test,
    })
}

/// `F x F` average pooling of images stored one per row, channel-major (`C, H, W`):
/// output pixel `(c, i, j)` is `(1 / F^2) sum_{a, b < F} x[c, F i + a, F j + b]`, so an
/// image of shape `[C, H, W]` becomes `[C, H / F, W / F]` (`F = 1` is the identity).
/// Because the mean of affinely mapped pixels is the affine map of the mean, pooling
/// commutes with the `unit` and `symmetric` normalisations and keeps their value range.
/// Errors: `F = 0`, `F` not dividing `H` and `W`, or `C H W` not the row length.
pub fn avg_pool(x: &Matrix<f64>, shape: [usize; 3], f: usize) -> Result<(Matrix<f64>, [usize; 3])> {
    let [c, h, w] = shape;
    if f == 0 {
        return Err(Error::InvalidArgument(
            "--downsample must be a positive pooling factor".into(),
        ));
    }
    if c * h * w != x.cols() {
        return Err(Error::Shape(format!(
            "image shape {c}x{h}x{w} has {} values, the data have {} features",
            c * h * w,
            x.cols()
        )));
    }
    if h % f != 0 || w % f != 0 {
        return Err(Error::InvalidArgument(format!(
            "--downsample {f} does not divide the {h}x{w} images (pooling needs whole {f}x{f} blocks)"
        )));
    }
    let (ho, wo) = (h / f, w / f);
    let inv = 1.0 / (f * f) as f64;
    let mut out = Vec::with_capacity(x.rows() * c * ho * wo);
    for r in 0..x.rows() {
        let img = x.row(r);
        for ch in 0..c {
            let plane = &img[ch * h * w..(ch + 1) * h * w];
            for i in 0..ho {
                for j in 0..wo {
                    let mut s = 0.0;
                    for a in 0..f {
                        let row = &plane[(f * i + a) * w + f * j..(f * i + a) * w + f * j + f];
                        s += row.iter().sum::<f64>();
                    }
                    out.push(s * inv);
                }
            }
        }
    }
    Ok((Matrix::from_vec(x.rows(), c * ho * wo, out), [c, ho, wo]))
}

/// Applies the normalisation; statistics come from the training set.
fn normalize(
    train: &mut Dataset,
    test: Option<&mut Dataset>,
    how: Normalize,
    range: Option<(f64, f64)>,
) {
    let d = train.x.cols();
    let affine: Vec<(f64, f64)> = match how {
        Normalize::None => return,
        Normalize::Unit | Normalize::Symmetric => {
            let (lo, hi) = range.unwrap_or_else(|| {
                let s = train.x.as_slice();
                (
                    s.iter().copied().fold(f64::INFINITY, f64::min),
                    s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                )
            });
            let span = if hi > lo { hi - lo } else { 1.0 };
            let (scale, shift) = if how == Normalize::Unit {
                (1.0 / span, -lo / span)
            } else {
                (2.0 / span, -2.0 * lo / span - 1.0)
            };
            vec![(scale, shift); d]
        }
        Normalize::Standardize => {
            let n = train.len() as f64;
            (0..d)
                .map(|j| {
                    let mean = (0..train.len()).map(|i| train.x.get(i, j)).sum::<f64>() / n;
                    let var = (0..train.len())
                        .map(|i| (train.x.get(i, j) - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    let sd = var.sqrt();
                    if sd > 0.0 {
                        (1.0 / sd, -mean / sd)
                    } else {
                        (0.0, 0.0)
                    }
                })
                .collect()
        }
    };
    let apply = |x: &mut Matrix<f64>| {
        for i in 0..x.rows() {
            for (v, &(s, t)) in x.row_mut(i).iter_mut().zip(&affine) {
                *v = *v * s + t;
            }
        }
    };
    apply(&mut train.x);
    if let Some(t) = test {
        apply(&mut t.x);
    }
}
