//! Models: MLP architecture, parameters, initialisation, plain forward pass, losses.

pub mod activation;
pub mod init;
pub mod loss;
pub mod mlp;

pub use activation::Activation;
pub use init::Init;
pub use loss::LossKind;
pub use mlp::{BatchNorm, BatchNormConfig, Layer, Mlp, MlpConfig};
