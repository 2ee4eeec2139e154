//! The MLP recorded on an autodiff tape (for training, gradients and double-backward HVPs).

use super::{Activation, Mlp};
use crate::autodiff::ops::{batchnorm_eval, batchnorm_train, loss};
use crate::autodiff::{Tape, Var};
use crate::tensor::{Matrix, Scalar};

/// BatchNorm statistics: training mode uses the batch's, evaluation mode the running ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Result of a recorded forward pass.
pub struct TapeForward<'t, T: Scalar> {
    pub logits: Var<'t, T>,
    /// Per layer, the BatchNorm batch mean and biased batch variance (training mode only).
    pub batch_stats: Vec<Option<(Matrix<T>, Matrix<T>)>>,
}

impl<T: Scalar> Mlp<T> {
    /// Records the trainable parameters on `tape` in parameter-vector order.
    pub fn params_on_tape<'t>(&self, tape: &'t Tape<T>) -> Vec<Var<'t, T>> {
        self.named_params()
            .into_iter()
            .map(|(_, m)| tape.param(m.clone()))
            .collect()
    }

    /// Forward pass on the tape. `params` are the trainable tensors in
    /// parameter-vector order (as from [`Mlp::params_on_tape`]); `x` is `n x d`.
    pub fn forward_tape<'t>(
        &self,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
        mode: Mode,
    ) -> TapeForward<'t, T> {
        assert_eq!(
            params.len(),
            self.named_params().len(),
            "forward_tape: wrong number of parameter tensors"
        );
        let nl = self.num_layers();
        let n = x.shape().0;
        let slope = T::from_f64(self.config.leaky_slope);
        let eps = self.config.batchnorm.map_or(1e-5, |c| c.eps);
        let mut it = params.iter().copied();
        let mut h = x;
        let mut batch_stats = Vec::with_capacity(nl);
        for (p, layer) in self.layers.iter().enumerate() {
            let w = it.next().expect("weight");
            let mut z = h.matmul_t(w, false, true);
            if layer.bias.is_some() {
                let b = it.next().expect("bias");
                z = z.add(b.broadcast(n, layer.weight.rows()));
            }
            let mut stats = None;
            if let Some(bn) = &layer.bn {
                let gamma = bn.gamma.as_ref().map(|_| it.next().expect("bn weight"));
                let beta = bn.beta.as_ref().map(|_| it.next().expect("bn bias"));
                z = match mode {
                    Mode::Train => {
                        let o = batchnorm_train(z, gamma, beta, eps);
                        stats = Some((o.mean, o.var));
                        o.out
                    }
                    Mode::Eval => {
                        batchnorm_eval(z, gamma, beta, &bn.running_mean, &bn.running_var, eps)
                    }
                };
            }
            batch_stats.push(stats);
            h = if p + 1 < nl {
                match self.config.activation {
                    Activation::Relu => z.relu(),
                    Activation::LeakyRelu => z.leaky_relu(slope),
                    Activation::Tanh => z.tanh(),
                    Activation::Sigmoid => z.sigmoid(),
                    Activation::Softplus => z.softplus(),
                    Activation::Identity => z,
                }
            } else {
                z
            };
        }
        TapeForward {
            logits: h,
            batch_stats,
        }
    }

    /// Mean loss of the model's loss kind on a batch, recorded on the tape.
    pub fn loss_tape<'t>(
        &self,
        params: &[Var<'t, T>],
        x: Var<'t, T>,
        labels: &[usize],
        mode: Mode,
    ) -> (Var<'t, T>, TapeForward<'t, T>) {
        let fwd = self.forward_tape(params, x, mode);
        (loss(self.config.loss, fwd.logits, labels), fwd)
    }
}
