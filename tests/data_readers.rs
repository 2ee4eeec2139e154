//! Integration tests: dataset readers, normalisation, subsets, and a bad-input
//! test for each reader that asserts the error names the file and the location.

use crate::common::TempDir;
use landscape::data::{load, DataOptions, Format, Normalize, Subset};
use std::path::{Path, PathBuf};

fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("data-{tag}"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn idx_images(n: u32, r: u32, c: u32, payload: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, r, c] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend((0..payload).map(|i| (i % 256) as u8));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn err_text(spec: &Path, opts: &DataOptions) -> String {
    load(spec.to_str().unwrap(), opts)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn embedded_mnist10k_and_digits() {
    let b = load("mnist10k", &DataOptions::default()).unwrap();
    assert_eq!(
        (
            b.train.len(),
            b.test.as_ref().unwrap().len(),
            b.features,
            b.classes
        ),
        (8000, 2000, 784, 10)
    );
    let mut hist = [0usize; 10];
    for &y in &b.train.y {
        hist[y] += 1;
    }
    assert!(hist.iter().all(|&h| h > 600 && h < 1000), "{hist:?}");
    let (lo, hi) = b
        .train
        .x
        .as_slice()
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert_eq!((lo, hi), (0.0, 1.0));
    let again = load("mnist10k", &DataOptions::default()).unwrap();
    assert_eq!(b.content_hash, again.content_hash);
    assert_eq!(b.content_hash.len(), 64);
    let d = load(
        "digits",
        &DataOptions {
            normalize: Normalize::None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((d.train.len(), d.features, d.classes), (1797, 64, 10));
    assert!(d.test.is_none());
    assert_eq!(d.train.x.max_abs(), 16.0);
    // First UCI digit (scikit-learn's digits.data[0]) is a 0 whose first row is 0 0 5 13 9 1 0 0.
    assert_eq!(
        &d.train.x.row(0)[..8],
        &[0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(d.train.y[0], 0);
}

#[test]
fn normalisations_on_a_small_csv() {
    let dir = temp_dir("norm");
    let p = write(&dir, "f.csv", b"a,b,label\n0,10,1\n2,20,0\n4,30,2\n");
    let get = |n: Normalize| {
        load(
            p.to_str().unwrap(),
            &DataOptions {
                normalize: n,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let none = get(Normalize::None);
    assert_eq!(none.train.x.as_slice(), &[0.0, 10.0, 2.0, 20.0, 4.0, 30.0]);
    assert_eq!(none.train.y, vec![1, 0, 2]);
    assert_eq!(none.classes, 3);
    // Unit and symmetric use the global min/max (0, 30) of a generic CSV.
    let unit = get(Normalize::Unit);
    assert_eq!(
        unit.train.x.as_slice(),
        &[0.0, 1.0 / 3.0, 2.0 / 30.0, 2.0 / 3.0, 4.0 / 30.0, 1.0]
    );
    let sym = get(Normalize::Symmetric);
    assert!(
        (sym.train.x.get(0, 0) + 1.0).abs() < 1e-15 && (sym.train.x.get(2, 1) - 1.0).abs() < 1e-15
    );
    // Standardise per feature: mean (2, 20), population std (sqrt(8/3), sqrt(200/3)).
    let st = get(Normalize::Standardize);
    let s0 = (8.0f64 / 3.0).sqrt();
    assert!((st.train.x.get(0, 0) + 2.0 / s0).abs() < 1e-14);
    assert!((st.train.x.get(1, 1)).abs() < 1e-14);
    // Images use their known range: digits symmetric is x / 16 * 2 - 1.
    let d = load(
        "digits",
        &DataOptions {
            normalize: Normalize::Symmetric,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(&d.train.x.row(0)[..3], &[-1.0, -1.0, 5.0 / 8.0 - 1.0]);
}

#[test]
fn subsets_and_splits() {
    let first = load(
        "digits",
        &DataOptions {
            train_subset: Subset::First(10),
            ..Default::default()
        },
    )
    .unwrap();
    let all = load("digits", &DataOptions::default()).unwrap();
    assert_eq!(
        first.train.x.as_slice(),
        all.train.x.rows_view(0, 10).to_owned().as_slice()
    );
    let r1 = load(
        "digits",
        &DataOptions {
            train_subset: Subset::Random { n: 50, seed: 3 },
            ..Default::default()
        },
    )
    .unwrap();
    let r2 = load(
        "digits",
        &DataOptions {
            train_subset: Subset::Random { n: 50, seed: 3 },
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r1.train, r2.train);
    assert_ne!(r1.train.x, first.train.x);
    let split = load(
        "digits",
        &DataOptions {
            test_split: 0.2,
            split_seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(split.train.len() + split.test.as_ref().unwrap().len(), 1797);
    assert_eq!(split.test.as_ref().unwrap().len(), 359);
    for bad in [
        Subset::First(0),
        Subset::First(5000),
        Subset::Random { n: 0, seed: 1 },
    ] {
        let e = load(
            "digits",
            &DataOptions {
                train_subset: bad,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("subset") || e.contains("requested"), "{e}");
    }
}

#[test]
fn idx_reader_bad_inputs() {
    let dir = temp_dir("idx");
    let opts = DataOptions::default();
    // A good pair (also gzip-compressed) loads, with labels found by name.
    let img = write(&dir, "ok-images-idx3-ubyte", &idx_images(3, 2, 2, 12));
    write(&dir, "ok-labels-idx1-ubyte", &idx_labels(&[1, 2, 3]));
    let b = load(img.to_str().unwrap(), &opts).unwrap();
    assert_eq!((b.train.len(), b.features), (3, 4));

    let t = write(&dir, "trunc-images-idx3-ubyte", &idx_images(3, 2, 2, 11));
    write(&dir, "trunc-labels-idx1-ubyte", &idx_labels(&[1, 2, 3]));
    let e = err_text(&t, &opts);
    assert!(
        e.contains("trunc-images-idx3-ubyte") && e.contains("truncated") && e.contains("byte 27"),
        "{e}"
    );

    let mut bad_magic = idx_images(3, 2, 2, 12);
    bad_magic[3] = 9;
    let m = write(&dir, "magic-images-idx3-ubyte", &bad_magic);
    let e = load(
        m.to_str().unwrap(),
        &DataOptions {
            format: Format::Idx,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("magic-images-idx3-ubyte") && e.contains("wrong magic") && e.contains("byte 0"),
        "{e}"
    );

    let d = write(&dir, "dims-images-idx3-ubyte", &idx_images(3, 0, 2, 0));
    write(&dir, "dims-labels-idx1-ubyte", &idx_labels(&[1, 2, 3]));
    let e = err_text(&d, &opts);
    assert!(
        e.contains("dims-images-idx3-ubyte")
            && e.contains("wrong dimensions")
            && e.contains("byte 8"),
        "{e}"
    );

    let l = write(&dir, "lab-images-idx3-ubyte", &idx_images(3, 2, 2, 12));
    write(&dir, "lab-labels-idx1-ubyte", &idx_labels(&[1, 12, 3]));
    let e = err_text(&l, &opts);
    assert!(
        e.contains("lab-labels-idx1-ubyte")
            && e.contains("label 12 is out of range")
            && e.contains("byte 9"),
        "{e}"
    );

    let c = write(&dir, "count-images-idx3-ubyte", &idx_images(3, 2, 2, 12));
    write(&dir, "count-labels-idx1-ubyte", &idx_labels(&[1, 2]));
    let e = err_text(&c, &opts);
    assert!(
        e.contains("count-labels-idx1-ubyte") && e.contains("2 labels for 3 images"),
        "{e}"
    );

    let empty = write(&dir, "empty-images-idx3-ubyte", b"");
    let e = load(
        empty.to_str().unwrap(),
        &DataOptions {
            format: Format::Idx,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("empty-images-idx3-ubyte") && e.contains("empty file") && e.contains("byte 0"),
        "{e}"
    );

    // Corrupt gzip.
    let gz = write(&dir, "gz-images-idx3-ubyte.gz", &[0x1f, 0x8b, 8, 0, 0, 0]);
    let e = load(
        gz.to_str().unwrap(),
        &DataOptions {
            format: Format::Idx,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("gz-images-idx3-ubyte.gz") && e.contains("gzip"),
        "{e}"
    );
}

#[test]
fn cifar_reader_bad_inputs() {
    let dir = temp_dir("cifar");
    let rec = |label: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(7u8, 3072));
        r
    };
    let mut good = rec(3);
    good.extend(rec(9));
    let p = write(&dir, "data_batch_1.bin", &good);
    let b = load(p.to_str().unwrap(), &DataOptions::default()).unwrap();
    assert_eq!(
        (b.train.len(), b.features, b.classes, b.train.y.clone()),
        (2, 3072, 10, vec![3, 9])
    );

    let t = write(&dir, "trunc.bin", &good[..3073 + 100]);
    let e = load(
        t.to_str().unwrap(),
        &DataOptions {
            format: Format::Cifar10,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("trunc.bin")
            && e.contains("truncated record")
            && e.contains("record 1, byte 3073"),
        "{e}"
    );

    let mut bad = rec(3);
    bad.extend(rec(42));
    let l = write(&dir, "label.bin", &bad);
    let e = load(
        l.to_str().unwrap(),
        &DataOptions {
            format: Format::Cifar10,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("label.bin")
            && e.contains("label 42 is out of range")
            && e.contains("record 1, byte 3073"),
        "{e}"
    );

    // CIFAR-100: fine label is the second byte; 100 classes.
    let mut c100 = vec![1u8, 57];
    c100.extend(std::iter::repeat_n(0u8, 3072));
    let c = write(&dir, "train100.bin", &c100);
    let b = load(
        c.to_str().unwrap(),
        &DataOptions {
            format: Format::Cifar100,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((b.classes, b.train.y.clone()), (100, vec![57]));

    let e = load(
        write(&dir, "empty.bin", b"").to_str().unwrap(),
        &DataOptions {
            format: Format::Cifar10,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("empty.bin") && e.contains("empty file"), "{e}");
    // Wrong dimensions for the format: a size that is no multiple of either record.
    let e = load(
        write(&dir, "odd.bin", &[0u8; 5000]).to_str().unwrap(),
        &DataOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("odd.bin") && e.contains("cannot tell the format"),
        "{e}"
    );
}

#[test]
fn csv_reader_bad_inputs() {
    let dir = temp_dir("csv");
    let cases: [(&str, &[u8], &str, &str); 6] = [
        (
            "ragged.csv",
            b"1,2,0\n3,4\n",
            "row has 2 columns, expected 3",
            "line 2",
        ),
        (
            "text.csv",
            b"x,y,label\n1,2,0\n1,abc,1\n",
            "cell 'abc' is not a number",
            "line 3, column 2",
        ),
        (
            "nan.csv",
            b"1,NaN,0\n",
            "non-finite value 'NaN'",
            "line 1, column 2",
        ),
        (
            "neg.csv",
            b"1,2,0\n1,2,-1\n",
            "label '-1' is not a non-negative integer",
            "line 2, column 3",
        ),
        (
            "frac.csv",
            b"1,2,0.5\n",
            "label '0.5' is not a non-negative integer",
            "line 1, column 3",
        ),
        ("empty.csv", b"", "empty file", "line 1"),
    ];
    for (name, body, what, at) in cases {
        let p = write(&dir, name, body);
        let e = err_text(&p, &DataOptions::default());
        assert!(
            e.contains(name) && e.contains(what) && e.contains(at),
            "{name}: {e}"
        );
    }
    // Label out of range with an explicit class count; header detection; label column choice.
    let p = write(&dir, "range.csv", b"f1,f2,y\n1,2,0\n1,2,5\n");
    let e = err_text(
        &p,
        &DataOptions {
            classes: Some(3),
            ..Default::default()
        },
    );
    assert!(
        e.contains("range.csv")
            && e.contains("label 5 is out of range for 3 classes")
            && e.contains("line 3"),
        "{e}"
    );
    let p = write(&dir, "first.csv", b"2,0.5,1.5\n0,1.0,2.0\n");
    let b = load(
        p.to_str().unwrap(),
        &DataOptions {
            label_column: Some(0),
            normalize: Normalize::None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(b.train.y, vec![2, 0]);
    assert_eq!(b.train.x.as_slice(), &[0.5, 1.5, 1.0, 2.0]);
    // A missing file is an I/O error naming the path.
    let e = err_text(&dir.join("missing.csv"), &DataOptions::default());
    assert!(e.contains("missing.csv"), "{e}");
}

mod never_panic {
    use landscape::data::{parse_cifar, parse_csv, parse_idx_images, parse_idx_labels};
    use proptest::prelude::*;
    use std::path::Path;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Arbitrary bytes (and IDX-looking headers with random dims) give errors, never panics.
        #[test]
        fn readers_reject_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..400), dims in proptest::collection::vec(any::<u32>(), 3)) {
            let p = Path::new("fuzz.bin");
            let _ = parse_idx_images(p, &bytes);
            let _ = parse_idx_labels(p, &bytes);
            let _ = parse_cifar(p, &bytes, false);
            let _ = parse_cifar(p, &bytes, true);
            let _ = parse_csv(p, &bytes, None);
            let _ = parse_csv(p, &bytes, Some(3));
            let mut idx = vec![0u8, 0, 8, 3];
            for d in &dims {
                idx.extend_from_slice(&d.to_be_bytes());
            }
            idx.extend_from_slice(&bytes);
            let _ = parse_idx_images(p, &idx);
            let mut gz = vec![0x1f, 0x8b];
            gz.extend_from_slice(&bytes);
            let _ = parse_idx_labels(p, &gz);
        }
    }
}

/// `.npy` bytes built by hand: header dict, padded so the data start at a multiple of 64.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f64_le(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A zip archive of `(name, bytes)` members, stored or deflated (CRCs are not checked by the reader).
fn zip(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let body = if deflate {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        } else {
            data.clone()
        };
        let method: u16 = if deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0]);
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // time, date, crc
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&body);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0]);
        central.extend_from_slice(&method.to_le_bytes());
        central.extend_from_slice(&[0; 8]);
        central.extend_from_slice(&(body.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, attrs
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

#[test]
fn npy_and_npz_datasets() {
    let d = temp_dir("npy");
    let none = DataOptions {
        normalize: Normalize::None,
        ..Default::default()
    };
    // Feature vectors (f4) with int64 labels.
    let feats: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let x = write(&d, "x.npy", &npy("<f4", &[3, 2], &feats));
    let labels: Vec<u8> = [2i64, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let y = write(&d, "y.npy", &npy("<i8", &[3], &labels));
    let opts = DataOptions {
        labels: Some(y.clone()),
        ..none.clone()
    };
    let b = load(x.to_str().unwrap(), &opts).unwrap();
    assert_eq!(b.train.x.as_slice(), &[0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(b.train.y, vec![2, 0, 1]);
    assert_eq!(b.image_shape, None);
    assert_eq!(b.classes, 3);
    // --input-shape makes them images; a mismatch is a one-line error.
    let b = load(
        x.to_str().unwrap(),
        &DataOptions {
            input_shape: Some([1, 1, 2]),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(b.image_shape, Some([1, 1, 2]));
    let e = load(
        x.to_str().unwrap(),
        &DataOptions {
            input_shape: Some([1, 2, 2]),
            ..opts.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--input-shape") && e.contains("2 features"),
        "{e}"
    );
    // uint8 images (n, H, W): shape [1, H, W] and the [0, 255] range of images.
    let px: Vec<u8> = (0..8).map(|i| (i * 30) as u8).collect();
    let xi = write(&d, "img.npy", &npy("|u1", &[2, 2, 2], &px));
    let yi = write(&d, "imgy.npy", &npy("|u1", &[2], &[1, 0]));
    let b = load(
        xi.to_str().unwrap(),
        &DataOptions {
            labels: Some(yi.clone()),
            normalize: Normalize::Unit,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(b.image_shape, Some([1, 2, 2]));
    assert!((b.train.x.get(1, 3) - 210.0 / 255.0).abs() < 1e-15);
    // Big-endian float64 NCHW images and float labels that are integers.
    let be: Vec<u8> = (0..12).flat_map(|i| (i as f64).to_be_bytes()).collect();
    let xb = write(&d, "be.npy", &npy(">f8", &[2, 3, 2, 1], &be));
    let yb = write(&d, "bey.npy", &npy("<f8", &[2], &f64_le(&[1.0, 3.0])));
    let b = load(
        xb.to_str().unwrap(),
        &DataOptions {
            labels: Some(yb),
            ..none.clone()
        },
    )
    .unwrap();
    assert_eq!(b.image_shape, Some([3, 2, 1]));
    assert_eq!(b.train.x.get(1, 5), 11.0);
    assert_eq!(b.train.y, vec![1, 3]);

    // .npz, stored and deflated, with a test split and with named arrays.
    let xs = npy("<f8", &[2, 2], &f64_le(&[1.0, 2.0, 3.0, 4.0]));
    let ys = npy("<i4", &[2], &[0, 0, 0, 0, 1, 0, 0, 0]);
    let xt = npy("<f8", &[1, 2], &f64_le(&[5.0, 6.0]));
    let yt = npy("<i4", &[1], &[1, 0, 0, 0]);
    for deflate in [false, true] {
        let z = write(
            &d,
            &format!("a{deflate}.npz"),
            &zip(
                &[
                    ("x.npy", xs.clone()),
                    ("y.npy", ys.clone()),
                    ("x_test.npy", xt.clone()),
                    ("y_test.npy", yt.clone()),
                ],
                deflate,
            ),
        );
        let b = load(z.to_str().unwrap(), &none).unwrap();
        assert_eq!(b.train.x.as_slice(), &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(b.train.y, vec![0, 1]);
        let t = b.test.unwrap();
        assert_eq!(
            (t.x.as_slice(), t.y.as_slice()),
            (&[5.0, 6.0][..], &[1usize][..])
        );
    }
    let z = write(
        &d,
        "named.npz",
        &zip(
            &[("feats.npy", xs.clone()), ("targets.npy", ys.clone())],
            true,
        ),
    );
    let keyed = DataOptions {
        npz_keys: Some(("feats".into(), "targets".into())),
        ..none.clone()
    };
    assert_eq!(
        load(z.to_str().unwrap(), &keyed).unwrap().train.y,
        vec![0, 1]
    );

    // One-line errors naming the file.
    let one_line = |p: &Path, o: &DataOptions, needle: &str| {
        let e = load(p.to_str().unwrap(), o).unwrap_err().to_string();
        assert!(
            !e.contains('\n') && e.contains(needle),
            "expected '{needle}': {e}"
        );
    };
    one_line(&z, &none, "no array 'x'");
    let full = npy("<f4", &[3, 2], &feats);
    let trunc = write(&d, "trunc.npy", &full[..full.len() - 3]);
    one_line(&trunc, &opts, "trunc.npy");
    let badmagic = write(&d, "bad.npy", b"NUMPY not really an array at all");
    one_line(&badmagic, &opts, "bad magic");
    one_line(&x, &none, "--labels");
    let y2 = write(&d, "y2.npy", &npy("<i8", &[2], &labels[..16]));
    one_line(
        &x,
        &DataOptions {
            labels: Some(y2),
            ..none.clone()
        },
        "2 labels for 3 samples",
    );
    let yf = write(&d, "yf.npy", &npy("<f8", &[3], &f64_le(&[0.0, 1.5, 2.0])));
    one_line(
        &x,
        &DataOptions {
            labels: Some(yf),
            ..none.clone()
        },
        "not a non-negative integer",
    );
    let yn = write(&d, "yn.npy", &npy("<i2", &[3], &[0, 0, 255, 255, 1, 0]));
    one_line(
        &x,
        &DataOptions {
            labels: Some(yn),
            ..none.clone()
        },
        "label -1",
    );
    let nan = write(
        &d,
        "nan.npy",
        &npy("<f8", &[1, 2], &f64_le(&[1.0, f64::NAN])),
    );
    let y1 = write(&d, "y1.npy", &npy("<i8", &[1], &labels[..8]));
    one_line(
        &nan,
        &DataOptions {
            labels: Some(y1),
            ..none.clone()
        },
        "non-finite",
    );
    one_line(
        &x,
        &DataOptions {
            labels: Some(y.clone()),
            classes: Some(2),
            ..none.clone()
        },
        "out of range",
    );
    let trunc_zip = zip(&[("x.npy", xs.clone()), ("y.npy", ys.clone())], true);
    let tz = write(&d, "t.npz", &trunc_zip[..trunc_zip.len() - 10]);
    one_line(&tz, &none, "t.npz");
}

#[test]
fn average_pooling_against_hand_computed_blocks() {
    use landscape::data::avg_pool;
    use landscape::Matrix;
    // One 1x4x4 image with pixels 0..15 and one 2x2x4 image (two channels), pooled 2x2.
    let one = Matrix::from_vec(1, 16, (0..16).map(f64::from).collect());
    let (p, shape) = avg_pool(&one, [1, 4, 4], 2).unwrap();
    assert_eq!(shape, [1, 2, 2]);
    // (0+1+4+5)/4, (2+3+6+7)/4, (8+9+12+13)/4, (10+11+14+15)/4
    assert_eq!(p.as_slice(), &[2.5, 4.5, 10.5, 12.5]);
    let two = Matrix::from_vec(
        2,
        16,
        (0..16)
            .map(f64::from)
            .chain((0..16).map(|v| f64::from(v * v)))
            .collect(),
    );
    let (p, shape) = avg_pool(&two, [2, 2, 4], 2).unwrap();
    assert_eq!(shape, [2, 1, 2]);
    // channel 0 = pixels 0..7 as 2x4, channel 1 = 8..15; row 2 holds the squares.
    assert_eq!(p.row(0), &[2.5, 4.5, 10.5, 12.5]);
    assert_eq!(
        p.row(1),
        &[
            (0.0 + 1.0 + 16.0 + 25.0) / 4.0,
            (4.0 + 9.0 + 36.0 + 49.0) / 4.0,
            (64.0 + 81.0 + 144.0 + 169.0) / 4.0,
            (100.0 + 121.0 + 196.0 + 225.0) / 4.0
        ]
    );
    // F = 1 is the identity; F = 4 is the mean.
    assert_eq!(
        avg_pool(&one, [1, 4, 4], 1).unwrap().0.as_slice(),
        one.as_slice()
    );
    assert_eq!(avg_pool(&one, [1, 4, 4], 4).unwrap().0.as_slice(), &[7.5]);
    for (f, shape, msg) in [
        (0, [1, 4, 4], "positive"),
        (3, [1, 4, 4], "does not divide"),
        (2, [1, 2, 4], "features"),
    ] {
        let e = avg_pool(&one, shape, f).unwrap_err().to_string();
        assert!(e.contains(msg) && !e.contains('\n'), "{e}");
    }
}

#[test]
fn downsample_option_pools_embedded_images_and_rejects_bad_factors() {
    let raw = load(
        "digits",
        &DataOptions {
            normalize: Normalize::None,
            train_subset: Subset::First(3),
            ..Default::default()
        },
    )
    .unwrap();
    let unit = |downsample| {
        load(
            "digits",
            &DataOptions {
                train_subset: Subset::First(3),
                downsample,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let pooled = unit(Some(2));
    assert_eq!((pooled.features, pooled.image_shape), (16, Some([1, 4, 4])));
    assert_eq!(pooled.summary_json()["features"], 16);
    assert_eq!(pooled.summary_json()["downsample"], 2);
    // By hand from the raw 8x8 pixels in [0, 16]: block mean, then / 16.
    for s in 0..3 {
        let px = raw.train.x.row(s);
        for i in 0..4 {
            for j in 0..4 {
                let sum = px[16 * i + 2 * j]
                    + px[16 * i + 2 * j + 1]
                    + px[16 * i + 8 + 2 * j]
                    + px[16 * i + 8 + 2 * j + 1];
                let want = sum / 4.0 / 16.0;
                assert!((pooled.train.x.get(s, 4 * i + j) - want).abs() < 1e-15);
            }
        }
    }
    // mnist10k 28x28 -> 7x7, test set too, values still in [0, 1].
    let m = load(
        "mnist10k",
        &DataOptions {
            train_subset: Subset::First(5),
            test_subset: Subset::First(5),
            downsample: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((m.features, m.image_shape), (49, Some([1, 7, 7])));
    assert_eq!(m.test.as_ref().unwrap().x.cols(), 49);
    assert!(m.train.x.as_slice().iter().all(|v| (0.0..=1.0).contains(v)));
    // Bad factors and data without an image shape: one-line errors.
    let dir = temp_dir("downsample");
    let csv = write(&dir, "f.csv", b"a,b,label\n0,10,1\n2,20,0\n");
    for (spec, f, msg) in [
        ("digits", 0, "positive"),
        ("digits", 3, "does not divide"),
        ("mnist10k", 5, "does not divide"),
        (csv.to_str().unwrap(), 2, "no image shape"),
    ] {
        let e = load(
            spec,
            &DataOptions {
                downsample: Some(f),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(msg) && !e.contains('\n'), "{spec} {f}: {e}");
    }
}
