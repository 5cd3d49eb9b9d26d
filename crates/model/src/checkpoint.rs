//! A checkpoint directory in the Hugging Face layout: config.json, generation_config.json,
//! tokenizer files and safetensors weights (one file, or shards listed in
//! model.safetensors.index.json).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gemma3n_compute::Matrix;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::safetensors::{SafeTensors, StDType, TensorInfo};

/// All safetensors files of a checkpoint, with a name -> file index.
pub struct WeightFiles {
    files: Vec<SafeTensors>,
    index: BTreeMap<String, usize>,
}

impl WeightFiles {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<WeightFiles> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::file(&index_path, format!("malformed JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::file(&index_path, "missing object `weight_map`"))?;
            let mut shard_names: Vec<String> = Vec::new();
            for (name, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    ModelError::file(
                        &index_path,
                        format!("weight_map entry `{name}` is not a file name"),
                    )
                })?;
                if !shard_names.iter().any(|s| s == f) {
                    shard_names.push(f.to_string());
                }
            }
            shard_names.sort();
            let mut files = Vec::new();
            for s in &shard_names {
                if s.contains('/') || s.contains("..") {
                    return Err(ModelError::file(
                        &index_path,
                        format!("shard name `{s}` is not a plain file name"),
                    ));
                }
                let p = dir.join(s);
                if !p.exists() {
                    return Err(ModelError::file(
                        &p,
                        "shard listed in model.safetensors.index.json is missing",
                    ));
                }
                files.push(SafeTensors::open(&p)?);
            }
            let mut ws = Self::from_files(files)?;
            // Every entry of the weight map must be where the map says.
            for (name, f) in map {
                let shard = f.as_str().unwrap_or_default();
                match ws.index.get(name) {
                    Some(&i) if ws.files[i].path().file_name().is_some_and(|n| n == shard) => {}
                    _ => {
                        return Err(ModelError::file(
                            dir.join(shard),
                            format!("tensor `{name}` listed in the index is not in this shard"),
                        ))
                    }
                }
            }
            ws.files.shrink_to_fit();
            Ok(ws)
        } else if single.exists() {
            Self::from_files(vec![SafeTensors::open(&single)?])
        } else {
            Err(ModelError::file(
                dir,
                "no weights: neither model.safetensors nor model.safetensors.index.json exists",
            ))
        }
    }

    pub fn from_files(files: Vec<SafeTensors>) -> Result<WeightFiles> {
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.tensors().keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(ModelError::tensor(
                        name,
                        format!(
                            "present in both {} and {}",
                            files[prev].path().display(),
                            f.path().display()
                        ),
                    ));
                }
            }
        }
        Ok(WeightFiles { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.files[i].info(name))
    }

    fn file(&self, name: &str) -> Result<&SafeTensors> {
        self.index
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| ModelError::tensor(name, "missing from the checkpoint"))
    }

    /// Raw bytes of a tensor (in place).
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        self.file(name)?.bytes(name)
    }

    /// A float tensor whose shape must equal `shape`, viewed as `rows x cols`
    /// (`rows` = product of all but the last dim).
    pub fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix> {
        let f = self.file(name)?;
        let info = f.info(name).expect("indexed");
        check_shape(name, info, shape)?;
        let cols = *shape.last().unwrap_or(&1);
        let rows = shape[..shape.len().saturating_sub(1)].iter().product();
        f.matrix(name, rows, cols)
    }

    /// A float vector of length `n`, converted to f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let f = self.file(name)?;
        check_shape(name, f.info(name).expect("indexed"), &[n])?;
        f.read_f32(name)
    }

    /// A float tensor of `shape`, converted to f32 and flattened.
    pub fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let f = self.file(name)?;
        check_shape(name, f.info(name).expect("indexed"), shape)?;
        f.read_f32(name)
    }
}

/// Where the text decoder's weights come from: safetensors files or a GGUF file. Names
/// are HF names (with the source's prefix already applied by the caller for safetensors).
pub trait TensorSource {
    /// A float or block-format tensor of exactly `shape`, as a matrix (rows = all but the
    /// last dim), in place where possible.
    fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix>;
    /// A vector of length `n`, converted to f32.
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>>;
    /// A tensor of `shape`, converted to f32 and flattened.
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

impl TensorSource for WeightFiles {
    fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix> {
        WeightFiles::matrix(self, name, shape)
    }
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        WeightFiles::vector(self, name, n)
    }
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        WeightFiles::f32_tensor(self, name, shape)
    }
}

fn check_shape(name: &str, info: &TensorInfo, shape: &[usize]) -> Result<()> {
    if !matches!(info.dtype, StDType::Float(_)) {
        return Err(ModelError::tensor(
            name,
            format!(
                "dtype {} is not supported (expected BF16, F16 or F32)",
                info.dtype_name
            ),
        ));
    }
    if info.shape != shape {
        return Err(ModelError::tensor(
            name,
            format!("has shape {:?}, the config implies {:?}", info.shape, shape),
        ));
    }
    Ok(())
}

/// A checkpoint directory: its config and weight files.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: WeightFiles,
    /// Prefix of the text decoder's tensors (`model.language_model.` or `model.`).
    pub text_prefix: String,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(ModelError::file(
                dir,
                "model directory does not exist (or is not a directory)",
            ));
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(ModelError::file(
                &cfg_path,
                "missing (every checkpoint needs config.json)",
            ));
        }
        let config = ModelConfig::from_file(&cfg_path)?;
        let weights = WeightFiles::open_dir(dir)?;
        let text_prefix = ["model.language_model.", "model.", ""]
            .into_iter()
            .find(|p| weights.contains(&format!("{p}embed_tokens.weight")))
            .ok_or_else(|| {
                ModelError::tensor(
                    "model.language_model.embed_tokens.weight",
                    format!("no text embedding table in {} (looked for the multimodal and text-only names)", dir.display()),
                )
            })?
            .to_string();
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            weights,
            text_prefix,
        })
    }

    /// Path of a file beside the weights, if it exists.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let p = self.dir.join(name);
        p.exists().then_some(p)
    }
}
