//! Minibatch training: SGD (momentum, weight decay) and Adam, seeded shuffling,
//! per-epoch metrics, NaN/Inf detection.
//!
//! Optimiser conventions follow PyTorch. SGD: `g <- g + wd * w`,
//! `v <- mu * v + g` (`v = g` on the first step), `w <- w - lr * v`.
//! Adam: `g <- g + wd * w`, `m <- b1 m + (1-b1) g`, `s <- b2 s + (1-b2) g^2`,
//! `w <- w - lr * (m / (1-b1^t)) / (sqrt(s / (1-b2^t)) + eps)`.
//! Each epoch shuffles the training indices with `Rng::derived(seed, epoch)`
//! (Fisher-Yates); the last partial batch is kept.
//!
//! [`train_checkpointed`] saves the whole training state at safe points (after a step,
//! at the end of every epoch) through an [`io::checkpoint::Session`](Session) and
//! resumes from it bit for bit: parameters, BatchNorm running statistics and counters,
//! the optimiser's moments and step count, the epoch and the position in its shuffled
//! order (the order itself is recomputed from `Rng::derived(seed, epoch)`), the
//! epoch's running loss sum and step count, and the finished epochs' metrics.

use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::io::checkpoint::{test_point, CheckpointError, Decoder, Encoder, Session};
use crate::nn::backprop::loss_and_grad_analytic;
use crate::nn::{loss::error_rate, BatchStats, Mlp, Mode, Network};
use crate::optim::methods::{method_grad, TrainMethod};
use crate::rng::Rng;
use crate::tensor::{Matrix, Scalar};
use serde::{Deserialize, Serialize};

/// Optimiser and its hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Optimizer {
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

impl Optimizer {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        match *self {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                if !(lr > 0.0 && lr.is_finite()) {
                    return bad("learning rate must be positive and finite");
                }
                if !(0.0..1.0).contains(&momentum) {
                    return bad("momentum must be in [0, 1)");
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad("weight decay must be >= 0");
                }
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                if !(lr > 0.0 && lr.is_finite()) {
                    return bad("learning rate must be positive and finite");
                }
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return bad("Adam betas must be in [0, 1)");
                }
                if eps.is_nan() || eps <= 0.0 {
                    return bad("Adam eps must be positive");
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad("weight decay must be >= 0");
                }
            }
        }
        Ok(())
    }
}

/// Training configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    /// Seeds the shuffling (initialisation has its own seed in the model).
    pub seed: u64,
}

/// Metrics after one epoch (losses in evaluation mode over the whole set).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub steps: usize,
    /// Mean of the minibatch losses seen during the epoch (training mode).
    pub mean_batch_loss: f64,
    pub train_loss: f64,
    pub train_error: f64,
    pub test_loss: Option<f64>,
    pub test_error: Option<f64>,
}

/// Optimiser state (one slot per parameter tensor).
pub struct OptState<T> {
    m: Vec<Matrix<T>>,
    s: Vec<Matrix<T>>,
    t: u64,
}

impl<T: Scalar> OptState<T> {
    /// Zero state for tensors of these shapes.
    pub fn new(params: &[&mut Matrix<T>]) -> Self {
        let zeros: Vec<Matrix<T>> = params
            .iter()
            .map(|m| Matrix::zeros(m.rows(), m.cols()))
            .collect();
        Self {
            m: zeros.clone(),
            s: zeros,
            t: 0,
        }
    }
}

/// Batch statistics of a training step, per BatchNorm layer.
pub type StepStats<T> = Vec<Option<BatchStats<T>>>;

/// What [`train`] needs of a model: its trainable tensors, a training-mode
/// gradient, the BatchNorm running-average update and an evaluation.
pub trait TrainModel<T: Scalar> {
    fn check_input(&self, x: &Matrix<T>) -> Result<()>;
    fn classes(&self) -> usize;
    fn has_batchnorm(&self) -> bool;
    /// Trainable tensors in parameter-vector order.
    fn params_mut(&mut self) -> Vec<&mut Matrix<T>>;
    /// Mean loss and gradients of a batch in training mode, with BatchNorm batch statistics.
    fn train_grad(
        &self,
        x: &Matrix<T>,
        labels: &[usize],
    ) -> Result<(T, Vec<Matrix<T>>, StepStats<T>)>;
    /// Updates the running statistics after a training step over `batch` samples.
    fn apply_batch_stats(&mut self, stats: StepStats<T>, batch: usize);
    /// Mean loss and error rate in evaluation mode.
    fn evaluate(&self, x: &Matrix<T>, labels: &[usize]) -> Result<(f64, f64)>;
    /// Every tensor of the model's state (the trainable tensors, then the BatchNorm
    /// buffers) and its counters (BatchNorm `num_batches_tracked`), for checkpoints.
    fn state_mut(&mut self) -> (Vec<&mut Matrix<T>>, Vec<&mut u64>);
    /// The batch's mean training-mode loss recorded on `tape` (so it can be
    /// differentiated more than once), with the trainable tensors as tape inputs in
    /// parameter-vector order and the BatchNorm batch statistics.
    fn record_train_loss<'t>(
        &self,
        tape: &'t Tape<T>,
        x: &Matrix<T>,
        labels: &[usize],
    ) -> (Vec<Var<'t, T>>, Var<'t, T>, StepStats<T>);
    /// State-dict names of the trainable tensors in parameter-vector order.
    fn param_names(&self) -> Vec<String>;
}

impl<T: Scalar> TrainModel<T> for Mlp<T> {
    fn check_input(&self, x: &Matrix<T>) -> Result<()> {
        Mlp::check_input(self, x)
    }
    fn classes(&self) -> usize {
        self.config.classes
    }
    fn has_batchnorm(&self) -> bool {
        self.config.batchnorm.is_some()
    }
    fn params_mut(&mut self) -> Vec<&mut Matrix<T>> {
        Mlp::params_mut(self)
    }
    fn train_grad(
        &self,
        x: &Matrix<T>,
        labels: &[usize],
    ) -> Result<(T, Vec<Matrix<T>>, StepStats<T>)> {
        if self.config.batchnorm.is_some() {
            let (l, g, st) = loss_and_grad(self, x, labels, Mode::Train);
            let stats = st
                .into_iter()
                .map(|s| {
                    s.map(|(mean, var)| BatchStats {
                        mean,
                        var,
                        count: x.rows(),
                    })
                })
                .collect();
            Ok((l, g, stats))
        } else {
            let (l, g) = loss_and_grad_analytic(self, x, labels)?;
            Ok((T::from_f64(l), g, Vec::new()))
        }
    }
    fn apply_batch_stats(&mut self, stats: StepStats<T>, batch: usize) {
        let pairs: Vec<Option<(Matrix<T>, Matrix<T>)>> = stats
            .into_iter()
            .map(|s| s.map(|b| (b.mean, b.var)))
            .collect();
        update_running_stats(self, &pairs, batch);
    }
    fn evaluate(&self, x: &Matrix<T>, labels: &[usize]) -> Result<(f64, f64)> {
        evaluate(self, x, labels)
    }
    fn state_mut(&mut self) -> (Vec<&mut Matrix<T>>, Vec<&mut u64>) {
        let mut params = Vec::new();
        let mut buffers = Vec::new();
        for layer in &mut self.layers {
            params.push(&mut layer.weight);
            if let Some(b) = &mut layer.bias {
                params.push(b);
            }
            if let Some(bn) = &mut layer.bn {
                if let Some(g) = &mut bn.gamma {
                    params.push(g);
                }
                if let Some(b) = &mut bn.beta {
                    params.push(b);
                }
                buffers.push(&mut bn.running_mean);
                buffers.push(&mut bn.running_var);
            }
        }
        params.extend(buffers);
        (params, Vec::new())
    }
    fn record_train_loss<'t>(
        &self,
        tape: &'t Tape<T>,
        x: &Matrix<T>,
        labels: &[usize],
    ) -> (Vec<Var<'t, T>>, Var<'t, T>, StepStats<T>) {
        let params = self.params_on_tape(tape);
        let xv = tape.constant(x.clone());
        let (loss, fwd) = self.loss_tape(&params, xv, labels, Mode::Train);
        let stats = fwd
            .batch_stats
            .into_iter()
            .map(|s| {
                s.map(|(mean, var)| BatchStats {
                    mean,
                    var,
                    count: x.rows(),
                })
            })
            .collect();
        (params, loss, stats)
    }
    fn param_names(&self) -> Vec<String> {
        self.named_params().into_iter().map(|(n, _)| n).collect()
    }
}

impl<T: Scalar> TrainModel<T> for Network<T> {
    fn check_input(&self, x: &Matrix<T>) -> Result<()> {
        Network::check_input(self, x)
    }
    fn classes(&self) -> usize {
        self.arch.classes
    }
    fn has_batchnorm(&self) -> bool {
        self.arch.has_batchnorm()
    }
    fn params_mut(&mut self) -> Vec<&mut Matrix<T>> {
        self.params.iter_mut().collect()
    }
    fn train_grad(
        &self,
        x: &Matrix<T>,
        labels: &[usize],
    ) -> Result<(T, Vec<Matrix<T>>, StepStats<T>)> {
        let tape = Tape::new();
        let params = self.params_on_tape(&tape);
        let (loss, fwd) = self.loss_tape(&params, x, labels, Mode::Train);
        let grads = tape.grad(loss, &params);
        let gv = grads.iter().map(|g| g.value().clone()).collect();
        Ok((loss.item(), gv, fwd.batch_stats))
    }
    fn apply_batch_stats(&mut self, stats: StepStats<T>, _batch: usize) {
        self.update_running_stats(&stats);
    }
    fn evaluate(&self, x: &Matrix<T>, labels: &[usize]) -> Result<(f64, f64)> {
        evaluate_network(self, x, labels)
    }
    fn state_mut(&mut self) -> (Vec<&mut Matrix<T>>, Vec<&mut u64>) {
        let mut tensors: Vec<&mut Matrix<T>> = self.params.iter_mut().collect();
        let mut counters = Vec::new();
        for bn in &mut self.bn {
            tensors.push(&mut bn.running_mean);
            tensors.push(&mut bn.running_var);
            counters.push(&mut bn.num_batches_tracked);
        }
        (tensors, counters)
    }
    fn record_train_loss<'t>(
        &self,
        tape: &'t Tape<T>,
        x: &Matrix<T>,
        labels: &[usize],
    ) -> (Vec<Var<'t, T>>, Var<'t, T>, StepStats<T>) {
        let params = self.params_on_tape(tape);
        let (loss, fwd) = self.loss_tape(&params, x, labels, Mode::Train);
        (params, loss, fwd.batch_stats)
    }
    fn param_names(&self) -> Vec<String> {
        self.named_params().into_iter().map(|(n, _)| n).collect()
    }
}

/// Mean loss and error rate of a network on a dataset (evaluation-mode BatchNorm).
pub fn evaluate_network<T: Scalar>(
    net: &Network<T>,
    x: &Matrix<T>,
    labels: &[usize],
) -> Result<(f64, f64)> {
    if labels.is_empty() {
        return Err(Error::InvalidArgument(
            "cannot evaluate on an empty set".into(),
        ));
    }
    if labels.len() != x.rows() {
        return Err(Error::Shape(format!(
            "{} samples but {} labels",
            x.rows(),
            labels.len()
        )));
    }
    // The MLP fast path (the same numbers as the MLP code) where it applies.
    if let Some(m) = net.to_mlp() {
        return evaluate(&m, x, labels);
    }
    let z = net.logits(x)?;
    let loss_sum: f64 = net.arch.loss.per_sample(&z, labels).iter().sum();
    let err = error_rate(&z, labels);
    Ok((loss_sum / labels.len() as f64, err))
}

/// Loss and gradients (parameter-vector order) on one batch through the
/// autodiff tape (any model, BatchNorm included). Also returns BatchNorm batch
/// statistics per layer (training mode). Models without BatchNorm train through
/// the faster [`loss_and_grad_analytic`].
#[allow(clippy::type_complexity)]
pub fn loss_and_grad<T: Scalar>(
    model: &Mlp<T>,
    x: &Matrix<T>,
    labels: &[usize],
    mode: Mode,
) -> (T, Vec<Matrix<T>>, Vec<Option<(Matrix<T>, Matrix<T>)>>) {
    let tape = Tape::new();
    let params = model.params_on_tape(&tape);
    let xv = tape.constant(x.clone());
    let (loss, fwd) = model.loss_tape(&params, xv, labels, mode);
    let grads = tape.grad(loss, &params);
    let gv = grads.iter().map(|g| g.value().clone()).collect();
    (loss.item(), gv, fwd.batch_stats)
}

/// Mean loss and error rate of the model on a dataset (evaluation mode), in blocks.
pub fn evaluate<T: Scalar>(model: &Mlp<T>, x: &Matrix<T>, labels: &[usize]) -> Result<(f64, f64)> {
    if labels.is_empty() {
        return Err(Error::InvalidArgument(
            "cannot evaluate on an empty set".into(),
        ));
    }
    const BLOCK: usize = 2048;
    let (mut loss_sum, mut wrong) = (0.0, 0.0);
    for start in (0..labels.len()).step_by(BLOCK) {
        let end = (start + BLOCK).min(labels.len());
        let xb = x.rows_view(start, end).to_owned();
        let z = model.logits(&xb)?;
        let yb = &labels[start..end];
        loss_sum += model.config.loss.per_sample(&z, yb).iter().sum::<f64>();
        wrong += error_rate(&z, yb) * yb.len() as f64;
    }
    let n = labels.len() as f64;
    Ok((loss_sum / n, wrong / n))
}

/// Trains `model` in place. `on_epoch` is called after every epoch with the
/// model and its metrics (checkpoints, progress); `on_step` after every step.
#[allow(clippy::too_many_arguments)]
pub fn train<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    x: &Matrix<T>,
    labels: &[usize],
    test: Option<(&Matrix<T>, &[usize])>,
    cfg: &TrainConfig,
    on_step: impl FnMut(usize, usize, f64),
    on_epoch: impl FnMut(&M, &EpochMetrics) -> Result<()>,
) -> Result<Vec<EpochMetrics>> {
    train_checkpointed(model, x, labels, test, cfg, None, on_step, on_epoch).map(|r| r.history)
}

/// What [`train_checkpointed`] returns.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub history: Vec<EpochMetrics>,
    /// Seconds spent in the earlier, interrupted parts of a resumed run (0 otherwise).
    pub earlier_seconds: f64,
    /// Wall seconds of each epoch run by this call (training steps and the epoch's
    /// evaluation; a resumed epoch counts from the resume).
    pub epoch_seconds: Vec<f64>,
}

/// Where training stands: what a checkpoint holds besides the model and optimiser.
struct Position {
    /// The epoch in progress (1-based).
    epoch: usize,
    /// The next minibatch of the epoch's shuffled order.
    chunk: usize,
    batch_loss_sum: f64,
    steps: usize,
    global_step: usize,
}

fn encode_train_state<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    opt: &OptState<T>,
    pos: &Position,
    history: &[EpochMetrics],
    seconds: f64,
) -> Vec<u8> {
    let mut e = Encoder::new();
    e.usize(pos.epoch)
        .usize(pos.chunk)
        .f64(pos.batch_loss_sum)
        .usize(pos.steps)
        .usize(pos.global_step)
        .f64(seconds);
    let (tensors, counters) = model.state_mut();
    e.usize(tensors.len());
    for t in tensors {
        e.matrix(t);
    }
    e.u64s(&counters.into_iter().map(|c| *c).collect::<Vec<_>>());
    e.u64(opt.t).usize(opt.m.len());
    for (m, s) in opt.m.iter().zip(&opt.s) {
        e.matrix(m).matrix(s);
    }
    e.usize(history.len());
    for h in history {
        e.usize(h.epoch)
            .usize(h.steps)
            .f64(h.mean_batch_loss)
            .f64(h.train_loss)
            .f64(h.train_error)
            .opt_f64(h.test_loss)
            .opt_f64(h.test_error);
    }
    e.finish()
}

fn decode_train_state<T: Scalar, M: TrainModel<T>>(
    d: &mut Decoder,
    model: &mut M,
    opt: &mut OptState<T>,
) -> std::result::Result<(Position, Vec<EpochMetrics>, f64), CheckpointError> {
    let pos = Position {
        epoch: d.usize()?,
        chunk: d.usize()?,
        batch_loss_sum: d.f64()?,
        steps: d.usize()?,
        global_step: d.usize()?,
    };
    let seconds = d.f64()?;
    let (tensors, counters) = model.state_mut();
    if d.usize()? != tensors.len() {
        return Err(d.error("the number of model tensors differs from the model's"));
    }
    for (i, t) in tensors.into_iter().enumerate() {
        *t = d.matrix_like(t, &format!("model tensor {i}"))?;
    }
    let c = d.u64s()?;
    if c.len() != counters.len() {
        return Err(d.error("the number of BatchNorm counters differs from the model's"));
    }
    for (dst, v) in counters.into_iter().zip(c) {
        *dst = v;
    }
    opt.t = d.u64()?;
    if d.usize()? != opt.m.len() {
        return Err(d.error("the number of optimiser slots differs from the model's"));
    }
    for i in 0..opt.m.len() {
        opt.m[i] = d.matrix_like(&opt.m[i], "an optimiser moment")?;
        opt.s[i] = d.matrix_like(&opt.s[i], "an optimiser moment")?;
    }
    let n = d.usize()?;
    let mut history = Vec::new();
    for _ in 0..n {
        history.push(EpochMetrics {
            epoch: d.usize()?,
            steps: d.usize()?,
            mean_batch_loss: d.f64()?,
            train_loss: d.f64()?,
            train_error: d.f64()?,
            test_loss: d.opt_f64()?,
            test_error: d.opt_f64()?,
        });
    }
    d.end()?;
    Ok((pos, history, seconds))
}

/// [`train`] with checkpoints: with a `session`, the state is saved after steps (at the
/// session's interval), at the end of every epoch, and when a stop signal arrives (then
/// [`Error::Interrupted`] is returned); a session started with `resume` continues from
/// its checkpoint, and the result is bit-identical to an uninterrupted run.
#[allow(clippy::too_many_arguments)]
pub fn train_checkpointed<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    x: &Matrix<T>,
    labels: &[usize],
    test: Option<(&Matrix<T>, &[usize])>,
    cfg: &TrainConfig,
    session: Option<&mut Session>,
    on_step: impl FnMut(usize, usize, f64),
    on_epoch: impl FnMut(&M, &EpochMetrics) -> Result<()>,
) -> Result<TrainOutcome> {
    train_with_method(
        model,
        x,
        labels,
        test,
        cfg,
        &TrainMethod::Plain,
        session,
        on_step,
        on_epoch,
    )
}

/// [`train_checkpointed`] with a training method (SAM, ASAM, curvature penalties; see
/// [`crate::optim::methods`]) supplying each step's gradient. `TrainMethod::Plain` is the
/// plain batch gradient, the same code path as [`train_checkpointed`].
#[allow(clippy::too_many_arguments)]
pub fn train_with_method<T: Scalar, M: TrainModel<T>>(
    model: &mut M,
    x: &Matrix<T>,
    labels: &[usize],
    test: Option<(&Matrix<T>, &[usize])>,
    cfg: &TrainConfig,
    method: &TrainMethod,
    mut session: Option<&mut Session>,
    mut on_step: impl FnMut(usize, usize, f64),
    mut on_epoch: impl FnMut(&M, &EpochMetrics) -> Result<()>,
) -> Result<TrainOutcome> {
    let t0 = std::time::Instant::now();
    cfg.optimizer.validate()?;
    model.check_input(x)?;
    if labels.len() != x.rows() {
        return Err(Error::Shape(format!(
            "{} samples but {} labels",
            x.rows(),
            labels.len()
        )));
    }
    if labels.is_empty() {
        return Err(Error::InvalidArgument("the training set is empty".into()));
    }
    if cfg.batch_size == 0 {
        return Err(Error::InvalidArgument("batch size must be positive".into()));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y >= model.classes()) {
        return Err(Error::Shape(format!(
            "label {bad} is out of range for a model with {} outputs",
            model.classes()
        )));
    }
    let has_bn = model.has_batchnorm();
    if has_bn && cfg.batch_size < 2 {
        return Err(Error::InvalidArgument(
            "BatchNorm needs a batch size of at least 2".into(),
        ));
    }
    method.validate(cfg.batch_size, has_bn)?;
    let zeros: Vec<Matrix<T>> = model
        .params_mut()
        .iter()
        .map(|m| Matrix::zeros(m.rows(), m.cols()))
        .collect();
    let mut state = OptState {
        m: zeros.clone(),
        s: zeros,
        t: 0,
    };
    let n = labels.len();
    let mut history = Vec::with_capacity(cfg.epochs);
    let mut start = Position {
        epoch: 1,
        chunk: 0,
        batch_loss_sum: 0.0,
        steps: 0,
        global_step: 0,
    };
    let mut earlier_seconds = 0.0;
    if let Some(s) = session.as_deref_mut() {
        if let Some(payload) = s.take_resume() {
            let path = crate::io::checkpoint::path_in(s.dir());
            let mut d = Decoder::new(&payload, &path);
            let (pos, h, secs) = decode_train_state(&mut d, model, &mut state)?;
            if pos.epoch == 0 || pos.epoch > cfg.epochs + 1 || h.len() + 1 != pos.epoch {
                return Err(d.error("an epoch outside the run").into());
            }
            start = pos;
            history = h;
            earlier_seconds = secs;
        }
    }
    let mut global_step = start.global_step;
    let seconds = |t0: &std::time::Instant| earlier_seconds + t0.elapsed().as_secs_f64();
    let mut epoch_seconds = Vec::new();
    for epoch in start.epoch..=cfg.epochs {
        let te = std::time::Instant::now();
        let order = Rng::derived(cfg.seed, epoch as u64).permutation(n);
        let resumed = epoch == start.epoch;
        let mut batch_loss_sum = if resumed { start.batch_loss_sum } else { 0.0 };
        let mut steps = if resumed { start.steps } else { 0 };
        let first = if resumed { start.chunk } else { 0 };
        for (step, idx) in order.chunks(cfg.batch_size).enumerate().skip(first) {
            // A BatchNorm batch of one sample has zero variance: skip such a remainder.
            if has_bn && idx.len() < 2 {
                continue;
            }
            let xb = x.select_rows(idx);
            let yb: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            let (loss, grads, stats) = if method.is_plain() {
                model.train_grad(&xb, &yb)?
            } else {
                let r = method_grad(model, &xb, &yb, method, cfg.seed, global_step as u64 + 1)?;
                (r.loss, r.grads, r.stats)
            };
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    what: "loss".into(),
                    epoch,
                    step: step + 1,
                });
            }
            if !grads.iter().all(|g| g.all_finite()) {
                return Err(Error::NonFinite {
                    what: "gradient".into(),
                    epoch,
                    step: step + 1,
                });
            }
            apply_update(model.params_mut(), &grads, &mut state, &cfg.optimizer);
            model.apply_batch_stats(stats, idx.len());
            if !model.params_mut().iter().all(|m| m.all_finite()) {
                return Err(Error::NonFinite {
                    what: "parameter".into(),
                    epoch,
                    step: step + 1,
                });
            }
            batch_loss_sum += loss.to_f64();
            steps += 1;
            global_step += 1;
            on_step(epoch, global_step, loss.to_f64());
            test_point("step");
            if let Some(s) = session.as_deref_mut() {
                let pos = Position {
                    epoch,
                    chunk: step + 1,
                    batch_loss_sum,
                    steps,
                    global_step,
                };
                s.safe_point(
                    false,
                    || format!("epoch {epoch}, step {}", step + 1),
                    || encode_train_state(model, &state, &pos, &history, seconds(&t0)),
                )?;
            }
        }
        let (train_loss, train_error) = model.evaluate(x, labels)?;
        let (test_loss, test_error) = match test {
            Some((tx, ty)) if !ty.is_empty() => {
                let (l, e) = model.evaluate(tx, ty)?;
                (Some(l), Some(e))
            }
            _ => (None, None),
        };
        if !train_loss.is_finite() {
            return Err(Error::NonFinite {
                what: "training loss".into(),
                epoch,
                step: steps,
            });
        }
        let metrics = EpochMetrics {
            epoch,
            steps,
            mean_batch_loss: batch_loss_sum / steps.max(1) as f64,
            train_loss,
            train_error,
            test_loss,
            test_error,
        };
        epoch_seconds.push(te.elapsed().as_secs_f64());
        on_epoch(model, &metrics)?;
        history.push(metrics);
        if let Some(s) = session.as_deref_mut() {
            let pos = Position {
                epoch: epoch + 1,
                chunk: 0,
                batch_loss_sum: 0.0,
                steps: 0,
                global_step,
            };
            s.safe_point(
                true,
                || format!("the end of epoch {epoch}"),
                || encode_train_state(model, &state, &pos, &history, seconds(&t0)),
            )?;
        }
    }
    Ok(TrainOutcome {
        history,
        earlier_seconds,
        epoch_seconds,
    })
}

/// One optimiser step on `params` (in parameter-vector order).
pub fn apply_update<T: Scalar>(
    params: Vec<&mut Matrix<T>>,
    grads: &[Matrix<T>],
    st: &mut OptState<T>,
    opt: &Optimizer,
) {
    st.t += 1;
    match *opt {
        Optimizer::Sgd {
            lr,
            momentum,
            weight_decay,
        } => {
            let (lr, mu, wd) = (
                T::from_f64(lr),
                T::from_f64(momentum),
                T::from_f64(weight_decay),
            );
            for ((w, g), v) in params.into_iter().zip(grads).zip(st.m.iter_mut()) {
                let (w, g, v) = (w.as_mut_slice(), g.as_slice(), v.as_mut_slice());
                for i in 0..w.len() {
                    let gi = g[i] + wd * w[i];
                    v[i] = if st.t == 1 { gi } else { mu * v[i] + gi };
                    w[i] -= lr * v[i];
                }
            }
        }
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let bc1 = 1.0 - beta1.powi(st.t as i32);
            let bc2 = 1.0 - beta2.powi(st.t as i32);
            let (b1, b2) = (T::from_f64(beta1), T::from_f64(beta2));
            let (step, eps, wd) = (
                T::from_f64(lr / bc1),
                T::from_f64(eps),
                T::from_f64(weight_decay),
            );
            let inv_bc2 = T::from_f64(1.0 / bc2);
            for (((w, g), m), s) in params
                .into_iter()
                .zip(grads)
                .zip(st.m.iter_mut())
                .zip(st.s.iter_mut())
            {
                let (w, g, m, s) = (
                    w.as_mut_slice(),
                    g.as_slice(),
                    m.as_mut_slice(),
                    s.as_mut_slice(),
                );
                for i in 0..w.len() {
                    let gi = g[i] + wd * w[i];
                    m[i] = b1 * m[i] + (T::ONE - b1) * gi;
                    s[i] = b2 * s[i] + (T::ONE - b2) * gi * gi;
                    w[i] -= step * m[i] / ((s[i] * inv_bc2).sqrt() + eps);
                }
            }
        }
    }
}

/// PyTorch's running-statistics update: unbiased batch variance in the average.
fn update_running_stats<T: Scalar>(
    model: &mut Mlp<T>,
    stats: &[Option<(Matrix<T>, Matrix<T>)>],
    batch: usize,
) {
    let momentum = model.config.batchnorm.map_or(0.1, |c| c.momentum);
    let (mo, keep) = (T::from_f64(momentum), T::from_f64(1.0 - momentum));
    let unbias = T::from_f64(batch as f64 / (batch as f64 - 1.0).max(1.0));
    for (layer, st) in model.layers.iter_mut().zip(stats) {
        if let (Some(bn), Some((mean, var))) = (&mut layer.bn, st) {
            for (r, &b) in bn
                .running_mean
                .as_mut_slice()
                .iter_mut()
                .zip(mean.as_slice())
            {
                *r = keep * *r + mo * b;
            }
            for (r, &b) in bn.running_var.as_mut_slice().iter_mut().zip(var.as_slice()) {
                *r = keep * *r + mo * b * unbias;
            }
        }
    }
}
