//! Elementwise activations and their first and second derivatives.

use crate::tensor::Scalar;
use serde::{Deserialize, Serialize};

/// Hidden-layer activation. `LeakyRelu` uses the slope stored in the model config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(z, 0)`; derivative `[z > 0]` (the tie at 0 takes derivative 0, a measure-zero choice).
    Relu,
    /// `z` for `z > 0`, `slope * z` otherwise.
    LeakyRelu,
    Tanh,
    /// Logistic sigmoid `1 / (1 + e^{-z})`: analytic, bounded, strictly increasing.
    Sigmoid,
    /// `ln(1 + e^z)`: analytic, unbounded above, strictly increasing.
    Softplus,
    /// Deep linear networks.
    Identity,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softplus => "softplus",
            Activation::Identity => "identity",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Activation::Relu,
            "leaky_relu" | "leakyrelu" => Activation::LeakyRelu,
            "tanh" => Activation::Tanh,
            "sigmoid" | "logistic" => Activation::Sigmoid,
            "softplus" => Activation::Softplus,
            "identity" | "linear" => Activation::Identity,
            _ => return None,
        })
    }

    #[inline]
    pub fn apply<T: Scalar>(self, z: T, slope: T) -> T {
        match self {
            Activation::Relu => {
                if z > T::ZERO {
                    z
                } else {
                    T::ZERO
                }
            }
            Activation::LeakyRelu => {
                if z > T::ZERO {
                    z
                } else {
                    slope * z
                }
            }
            Activation::Tanh => z.tanh(),
            Activation::Sigmoid => sigmoid(z),
            Activation::Softplus => softplus(z),
            Activation::Identity => z,
        }
    }

    /// `act'(z)`.
    #[inline]
    pub fn derivative<T: Scalar>(self, z: T, slope: T) -> T {
        match self {
            Activation::Relu => {
                if z > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Activation::LeakyRelu => {
                if z > T::ZERO {
                    T::ONE
                } else {
                    slope
                }
            }
            Activation::Tanh => {
                let t = z.tanh();
                T::ONE - t * t
            }
            Activation::Sigmoid => {
                let s = sigmoid(z);
                s * (T::ONE - s)
            }
            Activation::Softplus => sigmoid(z),
            Activation::Identity => T::ONE,
        }
    }

    /// `act''(z)` (zero almost everywhere for the piecewise-linear activations).
    #[inline]
    pub fn second_derivative<T: Scalar>(self, z: T) -> T {
        match self {
            Activation::Tanh => {
                let t = z.tanh();
                -(T::ONE + T::ONE) * t * (T::ONE - t * t)
            }
            Activation::Sigmoid => {
                let s = sigmoid(z);
                s * (T::ONE - s) * (T::ONE - (T::ONE + T::ONE) * s)
            }
            Activation::Softplus => {
                let s = sigmoid(z);
                s * (T::ONE - s)
            }
            _ => T::ZERO,
        }
    }

    /// Whether `act''` vanishes almost everywhere.
    pub fn is_piecewise_linear(self) -> bool {
        !matches!(
            self,
            Activation::Tanh | Activation::Sigmoid | Activation::Softplus
        )
    }
}

/// `1 / (1 + e^{-z})`, without overflow for either sign of `z`.
#[inline]
pub fn sigmoid<T: Scalar>(z: T) -> T {
    if z >= T::ZERO {
        T::ONE / (T::ONE + (-z).exp())
    } else {
        let e = z.exp();
        e / (T::ONE + e)
    }
}

/// `ln(1 + e^z) = max(z, 0) + ln(1 + e^{-|z|})`, without overflow.
#[inline]
pub fn softplus<T: Scalar>(z: T) -> T {
    let zf = z.to_f64();
    T::from_f64(zf.max(0.0) + (-zf.abs()).exp().ln_1p())
}
