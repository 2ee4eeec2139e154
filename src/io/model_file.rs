//! MLP model files (safetensors) and import of PyTorch `nn.Sequential` state dicts.
//!
//! # The landscape model file
//!
//! A [safetensors](https://github.com/huggingface/safetensors) file: an 8-byte
//! little-endian header length `N`, `N` bytes of JSON header (padded with spaces to a
//! multiple of 8), then the raw little-endian tensor data. Tensors (dtype `F64` for an
//! `Mlp<f64>`, `F32` for an `Mlp<f32>`), for layers `p = 0..L-1` (0-based):
//!
//! | name | shape | what |
//! | --- | --- | --- |
//! | `layers.{p}.weight` | `[out, in]` | `W(p+1)`, row-major (PyTorch `nn.Linear.weight`) |
//! | `layers.{p}.bias` | `[out]` | `b(p+1)`, when the model has biases |
//! | `layers.{p}.bn.weight`, `layers.{p}.bn.bias` | `[out]` | BatchNorm `gamma`, `beta` (affine BN, hidden layers) |
//! | `layers.{p}.bn.running_mean`, `layers.{p}.bn.running_var` | `[out]` | BatchNorm running statistics (buffers) |
//!
//! The header's `__metadata__` string map holds `format` = `"landscape-mlp"`,
//! `format_version` = `"1"`, `config` = the JSON of [`MlpConfig`] (widths, activation,
//! leaky slope, bias, BatchNorm settings, loss) and any extra keys the caller passes (the
//! CLI stores a `provenance` JSON there). Writing is deterministic: tensors are stored
//! sorted by name, metadata keys sorted, no timestamps, so identical models give
//! byte-identical files (all tensors have one dtype, so they are laid out in name order).
//! Files are written through a temporary file and a rename.
//!
//! # Importing PyTorch state dicts
//!
//! A file without `format = "landscape-mlp"` metadata is read as the state dict of an
//! `nn.Sequential` of `Linear`, `BatchNorm1d` and parameter-free modules (activations,
//! dropout), saved with `safetensors.torch.save_file(model.state_dict(), path)`:
//! `0.weight`, `0.bias`, `1.weight`, `1.bias`, `1.running_mean`, `1.running_var`,
//! `1.num_batches_tracked`, `3.weight`, ... optionally under a common prefix such as
//! `net.` or `model.`. Modules are ordered by their numeric index; a 2-D `weight` is a
//! `Linear` (with optional `bias`), a 1-D `weight`/`bias` pair with `running_mean` and
//! `running_var` is an affine `BatchNorm1d` (without `weight`/`bias`: `affine=False`);
//! `num_batches_tracked` is ignored. Landscape names without metadata
//! (`layers.{p}.bn.*`) are understood too. Widths, bias presence and BatchNorm are
//! inferred; what the tensors cannot tell (activation, loss, BatchNorm `eps`, LeakyReLU
//! slope) comes from [`ImportOptions`] (defaults: ReLU, cross-entropy, `eps = 1e-5`,
//! slope 0.01, PyTorch's defaults).
//!
//! Everything is validated: consecutive layers must chain (`in` of layer `p+1` = `out`
//! of layer `p`), biases have length `out`, BatchNorm follows only hidden linear layers,
//! no tensor may be missing or left over, dtypes must be `F32`/`F64`, values finite and
//! running variances non-negative. Every problem is an [`Error::Model`] naming the file
//! and the tensor in one line; malformed files (truncated, bad header JSON, ...) never
//! panic.

use crate::error::{Error, Result};
use crate::nn::{Activation, BatchNorm, BatchNormConfig, Layer, LossKind, Mlp, MlpConfig};
use crate::tensor::{Matrix, Scalar};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Value of the `format` metadata key of landscape model files.
pub const FORMAT_NAME: &str = "landscape-mlp";
/// Value of the `format_version` metadata key written by this version.
pub const FORMAT_VERSION: &str = "1";
/// Metadata keys set by [`save_mlp`] itself (callers may not pass them as extras).
pub const RESERVED_METADATA_KEYS: [&str; 3] = ["format", "format_version", "config"];

/// What to assume when a file carries no landscape metadata (a PyTorch state dict).
/// Ignored for landscape model files, whose metadata says it all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportOptions {
    /// Hidden activation (default ReLU).
    pub activation: Option<Activation>,
    /// Loss (default cross-entropy).
    pub loss: Option<LossKind>,
    /// BatchNorm `eps` (default `1e-5`, PyTorch's).
    pub batchnorm_eps: Option<f64>,
    /// Negative slope of LeakyReLU (default `0.01`, PyTorch's).
    pub leaky_slope: Option<f64>,
}

/// A borrowed tensor for [`write_safetensors_refs`]: raw little-endian bytes in C order.
#[derive(Clone, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl<'a> TensorRef<'a> {
    /// An `F64` tensor viewing `values` in place (little-endian targets; elsewhere the
    /// caller converts with [`RawTensor::f64`]).
    #[cfg(target_endian = "little")]
    pub fn f64(name: &'a str, shape: Vec<usize>, values: &'a [f64]) -> Self {
        Self {
            name,
            dtype: Dtype::F64,
            shape,
            data: bytemuck::cast_slice(values),
        }
    }
}

/// One tensor for [`write_safetensors`]: raw little-endian bytes in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// An `F64` tensor.
    pub fn f64(name: impl Into<String>, shape: Vec<usize>, values: &[f64]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F64,
            shape,
            data: le_bytes_f64(values),
        }
    }
    /// An `F32` tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
    /// A tensor of the model's scalar type (`F32` or `F64`).
    pub fn scalar<T: Scalar>(name: impl Into<String>, shape: Vec<usize>, values: &[T]) -> Self {
        if T::DTYPE == "f32" {
            let v: Vec<f32> = values.iter().map(|x| x.to_f64() as f32).collect();
            Self::f32(name, shape, &v)
        } else {
            let v: Vec<f64> = values.iter().map(|x| x.to_f64()).collect();
            Self::f64(name, shape, &v)
        }
    }
}

/// Serialises tensors and a metadata map as safetensors bytes, deterministically:
/// tensors laid out in the order of the `safetensors` crate's own writer (dtype in
/// descending order of its `Dtype` enum, which keeps wide types aligned, then name),
/// metadata keys sorted, header padded with spaces to a multiple of 8 bytes. An empty
/// metadata map writes no `__metadata__`.
pub fn safetensors_bytes(
    tensors: &[RawTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let refs = raw_refs(tensors);
    let (header, order) = safetensors_layout(&refs, metadata)?;
    let mut out =
        Vec::with_capacity(header.len() + order.iter().map(|t| t.data.len()).sum::<usize>());
    out.extend_from_slice(&header);
    for t in &order {
        out.extend_from_slice(t.data);
    }
    Ok(out)
}

/// `values` as little-endian bytes.
fn le_bytes_f64(values: &[f64]) -> Vec<u8> {
    #[cfg(target_endian = "little")]
    {
        bytemuck::cast_slice(values).to_vec()
    }
    #[cfg(not(target_endian = "little"))]
    {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

fn raw_refs(tensors: &[RawTensor]) -> Vec<TensorRef<'_>> {
    tensors
        .iter()
        .map(|t| TensorRef {
            name: &t.name,
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: &t.data,
        })
        .collect()
}

/// The 8-byte length and the padded JSON header of [`safetensors_bytes`], and the
/// tensors in file order.
fn safetensors_layout<'t, 'a>(
    tensors: &'t [TensorRef<'a>],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, Vec<&'t TensorRef<'a>>)> {
    let mut order: Vec<&TensorRef> = tensors.iter().collect();
    order.sort_by(|a, b| b.dtype.cmp(&a.dtype).then(a.name.cmp(b.name)));
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidArgument(format!(
            "duplicate tensor name '{}'",
            w[0]
        )));
    }
    let json = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let mut header = String::from("{");
    let mut first = true;
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&format!("{}:{}", json(k), json(v)));
        }
        header.push('}');
        first = false;
    }
    let mut offset = 0usize;
    for t in &order {
        if t.name == "__metadata__" {
            return Err(Error::InvalidArgument(
                "'__metadata__' is not a valid tensor name".into(),
            ));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Shape(format!("tensor '{}': shape overflows", t.name)))?;
        let bits = numel.checked_mul(t.dtype.bitsize());
        if bits.map(|b| b % 8 != 0 || b / 8 != t.data.len()) != Some(false) {
            return Err(Error::Shape(format!(
                "tensor '{}': {} bytes do not hold a {:?} tensor of shape {:?}",
                t.name,
                t.data.len(),
                t.dtype,
                t.shape
            )));
        }
        if !first {
            header.push(',');
        }
        first = false;
        let dtype = serde_json::to_string(&t.dtype).expect("dtypes serialise");
        let shape = serde_json::to_string(&t.shape).expect("shapes serialise");
        header.push_str(&format!(
            "{}:{{\"dtype\":{dtype},\"shape\":{shape},\"data_offsets\":[{},{}]}}",
            json(t.name),
            offset,
            offset + t.data.len()
        ));
        offset += t.data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    Ok((out, order))
}

/// Writes [`safetensors_bytes`] to `path` (atomically, through a temporary file).
pub fn write_safetensors(
    path: &Path,
    tensors: &[RawTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    write_safetensors_refs(path, &raw_refs(tensors), metadata)
}

/// [`write_safetensors`] of borrowed tensors: the same bytes, streamed from the
/// tensors' own buffers to the file (no copy of the data in memory).
pub fn write_safetensors_refs(
    path: &Path,
    tensors: &[TensorRef<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let (header, order) = safetensors_layout(tensors, metadata)?;
    let mut parts: Vec<&[u8]> = Vec::with_capacity(order.len() + 1);
    parts.push(&header);
    parts.extend(order.iter().map(|t| t.data));
    super::write_atomic_parts(path, &parts)
}

/// `(name, shape)` of every tensor a model with this config stores, in parameter-vector
/// order followed by the BatchNorm buffers of each layer.
pub fn expected_tensors(config: &MlpConfig) -> Vec<(String, Vec<usize>)> {
    let w = config.widths();
    let nl = config.num_layers();
    let mut out = Vec::new();
    for p in 0..nl {
        let (fan_in, fan_out) = (w[p], w[p + 1]);
        out.push((format!("layers.{p}.weight"), vec![fan_out, fan_in]));
        if config.bias {
            out.push((format!("layers.{p}.bias"), vec![fan_out]));
        }
        if p + 1 < nl {
            if let Some(bn) = &config.batchnorm {
                if bn.affine {
                    out.push((format!("layers.{p}.bn.weight"), vec![fan_out]));
                    out.push((format!("layers.{p}.bn.bias"), vec![fan_out]));
                }
                out.push((format!("layers.{p}.bn.running_mean"), vec![fan_out]));
                out.push((format!("layers.{p}.bn.running_var"), vec![fan_out]));
            }
        }
    }
    out
}

pub(crate) fn model_err(path: &Path, what: impl Into<String>) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Saves `model` as a landscape model file (see the module docs for the layout).
/// `extra_metadata` is added to the header's metadata map; the keys `format`,
/// `format_version` and `config` are reserved. Non-finite parameters are refused.
pub fn save_mlp<T: Scalar>(
    model: &Mlp<T>,
    path: &Path,
    extra_metadata: &BTreeMap<String, String>,
) -> Result<()> {
    for k in RESERVED_METADATA_KEYS {
        if extra_metadata.contains_key(k) {
            return Err(Error::InvalidArgument(format!(
                "metadata key '{k}' is reserved for the model file format"
            )));
        }
    }
    model.config.validate()?;
    let mut actual: BTreeMap<String, &Matrix<T>> = model.named_params().into_iter().collect();
    actual.extend(model.named_buffers());
    let expected = expected_tensors(&model.config);
    let mut tensors = Vec::with_capacity(expected.len());
    for (name, shape) in &expected {
        let m = actual.remove(name).ok_or_else(|| {
            Error::Shape(format!(
                "model has no tensor '{name}' although its config requires it"
            ))
        })?;
        let fits = if shape.len() == 2 {
            m.rows() == shape[0] && m.cols() == shape[1]
        } else {
            m.len() == shape[0]
        };
        if !fits {
            return Err(Error::Shape(format!(
                "tensor '{name}' is {} x {}, the config requires shape {shape:?}",
                m.rows(),
                m.cols()
            )));
        }
        if let Some(i) = m.as_slice().iter().position(|v| !v.is_finite()) {
            return Err(model_err(
                path,
                format!(
                    "refusing to write: tensor '{name}' has a non-finite value ({}) at index {i}",
                    m.as_slice()[i]
                ),
            ));
        }
        tensors.push(RawTensor::scalar(name.clone(), shape.clone(), m.as_slice()));
    }
    if let Some(name) = actual.keys().next() {
        return Err(Error::Shape(format!(
            "model has a tensor '{name}' that its config does not describe"
        )));
    }
    let mut metadata = extra_metadata.clone();
    metadata.insert("format".into(), FORMAT_NAME.into());
    metadata.insert("format_version".into(), FORMAT_VERSION.into());
    metadata.insert(
        "config".into(),
        serde_json::to_string(&model.config).expect("MlpConfig serialises"),
    );
    write_safetensors(path, &tensors, &metadata)
}

/// Loads an `Mlp<f64>` from a landscape model file or a PyTorch state dict (F32 or F64
/// tensors, converted).
pub fn load_mlp_f64(path: &Path, opts: &ImportOptions) -> Result<Mlp<f64>> {
    load_mlp::<f64>(path, opts)
}

/// Loads an `Mlp<T>` from a landscape model file or a PyTorch state dict; tensors of
/// either float dtype are converted to `T` (values that overflow `T` are an error).
pub fn load_mlp<T: Scalar>(path: &Path, opts: &ImportOptions) -> Result<Mlp<T>> {
    load_mlp_with_metadata(path, opts).map(|(m, _)| m)
}

/// Like [`load_mlp`], also returning the file's metadata map (empty when it has none).
pub fn load_mlp_with_metadata<T: Scalar>(
    path: &Path,
    opts: &ImportOptions,
) -> Result<(Mlp<T>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_mlp(path, &bytes, opts)
}

/// Parses model-file bytes (`path` only names the file in errors).
pub fn parse_mlp<T: Scalar>(
    path: &Path,
    bytes: &[u8],
    opts: &ImportOptions,
) -> Result<(Mlp<T>, BTreeMap<String, String>)> {
    let st_err = |e: SafeTensorError| model_err(path, describe_safetensors_error(&e));
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
    let file = TensorFile {
        path: path.to_path_buf(),
        tensors: st.tensors().into_iter().collect(),
    };
    if file.tensors.is_empty() {
        return Err(model_err(path, "the file holds no tensors"));
    }
    let model = if metadata.get("format").map(String::as_str) == Some(FORMAT_NAME) {
        file.landscape_model(&metadata)?
    } else {
        file.import_sequential(opts)?
    };
    Ok((model, metadata))
}

/// The metadata map of a safetensors file, reading only its header.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes)
        .map_err(|_| model_err(path, "not a valid safetensors file (shorter than 8 bytes)"))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > 100_000_000 || n > file_len.saturating_sub(8) {
        return Err(model_err(
            path,
            format!(
                "not a valid safetensors file (header length {n} exceeds the file size {file_len})"
            ),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&header).map_err(|e| {
        model_err(
            path,
            format!("not a valid safetensors file (invalid JSON in header: {e})"),
        )
    })?;
    let mut out = BTreeMap::new();
    if let Some(meta) = value.get("__metadata__") {
        let obj = meta
            .as_object()
            .ok_or_else(|| model_err(path, "safetensors '__metadata__' is not a JSON object"))?;
        for (k, v) in obj {
            let s = v.as_str().ok_or_else(|| {
                model_err(path, format!("metadata value of '{k}' is not a string"))
            })?;
            out.insert(k.clone(), s.to_string());
        }
    }
    Ok(out)
}

pub(crate) fn describe_safetensors_error(e: &SafeTensorError) -> String {
    let hint = match e {
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => {
            " (truncated file, or not a safetensors file?)"
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            " (tensor data does not match the file size: truncated file or trailing bytes)"
        }
        _ => "",
    };
    let msg = e.to_string().replace('\n', " ");
    format!("not a valid safetensors file: {msg}{hint}")
}

pub(crate) struct TensorFile<'a> {
    pub(crate) path: PathBuf,
    pub(crate) tensors: BTreeMap<String, safetensors::tensor::TensorView<'a>>,
}

impl TensorFile<'_> {
    pub(crate) fn err(&self, what: impl Into<String>) -> Error {
        model_err(&self.path, what)
    }

    fn shape(&self, name: &str) -> &[usize] {
        self.tensors[name].shape()
    }

    /// Decodes a float tensor to `T`, checking dtype and finiteness.
    pub(crate) fn values<T: Scalar>(&self, name: &str) -> Result<Vec<T>> {
        let view = &self.tensors[name];
        let raw: Vec<f64> = match view.dtype() {
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect(),
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4-byte chunk")) as f64)
                .collect(),
            other => {
                return Err(self.err(format!(
                    "tensor '{name}' has dtype {other:?}; expected F32 or F64"
                )))
            }
        };
        let mut out = Vec::with_capacity(raw.len());
        for (i, &v) in raw.iter().enumerate() {
            if !v.is_finite() {
                return Err(self.err(format!(
                    "tensor '{name}' has a non-finite value ({v}) at index {i}"
                )));
            }
            let t = T::from_f64(v);
            if !t.is_finite() {
                return Err(self.err(format!(
                    "tensor '{name}': value {v} at index {i} overflows {}",
                    T::DTYPE
                )));
            }
            out.push(t);
        }
        Ok(out)
    }

    fn row_vector<T: Scalar>(&self, name: &str) -> Result<Matrix<T>> {
        let v = self.values::<T>(name)?;
        Ok(Matrix::row_vector(v))
    }

    pub(crate) fn running_var<T: Scalar>(&self, name: &str) -> Result<Matrix<T>> {
        let m = self.row_vector::<T>(name)?;
        if let Some(i) = m.as_slice().iter().position(|&v| v < T::ZERO) {
            return Err(self.err(format!(
                "tensor '{name}' (a running variance) has a negative value ({}) at index {i}",
                m.as_slice()[i]
            )));
        }
        Ok(m)
    }

    /// A file written by [`save_mlp`]: the config in the metadata fixes every name and shape.
    fn landscape_model<T: Scalar>(&self, metadata: &BTreeMap<String, String>) -> Result<Mlp<T>> {
        if let Some(v) = metadata.get("format_version") {
            if v != FORMAT_VERSION {
                return Err(self.err(format!(
                    "unsupported {FORMAT_NAME} format_version '{v}' (this build reads '{FORMAT_VERSION}')"
                )));
            }
        }
        let cfg_text = metadata
            .get("config")
            .ok_or_else(|| self.err(format!("{FORMAT_NAME} metadata has no 'config' entry")))?;
        let config: MlpConfig = serde_json::from_str(cfg_text)
            .map_err(|e| self.err(format!("metadata 'config' is not a valid MLP config: {e}")))?;
        config
            .validate()
            .map_err(|e| self.err(format!("metadata 'config' is invalid: {e}")))?;
        let expected = expected_tensors(&config);
        let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        for (name, shape) in &expected {
            let Some(view) = self.tensors.get(name) else {
                return Err(self.err(format!(
                    "missing tensor '{name}' (shape {shape:?}) required by the config"
                )));
            };
            if view.shape() != shape.as_slice() {
                return Err(self.err(format!(
                    "tensor '{name}' has shape {:?}, the config requires {shape:?}",
                    view.shape()
                )));
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|n| !expected_names.contains(n.as_str()))
        {
            return Err(self.err(format!(
                "unexpected tensor '{extra}' (not part of the model the config describes)"
            )));
        }
        let nl = config.num_layers();
        let mut layers = Vec::with_capacity(nl);
        for p in 0..nl {
            let wname = format!("layers.{p}.weight");
            let s = self.shape(&wname);
            let weight = Matrix::from_vec(s[0], s[1], self.values(&wname)?);
            let bias = if config.bias {
                Some(self.row_vector(&format!("layers.{p}.bias"))?)
            } else {
                None
            };
            let bn = match &config.batchnorm {
                Some(b) if p + 1 < nl => Some(BatchNorm {
                    gamma: if b.affine {
                        Some(self.row_vector(&format!("layers.{p}.bn.weight"))?)
                    } else {
                        None
                    },
                    beta: if b.affine {
                        Some(self.row_vector(&format!("layers.{p}.bn.bias"))?)
                    } else {
                        None
                    },
                    running_mean: self.row_vector(&format!("layers.{p}.bn.running_mean"))?,
                    running_var: self.running_var(&format!("layers.{p}.bn.running_var"))?,
                }),
                _ => None,
            };
            layers.push(Layer { weight, bias, bn });
        }
        Ok(Mlp { config, layers })
    }

    /// A PyTorch `nn.Sequential` state dict (see the module docs).
    fn import_sequential<T: Scalar>(&self, opts: &ImportOptions) -> Result<Mlp<T>> {
        // Group tensors by module: key (index, 0 = the module itself / 1 = its `bn` child).
        let mut prefix: Option<String> = None;
        let mut modules: BTreeMap<(usize, u8), BTreeMap<&'static str, &str>> = BTreeMap::new();
        for name in self.tensors.keys() {
            let parsed = parse_module_name(name).ok_or_else(|| {
                self.err(format!(
                    "cannot read tensor '{name}' as part of an nn.Sequential of Linear/BatchNorm1d \
                     modules (expected names like '0.weight', '1.running_mean', optionally with a prefix)"
                ))
            })?;
            match &prefix {
                None => prefix = Some(parsed.prefix.to_string()),
                Some(p) if p != parsed.prefix => {
                    return Err(self.err(format!(
                        "tensor '{name}' has prefix '{}' but others have '{p}': expected one nn.Sequential",
                        parsed.prefix
                    )))
                }
                _ => {}
            }
            modules
                .entry((parsed.index, parsed.bn_child as u8))
                .or_default()
                .insert(parsed.leaf, name.as_str());
        }

        struct Linear<'n> {
            weight: &'n str,
            bias: Option<&'n str>,
            out: usize,
            bn: Option<Bn<'n>>,
        }
        struct Bn<'n> {
            module: String,
            weight: Option<&'n str>,
            bias: Option<&'n str>,
            mean: &'n str,
            var: &'n str,
        }
        let prefix = prefix.unwrap_or_default();
        let mut linears: Vec<Linear> = Vec::new();
        for ((index, child), leaves) in &modules {
            let module = if *child == 1 {
                format!("{prefix}{index}.bn")
            } else {
                format!("{prefix}{index}")
            };
            let weight = leaves.get("weight").copied();
            let has_stats =
                leaves.contains_key("running_mean") || leaves.contains_key("running_var");
            match weight.map(|w| self.shape(w).len()) {
                Some(2) => {
                    let w = weight.expect("checked");
                    if let Some(leaf) = leaves.keys().find(|l| !matches!(**l, "weight" | "bias")) {
                        return Err(self.err(format!(
                            "module '{module}' has a 2-D weight (Linear) and a '{leaf}' tensor"
                        )));
                    }
                    let s = self.shape(w);
                    let (out, inp) = (s[0], s[1]);
                    if out == 0 || inp == 0 {
                        return Err(self.err(format!("tensor '{w}' has an empty shape {s:?}")));
                    }
                    if let Some(prev) = linears.last() {
                        if prev.out != inp {
                            return Err(self.err(format!(
                                "shapes do not chain: tensor '{w}' has {inp} inputs but the previous \
                                 linear layer '{}' has {} outputs",
                                prev.weight, prev.out
                            )));
                        }
                    }
                    let bias = leaves.get("bias").copied();
                    if let Some(b) = bias {
                        if self.shape(b) != [out] {
                            return Err(self.err(format!(
                                "tensor '{b}' has shape {:?}, expected [{out}] (the bias of '{w}')",
                                self.shape(b)
                            )));
                        }
                    }
                    linears.push(Linear {
                        weight: w,
                        bias,
                        out,
                        bn: None,
                    });
                }
                Some(1) | None if has_stats => {
                    let (Some(&mean), Some(&var)) =
                        (leaves.get("running_mean"), leaves.get("running_var"))
                    else {
                        return Err(self.err(format!(
                            "BatchNorm module '{module}' needs both running_mean and running_var"
                        )));
                    };
                    let bias = leaves.get("bias").copied();
                    if weight.is_some() != bias.is_some() {
                        return Err(self.err(format!(
                            "BatchNorm module '{module}' has only one of weight and bias"
                        )));
                    }
                    let Some(prev) = linears.last_mut() else {
                        return Err(self.err(format!(
                            "BatchNorm module '{module}' comes before any linear layer"
                        )));
                    };
                    if let Some(other) = &prev.bn {
                        return Err(self.err(format!(
                            "two BatchNorm modules ('{}' and '{module}') after linear layer '{}'",
                            other.module, prev.weight
                        )));
                    }
                    for t in [Some(mean), Some(var), weight, bias].into_iter().flatten() {
                        if self.shape(t) != [prev.out] {
                            return Err(self.err(format!(
                                "tensor '{t}' has shape {:?}, expected [{}] (BatchNorm after '{}')",
                                self.shape(t),
                                prev.out,
                                prev.weight
                            )));
                        }
                    }
                    prev.bn = Some(Bn {
                        module,
                        weight,
                        bias,
                        mean,
                        var,
                    });
                }
                Some(1) => {
                    return Err(self.err(format!(
                        "tensor '{}' is a 1-D weight without running_mean/running_var: only Linear and \
                         BatchNorm1d (with running statistics) are supported",
                        weight.expect("checked")
                    )))
                }
                Some(_) => {
                    let w = weight.expect("checked");
                    return Err(self.err(format!(
                        "tensor '{w}' has shape {:?}: only Linear (2-D weight) and BatchNorm1d (1-D) \
                         modules are supported",
                        self.shape(w)
                    )));
                }
                None => {
                    let names: Vec<&str> = leaves.values().copied().collect();
                    return Err(self.err(format!(
                        "module '{module}' has tensors {names:?} but no weight: not a Linear or BatchNorm1d"
                    )));
                }
            }
        }
        let Some(last) = linears.last() else {
            return Err(self.err(
                "no linear layer found (expected nn.Sequential names like '0.weight' with a 2-D weight)",
            ));
        };
        if let Some(bn) = &last.bn {
            return Err(self.err(format!(
                "BatchNorm module '{}' follows the last linear layer '{}' (the logits); BatchNorm is \
                 supported only after hidden layers",
                bn.module, last.weight
            )));
        }
        let has_bias = linears[0].bias.is_some();
        if let Some(l) = linears.iter().find(|l| l.bias.is_some() != has_bias) {
            let (with, without) = if has_bias {
                (linears[0].weight, l.weight)
            } else {
                (l.weight, linears[0].weight)
            };
            return Err(self.err(format!(
                "layer '{with}' has a bias but '{without}' does not: landscape models have biases \
                 on all layers or none"
            )));
        }
        let hidden = &linears[..linears.len() - 1];
        let bn_affine = hidden
            .first()
            .and_then(|l| l.bn.as_ref())
            .map(|b| b.weight.is_some());
        for l in hidden {
            match (&l.bn, bn_affine) {
                (None, Some(_)) | (Some(_), None) => {
                    return Err(self.err(format!(
                    "hidden layer '{}' {} BatchNorm but '{}' {}: landscape models have BatchNorm \
                         after every hidden layer or none",
                    l.weight,
                    if l.bn.is_some() { "has" } else { "has no" },
                    hidden[0].weight,
                    if bn_affine.is_some() {
                        "does"
                    } else {
                        "does not"
                    }
                )))
                }
                (Some(b), Some(affine)) if b.weight.is_some() != affine => {
                    return Err(self.err(format!(
                        "BatchNorm '{}' and '{}' differ in affine (weight/bias) parameters",
                        b.module,
                        hidden[0].bn.as_ref().expect("checked").module
                    )))
                }
                _ => {}
            }
        }
        if let Some(eps) = opts.batchnorm_eps {
            if !(eps > 0.0 && eps.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "batchnorm eps must be positive and finite, got {eps}"
                )));
            }
        }
        let first_shape = self.shape(linears[0].weight);
        let config = MlpConfig {
            input_dim: first_shape[1],
            hidden: hidden.iter().map(|l| l.out).collect(),
            classes: last.out,
            activation: opts.activation.unwrap_or(Activation::Relu),
            leaky_slope: opts.leaky_slope.unwrap_or(0.01),
            bias: has_bias,
            batchnorm: bn_affine.map(|affine| BatchNormConfig {
                affine,
                eps: opts.batchnorm_eps.unwrap_or(1e-5),
                ..BatchNormConfig::default()
            }),
            loss: opts.loss.unwrap_or(LossKind::CrossEntropy),
        };
        config
            .validate()
            .map_err(|e| self.err(format!("the imported architecture is invalid: {e}")))?;
        let mut layers = Vec::with_capacity(linears.len());
        for l in &linears {
            let s = self.shape(l.weight);
            let weight = Matrix::from_vec(s[0], s[1], self.values(l.weight)?);
            let bias = l.bias.map(|b| self.row_vector(b)).transpose()?;
            let bn = match &l.bn {
                Some(b) => Some(BatchNorm {
                    gamma: b.weight.map(|t| self.row_vector(t)).transpose()?,
                    beta: b.bias.map(|t| self.row_vector(t)).transpose()?,
                    running_mean: self.row_vector(b.mean)?,
                    running_var: self.running_var(b.var)?,
                }),
                None => None,
            };
            layers.push(Layer { weight, bias, bn });
        }
        Ok(Mlp { config, layers })
    }
}

struct ModuleName<'a> {
    prefix: &'a str,
    index: usize,
    bn_child: bool,
    leaf: &'static str,
}

const LEAVES: [&str; 5] = [
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
];

/// Splits `net.3.weight` into prefix `net.`, index 3, leaf `weight`; `layers.0.bn.bias`
/// into prefix `layers.`, index 0, the `bn` child, leaf `bias`. `num_batches_tracked`
/// parses but is dropped by the caller's grouping (it is in no module's used leaves).
fn parse_module_name(name: &str) -> Option<ModuleName<'_>> {
    let (rest, leaf) = name.rsplit_once('.')?;
    let leaf = *LEAVES.iter().find(|l| **l == leaf)?;
    let (rest, bn_child) = match rest.strip_suffix(".bn") {
        Some(r) if r.rsplit('.').next().is_some_and(is_index) => (r, true),
        _ => (rest, false),
    };
    let (prefix_len, idx) = match rest.rsplit_once('.') {
        Some((p, i)) => (p.len() + 1, i),
        None => (0, rest),
    };
    if !is_index(idx) {
        return None;
    }
    Some(ModuleName {
        prefix: &name[..prefix_len],
        index: idx.parse().ok()?,
        bn_child,
        leaf,
    })
}

fn is_index(s: &str) -> bool {
    !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        let m = parse_module_name("0.weight").unwrap();
        assert_eq!(
            (m.prefix, m.index, m.bn_child, m.leaf),
            ("", 0, false, "weight")
        );
        let m = parse_module_name("model.net.12.running_var").unwrap();
        assert_eq!(
            (m.prefix, m.index, m.bn_child, m.leaf),
            ("model.net.", 12, false, "running_var")
        );
        let m = parse_module_name("layers.3.bn.bias").unwrap();
        assert_eq!(
            (m.prefix, m.index, m.bn_child, m.leaf),
            ("layers.", 3, true, "bias")
        );
        assert!(parse_module_name("fc1.weight").is_none());
        assert!(parse_module_name("weight").is_none());
        assert!(parse_module_name("0.weight_g").is_none());
        assert!(parse_module_name(".weight").is_none());
    }

    /// The streamed writer writes exactly the bytes of `safetensors_bytes`, with the
    /// little-endian encoding written out by hand for the reference.
    #[test]
    fn streamed_file_equals_the_serialised_bytes() {
        let values = [1.5f64, -2.25, 3.0e-300, f64::MAX];
        let t = vec![
            RawTensor::f64("w", vec![2, 2], &values),
            RawTensor::f32("a", vec![3], &[3.0, -1.0, 0.5]),
        ];
        let by_hand: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(t[0].data, by_hand);
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        let dir = std::env::temp_dir().join(format!("landscape-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        write_safetensors(&path, &t, &meta).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            safetensors_bytes(&t, &meta).unwrap()
        );
        #[cfg(target_endian = "little")]
        {
            let refs = [
                TensorRef::f64("w", vec![2, 2], &values),
                TensorRef {
                    name: "a",
                    dtype: Dtype::F32,
                    shape: vec![3],
                    data: &t[1].data,
                },
            ];
            let path2 = dir.join("r.safetensors");
            write_safetensors_refs(&path2, &refs, &meta).unwrap();
            assert_eq!(
                std::fs::read(&path2).unwrap(),
                std::fs::read(&path).unwrap()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn header_is_sorted_padded_and_readable() {
        let t = vec![
            RawTensor::f64("b", vec![2], &[1.0, 2.0]),
            RawTensor::f32("a", vec![1, 1], &[3.0]),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("z".to_string(), "1".to_string());
        meta.insert("a".to_string(), "\"quoted\"\n".to_string());
        let bytes = safetensors_bytes(&t, &meta).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert!(header.find("\"a\":").unwrap() < header.find("\"z\":").unwrap());
        // F64 before F32 (alignment), as the safetensors crate orders them.
        assert!(header.find("\"b\":{").unwrap() < header.find("\"a\":{").unwrap());
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().dtype(), Dtype::F32);
        assert_eq!(st.tensor("b").unwrap().data(), &bytes[8 + n..8 + n + 16]);
        let ours: Vec<_> = t
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                        .unwrap(),
                )
            })
            .collect();
        let theirs = safetensors::serialize(ours, None).unwrap();
        assert_eq!(theirs, safetensors_bytes(&t, &BTreeMap::new()).unwrap());
        let (_, md) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(md.metadata().as_ref().unwrap()["a"], "\"quoted\"\n");
        let dup = vec![
            RawTensor::f64("x", vec![1], &[1.0]),
            RawTensor::f64("x", vec![1], &[1.0]),
        ];
        assert!(safetensors_bytes(&dup, &meta).is_err());
        let bad = vec![RawTensor::f64("x", vec![3], &[1.0])];
        assert!(safetensors_bytes(&bad, &meta).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let path = Path::new("garbage.safetensors");
        let opts = ImportOptions::default();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1, 2, 3],
            u64::MAX.to_le_bytes().to_vec(),
            [16u64.to_le_bytes().to_vec(), b"{not json at all".to_vec()].concat(),
            [8u64.to_le_bytes().to_vec(), b"{}      ".to_vec()].concat(),
        ];
        let good = safetensors_bytes(
            &[RawTensor::f64(
                "0.weight",
                vec![2, 2],
                &[1.0, 2.0, 3.0, 4.0],
            )],
            &BTreeMap::new(),
        )
        .unwrap();
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        for c in cases {
            let r = parse_mlp::<f64>(path, &c, &opts);
            let e = r.expect_err("garbage must not parse").to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        let (m, _) = parse_mlp::<f64>(path, &good, &opts).unwrap();
        assert_eq!(m.config.widths(), vec![2, 2]);
    }
}
