//! Margin distributions (Jiang, Krishnan, Mobahi and Bengio, "Predicting the
//! generalization gap in deep networks with margin distributions", ICLR 2019;
//! DESIGN.md section 13).
//!
//! For a sample `x` with label `i`, logits `f(x)` and a layer representation
//! `h` (the input, a hidden representation, or the logits), with `j` the
//! strongest other class (`j = argmax_{k != i} f_k`, the lowest index on ties),
//! the signed first-order margin at `h` is
//!
//! ```text
//! d_h(x) = (f_i - f_j) / ||grad_h (f_i - f_j)||_2
//! ```
//!
//! It is negative exactly when `f_j > f_i`, i.e. on misclassified samples (a
//! sample whose true logit ties the best other one gets `d = 0`). The gradient
//! is taken through the autodiff tape with the network in evaluation mode
//! (BatchNorm with running statistics, so samples do not interact); for the
//! output layer `grad = e_i - e_j` and the norm is `sqrt 2`. A sample whose
//! gradient vanishes (e.g. all ReLUs dead) has an infinite margin; such samples
//! are kept in the per-sample output and left out of the signatures (counted).
//!
//! Normalisation (Jiang et al. 2019, section 3): `d_h` is divided by the total
//! variation of the layer over the same dataset,
//!
//! ```text
//! nu(h) = sqrt( tr Cov(h) ) = sqrt( (1/N) sum_n ||h(x_n) - mean_m h(x_m)||_2^2 )
//! ```
//!
//! with `h(x_n)` the whole representation of sample `n` as one vector (all
//! channels and positions of a feature map) and the population (1/N) covariance.
//!
//! Signatures of a layer's normalised margins: `quartiles` = (Q1, Q2, Q3, lower
//! fence Q1 - 1.5 IQR, upper fence Q3 + 1.5 IQR), quantiles by linear
//! interpolation between order statistics (numpy's default, `q = (N-1) p`);
//! or `moments` = (mean, standard deviation, skewness, kurtosis), the
//! population moments (skewness `m3 / m2^1.5`, kurtosis `m4 / m2^2`).
//!
//! Work runs in fixed blocks of [`BLOCK`] samples in parallel; block results are
//! combined in block order (the total variation with Chan's pairwise update), so
//! every number is identical for any thread count.

#![allow(clippy::needless_range_loop)] // index loops over parallel arrays read clearer

pub mod stats;
pub mod study;

use crate::autodiff::Tape;
use crate::error::{Error, Result};
use crate::nn::{Mode, Network};
use crate::tensor::{sample_blocks, Matrix};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Samples per block of the margin computation.
pub const BLOCK: usize = 128;

/// A layer at which margins are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum LayerSel {
    Input,
    /// The k-th hidden representation (1-based), see
    /// [`Network::forward_tape_hidden`].
    Hidden(usize),
    Output,
}

impl LayerSel {
    /// `input`, `hiddenK`, `output`.
    pub fn name(&self) -> String {
        match self {
            LayerSel::Input => "input".into(),
            LayerSel::Hidden(k) => format!("hidden{k}"),
            LayerSel::Output => "output".into(),
        }
    }

    /// Parses `input`, `hiddenK` (K >= 1) or `output`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        match t {
            "input" => Ok(LayerSel::Input),
            "output" => Ok(LayerSel::Output),
            _ => match t.strip_prefix("hidden").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 1 => Ok(LayerSel::Hidden(k)),
                _ => Err(Error::InvalidArgument(format!(
                    "layer '{t}': expected input, hiddenK (K >= 1) or output"
                ))),
            },
        }
    }
}

/// The number of hidden representations of a network (see
/// [`Network::forward_tape_hidden`]).
pub fn hidden_count(net: &Network<f64>) -> usize {
    let tape = Tape::new();
    let p: Vec<_> = net
        .params
        .iter()
        .map(|m| tape.constant(m.clone()))
        .collect();
    let x = Matrix::zeros(1, net.arch.input_shape.iter().product());
    let (_, _, hidden) = net.forward_tape_hidden(&p, &x, Mode::Eval);
    hidden.len()
}

/// Parses a comma-separated layer list, or `all` (input, every hidden layer, output).
pub fn parse_layers(spec: &str, hidden: usize) -> Result<Vec<LayerSel>> {
    if spec.trim() == "all" {
        let mut v = vec![LayerSel::Input];
        v.extend((1..=hidden).map(LayerSel::Hidden));
        v.push(LayerSel::Output);
        return Ok(v);
    }
    let mut out = Vec::new();
    for part in spec.split(',') {
        let l = LayerSel::parse(part)?;
        if let LayerSel::Hidden(k) = l {
            if k > hidden {
                return Err(Error::InvalidArgument(format!(
                    "layer hidden{k}: the model has {hidden} hidden layers"
                )));
            }
        }
        if out.contains(&l) {
            return Err(Error::InvalidArgument(format!(
                "layer {} is listed twice",
                l.name()
            )));
        }
        out.push(l);
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument("no layers given".into()));
    }
    Ok(out)
}

/// Margins of every sample at one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerMargins {
    pub layer: LayerSel,
    /// Signed margins `d_h` (not normalised), one per sample.
    pub raw: Vec<f64>,
    /// The layer's total variation `nu(h)`.
    pub total_variation: f64,
    /// `d_h / nu(h)`.
    pub normalized: Vec<f64>,
    /// `||grad_h (f_i - f_j)||` per sample.
    pub grad_norms: Vec<f64>,
}

/// Margins of a dataset at the chosen layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Margins {
    /// `f_i - f_j` per sample.
    pub logit_gap: Vec<f64>,
    /// The strongest other class `j` per sample.
    pub runner_up: Vec<usize>,
    /// The predicted class (the first maximal logit) per sample.
    pub predicted: Vec<usize>,
    pub layers: Vec<LayerMargins>,
}

/// Per-block results: gaps, runner-ups, predictions, per-layer grad norms and
/// per-layer (mean, M2, count) of the representation for the total variation.
struct BlockOut {
    gap: Vec<f64>,
    j: Vec<usize>,
    pred: Vec<usize>,
    norms: Vec<Vec<f64>>,
    moments: Vec<(Vec<f64>, Vec<f64>, usize)>,
}

/// Mean and sum of squared deviations per feature of `rows` samples, each the
/// contiguous slice `v[s*per..(s+1)*per]`.
fn feature_moments(v: &[f64], samples: usize) -> (Vec<f64>, Vec<f64>, usize) {
    let per = v.len() / samples.max(1);
    let mut mean = vec![0.0; per];
    for s in 0..samples {
        for (m, &x) in mean.iter_mut().zip(&v[s * per..(s + 1) * per]) {
            *m += x;
        }
    }
    for m in &mut mean {
        *m /= samples as f64;
    }
    let mut m2 = vec![0.0; per];
    for s in 0..samples {
        for ((a, &x), &m) in m2.iter_mut().zip(&v[s * per..(s + 1) * per]).zip(&mean) {
            *a += (x - m) * (x - m);
        }
    }
    (mean, m2, samples)
}

/// Chan's update: the moments of the union of two disjoint sets.
fn merge_moments(
    a: (Vec<f64>, Vec<f64>, usize),
    b: &(Vec<f64>, Vec<f64>, usize),
) -> (Vec<f64>, Vec<f64>, usize) {
    let (ma, qa, na) = a;
    let (mb, qb, nb) = b;
    if na == 0 {
        return b.clone();
    }
    let n = na + nb;
    let (fa, fb) = (na as f64, *nb as f64);
    let mut mean = Vec::with_capacity(ma.len());
    let mut q = Vec::with_capacity(ma.len());
    for k in 0..ma.len() {
        let d = mb[k] - ma[k];
        mean.push(ma[k] + d * fb / n as f64);
        q.push(qa[k] + qb[k] + d * d * fa * fb / n as f64);
    }
    (mean, q, n)
}

/// Signed first-order margins of every sample of `(x, labels)` at `layers`
/// (see the module documentation for the definition and normalisation).
pub fn compute_margins(
    net: &Network<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    layers: &[LayerSel],
) -> Result<Margins> {
    net.check_input(x)?;
    let n = labels.len();
    if n == 0 || x.rows() != n {
        return Err(Error::Shape(format!(
            "{} samples and {} labels",
            x.rows(),
            n
        )));
    }
    let classes = net.arch.classes;
    if classes < 2 {
        return Err(Error::InvalidArgument(
            "margins need at least 2 classes".into(),
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
        return Err(Error::Shape(format!(
            "label {bad} is out of range for a model with {classes} outputs"
        )));
    }
    let hidden = hidden_count(net);
    for l in layers {
        if let LayerSel::Hidden(k) = l {
            if *k == 0 || *k > hidden {
                return Err(Error::InvalidArgument(format!(
                    "layer hidden{k}: the model has {hidden} hidden layers"
                )));
            }
        }
    }
    let blocks = sample_blocks(n, BLOCK);
    let outs: Vec<BlockOut> = blocks
        .par_iter()
        .map(|r| {
            let xb = x.rows_view(r.start, r.end).to_owned();
            let yb = &labels[r.clone()];
            let b = yb.len();
            let tape = Tape::new();
            let p: Vec<_> = net
                .params
                .iter()
                .map(|m| tape.constant(m.clone()))
                .collect();
            let (fwd, input, hid) = net.forward_tape_hidden(&p, &xb, Mode::Eval);
            let z = fwd.logits.value().clone();
            let mut mask = Matrix::zeros(b, classes);
            let (mut gap, mut jv, mut pred) = (Vec::new(), Vec::new(), Vec::new());
            for s in 0..b {
                let row = z.row(s);
                let i = yb[s];
                let mut j = usize::MAX;
                let mut best = f64::NEG_INFINITY;
                let mut argmax = 0;
                for (k, &v) in row.iter().enumerate() {
                    if v > row[argmax] {
                        argmax = k;
                    }
                    if k != i && (j == usize::MAX || v > best) {
                        best = v;
                        j = k;
                    }
                }
                gap.push(row[i] - row[j]);
                jv.push(j);
                pred.push(argmax);
                mask.row_mut(s)[i] = 1.0;
                mask.row_mut(s)[j] = -1.0;
            }
            let s = fwd.logits.mul_const(Arc::new(mask)).sum();
            let wrt: Vec<_> = layers
                .iter()
                .map(|l| match l {
                    LayerSel::Input => input,
                    LayerSel::Hidden(k) => hid[k - 1],
                    LayerSel::Output => fwd.logits,
                })
                .collect();
            let grads = tape.grad(s, &wrt);
            let mut norms = Vec::with_capacity(layers.len());
            let mut moments = Vec::with_capacity(layers.len());
            for (l, (g, h)) in layers.iter().zip(grads.iter().zip(&wrt)) {
                let gv = g.value();
                let per = gv.as_slice().len() / b;
                let nv: Vec<f64> = if *l == LayerSel::Output {
                    vec![std::f64::consts::SQRT_2; b]
                } else {
                    (0..b)
                        .map(|s| {
                            gv.as_slice()[s * per..(s + 1) * per]
                                .iter()
                                .map(|v| v * v)
                                .sum::<f64>()
                                .sqrt()
                        })
                        .collect()
                };
                norms.push(nv);
                moments.push(feature_moments(h.value().as_slice(), b));
            }
            BlockOut {
                gap,
                j: jv,
                pred,
                norms,
                moments,
            }
        })
        .collect();
    let mut logit_gap = Vec::with_capacity(n);
    let mut runner_up = Vec::with_capacity(n);
    let mut predicted = Vec::with_capacity(n);
    let mut norms: Vec<Vec<f64>> = vec![Vec::with_capacity(n); layers.len()];
    let mut moms: Vec<(Vec<f64>, Vec<f64>, usize)> =
        vec![(Vec::new(), Vec::new(), 0); layers.len()];
    for o in outs {
        logit_gap.extend(o.gap);
        runner_up.extend(o.j);
        predicted.extend(o.pred);
        for (k, nv) in o.norms.into_iter().enumerate() {
            norms[k].extend(nv);
        }
        for (k, m) in o.moments.iter().enumerate() {
            let acc = std::mem::take(&mut moms[k]);
            moms[k] = merge_moments(acc, m);
        }
    }
    let out_layers = layers
        .iter()
        .zip(norms)
        .zip(moms)
        .map(|((l, gn), (_, m2, cnt))| {
            let tv = (m2.iter().sum::<f64>() / cnt as f64).sqrt();
            let raw: Vec<f64> = logit_gap
                .iter()
                .zip(&gn)
                .map(|(&d, &g)| first_order_margin(d, g))
                .collect();
            let normalized = raw.iter().map(|&d| d / tv).collect();
            LayerMargins {
                layer: *l,
                raw,
                total_variation: tv,
                normalized,
                grad_norms: gn,
            }
        })
        .collect();
    Ok(Margins {
        logit_gap,
        runner_up,
        predicted,
        layers: out_layers,
    })
}

/// `gap / norm`, signed, with `0 / 0 = 0` and `gap / 0 = +-inf`.
fn first_order_margin(gap: f64, norm: f64) -> f64 {
    if norm > 0.0 {
        gap / norm
    } else if gap == 0.0 {
        0.0
    } else {
        gap.signum() * f64::INFINITY
    }
}

/// Which statistics summarise a layer's margin distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SignatureKind {
    /// Q1, Q2, Q3, lower fence Q1 - 1.5 IQR, upper fence Q3 + 1.5 IQR.
    Quartiles,
    /// Mean, standard deviation, skewness, kurtosis.
    Moments,
}

impl SignatureKind {
    /// The statistics a linear model uses: the fences are affine in the
    /// quartiles, so the quartile signature enters a fit as (Q1, Q2, Q3).
    pub fn fit_columns(&self) -> &'static [usize] {
        match self {
            SignatureKind::Quartiles => &[0, 1, 2],
            SignatureKind::Moments => &[0, 1, 2, 3],
        }
    }

    /// Names of the statistics, in order.
    pub fn names(&self) -> &'static [&'static str] {
        match self {
            SignatureKind::Quartiles => &["q1", "q2", "q3", "lower_fence", "upper_fence"],
            SignatureKind::Moments => &["mean", "std", "skewness", "kurtosis"],
        }
    }
}

/// The signature of one layer's (normalised) margins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub layer: String,
    pub kind: SignatureKind,
    /// The statistics, in the order of [`SignatureKind::names`].
    pub values: Vec<f64>,
    /// Finite margins used.
    pub samples: usize,
    /// Infinite margins left out (vanishing gradient).
    pub excluded: usize,
}

/// The signature of `values` (non-finite values left out).
pub fn signature(layer: &str, values: &[f64], kind: SignatureKind) -> Result<Signature> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "layer {layer}: no finite margin"
        )));
    }
    let excluded = values.len() - v.len();
    let values = match kind {
        SignatureKind::Quartiles => {
            v.sort_by(f64::total_cmp);
            let q1 = stats::quantile_sorted(&v, 0.25);
            let q2 = stats::quantile_sorted(&v, 0.5);
            let q3 = stats::quantile_sorted(&v, 0.75);
            let iqr = q3 - q1;
            vec![q1, q2, q3, q1 - 1.5 * iqr, q3 + 1.5 * iqr]
        }
        SignatureKind::Moments => {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let m = |p: i32| v.iter().map(|x| (x - mean).powi(p)).sum::<f64>() / n;
            let (m2, m3, m4) = (m(2), m(3), m(4));
            let (skew, kurt) = if m2 > 0.0 {
                (m3 / m2.powf(1.5), m4 / (m2 * m2))
            } else {
                (0.0, 0.0)
            };
            vec![mean, m2.sqrt(), skew, kurt]
        }
    };
    Ok(Signature {
        layer: layer.into(),
        kind,
        values,
        samples: v.len(),
        excluded,
    })
}

impl Margins {
    /// Signatures of the normalised margins of every layer.
    pub fn signatures(&self, kind: SignatureKind) -> Result<Vec<Signature>> {
        self.layers
            .iter()
            .map(|l| signature(&l.layer.name(), &l.normalized, kind))
            .collect()
    }

    /// Per-sample CSV: `sample,label,runner_up,predicted,logit_gap`, then per
    /// layer `d_<layer>,dnorm_<layer>,gradnorm_<layer>`.
    pub fn to_csv(&self, labels: &[usize]) -> String {
        let mut s = String::from("sample,label,runner_up,predicted,logit_gap");
        for l in &self.layers {
            let n = l.layer.name();
            s.push_str(&format!(",d_{n},dnorm_{n},gradnorm_{n}"));
        }
        s.push('\n');
        for i in 0..self.logit_gap.len() {
            s.push_str(&format!(
                "{i},{},{},{},{:e}",
                labels[i], self.runner_up[i], self.predicted[i], self.logit_gap[i]
            ));
            for l in &self.layers {
                s.push_str(&format!(
                    ",{:e},{:e},{:e}",
                    l.raw[i], l.normalized[i], l.grad_norms[i]
                ));
            }
            s.push('\n');
        }
        s
    }
}
