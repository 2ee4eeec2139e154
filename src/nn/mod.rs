//! Models: MLP architecture, parameters, initialisation, plain forward pass, losses.

pub mod activation;
pub mod backprop;
pub mod graph;
pub mod init;
pub mod loss;
pub mod mlp;

pub use activation::Activation;
pub use graph::Mode;
pub use init::Init;
pub use loss::LossKind;
pub use mlp::{BatchNorm, BatchNormConfig, ForwardCache, Layer, Mlp, MlpConfig};
