//! Tensor file helpers shared by adapter files and checkpoint loaders: safetensors reading with
//! dtype conversion, and atomic writes (temp file + rename) so an interrupted write never
//! destroys the previous file.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::error::{LoraError, Result};

/// A host-side float tensor: row-major values and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Copies a device tensor to the host as f32.
    pub fn from_tensor<const D: usize>(t: Tensor<D>, key: &str) -> Result<Self> {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| LoraError::Data {
                key: key.to_string(),
                reason: format!("{e:?}"),
            })?;
        Ok(Self { shape, data })
    }

    /// Builds a device tensor; errors if the rank is not `D`.
    pub fn to_tensor<const D: usize>(&self, device: &Device, key: &str) -> Result<Tensor<D>> {
        if self.shape.len() != D {
            return Err(LoraError::ShapeMismatch {
                key: key.to_string(),
                expected: vec![0; D],
                found: self.shape.clone(),
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        ))
    }

    /// The 2-D transpose (PyTorch `[out, in]` ↔ burn `[in, out]`).
    pub fn transposed(&self) -> Self {
        if self.shape.len() != 2 {
            return self.clone();
        }
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self {
            shape: vec![c, r],
            data,
        }
    }
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| LoraError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })
}

/// Parses safetensors bytes, turning a truncated or corrupt file into an error that names it.
pub fn parse_safetensors<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|source| LoraError::Safetensors {
        path: path.to_path_buf(),
        source,
    })
}

/// Converts one safetensors tensor to f32 (see [`bytes_to_f32`] for the dtypes).
pub fn view_to_host(key: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<HostTensor> {
    let dtype = format!("{:?}", view.dtype());
    let data = bytes_to_f32(view.data(), &dtype).ok_or_else(|| LoraError::UnsupportedDtype {
        key: key.to_string(),
        dtype,
    })?;
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data,
    })
}

/// Little-endian tensor bytes of dtype `dtype` (safetensors' / burn-store's name: F32, F16,
/// BF16, F64, I64, I32, U8, Bool) as f32. Integers (token ids, masks) are exact below 2^24.
/// `None` for other dtypes.
pub fn bytes_to_f32(b: &[u8], dtype: &str) -> Option<Vec<f32>> {
    fn le<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    Some(match dtype {
        "F32" => le::<4>(b).map(f32::from_le_bytes).collect(),
        "F16" => le::<2>(b)
            .map(|a| half::f16::from_le_bytes(a).to_f32())
            .collect(),
        "BF16" => le::<2>(b)
            .map(|a| half::bf16::from_le_bytes(a).to_f32())
            .collect(),
        "F64" => le::<8>(b).map(|a| f64::from_le_bytes(a) as f32).collect(),
        "I64" => le::<8>(b).map(|a| i64::from_le_bytes(a) as f32).collect(),
        "I32" => le::<4>(b).map(|a| i32::from_le_bytes(a) as f32).collect(),
        "U8" | "Bool" => b.iter().map(|&v| v as f32).collect(),
        _ => return None,
    })
}

/// Reads a PyTorch pickle state dict (`pytorch_model.bin`, `adapter_model.bin`) through
/// burn-store's reader, every tensor as f32. A malformed file is a [`LoraError::Pickle`].
pub fn read_pytorch(path: &Path) -> Result<std::collections::HashMap<String, HostTensor>> {
    use burn::store::{ModuleStore, PytorchStore};
    let err = |reason: String| LoraError::Pickle {
        path: path.to_path_buf(),
        reason,
    };
    let mut store = PytorchStore::from_file(path);
    let tensors = store.get_all_tensors().map_err(|e| err(e.to_string()))?;
    let mut out = std::collections::HashMap::new();
    for (name, t) in tensors {
        let bytes = t.to_bytes().map_err(|e| err(format!("{name}: {e}")))?;
        let data = bytes_to_f32(&bytes, &format!("{:?}", t.dtype))
            .ok_or_else(|| err(format!("{name}: unsupported dtype {:?}", t.dtype)))?;
        out.insert(
            name.clone(),
            HostTensor {
                shape: t.shape.to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Serialises f32 tensors as safetensors with the given metadata.
pub fn serialize_safetensors(
    tensors: &[(String, HostTensor)],
    metadata: &[(&str, &str)],
    path: &Path,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((key, t), b) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b).map_err(
            |source| LoraError::Safetensors {
                path: path.to_path_buf(),
                source,
            },
        )?;
        views.push((key.clone(), view));
    }
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|source| LoraError::Safetensors {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, flushed to disk, then
/// renamed over the target. A crash mid-write leaves the old file (if any) intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| LoraError::Io {
        action: "cannot write",
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
