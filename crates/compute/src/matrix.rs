//! `Matrix`: a 2-D weight in its stored dtype, viewed in place.
//!
//! Row r of a matrix with `rows x cols` elements starts `r * row_stride` elements after
//! `offset` bytes into its storage. A row prefix (the first n rows) and a column prefix
//! (the first n columns of every row) are views of the same bytes: this is how MatFormer
//! slices use the nested FFNs without copying.
//!
//! Block formats (Q8_0, Q4_K, ...) are matrices like any other: a row holds `cols / block`
//! blocks, `row_stride` (in elements) is a multiple of the block size, and a column prefix
//! must end on a block boundary.
//!
//! A Q8_0 or Q4_K matrix may also be stored with its rows interleaved in groups of eight
//! ([`Layout::Q8_0x8`], [`Layout::Q4_Kx8`], made by [`Matrix::interleave8`]): the CPU's
//! decode kernels then read one contiguous stream per eight rows and combine the eight rows'
//! sums in one vector. The values are the same; only the byte order differs.

use std::borrow::Cow;
use std::sync::Arc;

use crate::dtype::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, DType};
use crate::storage::{AlignedBytes, Storage};
use crate::ComputeError;

/// How the rows of a matrix are arranged in its storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Layout {
    /// Row after row, `row_stride` elements apart: the layout of every file format.
    Rows,
    /// Q8_0 rows in groups of eight, `8 * row_stride / 32` blocks of 272 bytes a group
    /// ([`Q8X8_GROUP_BLOCK`]). Block `b` of a group holds the group's eight f16 scales of
    /// block `b` (row `r` of the group in slot [`Q8X8_SLOT`]`[r]`), then the 32 values of
    /// each row as four chunks of 8: chunk `c` of row `r` at byte `16 + 64 c + 8 r`.
    Q8_0x8,
    /// Q4_K rows in groups of eight, `row_stride / 256` super-blocks of 1184 bytes a group
    /// ([`Q4KX8_GROUP_BLOCK`]). Super-block `b` of a group holds the eight rows' f16 `d`
    /// (bytes 0..16) and `dmin` (16..32), both in slot order ([`Q8X8_SLOT`]); the 6-bit
    /// scales unpacked to bytes, sub-block `s` of row `r` at `32 + 8 s + r`; the mins unpacked,
    /// sub-blocks `2 p` and `2 p + 1` of row `r` at `96 + 16 p + 2 slot(r)` and the byte
    /// after; then the 4-bit values: bytes `32 c + 8 q .. + 8` of row `r`'s 128 at
    /// `160 + 64 (4 c + q) + 8 r`.
    Q4_Kx8,
}

/// Bytes of one super-block column of an interleaved Q4_K group (8 x 144 in the file, the
/// scales and mins unpacked to a byte each: 32 more).
pub const Q4KX8_GROUP_BLOCK: usize = 32 + 64 + 64 + 8 * 128;

/// Bytes of one block column of an interleaved group: 8 scales and 8 x 32 values.
pub const Q8X8_GROUP_BLOCK: usize = 16 + 8 * 32;

/// Scale slot of each row of an interleaved group. The slot order 0,1,4,5,2,3,6,7 is the
/// order of the eight row sums after the kernel's pairwise horizontal add of rows 0-3 and
/// 4-7 (`_mm256_hadd_epi32` works within 128-bit lanes), so that the scales line up with
/// the sums without a shuffle. The map is its own inverse.
pub const Q8X8_SLOT: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

/// Where row `r` (0..8) of an interleaved Q8_0 group keeps the bytes of its file block:
/// `(offset in the group block, offset in the 34-byte file block, length)`. The scale comes
/// first, then the four 8-value chunks.
fn q8x8_pieces(r: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let scale = (2 * Q8X8_SLOT[r], 0, 2);
    std::iter::once(scale).chain((0..4).map(move |c| (16 + 64 * c + 8 * r, 2 + 8 * c, 8)))
}

/// The same for Q4_K's 144-byte super-block: `d`, `dmin`, then the sixteen 8-byte pieces of
/// 4-bit values. The 12 bytes of packed scales and mins are stored unpacked (see
/// [`Layout::Q4_Kx8`]), not copied.
fn q4kx8_pieces(r: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let slot = Q8X8_SLOT[r];
    [(2 * slot, 0, 2), (16 + 2 * slot, 2, 2)]
        .into_iter()
        .chain((0..16).map(move |cq| (160 + 64 * cq + 8 * r, 16 + 8 * cq, 8)))
}

#[derive(Clone)]
pub struct Matrix {
    storage: Arc<Storage>,
    offset: usize,
    dtype: DType,
    rows: usize,
    cols: usize,
    row_stride: usize,
    layout: Layout,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Matrix({} x {}, {}, stride {}, {:?})",
            self.rows, self.cols, self.dtype, self.row_stride, self.layout
        )
    }
}

impl Matrix {
    /// A dense row-major matrix at `offset` bytes into `storage`.
    pub fn new(
        storage: Arc<Storage>,
        offset: usize,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, ComputeError> {
        let bs = dtype.block_size();
        if !cols.is_multiple_of(bs) {
            return Err(ComputeError::Invalid(format!(
                "matrix of {rows}x{cols} {dtype}: {cols} columns is not a whole number of \
                 {bs}-element blocks"
            )));
        }
        let need = rows
            .checked_mul(cols / bs)
            .and_then(|n| n.checked_mul(dtype.block_bytes()))
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(|| ComputeError::Invalid("matrix size overflows".into()))?;
        if need > storage.len() {
            return Err(ComputeError::Invalid(format!(
                "matrix of {rows}x{cols} {dtype} at byte {offset} needs {need} bytes, storage has {}",
                storage.len()
            )));
        }
        // Block formats are read with unaligned loads; float elements must be aligned.
        if !dtype.is_quantized() && !offset.is_multiple_of(dtype.size()) {
            return Err(ComputeError::Invalid(format!(
                "matrix data at byte {offset} is not aligned to its {dtype} elements"
            )));
        }
        Ok(Matrix {
            storage,
            offset,
            dtype,
            rows,
            cols,
            row_stride: cols,
            layout: Layout::Rows,
        })
    }

    /// An owned f32 matrix.
    pub fn from_f32(data: &[f32], rows: usize, cols: usize) -> Matrix {
        assert_eq!(data.len(), rows * cols, "from_f32: data length");
        let mut b = AlignedBytes::zeroed(data.len() * 4);
        for (c, v) in b.as_mut_slice().chunks_exact_mut(4).zip(data) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        Self::owned(b, DType::F32, rows, cols)
    }

    /// An owned matrix of `dtype` holding `data` rounded (float types) or quantized (block
    /// formats; `cols` must be a multiple of the block size) to that dtype.
    pub fn from_f32_as(data: &[f32], rows: usize, cols: usize, dtype: DType) -> Matrix {
        match dtype {
            q if q.is_quantized() => {
                assert_eq!(data.len(), rows * cols, "from_f32_as: data length");
                let rb = q.row_bytes(cols);
                let mut b = AlignedBytes::zeroed(rows * rb);
                if rb > 0 {
                    quantize_rows(q, data, cols, b.as_mut_slice());
                }
                Self::owned(b, q, rows, cols)
            }
            DType::F32 => Self::from_f32(data, rows, cols),
            _ => {
                assert_eq!(data.len(), rows * cols, "from_f32_as: data length");
                let mut b = AlignedBytes::zeroed(data.len() * 2);
                for (c, &v) in b.as_mut_slice().chunks_exact_mut(2).zip(data) {
                    let bits = if dtype == DType::BF16 {
                        f32_to_bf16(v)
                    } else {
                        f32_to_f16(v)
                    };
                    c.copy_from_slice(&bits.to_le_bytes());
                }
                Self::owned(b, dtype, rows, cols)
            }
        }
    }

    /// An owned matrix over raw little-endian bytes of `dtype`.
    pub fn owned(bytes: AlignedBytes, dtype: DType, rows: usize, cols: usize) -> Matrix {
        assert_eq!(
            bytes.as_slice().len(),
            rows * dtype.row_bytes(cols),
            "owned: byte length"
        );
        Matrix {
            storage: Arc::new(Storage::Owned(bytes)),
            offset: 0,
            dtype,
            rows,
            cols,
            row_stride: cols,
            layout: Layout::Rows,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Elements between the starts of consecutive rows.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
    /// How the rows are arranged in storage.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Bytes a full pass over the matrix reads.
    pub fn nbytes(&self) -> usize {
        self.rows * self.dtype.row_bytes(self.cols)
    }

    /// Bytes between the starts of consecutive rows ([`Layout::Rows`]; for
    /// [`Layout::Q8_0x8`], an eighth of [`Matrix::group_stride_bytes`]).
    #[inline]
    pub fn row_stride_bytes(&self) -> usize {
        self.dtype.row_bytes(self.row_stride)
    }

    /// Bytes between the starts of consecutive groups of eight rows (interleaved layouts).
    #[inline]
    pub fn group_stride_bytes(&self) -> usize {
        match self.layout {
            Layout::Q4_Kx8 => self.row_stride / 256 * Q4KX8_GROUP_BLOCK,
            _ => 8 * self.row_stride_bytes(),
        }
    }

    /// A copy with the rows interleaved in groups of eight ([`Layout::Q8_0x8`] or
    /// [`Layout::Q4_Kx8`]), for a Q8_0 or Q4_K matrix in [`Layout::Rows`]; `None` otherwise.
    /// The copy is packed (its row stride is `cols`); a last partial group is padded with
    /// zero rows, which no view reads.
    pub fn interleave8(&self) -> Option<Matrix> {
        if self.layout != Layout::Rows || self.rows == 0 {
            return None;
        }
        match self.dtype {
            DType::Q8_0 => Some(self.interleave_q8_0()),
            DType::Q4_K => Some(self.interleave_q4_k()),
            _ => None,
        }
    }

    /// Releases the memory-mapped pages of this view's bytes from the process's resident set
    /// ([`Storage::release`]): for a matrix that has been copied into another layout and is
    /// no longer read. Nothing for owned storage.
    pub fn release_mapped_pages(&self) {
        let span = match self.layout {
            Layout::Rows => self.rows * self.row_stride_bytes(),
            _ => self.rows.div_ceil(8) * self.group_stride_bytes(),
        };
        self.storage.release(self.offset, span);
    }

    /// An owned interleaved matrix over `bytes`.
    fn interleaved(&self, bytes: AlignedBytes, layout: Layout) -> Matrix {
        Matrix {
            storage: Arc::new(Storage::Owned(bytes)),
            offset: 0,
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.cols,
            layout,
        }
    }

    /// The owned interleaved copy: the file's blocks of `block` bytes (`cols / per_block`
    /// a row) rearranged by `put(r, slot, block, out)` into group block columns of `group`
    /// bytes, row `r` of each group (scale slot `slot`) at a time.
    fn interleave_with(
        &self,
        per_block: usize,
        block: usize,
        group: usize,
        layout: Layout,
        put: impl Fn(usize, usize, &[u8], &mut [u8]) + Sync,
    ) -> Matrix {
        use rayon::prelude::*;
        let bytes_per_group = self.cols / per_block * group;
        let mut bytes = AlignedBytes::zeroed(self.rows.div_ceil(8) * bytes_per_group);
        if bytes_per_group > 0 {
            bytes
                .as_mut_slice()
                .par_chunks_mut(bytes_per_group)
                .enumerate()
                .for_each(|(g, out)| {
                    let present = 8.min(self.rows - 8 * g);
                    for (r, &slot) in Q8X8_SLOT.iter().enumerate().take(present) {
                        let row = self.row_bytes(8 * g + r);
                        for (blk, o) in row.chunks_exact(block).zip(out.chunks_exact_mut(group)) {
                            put(r, slot, blk, o);
                        }
                    }
                });
        }
        self.interleaved(bytes, layout)
    }

    fn interleave_q4_k(&self) -> Matrix {
        self.interleave_with(
            256,
            144,
            Q4KX8_GROUP_BLOCK,
            Layout::Q4_Kx8,
            |r, slot, blk, o| {
                for (at, from, len) in q4kx8_pieces(r) {
                    o[at..at + len].copy_from_slice(&blk[from..from + len]);
                }
                let (sc, m) = crate::quant::unpack_scales_mins(&blk[4..16]);
                for sb in 0..8 {
                    o[32 + 8 * sb + r] = sc[sb];
                    o[96 + 16 * (sb / 2) + 2 * slot + sb % 2] = m[sb];
                }
            },
        )
    }

    fn interleave_q8_0(&self) -> Matrix {
        self.interleave_with(32, 34, Q8X8_GROUP_BLOCK, Layout::Q8_0x8, |r, _, blk, o| {
            for (at, from, len) in q8x8_pieces(r) {
                o[at..at + len].copy_from_slice(&blk[from..from + len]);
            }
        })
    }

    /// Row `r`'s blocks in the file layout: borrowed for [`Layout::Rows`], gathered from its
    /// group for the interleaved layouts.
    pub fn row_blocks(&self, r: usize) -> Cow<'_, [u8]> {
        if self.layout == Layout::Rows {
            return Cow::Borrowed(self.row_bytes(r));
        }
        let g = self.group_of(r);
        let (i, slot) = (r % 8, Q8X8_SLOT[r % 8]);
        let (bs, group) = match self.layout {
            Layout::Q4_Kx8 => (144, Q4KX8_GROUP_BLOCK),
            _ => (34, Q8X8_GROUP_BLOCK),
        };
        let mut row = vec![0u8; self.dtype.row_bytes(self.cols)];
        for (blk, src) in row.chunks_exact_mut(bs).zip(g.chunks(group)) {
            if self.layout == Layout::Q4_Kx8 {
                for (at, to, len) in q4kx8_pieces(i) {
                    blk[to..to + len].copy_from_slice(&src[at..at + len]);
                }
                let sc: [u8; 8] = std::array::from_fn(|sb| src[32 + 8 * sb + i]);
                let m: [u8; 8] =
                    std::array::from_fn(|sb| src[96 + 16 * (sb / 2) + 2 * slot + sb % 2]);
                blk[4..16].copy_from_slice(&crate::quant::pack_scales_mins(&sc, &m));
            } else {
                for (at, to, len) in q8x8_pieces(i) {
                    blk[to..to + len].copy_from_slice(&src[at..at + len]);
                }
            }
        }
        Cow::Owned(row)
    }

    /// The bytes of the group holding row `r` of an interleaved matrix, from its start on.
    fn group_of(&self, r: usize) -> &[u8] {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        &self.storage.bytes()[self.offset + (r / 8) * self.group_stride_bytes()..]
    }

    /// This matrix converted to `dtype`: quantized to a block format, or rounded / widened to
    /// a float type (block formats are dequantized first). Always a new owned matrix.
    pub fn quantize(&self, dtype: DType) -> Matrix {
        Matrix::from_f32_as(&self.to_f32_vec(), self.rows, self.cols, dtype)
    }

    /// The first `n` rows (no copy).
    pub fn row_prefix(&self, n: usize) -> Matrix {
        assert!(n <= self.rows, "row_prefix {n} > {}", self.rows);
        Matrix {
            rows: n,
            ..self.clone()
        }
    }

    /// Rows `start..start+n` (no copy). For [`Layout::Q8_0x8`], `start` must be a multiple
    /// of 8.
    pub fn row_range(&self, start: usize, n: usize) -> Matrix {
        assert!(start + n <= self.rows, "row_range out of bounds");
        let offset = if self.layout == Layout::Rows {
            self.offset + start * self.row_stride_bytes()
        } else {
            assert!(
                start.is_multiple_of(8),
                "row_range of an interleaved matrix must start on a group of 8 (row {start})"
            );
            self.offset + start / 8 * self.group_stride_bytes()
        };
        Matrix {
            offset,
            rows: n,
            ..self.clone()
        }
    }

    /// The first `n` columns of every row (no copy; the row stride is kept).
    ///
    /// # Panics
    /// If `n > cols`, or for a block format if `n` is not a multiple of the block size.
    pub fn col_prefix(&self, n: usize) -> Matrix {
        assert!(n <= self.cols, "col_prefix {n} > {}", self.cols);
        let bs = self.dtype.block_size();
        assert!(
            n.is_multiple_of(bs),
            "col_prefix {n} of a {} matrix: must be a multiple of its {bs}-element blocks",
            self.dtype
        );
        Matrix {
            cols: n,
            ..self.clone()
        }
    }

    /// The raw bytes of row `r` (its `cols` elements), for [`Layout::Rows`] ([`Matrix::row_blocks`]
    /// takes either layout).
    #[inline]
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        assert!(
            self.layout == Layout::Rows,
            "row_bytes of an interleaved matrix (use row_blocks)"
        );
        debug_assert!(r < self.rows);
        let start = self.offset + r * self.row_stride_bytes();
        &self.storage.bytes()[start..start + self.dtype.row_bytes(self.cols)]
    }

    /// Row `r` of an f32 matrix as floats, read in place (`None` for other dtypes, or rows not
    /// aligned to 4 bytes).
    #[inline]
    pub fn row_f32(&self, r: usize) -> Option<&[f32]> {
        if self.dtype != DType::F32 {
            return None;
        }
        let b = self.row_bytes(r);
        // SAFETY: every bit pattern is a valid f32; the length is a whole number of floats
        // and the alignment is checked by `align_to`, which returns the unaligned remainder
        // in the prefix.
        let (pre, v, _) = unsafe { b.align_to::<f32>() };
        (pre.is_empty() && v.len() == self.cols).then_some(v)
    }

    /// Pointer to the first byte of row `r`.
    #[inline]
    pub fn row_ptr(&self, r: usize) -> *const u8 {
        self.row_bytes(r).as_ptr()
    }

    /// Pointer to the first byte of row 0, derived from the whole storage: every element of
    /// the view (row `r`, column `c` at byte `(r * row_stride + c) * dtype.size()`; for block
    /// formats, block `c / block_size` of row `r` at `dtype.row_bytes(r * row_stride + c)`) is
    /// reachable from it. Kernels use it to walk rows by `row_stride` without re-slicing.
    #[inline]
    pub fn base_ptr(&self) -> *const u8 {
        // `offset <= storage.len()` was checked at construction (`offset` plus the size of the
        // view fits), so this stays within (or one past the end of) the storage bytes.
        self.storage.bytes()[self.offset..].as_ptr()
    }

    /// Converts row `r` to f32 into `out` (length `cols`).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "row_to_f32: out length");
        if self.layout == Layout::Q8_0x8 {
            // Straight from the group (no row copy: the dequantizing GEMM reads every row):
            // each block's scale times its 32 values.
            let g = self.group_of(r);
            for (o, src) in out.chunks_exact_mut(32).zip(g.chunks(Q8X8_GROUP_BLOCK)) {
                let mut pieces = q8x8_pieces(r % 8);
                let (s, _, _) = pieces.next().expect("the scale comes first");
                let d = f16_to_f32(u16::from_le_bytes([src[s], src[s + 1]]));
                for (at, from, len) in pieces {
                    // Values from byte 2 of the file block on.
                    let o = &mut o[from - 2..from - 2 + len];
                    for (o, &q) in o.iter_mut().zip(&src[at..at + len]) {
                        *o = d * (q as i8) as f32;
                    }
                }
            }
            return;
        }
        let b = &*self.row_blocks(r);
        match self.dtype {
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            q => crate::quant::dequantize_row(q, b, out),
        }
    }

    /// The whole matrix as a dense row-major f32 vector.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.row_to_f32(r, &mut v[r * self.cols..(r + 1) * self.cols]);
        }
        v
    }
}

/// Quantizes `rows` of `cols` f32 values each into consecutive rows of `out` (in parallel for
/// large matrices).
fn quantize_rows(dtype: DType, data: &[f32], cols: usize, out: &mut [u8]) {
    use rayon::prelude::*;
    let rb = dtype.row_bytes(cols);
    let one = |(x, o): (&[f32], &mut [u8])| crate::quant::quantize_row(dtype, x, o);
    if data.len() >= 1 << 16 {
        data.par_chunks(cols)
            .zip(out.par_chunks_mut(rb))
            .for_each(one);
    } else {
        data.chunks(cols).zip(out.chunks_mut(rb)).for_each(one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_view_the_same_values() {
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let m = Matrix::from_f32_as(&data, 3, 4, dt);
            let p = m.row_prefix(2).col_prefix(3);
            assert_eq!(p.to_f32_vec(), vec![0., 1., 2., 4., 5., 6.]);
            let r = m.row_range(1, 2);
            assert_eq!(
                r.to_f32_vec(),
                (4..12).map(|i| i as f32).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn out_of_bounds_is_an_error() {
        let m = Matrix::from_f32(&[0.0; 4], 2, 2);
        let s = m.storage.clone();
        assert!(Matrix::new(s.clone(), 0, DType::F32, 2, 2).is_ok());
        assert!(Matrix::new(s.clone(), 4, DType::F32, 2, 2).is_err());
        assert!(Matrix::new(s, 2, DType::F32, 1, 1).is_err());
    }
}
