//! Loading the text decoder from a Gemma 3n GGUF file: the HF-named tensors the decoder
//! asks for are views into the mapped GGUF data (the stacked AltUp projections and the
//! zero-padded per-layer table included), in whatever format the file stores them.

use std::collections::HashMap;
use std::path::Path;

use gemma3n_compute::{DType, Matrix};

use super::gemma3n::{model_config, tensor_map, NameMap};
use super::Gguf;
use crate::checkpoint::TensorSource;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::text::TextModel;

/// A GGUF file seen through HF tensor names.
pub struct GgufSource {
    gguf: Gguf,
    map: HashMap<String, NameMap>,
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<(GgufSource, ModelConfig)> {
        let gguf = Gguf::open(path)?;
        let config = model_config(&gguf)?;
        let map = tensor_map(&gguf, &config.text)?
            .into_iter()
            .map(|m| (m.hf_name.clone(), m))
            .collect();
        Ok((GgufSource { gguf, map }, config))
    }

    fn entry(&self, name: &str) -> Result<&NameMap> {
        self.map.get(name).ok_or_else(|| {
            ModelError::tensor(name, format!("not in {}", self.gguf.path().display()))
        })
    }
}

impl TensorSource for GgufSource {
    fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix> {
        let m = self.entry(name)?;
        if m.hf_shape != shape {
            return Err(ModelError::tensor(
                name,
                format!(
                    "maps to a {:?} tensor, the config implies {shape:?}",
                    m.hf_shape
                ),
            ));
        }
        let info = self.gguf.tensor(&m.gguf_name)?;
        let dtype = DType::from_ggml_type(info.ggml_type).ok_or_else(|| {
            ModelError::tensor(
                &m.gguf_name,
                format!("GGUF type {} is not supported", info.type_name()),
            )
        })?;
        let range = m.byte_range(info.len);
        let cols = *shape.last().unwrap_or(&1);
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        Matrix::new(
            self.gguf.storage().clone(),
            info.start + range.start,
            dtype,
            rows,
            cols,
        )
        .map_err(|e| ModelError::tensor(&m.gguf_name, e.to_string()))
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.matrix(name, &[n])?.to_f32_vec())
    }

    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.matrix(name, shape)?.to_f32_vec())
    }
}

impl TextModel {
    /// Loads the text decoder of a Gemma 3n GGUF file (llama.cpp's converter layout).
    pub fn load_gguf(
        path: &Path,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(ModelConfig, TextModel)> {
        let (src, config) = GgufSource::open(path)?;
        let weights = crate::text::TextWeights::load(&src, "", &config.text, progress)?;
        let model = TextModel::new(config.text.clone(), weights);
        Ok((config, model))
    }
}
