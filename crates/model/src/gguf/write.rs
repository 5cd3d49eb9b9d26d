//! The GGUF writer: version 3, metadata in the given order, tensor infos with aligned
//! offsets, then each tensor's bytes produced on demand (so a checkpoint is streamed, never
//! held in memory) and padded to the alignment, as gguf-py's `GGUFWriter` lays them out.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::value::encode_str;
use super::{
    align_up, ggml_type, ggml_type_name, Value, DEFAULT_ALIGNMENT, GGUF_MAGIC, KEY_ALIGNMENT,
    MAX_DIMS,
};
use crate::error::{ModelError, Result};

/// A tensor to be written: name, dims in GGUF order and ggml type.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// GGUF order: `dims[0]` is the contiguous dimension.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dims: Vec<u64>, ggml_type: u32) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dims,
            ggml_type,
        }
    }

    /// From a PyTorch-order shape (reversed into GGUF order).
    pub fn from_shape(name: impl Into<String>, shape: &[usize], ggml_type: u32) -> TensorSpec {
        Self::new(
            name,
            shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
        )
    }

    /// Bytes of data, or an error saying why the dims do not fit the type.
    pub fn nbytes(&self) -> std::result::Result<u64, String> {
        let t = ggml_type(self.ggml_type)
            .ok_or_else(|| format!("unknown ggml type {}", self.ggml_type))?;
        if self.dims.len() > MAX_DIMS {
            return Err(format!("{} dims (at most {MAX_DIMS})", self.dims.len()));
        }
        let row = self.dims.first().copied().unwrap_or(1);
        if row % t.block_size as u64 != 0 {
            return Err(format!(
                "first dim {row} is not a multiple of the {} block size {}",
                t.name, t.block_size
            ));
        }
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| t.bytes_for(n))
            .ok_or_else(|| "size overflows".to_string())
    }
}

/// A tensor with its bytes, for [`write`].
pub struct WriteTensor<'a> {
    pub spec: TensorSpec,
    pub data: Cow<'a, [u8]>,
}

/// Writes a GGUF file whose tensors' bytes are all in memory.
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &[WriteTensor<'_>]) -> Result<()> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|t| t.spec.clone()).collect();
    write_with(path, metadata, &specs, &mut |i, w| {
        w.write_all(&tensors[i].data)
    })
}

/// Writes a GGUF file (version 3). `fill(i, w)` must write exactly the bytes of
/// `tensors[i]` (its [`TensorSpec::nbytes`]); it is called once per tensor, in order.
/// The alignment is `general.alignment` from `metadata` (a u32 power of two) or 32.
/// On error the partial file is removed.
pub fn write_with(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    fill: &mut dyn FnMut(usize, &mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let r = write_inner(path, metadata, tensors, fill);
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

fn write_inner(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    fill: &mut dyn FnMut(usize, &mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let bad = |msg: String| ModelError::file(path, msg);
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut keys = HashSet::new();
    let mut head = Vec::new();
    head.extend_from_slice(GGUF_MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        if !keys.insert(k.as_str()) {
            return Err(bad(format!("metadata key `{k}` given twice")));
        }
        v.check_homogeneous()
            .map_err(|e| bad(format!("metadata `{k}`: {e}")))?;
        if k == KEY_ALIGNMENT {
            match v {
                Value::U32(a) if *a > 0 && a.is_power_of_two() => alignment = *a as u64,
                _ => {
                    return Err(bad(format!(
                        "metadata `{KEY_ALIGNMENT}` is {v}: must be a u32 power of two"
                    )))
                }
            }
        }
        encode_str(k, &mut head);
        head.extend_from_slice(&v.value_type().id().to_le_bytes());
        v.encode(&mut head);
    }
    let mut names = HashSet::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(bad(format!("tensor `{}` given twice", t.name)));
        }
        let n = t.nbytes().map_err(|e| {
            bad(format!(
                "tensor `{}` ({} {:?}): {e}",
                t.name,
                ggml_type_name(t.ggml_type),
                t.dims
            ))
        })?;
        encode_str(&t.name, &mut head);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        sizes.push(n);
        offset = align_up(offset + n, alignment);
    }
    let data_start = align_up(head.len() as u64, alignment);
    head.resize(data_start as usize, 0);

    let f = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut w = Counting {
        inner: std::io::BufWriter::with_capacity(1 << 20, f),
        count: 0,
    };
    let io = |e| ModelError::io(path, e);
    w.write_all(&head).map_err(io)?;
    let zeros = [0u8; 64];
    for (i, t) in tensors.iter().enumerate() {
        let before = w.count;
        fill(i, &mut w).map_err(io)?;
        let wrote = w.count - before;
        if wrote != sizes[i] {
            return Err(bad(format!(
                "tensor `{}`: the producer wrote {wrote} bytes, its {} {:?} data has {}",
                t.name,
                ggml_type_name(t.ggml_type),
                t.dims,
                sizes[i]
            )));
        }
        let mut pad = align_up(w.count, alignment) - w.count;
        while pad > 0 {
            let n = pad.min(zeros.len() as u64);
            w.write_all(&zeros[..n as usize]).map_err(io)?;
            pad -= n;
        }
    }
    w.flush().map_err(io)?;
    Ok(())
}

struct Counting<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
