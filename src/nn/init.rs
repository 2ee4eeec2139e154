//! Weight initialisation schemes (all draw from [`crate::rng::Rng`]).

use serde::{Deserialize, Serialize};

/// Initialisation of a linear layer with `fan_in` inputs and `fan_out` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// He/Kaiming normal: `W ~ N(0, gain^2 / fan_in)` with `gain^2 = 2 / (1 + a^2)`
    /// (`a` = LeakyReLU slope, 0 for ReLU; gain 1 for tanh/identity uses `2` too,
    /// as Kaiming defines it for rectifiers). Biases 0.
    Kaiming,
    /// Glorot/Xavier uniform: `W ~ U(-s, s)`, `s = sqrt(6 / (fan_in + fan_out))`. Biases 0.
    Xavier,
    /// PyTorch's `nn.Linear` default: `W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    Torch,
}

impl Init {
    pub fn name(self) -> &'static str {
        match self {
            Init::Kaiming => "kaiming",
            Init::Xavier => "xavier",
            Init::Torch => "torch",
        }
    }
}
