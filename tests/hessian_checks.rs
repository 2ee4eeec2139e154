//! Integration tests: the analytic Hessian against independent references —
//! central differences of the analytic gradient, the autodiff's double-backward
//! HVPs, dense eigenvalues, and closed forms.

use landscape::autodiff::hvp as tape_hvp;
use landscape::hessian::small_eig::jacobi_eigenvalues;
use landscape::hessian::{
    dense_hessian, hessian_block, hvp, per_sample_gn_norms, per_sample_gn_norms_with_curvature,
    BatchStructure, HessianOperator, ParamLayout, Part,
};
use landscape::nn::backprop::loss_and_grad_analytic;
use landscape::nn::{Activation, Init, LossKind, Mlp, Mode};
use landscape::rng::Rng;
use landscape::tensor::Par;
use landscape::Matrix;

const BUDGET: usize = 1 << 30;

use crate::common::mlp_config as config;

fn flat_grad(model: &Mlp<f64>, theta: &[f64], x: &Matrix<f64>, y: &[usize]) -> Vec<f64> {
    let mut m = model.clone();
    m.set_param_vector(theta).unwrap();
    let (_, g) = loss_and_grad_analytic(&m, x, y).unwrap();
    g.iter().flat_map(|t| t.as_slice().to_vec()).collect()
}

/// Central differences of the analytic gradient: column j = (g(t + h e_j) - g(t - h e_j)) / 2h.
fn fd_hessian(model: &Mlp<f64>, x: &Matrix<f64>, y: &[usize], h: f64) -> Matrix<f64> {
    let theta = model.param_vector();
    let p = theta.len();
    let mut out = Matrix::zeros(p, p);
    for j in 0..p {
        let mut tp = theta.clone();
        let mut tm = theta.clone();
        tp[j] += h;
        tm[j] -= h;
        let gp = flat_grad(model, &tp, x, y);
        let gm = flat_grad(model, &tm, x, y);
        for i in 0..p {
            out.set(i, j, (gp[i] - gm[i]) / (2.0 * h));
        }
    }
    out
}

fn rel_frobenius(a: &Matrix<f64>, b: &Matrix<f64>) -> f64 {
    a.zip_map(b, |u, v| u - v).frobenius_norm() / b.frobenius_norm().max(1e-300)
}

fn rel_vec(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(u, v)| (u - v).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

/// Inputs such that no ReLU pre-activation is within 1e-3 of its kink.
fn data_away_from_kinks(model: &Mlp<f64>, n: usize, seed: u64) -> (Matrix<f64>, Vec<usize>) {
    let d = model.config.input_dim;
    let k = model.config.classes;
    for attempt in 0..1000 {
        let mut rng = Rng::new(seed * 1000 + attempt);
        let x = Matrix::from_fn(n, d, |_, _| rng.normal());
        let y: Vec<usize> = (0..n).map(|i| (i * 3 + attempt as usize) % k).collect();
        let pre = model.forward(&x).unwrap().pre;
        let hidden = &pre[..pre.len() - 1];
        if hidden
            .iter()
            .all(|z| z.as_slice().iter().all(|v| v.abs() > 1e-3))
        {
            return (x, y);
        }
    }
    panic!("no kink-free data found");
}

fn widths_for(l: usize) -> Vec<usize> {
    match l {
        1 => vec![3, 2],
        2 => vec![4, 3, 3],
        3 => vec![3, 4, 2, 3],
        _ => vec![2, 3, 7, 2, 3],
    }
}

#[test]
fn dense_hessian_matches_finite_differences() {
    let mut seed = 0;
    for l in 1..=4 {
        for act in [Activation::Relu, Activation::Tanh, Activation::Identity] {
            for bias in [true, false] {
                for loss in [LossKind::CrossEntropy, LossKind::Mse] {
                    seed += 1;
                    let cfg = config(&widths_for(l), act, bias, loss);
                    let model = Mlp::<f64>::init(cfg, Init::Xavier, 1.5, seed).unwrap();
                    let (x, y) = data_away_from_kinks(&model, 5, seed);
                    let h = dense_hessian(&model, &x, &y, Part::Full, BUDGET).unwrap();
                    let fd = fd_hessian(&model, &x, &y, 1e-5);
                    let e = rel_frobenius(&h, &fd);
                    assert!(
                        e <= 1e-6,
                        "L={l} {act:?} bias={bias} {loss:?}: rel Frobenius error {e:.2e}"
                    );
                    // Symmetric, and GN + Hterm = H.
                    assert_eq!(h, h.transpose());
                    let gn = dense_hessian(&model, &x, &y, Part::Gn, BUDGET).unwrap();
                    let ht = dense_hessian(&model, &x, &y, Part::Hterm, BUDGET).unwrap();
                    let sum = gn.zip_map(&ht, |a, b| a + b);
                    assert!(rel_frobenius(&sum, &h) < 1e-13);
                }
            }
        }
    }
}

#[test]
fn analytic_hvps_match_dense_and_double_backward() {
    let mut seed = 100;
    for l in 1..=4 {
        for act in [
            Activation::Relu,
            Activation::Tanh,
            Activation::LeakyRelu,
            Activation::Identity,
        ] {
            for bias in [true, false] {
                for loss in [LossKind::CrossEntropy, LossKind::Mse] {
                    seed += 1;
                    let cfg = config(&widths_for(l), act, bias, loss);
                    let model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, seed).unwrap();
                    let mut rng = Rng::new(seed);
                    // More than one HVP block, so the blocked reduction is exercised.
                    let n = 300;
                    // Every other case has mostly-zero inputs (like image pixels), which
                    // take the sparse first-layer products.
                    let sparse = seed % 2 == 0;
                    let x = Matrix::from_fn(n, model.config.input_dim, |_, _| {
                        let v = rng.normal();
                        if sparse && rng.uniform() < 0.8 {
                            0.0
                        } else {
                            v
                        }
                    });
                    let y: Vec<usize> = (0..n).map(|i| i % model.config.classes).collect();
                    let p = model.num_params();
                    let v: Vec<f64> = (0..p).map(|_| rng.normal()).collect();
                    // The cached operator (sparse first layer when the inputs are sparse)
                    // and the one-shot product (dense) must agree with the references.
                    let full = HessianOperator::new(&model, &x, &y, Part::Full)
                        .unwrap()
                        .apply(&v)
                        .unwrap();
                    let one_shot = hvp(&model, &x, &y, Part::Full, &v).unwrap();
                    let diff: f64 = full
                        .iter()
                        .zip(&one_shot)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let size: f64 = full.iter().map(|a| a * a).sum::<f64>().sqrt();
                    assert!(
                        diff <= 1e-12 * size.max(1e-300),
                        "sparse vs dense: {diff} / {size}"
                    );
                    // Double backward through the tape.
                    let params: Vec<Matrix<f64>> = model
                        .named_params()
                        .into_iter()
                        .map(|(_, m)| m.clone())
                        .collect();
                    let mut off = 0;
                    let vm: Vec<Matrix<f64>> = params
                        .iter()
                        .map(|m| {
                            let t = Matrix::from_vec(
                                m.rows(),
                                m.cols(),
                                v[off..off + m.len()].to_vec(),
                            );
                            off += m.len();
                            t
                        })
                        .collect();
                    let (_, _, hv) = tape_hvp(&params, &vm, |t, vars| {
                        model
                            .loss_tape(vars, t.constant(x.clone()), &y, Mode::Eval)
                            .0
                    });
                    let hv: Vec<f64> = hv.iter().flat_map(|m| m.as_slice().to_vec()).collect();
                    let e = rel_vec(&full, &hv);
                    assert!(
                        e <= 1e-10,
                        "L={l} {act:?} bias={bias} {loss:?}: analytic vs double-backward {e:.2e}"
                    );
                    // Against the dense matrices, part by part.
                    for part in [Part::Full, Part::Gn, Part::Hterm] {
                        let dense = dense_hessian(&model, &x, &y, part, BUDGET).unwrap();
                        let hv_dense: Vec<f64> = (0..p)
                            .map(|i| dense.row(i).iter().zip(&v).map(|(a, b)| a * b).sum())
                            .collect();
                        let hv_free = hvp(&model, &x, &y, part, &v).unwrap();
                        let e = rel_vec(&hv_free, &hv_dense);
                        assert!(
                            e <= 1e-11,
                            "L={l} {act:?} {part:?}: matrix-free vs dense {e:.2e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn relu_hterm_is_traceless_with_zero_same_layer_blocks() {
    for (i, widths) in [vec![4, 5, 3], vec![3, 4, 5, 3], vec![2, 3, 7, 2, 3]]
        .into_iter()
        .enumerate()
    {
        for bias in [true, false] {
            let cfg = config(&widths, Activation::Relu, bias, LossKind::CrossEntropy);
            let model = Mlp::<f64>::init(cfg, Init::Kaiming, 1.0, i as u64).unwrap();
            let (x, y) = data_away_from_kinks(&model, 7, i as u64 + 50);
            let ht = dense_hessian(&model, &x, &y, Part::Hterm, BUDGET).unwrap();
            let tr: f64 = (0..ht.rows()).map(|j| ht.get(j, j)).sum();
            assert!(
                tr.abs() < 1e-14 * ht.frobenius_norm().max(1.0),
                "trace {tr}"
            );
            for l in 0..widths.len() - 1 {
                let b = hessian_block(&model, &x, &y, Part::Hterm, l, l).unwrap();
                assert_eq!(
                    b.max_abs(),
                    0.0,
                    "same-layer block {l} of the ReLU H-term is not zero"
                );
            }
            // Indefinite: a cross block is nonzero, so eigenvalues of both signs.
            let ev = jacobi_eigenvalues(&ht);
            assert!(
                ev[0] < -1e-8 && *ev.last().unwrap() > 1e-8,
                "H-term should be indefinite"
            );
            // Rows of the last layer's bias are zero.
            if bias {
                let lay = ParamLayout::of(&model);
                let last = widths.len() - 2;
                for a in 0..widths[widths.len() - 1] {
                    assert!(ht.row(lay.bias_index(last, a)).iter().all(|&v| v == 0.0));
                }
            }
        }
    }
}

#[test]
fn per_sample_structure_facts_and_k_by_k_norms() {
    for (seed, act) in [Activation::Relu, Activation::Tanh].into_iter().enumerate() {
        for bias in [true, false] {
            let cfg = config(&[5, 6, 4, 4], act, bias, LossKind::CrossEntropy);
            let model = Mlp::<f64>::init(cfg, Init::Torch, 2.0, seed as u64).unwrap();
            let mut rng = Rng::new(9);
            let x = Matrix::from_fn(6, 5, |_, _| rng.normal());
            let y = vec![0, 1, 2, 3, 0, 1];
            let norms = per_sample_gn_norms_with_curvature(&model, &x, &y).unwrap();
            let fast = per_sample_gn_norms(&model, &x, &y).unwrap();
            assert_eq!(fast.norms, norms.norms);
            assert!(fast.a_norms.is_empty());
            let st = BatchStructure::new(&model, &x, &y, Par::Seq).unwrap();
            for i in 0..6 {
                let xi = x.rows_view(i, i + 1).to_owned();
                let gn_i = dense_hessian(&model, &xi, &y[i..i + 1], Part::Gn, BUDGET).unwrap();
                let ev = jacobi_eigenvalues(&gn_i);
                let top = *ev.last().unwrap();
                let rel = (norms.norms[i] - top).abs() / top;
                assert!(
                    rel <= 1e-12,
                    "K x K norm {} vs dense {top}: {rel:.1e}",
                    norms.norms[i]
                );
                // rank(GN_i) <= K - 1 = 3.
                let rank = ev.iter().filter(|&&e| e > 1e-10 * top).count();
                assert!(rank <= 3, "rank {rank}");
                assert!(norms.ranks[i] <= 3);
                assert!(norms.a_norms[i] <= 0.5 + 1e-15);
                // GN_i = F^T A F with F materialised.
                let f = st.jacobian(i);
                let (_, a) = landscape::hessian::structure::loss_derivatives(
                    LossKind::CrossEntropy,
                    st.logits(i),
                    y[i],
                );
                let af = landscape::tensor::matmul(a.view(), f.view());
                let ftaf = landscape::tensor::matmul(f.t(), af.view());
                assert!(rel_frobenius(&ftaf, &gn_i) < 1e-13);
            }
        }
    }
}

#[test]
fn softmax_curvature_norm_attains_one_half() {
    // ||A|| = 1/2 exactly at p = (1/2, 1/2, 0, ...) (up to exp underflow of the third class).
    let z = [0.0, 0.0, -800.0];
    let (_, a) = landscape::hessian::structure::loss_derivatives(LossKind::CrossEntropy, &z, 0);
    let top = *jacobi_eigenvalues(&a).last().unwrap();
    assert!((top - 0.5).abs() < 1e-15, "{top}");
}

/// DESIGN.md section 4: L = 1, K = 2, W = 0.1 I, x = (1, 1): ||H|| = 1.00 while
/// Theorem 1 as printed gives 0.042 (a violation).
#[test]
fn counterexample_single_layer() {
    let cfg = config(&[2, 2], Activation::Relu, false, LossKind::CrossEntropy);
    let mut model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 0).unwrap();
    model.layers[0].weight = Matrix::from_vec(2, 2, vec![0.1, 0.0, 0.0, 0.1]);
    let x = Matrix::from_vec(1, 2, vec![1.0, 1.0]);
    let h = dense_hessian(&model, &x, &[0], Part::Full, BUDGET).unwrap();
    let ev = jacobi_eigenvalues(&h);
    let norm = ev.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    // Closed form: H = A (x) x x^T with ||A|| = 1/2 and ||x||^2 = 2.
    assert!((norm - 1.0).abs() < 1e-14, "{norm}");
    let (mw, mx, l) = (0.1f64, 2f64.sqrt(), 1i32);
    let printed = l as f64 * 2f64.sqrt() * mx * mx * mw.powi(2 * l)
        + 2f64.sqrt() * mw * mw * (mw.powi(2 * l) - 1.0) / (mw * mw - 1.0);
    assert!((printed - 0.0424).abs() < 1e-3, "{printed}");
    assert!(norm > printed);
}

/// DESIGN.md section 4, L = 3: K = 2, W(1) = W(2) = W(3) = c I with c = 1/2, no biases,
/// x = (5 sqrt2, 5 sqrt2) (||x|| = 10). Every pre-activation is positive and the two
/// logits are equal, so ||A|| = 1/2 and, in closed form,
/// `F F^T = sum_p ||x(p)||^2 G(p) G(p)^T = 3 ||x||^2 c^4 I`, hence
/// `||GN|| = 3/2 ||x||^2 c^4 = 9.375`: the tight GN bound `1/2 L Mx^2 MW^(2L-2)`, attained.
/// The H-term lifts the full norm to about 12.68 (DESIGN.md), above every GN bound that
/// is attained here. The full norm is checked against the eigenvalues of the
/// finite-difference Hessian, an independent reference.
#[test]
fn counterexample_three_layers() {
    let cfg = config(
        &[2, 2, 2, 2],
        Activation::Relu,
        false,
        LossKind::CrossEntropy,
    );
    let mut model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 0).unwrap();
    let c = 0.5;
    for layer in &mut model.layers {
        layer.weight = Matrix::from_vec(2, 2, vec![c, 0.0, 0.0, c]);
    }
    let s = 5.0 * 2f64.sqrt();
    let x = Matrix::from_vec(1, 2, vec![s, s]);
    let abs_max = |m: &Matrix<f64>| {
        jacobi_eigenvalues(m)
            .iter()
            .fold(0.0f64, |a, e| a.max(e.abs()))
    };
    for label in [0, 1] {
        let gn = abs_max(&dense_hessian(&model, &x, &[label], Part::Gn, BUDGET).unwrap());
        let closed = 1.5 * 100.0 * c.powi(4);
        assert!((closed - 9.375).abs() < 1e-15);
        assert!((gn - closed).abs() < 1e-12 * closed, "GN {gn}");
        let h = dense_hessian(&model, &x, &[label], Part::Full, BUDGET).unwrap();
        let full = abs_max(&h);
        assert!((full - 12.68).abs() < 5e-3, "full {full}");
        let fd = fd_hessian(&model, &x, &[label], 1e-5);
        let fd_sym = Matrix::from_fn(fd.rows(), fd.cols(), |i, j| {
            0.5 * (fd.get(i, j) + fd.get(j, i))
        });
        let fd_norm = abs_max(&fd_sym);
        assert!(
            (full - fd_norm).abs() < 1e-6 * full,
            "{full} vs FD {fd_norm}"
        );
        // The K x K route gives the same GN norm.
        let kk = per_sample_gn_norms(&model, &x, &[label]).unwrap();
        assert!(
            (kk.norms[0] - closed).abs() < 1e-12 * closed,
            "{:?}",
            kk.norms
        );
        assert_eq!(kk.ranks[0], 1);
    }
}

/// Mostly-zero inputs (80% zeros, below the sparse threshold) take the sparse first-layer
/// route of the K x K norms; MSE takes the `2 M` congruence. Both against dense eigenvalues.
#[test]
fn k_by_k_norms_with_sparse_inputs_and_mse() {
    let mut rng = Rng::new(21);
    let x = Matrix::from_fn(9, 31, |_, _| {
        let v = rng.normal();
        if rng.uniform() < 0.8 {
            0.0
        } else {
            v
        }
    });
    let y = vec![0, 1, 2, 0, 1, 2, 0, 1, 2];
    for (loss, bias) in [(LossKind::CrossEntropy, true), (LossKind::Mse, false)] {
        let cfg = config(&[31, 7, 5, 3], Activation::Relu, bias, loss);
        let model = Mlp::<f64>::init(cfg, Init::Torch, 2.0, 3).unwrap();
        let norms = per_sample_gn_norms(&model, &x, &y).unwrap();
        for i in 0..x.rows() {
            let xi = x.rows_view(i, i + 1).to_owned();
            let gn_i = dense_hessian(&model, &xi, &y[i..i + 1], Part::Gn, BUDGET).unwrap();
            let top = *jacobi_eigenvalues(&gn_i).last().unwrap();
            let rel = (norms.norms[i] - top).abs() / top.max(1e-300);
            assert!(
                rel <= 1e-12,
                "{loss:?} sample {i}: {} vs {top}",
                norms.norms[i]
            );
        }
    }
}

/// Confidently classified samples (loss down to 1e-6 and below): the K x K route must keep
/// the null direction of `A` (rank <= K - 1) and the norm accurate, where the naive
/// `M_ab - u_a - u_b + p^T M p` form cancels catastrophically in the predicted class.
#[test]
fn k_by_k_norms_of_confident_samples() {
    let cfg = config(&[6, 9, 4], Activation::Relu, true, LossKind::CrossEntropy);
    let model = Mlp::<f64>::init(cfg, Init::Kaiming, 3.0, 11).unwrap();
    let mut rng = Rng::new(5);
    let x = Matrix::from_fn(60, 6, |_, _| 3.0 * rng.normal());
    let logits = model.logits(&x).unwrap();
    // Label every sample with its predicted class: tiny losses.
    let y: Vec<usize> = (0..x.rows())
        .map(|i| {
            let r = logits.row(i);
            (0..r.len()).fold(0, |b, c| if r[c] > r[b] { c } else { b })
        })
        .collect();
    let norms = per_sample_gn_norms(&model, &x, &y).unwrap();
    let confident = norms
        .losses
        .iter()
        .filter(|&&l| (1e-10..1e-5).contains(&l))
        .count();
    assert!(confident >= 10, "only {confident} confident samples");
    for i in 0..x.rows() {
        assert!(
            norms.ranks[i] <= 3,
            "sample {i}: rank {} (loss {:.1e})",
            norms.ranks[i],
            norms.losses[i]
        );
        if norms.losses[i] < 1e-10 {
            continue; // p_y rounds to 1: both norms are rounding noise
        }
        let xi = x.rows_view(i, i + 1).to_owned();
        let gn_i = dense_hessian(&model, &xi, &y[i..i + 1], Part::Gn, BUDGET).unwrap();
        let top = *jacobi_eigenvalues(&gn_i).last().unwrap();
        // The dense reference forms A = diag(p) - p p^T itself, accurate to about
        // eps / (1 - p_y) relative; the K x K norm must agree to that.
        let tol = 1e-12f64.max(1e-15 / norms.losses[i].max(1e-300));
        let rel = (norms.norms[i] - top).abs() / top.max(1e-300);
        assert!(
            rel <= tol.min(1e-6),
            "sample {i}: {} vs {top} ({rel:.1e}, loss {:.1e})",
            norms.norms[i],
            norms.losses[i]
        );
    }
}
