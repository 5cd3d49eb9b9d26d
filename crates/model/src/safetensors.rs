//! safetensors files: a memory-mapped reader that validates every header entry against
//! the file, and a small writer (f32 / i64 tensors and raw weights).
//!
//! Layout: u64 little-endian header length N, N bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`,
//! then the data; offsets are relative to the end of the header.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gemma3n_compute::storage::{AlignedBytes, Storage};
use gemma3n_compute::{DType, Matrix};

use crate::error::{ModelError, Result};

/// Element type of a safetensors entry (the float ones map to compute's `DType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StDType {
    Float(DType),
    I64,
    I32,
    Other,
}

impl StDType {
    fn parse(s: &str) -> StDType {
        if let Some(d) = DType::from_safetensors(s) {
            return StDType::Float(d);
        }
        match s {
            "I64" => StDType::I64,
            "I32" => StDType::I32,
            _ => StDType::Other,
        }
    }
    fn size(self, name: &str) -> usize {
        match self {
            StDType::Float(d) => d.size(),
            StDType::I64 => 8,
            StDType::I32 => 4,
            // Other types (U8, BOOL, F64, ...) are sized from their name.
            StDType::Other => match name {
                "F64" | "U64" => 8,
                "U32" => 4,
                "I16" | "U16" => 2,
                _ => 1,
            },
        }
    }
}

/// One tensor entry of a safetensors file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: StDType,
    pub dtype_name: String,
    pub shape: Vec<usize>,
    /// Byte offset of the data from the start of the file.
    pub start: usize,
    pub len: usize,
}

/// A memory-mapped safetensors file with a validated header.
pub struct SafeTensors {
    path: PathBuf,
    storage: Arc<Storage>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl SafeTensors {
    pub fn open(path: &Path) -> Result<SafeTensors> {
        let storage = Storage::open_file(path).map_err(|e| ModelError::io(path, e))?;
        let tensors = parse_header(path, storage.bytes())?;
        Ok(SafeTensors {
            path: path.to_path_buf(),
            storage: Arc::new(storage),
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Raw bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.get(name)?;
        Ok(&self.storage.bytes()[info.start..info.start + info.len])
    }

    fn get(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| {
            ModelError::tensor(name, format!("not found in {}", self.path.display()))
        })
    }

    /// A float tensor of any rank viewed as a `rows x cols` matrix in place (copied to an
    /// aligned buffer only if the file's data is misaligned for its dtype).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let info = self.get(name)?;
        let StDType::Float(dt) = info.dtype else {
            return Err(ModelError::tensor(
                name,
                format!(
                    "dtype {} is not a float type (F32, F16, BF16)",
                    info.dtype_name
                ),
            ));
        };
        if info.len != rows * cols * dt.size() {
            return Err(ModelError::tensor(
                name,
                format!("has shape {:?}, expected [{rows}, {cols}]", info.shape),
            ));
        }
        let m = if info.start % dt.size() == 0 {
            Matrix::new(self.storage.clone(), info.start, dt, rows, cols)
        } else {
            let bytes = AlignedBytes::from_bytes(self.bytes(name)?);
            Ok(Matrix::owned(bytes, dt, rows, cols))
        };
        m.map_err(|e| ModelError::tensor(name, e.to_string()))
    }

    /// A float tensor converted to f32 (any rank, flattened).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.get(name)?;
        let n: usize = info.shape.iter().product();
        self.matrix(name, 1, n).map(|m| m.to_f32_vec())
    }

    /// An integer tensor (I64 or I32) as i64 (any rank, flattened).
    pub fn read_i64(&self, name: &str) -> Result<Vec<i64>> {
        let info = self.get(name)?;
        let b = self.bytes(name)?;
        match info.dtype {
            StDType::I64 => Ok(b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()),
            StDType::I32 => Ok(b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect()),
            _ => Err(ModelError::tensor(
                name,
                format!("dtype {} is not an integer type", info.dtype_name),
            )),
        }
    }
}

fn parse_header(path: &Path, data: &[u8]) -> Result<BTreeMap<String, TensorInfo>> {
    let bad = |msg: String| ModelError::file(path, msg);
    if data.len() < 8 {
        return Err(bad(format!(
            "not a safetensors file: {} bytes, shorter than the 8-byte header length",
            data.len()
        )));
    }
    let n = u64::from_le_bytes(data[..8].try_into().unwrap());
    if n > (data.len() - 8) as u64 {
        return Err(bad(format!(
            "truncated or not a safetensors file: header length {n} exceeds the file size {}",
            data.len()
        )));
    }
    let n = n as usize;
    let header: serde_json::Value = serde_json::from_slice(&data[8..8 + n])
        .map_err(|e| bad(format!("malformed safetensors header JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| bad("safetensors header is not a JSON object".into()))?;
    let base = 8 + n;
    let avail = data.len() - base;
    let mut out = BTreeMap::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let entry_err = |msg: &str| bad(format!("tensor `{name}`: {msg}"));
        let dtype_name = v["dtype"]
            .as_str()
            .ok_or_else(|| entry_err("missing dtype"))?
            .to_string();
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .ok_or_else(|| entry_err("missing shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| entry_err("shape is not a list of integers"))?;
        let offs = v["data_offsets"]
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| entry_err("data_offsets is not [begin, end]"))?;
        let dtype = StDType::parse(&dtype_name);
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| entry_err("shape overflows"))?;
        let want = numel
            .checked_mul(dtype.size(&dtype_name))
            .ok_or_else(|| entry_err("size overflows"))?;
        if offs.1 < offs.0 || offs.1 - offs.0 != want {
            return Err(entry_err(&format!(
                "data_offsets {:?} hold {} bytes, but shape {:?} of {dtype_name} needs {want}",
                offs,
                offs.1.saturating_sub(offs.0),
                shape
            )));
        }
        if offs.1 > avail {
            return Err(bad(format!(
                "truncated: tensor `{name}` ends at byte {} of the data section, which has only {avail} bytes",
                offs.1
            )));
        }
        out.insert(
            name.clone(),
            TensorInfo {
                dtype,
                dtype_name,
                shape,
                start: base + offs.0,
                len: want,
            },
        );
    }
    Ok(out)
}

/// A tensor to write: a name, a dtype string, a shape and its little-endian bytes.
pub struct WriteTensor<'a> {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> WriteTensor<'a> {
    pub fn f32(name: &str, shape: Vec<usize>, v: &[f32]) -> WriteTensor<'a> {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        WriteTensor {
            name: name.into(),
            dtype: "F32",
            shape,
            data: data.into(),
        }
    }
    pub fn i64(name: &str, shape: Vec<usize>, v: &[i64]) -> WriteTensor<'a> {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        WriteTensor {
            name: name.into(),
            dtype: "I64",
            shape,
            data: data.into(),
        }
    }
}

/// Writes a safetensors file (tensors in the given order, header padded to 8 bytes).
pub fn write(path: &Path, tensors: &[WriteTensor<'_>]) -> Result<()> {
    let entries: Vec<Entry> = tensors
        .iter()
        .map(|t| Entry {
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
            len: t.data.len(),
        })
        .collect();
    write_with(path, &entries, &mut |i, w| w.write_all(&tensors[i].data))
}

/// Header entry of a tensor to be written by [`write_with`].
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Bytes of data.
    pub len: usize,
}

/// Writes a safetensors file whose tensor data is produced one tensor at a time by
/// `fill(index, writer)` (which must write exactly `entries[index].len` bytes), so large
/// checkpoints are streamed rather than held in memory.
pub fn write_with(
    path: &Path,
    entries: &[Entry],
    fill: &mut dyn FnMut(usize, &mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for t in entries {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + t.len]}),
        );
        off += t.len;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| ModelError::file(path, e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let f = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut w = CountingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, f),
        count: 0,
    };
    let io = |e| ModelError::io(path, e);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    let mut expect = w.count;
    for (i, t) in entries.iter().enumerate() {
        fill(i, &mut w).map_err(io)?;
        expect += t.len;
        if w.count != expect {
            return Err(ModelError::file(
                path,
                format!(
                    "internal: tensor `{}` wrote {} bytes, header says {}",
                    t.name,
                    w.count + t.len - expect,
                    t.len
                ),
            ));
        }
    }
    w.flush().map_err(io)?;
    Ok(())
}

struct CountingWriter<W: Write> {
    inner: W,
    count: usize,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
