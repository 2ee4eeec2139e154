//! Sublevel-set connectivity: between two minima, a quadratic Bezier path
//! `theta(t) = (1-t)^2 a + 2 t (1-t) c + t^2 b` whose control point `c` is trained
//! to minimise a smooth maximum of the loss along the path,
//! `F(c) = (mean_j L(theta(t_j))^q)^(1/q)` over `t_j` on a grid (a `q`-norm, `q = 16`,
//! which tends to the maximum as `q` grows). The reported path maximum is taken on a
//! finer grid than the one trained on.

use super::sweep::RunRecord;
use super::{init_params, mse_config, train_to_convergence, Progress, SquaredLoss, TrainSettings};
use crate::error::Result;
use crate::nn::{Activation, Mlp};
use crate::optim::{lbfgs, LbfgsConfig, Objective};
use crate::tensor::Matrix;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct PathConfig {
    pub activation: Activation,
    pub widths: Vec<usize>,
    pub seed: u64,
    /// Training grid points (interior) and evaluation grid points.
    pub train_points: usize,
    pub eval_points: usize,
    pub q: f64,
    pub path_lbfgs: LbfgsConfig,
    pub train: TrainSettings,
}

#[derive(Clone, Debug, Serialize)]
pub struct PathResult {
    pub activation: String,
    pub width: usize,
    pub end_losses: [f64; 2],
    pub t: Vec<f64>,
    pub linear_losses: Vec<f64>,
    pub bezier_losses: Vec<f64>,
    pub linear_max: f64,
    pub bezier_max: f64,
    /// `bezier_max - max(end losses)`: the barrier left on the trained path.
    pub barrier: f64,
    pub path_iterations: usize,
    pub path_stop: String,
}

struct PathObjective<'a> {
    loss: &'a SquaredLoss<'a>,
    a: &'a [f64],
    b: &'a [f64],
    ts: Vec<f64>,
    q: f64,
}

fn bezier(a: &[f64], c: &[f64], b: &[f64], t: f64) -> Vec<f64> {
    let (u, v, w) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
    a.iter()
        .zip(c)
        .zip(b)
        .map(|((x, y), z)| u * x + v * y + w * z)
        .collect()
}

impl Objective for PathObjective<'_> {
    fn dim(&self) -> usize {
        self.a.len()
    }
    fn value_grad(&self, c: &[f64]) -> (f64, Vec<f64>) {
        let n = self.ts.len() as f64;
        let mut vals = Vec::with_capacity(self.ts.len());
        let mut grads = Vec::with_capacity(self.ts.len());
        for &t in &self.ts {
            let (l, g) = self.loss.value_grad(&bezier(self.a, c, self.b, t));
            vals.push(l.max(0.0));
            grads.push(g);
        }
        // Scale by the largest value for a stable q-norm.
        let mx = vals.iter().copied().fold(0.0f64, f64::max).max(1e-300);
        let s: f64 = vals.iter().map(|v| (v / mx).powf(self.q)).sum::<f64>() / n;
        let f = mx * s.powf(1.0 / self.q);
        let mut grad = vec![0.0; c.len()];
        for ((&t, v), g) in self.ts.iter().zip(&vals).zip(&grads) {
            // dF/dL_j = s^(1/q - 1) (L_j/mx)^(q-1) / n; dL_j/dc = 2 t (1-t) g_j.
            let w =
                s.powf(1.0 / self.q - 1.0) * (v / mx).powf(self.q - 1.0) / n * 2.0 * t * (1.0 - t);
            for (o, gi) in grad.iter_mut().zip(g) {
                *o += w * gi;
            }
        }
        (f, grad)
    }
}

fn losses_on(loss: &SquaredLoss<'_>, a: &[f64], c: &[f64], b: &[f64], ts: &[f64]) -> Vec<f64> {
    ts.iter()
        .map(|&t| loss.value_grad(&bezier(a, c, b, t)).0)
        .collect()
}

/// Two minima from two seeds at each width, then the trained Bezier path between them.
pub fn paths(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    cfg: &PathConfig,
    progress: Progress<'_>,
) -> Result<(Vec<PathResult>, Vec<RunRecord>)> {
    cfg.train.validate()?;
    super::check_problem(x, y)?;
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for &w in &cfg.widths {
        let mcfg = mse_config(x.cols(), &[w], y.cols(), cfg.activation, true);
        let obj = SquaredLoss::new(
            Mlp::<f64>::init(mcfg.clone(), cfg.train.init, 1.0, 0)?,
            x,
            y,
        )?;
        let mut thetas = Vec::new();
        for i in 0..2u64 {
            let seed = cfg.seed.wrapping_add(7 + i);
            let th0 = init_params(&mcfg, &cfg.train, seed)?;
            let (first, polish) = train_to_convergence(&obj, &th0, &cfg.train);
            let best = match polish {
                Some(p) if p.f < first.f => p,
                _ => first,
            };
            ends.push(RunRecord {
                activation: cfg.activation.name().into(),
                hidden: vec![w],
                seed,
                params: mcfg.num_params(),
                loss: best.f,
                grad_norm: best.grad_norm,
                stop: best.stop.name().into(),
                lbfgs_iterations: best.iterations,
                newton_iterations: 0,
                reached_zero: best.f <= cfg.train.eps,
                lambda_min: None,
                lambda_residual: None,
                hessian_norm: None,
                kind: super::classify(best.f, cfg.train.eps, best.stop.is_converged(), None, 0.0),
                weight_norm: super::objective::param_norm(&best.x),
                saturation: super::objective::saturation(&obj.model_at(&best.x), x),
            });
            thetas.push(best.x);
        }
        let (a, b) = (&thetas[0], &thetas[1]);
        let nt = cfg.train_points.max(1);
        let ts: Vec<f64> = (1..=nt).map(|j| j as f64 / (nt + 1) as f64).collect();
        let te: Vec<f64> = (0..cfg.eval_points.max(2))
            .map(|j| j as f64 / (cfg.eval_points.max(2) - 1) as f64)
            .collect();
        let mid: Vec<f64> = a.iter().zip(b.iter()).map(|(u, v)| 0.5 * (u + v)).collect();
        let lin = losses_on(&obj, a, &mid, b, &te);
        let pobj = PathObjective {
            loss: &obj,
            a,
            b,
            ts,
            q: cfg.q,
        };
        let res = lbfgs(&pobj, &mid, &cfg.path_lbfgs);
        let bez = losses_on(&obj, a, &res.x, b, &te);
        let end = [lin[0], *lin.last().expect("grid")];
        let bmax = bez.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out.push(PathResult {
            activation: cfg.activation.name().into(),
            width: w,
            end_losses: end,
            linear_max: lin.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            bezier_max: bmax,
            barrier: bmax - end[0].max(end[1]),
            t: te,
            linear_losses: lin,
            bezier_losses: bez,
            path_iterations: res.iterations,
            path_stop: res.stop.name().into(),
        });
        progress();
    }
    Ok((out, ends))
}
