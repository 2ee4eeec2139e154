//! Models: MLP architecture, parameters, initialisation, plain forward pass, losses.

pub mod activation;
pub mod arch;
pub mod backprop;
pub mod graph;
pub mod init;
pub mod loss;
pub mod mlp;
pub mod network;
pub mod spatial;

pub use activation::Activation;
pub use arch::{Architecture, LayerSpec};
pub use graph::Mode;
pub use init::Init;
pub use loss::LossKind;
pub use mlp::{BatchNorm, BatchNormConfig, ForwardCache, Layer, Mlp, MlpConfig};
pub use network::{BatchStats, BnState, Network};
