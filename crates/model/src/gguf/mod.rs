//! GGUF files (llama.cpp's container), versions 2 and 3, little-endian: a memory-mapped
//! reader that validates every count, offset and size against the file, and a streaming
//! writer ([`write`]).
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count; the metadata
//! key/values (key: u64-length string, u32 type, value); the tensor infos (name, u32 n_dims,
//! n_dims x u64 dims in ggml order — `dims[0]` is the contiguous one, the reverse of a
//! PyTorch shape — u32 ggml type, u64 offset relative to the data section); padding to the
//! alignment (`general.alignment`, default 32); the data section, each tensor at an aligned
//! offset.
//!
//! The Gemma 3n names and metadata are in [`gemma3n`].

pub mod gemma3n;
mod ggml;
mod source;
mod value;
mod write;

pub use source::GgufSource;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gemma3n_compute::storage::{AlignedBytes, Storage};
use gemma3n_compute::{DType, Matrix};

pub use ggml::{
    dtype_to_ggml_type, ggml_type, ggml_type_name, ggml_type_to_dtype, GgmlType, GGML_BF16,
    GGML_F16, GGML_F32, GGML_TYPES, Q4_0, Q4_K, Q5_K, Q6_K, Q8_0,
};
pub use value::{Value, ValueType};
pub use write::{write, write_with, TensorSpec, WriteTensor};

use crate::error::{ModelError, Result};
use value::Cursor;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const KEY_ALIGNMENT: &str = "general.alignment";
pub const KEY_ARCHITECTURE: &str = "general.architecture";
/// ggml's limit on tensor rank.
pub const MAX_DIMS: usize = 4;

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF/ggml order (`dims[0]` varies fastest).
    pub dims: Vec<u64>,
    /// ggml type id (see [`ggml_type`]).
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section, as stored.
    pub offset: u64,
    /// Offset of the data from the start of the file.
    pub start: usize,
    /// Bytes of data.
    pub len: usize,
}

impl TensorInfo {
    /// The PyTorch-order shape (dims reversed: the last entry is the contiguous one).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The compute dtype of the tensor, or an error naming the tensor and its type.
    pub fn dtype(&self) -> Result<DType> {
        ggml_type_to_dtype(self.ggml_type)
            .map_err(|e| ModelError::tensor(&self.name, e.to_string()))
    }

    pub fn type_name(&self) -> String {
        ggml_type_name(self.ggml_type)
    }
}

/// A memory-mapped GGUF file with validated header, metadata and tensor infos.
pub struct Gguf {
    path: PathBuf,
    storage: Arc<Storage>,
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf> {
        let storage = Storage::open_file(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_storage(path, Arc::new(storage))
    }

    /// Parses a GGUF image held in memory (`path` is only used in error messages).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Gguf> {
        Self::from_storage(
            path,
            Arc::new(Storage::Owned(AlignedBytes::from_bytes(bytes))),
        )
    }

    fn from_storage(path: &Path, storage: Arc<Storage>) -> Result<Gguf> {
        let h = parse(storage.bytes()).map_err(|msg| ModelError::file(path, msg))?;
        let meta_index = h
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = h
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Gguf {
            path: path.to_path_buf(),
            storage,
            version: h.version,
            alignment: h.alignment,
            data_start: h.data_start,
            metadata: h.metadata,
            meta_index,
            tensors: h.tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section from the start of the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// All metadata key/values in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn meta_err(&self, key: &str, msg: impl std::fmt::Display) -> ModelError {
        ModelError::file(&self.path, format!("metadata `{key}`: {msg}"))
    }

    /// A non-negative integer value (any integer type), `None` if absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.meta_err(key, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    /// A numeric value as f64, `None` if absent.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("expected a number, got {v}"))),
        }
    }

    /// A string value, `None` if absent.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("expected a string, got {v}"))),
        }
    }

    /// An array value, `None` if absent.
    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("expected an array, got {v}"))),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str(KEY_ARCHITECTURE)?
            .ok_or_else(|| self.meta_err(KEY_ARCHITECTURE, "missing"))
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    /// A tensor's info, or an error naming the tensor and this file.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.info(name).ok_or_else(|| {
            ModelError::tensor(name, format!("not found in {}", self.path.display()))
        })
    }

    /// Raw bytes of a tensor (any ggml type), in place.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        Ok(&self.storage.bytes()[t.start..t.start + t.len])
    }

    /// A float tensor (F32/F16/BF16) viewed in place as `rows x cols`, where
    /// `rows * cols` must equal its element count.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let t = self.tensor(name)?;
        let dt = t.dtype()?;
        if (rows as u64).checked_mul(cols as u64) != Some(t.n_elements()) {
            return Err(ModelError::tensor(
                name,
                format!(
                    "has GGUF dims {:?} ({} elements), cannot be viewed as [{rows}, {cols}]",
                    t.dims,
                    t.n_elements()
                ),
            ));
        }
        let m = if t.start % dt.size() == 0 {
            Matrix::new(self.storage.clone(), t.start, dt, rows, cols)
        } else {
            let b = AlignedBytes::from_bytes(self.tensor_bytes(name)?);
            Ok(Matrix::owned(b, dt, rows, cols))
        };
        m.map_err(|e| ModelError::tensor(name, e.to_string()))
    }

    /// A float tensor converted to f32, flattened in file order.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let dt = t.dtype()?;
        Ok(bytes_to_f32(self.tensor_bytes(name)?, dt))
    }
}

/// Little-endian float bytes of `dt` to f32.
pub fn bytes_to_f32(b: &[u8], dt: DType) -> Vec<f32> {
    use gemma3n_compute::dtype::{bf16_to_f32, f16_to_f32};
    #[allow(unreachable_patterns)]
    match dt {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        _ => Vec::new(),
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn parse(data: &[u8]) -> std::result::Result<Header, String> {
    if data.len() < 24 {
        return Err(format!(
            "not a GGUF file: {} bytes, shorter than the 24-byte header",
            data.len()
        ));
    }
    if &data[..4] != GGUF_MAGIC {
        return Err(format!(
            "not a GGUF file: magic is {:?}, expected \"GGUF\"",
            String::from_utf8_lossy(&data[..4])
        ));
    }
    let mut c = Cursor { data, pos: 4 };
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (only 2 and 3)".into()),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err("big-endian GGUF files are not supported".into())
        }
        v => return Err(format!("unsupported GGUF version {v} (only 2 and 3)")),
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at
    // least 8 + 4 + 4 + 8; bound the counts before allocating.
    if n_kv.saturating_mul(13) > c.remaining() as u64 {
        return Err(format!(
            "truncated or corrupt: header claims {n_kv} metadata entries, the file has only {} bytes",
            data.len()
        ));
    }
    if n_tensors.saturating_mul(24) > c.remaining() as u64 {
        return Err(format!(
            "truncated or corrupt: header claims {n_tensors} tensors, the file has only {} bytes",
            data.len()
        ));
    }
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_kv {
        let key = c.string(&format!("key of metadata entry {i}"))?;
        let at = c.pos;
        let tid = c.u32(&format!("type of metadata `{key}`"))?;
        let t = ValueType::from_id(tid)
            .ok_or_else(|| format!("metadata `{key}`: unknown value type {tid} at byte {at}"))?;
        let v = c.value(t, &format!("metadata `{key}`"))?;
        if !seen.insert(key.clone()) {
            return Err(format!("metadata key `{key}` appears twice"));
        }
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(format!(
                "metadata `{KEY_ALIGNMENT}` is {v}: must be a u32 power of two"
            ))
        }
    };
    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor {i}"))?;
        let what = format!("tensor `{name}`");
        let n_dims = c.u32(&what)? as usize;
        if n_dims > MAX_DIMS {
            return Err(format!("{what}: {n_dims} dimensions (at most {MAX_DIMS})"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let ty = c.u32(&what)?;
        let offset = c.u64(&what)?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        raw.push((name, dims, ty, offset));
    }
    let data_start = align_up(c.pos as u64, alignment);
    let file_len = data.len() as u64;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raw.len());
    for (name, dims, ty, offset) in raw {
        let what = format!("tensor `{name}`");
        let gt = ggml_type(ty).ok_or_else(|| format!("{what}: unknown ggml type {ty}"))?;
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("{what}: dims {dims:?} overflow"))?;
        let row = dims.first().copied().unwrap_or(1);
        if row % gt.block_size as u64 != 0 {
            return Err(format!(
                "{what}: first dim {row} is not a multiple of the {} block size {}",
                gt.name, gt.block_size
            ));
        }
        let len = gt
            .bytes_for(numel)
            .ok_or_else(|| format!("{what}: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "{what}: data offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => tensors.push(TensorInfo {
                name,
                dims,
                ggml_type: ty,
                offset,
                start: s as usize,
                len: len as usize,
            }),
            _ => {
                return Err(format!(
                    "truncated: {what} ({} {dims:?}) needs bytes {}..{} of the file, which has only {file_len} bytes",
                    gt.name,
                    data_start.saturating_add(offset),
                    data_start.saturating_add(offset).saturating_add(len),
                ))
            }
        }
    }
    // Tensor data must not overlap.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].start);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.start + a.len > b.start {
            return Err(format!(
                "corrupt: the data of tensor `{}` (bytes {}..{}) overlaps tensor `{}` (from byte {})",
                a.name,
                a.start,
                a.start + a.len,
                b.name,
                b.start
            ));
        }
    }
    Ok(Header {
        version,
        alignment,
        data_start: data_start.min(file_len) as usize,
        metadata,
        tensors,
    })
}
