//! Network model files: any architecture as safetensors with PyTorch state-dict names.
//!
//! # Format
//!
//! Tensors are the state dict of the reference PyTorch definition of the
//! architecture (`benches/peers/models.py` for the presets): `{layer}.weight`
//! (a convolution's in PyTorch's `(out, in, k, k)` shape, a linear layer's
//! `(out, in)`), `{layer}.bias`, and for BatchNorm `{layer}.weight`,
//! `{layer}.bias` (affine only), `{layer}.running_mean`, `{layer}.running_var`
//! (dtype of the model, `F64` or `F32`) and `{layer}.num_batches_tracked`
//! (`I64`, shape `[]`). So `model.load_state_dict(safetensors.torch.load_file(p),
//! strict=True)` loads a file we write into the reference module.
//! Metadata: `format = "landscape-network"`, `format_version = "1"`, `arch` =
//! the [`Architecture`] JSON, plus the caller's extra keys.
//!
//! MLP architectures are written in the older `landscape-mlp` format (same
//! tensor names), so existing files and tools keep working both ways.
//!
//! A file without landscape metadata is a PyTorch state dict: with an
//! architecture given (`--arch`), every tensor the architecture names must be
//! present with its shape, and nothing else (a missing `num_batches_tracked`
//! reads as 0); without one it is imported as an `nn.Sequential` MLP.

use super::model_file::{
    describe_safetensors_error, model_err, parse_mlp, save_mlp, write_safetensors, ImportOptions,
    RawTensor, TensorFile,
};
use crate::error::{Error, Result};
use crate::nn::arch::{Architecture, TensorKind};
use crate::nn::{BnState, Network};
use crate::tensor::{Matrix, Scalar};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Value of the `format` metadata key of network files.
pub const NETWORK_FORMAT: &str = "landscape-network";
pub const NETWORK_FORMAT_VERSION: &str = "1";

/// Saves a network (see the module docs). `extra_metadata` may not use the
/// keys `format`, `format_version`, `arch` or `config`.
pub fn save_network<T: Scalar>(
    net: &Network<T>,
    path: &Path,
    extra_metadata: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some(m) = net.to_mlp() {
        return save_mlp(&m, path, extra_metadata);
    }
    for k in ["format", "format_version", "arch", "config"] {
        if extra_metadata.contains_key(k) {
            return Err(Error::InvalidArgument(format!(
                "metadata key '{k}' is reserved for the model file format"
            )));
        }
    }
    let lay = net.arch.layout()?;
    let mut tensors = Vec::with_capacity(lay.tensors.len());
    for t in &lay.tensors {
        let values: &Matrix<T> = match t.kind {
            TensorKind::Param(i) => &net.params[i],
            TensorKind::RunningMean(b) => &net.bn[b].running_mean,
            TensorKind::RunningVar(b) => &net.bn[b].running_var,
            TensorKind::NumBatchesTracked(b) => {
                let n = net.bn[b].num_batches_tracked as i64;
                tensors.push(RawTensor {
                    name: t.name.clone(),
                    dtype: Dtype::I64,
                    shape: vec![],
                    data: n.to_le_bytes().to_vec(),
                });
                continue;
            }
        };
        if let Some(i) = values.as_slice().iter().position(|v| !v.is_finite()) {
            return Err(model_err(
                path,
                format!(
                    "refusing to write: tensor '{}' has a non-finite value ({}) at index {i}",
                    t.name,
                    values.as_slice()[i]
                ),
            ));
        }
        tensors.push(RawTensor::scalar(
            t.name.clone(),
            t.shape.clone(),
            values.as_slice(),
        ));
    }
    let mut metadata = extra_metadata.clone();
    metadata.insert("format".into(), NETWORK_FORMAT.into());
    metadata.insert("format_version".into(), NETWORK_FORMAT_VERSION.into());
    metadata.insert(
        "arch".into(),
        serde_json::to_string(&net.arch).expect("Architecture serialises"),
    );
    write_safetensors(path, &tensors, &metadata)
}

/// How to read a model file.
#[derive(Clone, Debug, Default)]
pub struct NetworkImport {
    /// The architecture of a PyTorch state dict (ignored for landscape files).
    pub arch: Option<Architecture>,
    /// Options for importing an `nn.Sequential` MLP state dict.
    pub mlp: ImportOptions,
}

/// Loads a network from a landscape file (network or MLP) or a PyTorch state dict.
pub fn load_network<T: Scalar>(
    path: &Path,
    opts: &NetworkImport,
) -> Result<(Network<T>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_network(path, &bytes, opts)
}

/// Parses model-file bytes (`path` only names the file in errors).
pub fn parse_network<T: Scalar>(
    path: &Path,
    bytes: &[u8],
    opts: &NetworkImport,
) -> Result<(Network<T>, BTreeMap<String, String>)> {
    let st_err = |e: safetensors::SafeTensorError| model_err(path, describe_safetensors_error(&e));
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let format = metadata.get("format").map(String::as_str);
    let arch = match format {
        Some(NETWORK_FORMAT) => {
            if let Some(v) = metadata.get("format_version") {
                if v != NETWORK_FORMAT_VERSION {
                    return Err(model_err(
                        path,
                        format!("unsupported {NETWORK_FORMAT} format_version '{v}' (this build reads '{NETWORK_FORMAT_VERSION}')"),
                    ));
                }
            }
            let text = metadata.get("arch").ok_or_else(|| {
                model_err(
                    path,
                    format!("{NETWORK_FORMAT} metadata has no 'arch' entry"),
                )
            })?;
            let a: Architecture = serde_json::from_str(text).map_err(|e| {
                model_err(
                    path,
                    format!("metadata 'arch' is not a valid architecture: {e}"),
                )
            })?;
            a
        }
        Some(super::model_file::FORMAT_NAME) => {
            let (m, meta) = parse_mlp::<T>(path, bytes, &opts.mlp)?;
            return Ok((Network::from_mlp(&m), meta));
        }
        _ => match &opts.arch {
            Some(a) if a.mlp.is_none() => a.clone(),
            _ => {
                let (m, meta) = parse_mlp::<T>(path, bytes, &opts.mlp)?;
                return Ok((Network::from_mlp(&m), meta));
            }
        },
    };
    let lay = arch
        .layout()
        .map_err(|e| model_err(path, format!("architecture: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
    let file = TensorFile {
        path: path.to_path_buf(),
        tensors: st.tensors().into_iter().collect(),
    };
    let mut params: Vec<Option<Matrix<T>>> = vec![None; lay.param_shapes.len()];
    let mut bn: Vec<BnState<T>> = lay
        .bn_channels
        .iter()
        .map(|&c| BnState {
            running_mean: Matrix::zeros(1, c),
            running_var: Matrix::filled(1, c, T::ONE),
            num_batches_tracked: 0,
        })
        .collect();
    let expected: BTreeSet<&str> = lay.tensors.iter().map(|t| t.name.as_str()).collect();
    if let Some(extra) = file.tensors.keys().find(|n| !expected.contains(n.as_str())) {
        return Err(file.err(format!(
            "unexpected tensor '{extra}' (not part of the {} architecture)",
            arch.name
        )));
    }
    for t in &lay.tensors {
        let Some(view) = file.tensors.get(&t.name) else {
            if matches!(t.kind, TensorKind::NumBatchesTracked(_)) {
                continue;
            }
            return Err(file.err(format!(
                "missing tensor '{}' (shape {:?}) required by the {} architecture",
                t.name, t.shape, arch.name
            )));
        };
        if view.shape() != t.shape.as_slice() {
            return Err(file.err(format!(
                "tensor '{}' has shape {:?}, the architecture requires {:?}",
                t.name,
                view.shape(),
                t.shape
            )));
        }
        match t.kind {
            TensorKind::Param(i) => {
                let (r, c) = lay.param_shapes[i];
                params[i] = Some(Matrix::from_vec(r, c, file.values(&t.name)?));
            }
            TensorKind::RunningMean(b) => {
                bn[b].running_mean = Matrix::row_vector(file.values(&t.name)?);
            }
            TensorKind::RunningVar(b) => bn[b].running_var = file.running_var(&t.name)?,
            TensorKind::NumBatchesTracked(b) => {
                let d = view.data();
                let n: i64 = match view.dtype() {
                    Dtype::I64 if d.len() == 8 => {
                        i64::from_le_bytes(d.try_into().expect("8 bytes"))
                    }
                    Dtype::I32 if d.len() == 4 => {
                        i32::from_le_bytes(d.try_into().expect("4 bytes")) as i64
                    }
                    other => {
                        return Err(file.err(format!(
                            "tensor '{}' has dtype {other:?}; expected a scalar I64",
                            t.name
                        )))
                    }
                };
                if n < 0 {
                    return Err(file.err(format!("tensor '{}' is negative ({n})", t.name)));
                }
                bn[b].num_batches_tracked = n as u64;
            }
        }
    }
    let params = params
        .into_iter()
        .map(|p| p.expect("every parameter tensor was read"))
        .collect();
    let net = Network::new(arch, params, bn).map_err(|e| model_err(path, e.to_string()))?;
    Ok((net, metadata))
}
