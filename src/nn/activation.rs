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
    /// Deep linear networks.
    Identity,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Identity => "identity",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Activation::Relu,
            "leaky_relu" | "leakyrelu" => Activation::LeakyRelu,
            "tanh" => Activation::Tanh,
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
            _ => T::ZERO,
        }
    }

    /// Whether `act''` vanishes almost everywhere.
    pub fn is_piecewise_linear(self) -> bool {
        !matches!(self, Activation::Tanh)
    }
}
