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

/// Converts one safetensors tensor to f32 (F32, F16, BF16, F64, and I64/I32 for token ids).
pub fn view_to_host(key: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<HostTensor> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        // Integer tensors (token ids in fixtures) are exact in f32 below 2^24.
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        other => {
            return Err(LoraError::UnsupportedDtype {
                key: key.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data,
    })
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
