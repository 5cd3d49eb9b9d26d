//! GGUF metadata values: the 13 value types, decoding with bounds checks and encoding.

use std::fmt;

/// The type tag of a GGUF metadata value (`gguf_type` in ggml).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Smallest encoded size of one value of this type (used to bound counts before
    /// allocating: a string is at least its 8-byte length, an array its 12-byte header).
    pub(crate) fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value. Arrays keep their element type so empty arrays round-trip.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type as i128 (exact for every GGUF integer).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// A non-negative integer of any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// Any numeric type (integers and floats) as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// Appends the encoding of the value (without its type tag) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(*v as u8),
            Value::String(s) => encode_str(s, out),
            Value::Array(t, items) => {
                out.extend_from_slice(&t.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    it.encode(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// Checks that every element of an array has the array's element type.
    pub(crate) fn check_homogeneous(&self) -> std::result::Result<(), String> {
        if let Value::Array(t, items) = self {
            for (i, it) in items.iter().enumerate() {
                if it.value_type() != *t {
                    return Err(format!(
                        "array of {t:?} has a {:?} at index {i}",
                        it.value_type()
                    ));
                }
                it.check_homogeneous()?;
            }
        }
        Ok(())
    }
}

pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(t, items) => {
                write!(f, "[{t:?} x {}]", items.len())?;
                if items.len() <= 16 {
                    write!(f, " [")?;
                    for (i, it) in items.iter().enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        write!(f, "{it}")?;
                    }
                    write!(f, "]")?;
                }
                Ok(())
            }
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

/// A little-endian cursor over the file whose every read is bounds-checked; errors say
/// what was being read and at which byte.
pub(crate) struct Cursor<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

/// Nesting limit for arrays of arrays (ggml itself allows none; gguf-py allows any).
const MAX_DEPTH: usize = 8;

impl<'a> Cursor<'a> {
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() as u64 {
            return Err(format!(
                "truncated: {what} needs {n} bytes at byte {}, but the file has only {} bytes",
                self.pos,
                self.data.len()
            ));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("length checked"))
    }

    pub fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    pub fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    pub fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u64(what)?;
        let b = self.take(n, what)?;
        // GGUF strings are UTF-8; a file that breaks this still loads (lossy), it is not
        // worth refusing a model over a malformed vocabulary entry.
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    pub fn value(&mut self, t: ValueType, what: &str) -> std::result::Result<Value, String> {
        self.value_depth(t, what, 0)
    }

    fn value_depth(
        &mut self,
        t: ValueType,
        what: &str,
        depth: usize,
    ) -> std::result::Result<Value, String> {
        Ok(match t {
            ValueType::U8 => Value::U8(self.arr::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.arr(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.arr(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            ValueType::Bool => {
                let b = self.arr::<1>(what)?[0];
                if b > 1 {
                    return Err(format!(
                        "{what}: bool byte is {b} at byte {} (must be 0 or 1)",
                        self.pos - 1
                    ));
                }
                Value::Bool(b == 1)
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.arr(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            ValueType::Array => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{what}: arrays nested deeper than {MAX_DEPTH}"));
                }
                let at = self.pos;
                let et = self.u32(&format!("element type of {what}"))?;
                let et = ValueType::from_id(et).ok_or_else(|| {
                    format!("{what}: unknown array element type {et} at byte {at}")
                })?;
                let n = self.u64(&format!("length of {what}"))?;
                // Bound the count by the bytes left before allocating anything.
                if n.saturating_mul(et.min_size()) > self.remaining() as u64 {
                    return Err(format!(
                        "truncated or corrupt: {what} claims {n} elements of {et:?} at byte {at}, \
                         more than the {} bytes left in the file",
                        self.remaining()
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let v = self
                        .value_depth(et, what, depth + 1)
                        .map_err(|e| format!("{e} (element {i})"))?;
                    items.push(v);
                }
                Value::Array(et, items)
            }
        })
    }
}
