//! Engine-neutral tensors: a shape plus one typed, row-major buffer.
//!
//! Every protocol decodes into [`Tensor`] and every backend converts from it, so the set of
//! [`DataType`]s here is the set Serval can serve. Batching works on axis 0 ("rows").

use std::fmt;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::error::InputError;

/// Element type of a tensor, named as in the Open Inference Protocol (`FP32`, `BYTES`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// Boolean.
    Bool,
    /// Unsigned 8-bit integer.
    Uint8,
    /// Unsigned 16-bit integer.
    Uint16,
    /// Unsigned 32-bit integer.
    Uint32,
    /// Unsigned 64-bit integer.
    Uint64,
    /// Signed 8-bit integer.
    Int8,
    /// Signed 16-bit integer.
    Int16,
    /// Signed 32-bit integer.
    Int32,
    /// Signed 64-bit integer.
    Int64,
    /// IEEE half precision float.
    Fp16,
    /// IEEE single precision float.
    Fp32,
    /// IEEE double precision float.
    Fp64,
    /// UTF-8 strings (ONNX `string`, protocol `BYTES`).
    Bytes,
}

impl DataType {
    /// The Open Inference Protocol name (`FP32`, `INT64`, `BYTES`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses an Open Inference Protocol datatype name.
    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "UINT16" => DataType::Uint16,
            "UINT32" => DataType::Uint32,
            "UINT64" => DataType::Uint64,
            "INT8" => DataType::Int8,
            "INT16" => DataType::Int16,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP16" => DataType::Fp16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    /// The TensorFlow name used in TF Serving signature metadata (`DT_FLOAT`, ...).
    pub fn tf_name(self) -> &'static str {
        match self {
            DataType::Bool => "DT_BOOL",
            DataType::Uint8 => "DT_UINT8",
            DataType::Uint16 => "DT_UINT16",
            DataType::Uint32 => "DT_UINT32",
            DataType::Uint64 => "DT_UINT64",
            DataType::Int8 => "DT_INT8",
            DataType::Int16 => "DT_INT16",
            DataType::Int32 => "DT_INT32",
            DataType::Int64 => "DT_INT64",
            DataType::Fp16 => "DT_HALF",
            DataType::Fp32 => "DT_FLOAT",
            DataType::Fp64 => "DT_DOUBLE",
            DataType::Bytes => "DT_STRING",
        }
    }

    /// Size of one element in bytes; `None` for variable-length strings.
    pub fn size_of(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    /// Whether values of this type can be NaN.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::Fp16 | DataType::Fp32 | DataType::Fp64)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed element buffer of a [`Tensor`], row-major.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<String>),
}

/// Applies `$body` to the vector inside any [`TensorData`] variant, rebuilding the same variant
/// when `$body` yields a vector. Keeps per-type code from being written thirteen times.
#[macro_export]
#[doc(hidden)]
macro_rules! map_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {{
        use $crate::tensor::TensorData as D;
        match $data {
            D::Bool($v) => D::Bool($body),
            D::Uint8($v) => D::Uint8($body),
            D::Uint16($v) => D::Uint16($body),
            D::Uint32($v) => D::Uint32($body),
            D::Uint64($v) => D::Uint64($body),
            D::Int8($v) => D::Int8($body),
            D::Int16($v) => D::Int16($body),
            D::Int32($v) => D::Int32($body),
            D::Int64($v) => D::Int64($body),
            D::Fp16($v) => D::Fp16($body),
            D::Fp32($v) => D::Fp32($body),
            D::Fp64($v) => D::Fp64($body),
            D::Bytes($v) => D::Bytes($body),
        }
    }};
}

/// Evaluates `$body` with the vector inside any [`TensorData`] variant bound to `$v`.
#[macro_export]
#[doc(hidden)]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {{
        use $crate::tensor::TensorData as D;
        match $data {
            D::Bool($v) => $body,
            D::Uint8($v) => $body,
            D::Uint16($v) => $body,
            D::Uint32($v) => $body,
            D::Uint64($v) => $body,
            D::Int8($v) => $body,
            D::Int16($v) => $body,
            D::Int32($v) => $body,
            D::Int64($v) => $body,
            D::Fp16($v) => $body,
            D::Fp32($v) => $body,
            D::Fp64($v) => $body,
            D::Bytes($v) => $body,
        }
    }};
}

impl TensorData {
    /// The element type.
    pub fn data_type(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// An empty buffer of the given type.
    pub fn empty(data_type: DataType) -> TensorData {
        match data_type {
            DataType::Bool => TensorData::Bool(Vec::new()),
            DataType::Uint8 => TensorData::Uint8(Vec::new()),
            DataType::Uint16 => TensorData::Uint16(Vec::new()),
            DataType::Uint32 => TensorData::Uint32(Vec::new()),
            DataType::Uint64 => TensorData::Uint64(Vec::new()),
            DataType::Int8 => TensorData::Int8(Vec::new()),
            DataType::Int16 => TensorData::Int16(Vec::new()),
            DataType::Int32 => TensorData::Int32(Vec::new()),
            DataType::Int64 => TensorData::Int64(Vec::new()),
            DataType::Fp16 => TensorData::Fp16(Vec::new()),
            DataType::Fp32 => TensorData::Fp32(Vec::new()),
            DataType::Fp64 => TensorData::Fp64(Vec::new()),
            DataType::Bytes => TensorData::Bytes(Vec::new()),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the values take in memory (strings: their text and their `String`), what a
    /// server charges a decoded request against its memory budget.
    pub fn memory_bytes(&self) -> usize {
        match self {
            TensorData::Bytes(v) => v
                .iter()
                .map(|s| s.capacity() + std::mem::size_of::<String>())
                .sum(),
            other => with_tensor_data!(other, v => std::mem::size_of_val(v.as_slice())),
        }
    }

    /// Index and value of the first NaN or infinity, if any (always `None` for non-float
    /// types).
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        fn find<T: Copy + Into<f64>>(v: &[T]) -> Option<(usize, f64)> {
            v.iter()
                .map(|x| (*x).into())
                .enumerate()
                .find(|(_, x): &(usize, f64)| !x.is_finite())
        }
        match self {
            TensorData::Fp16(v) => v
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| (i, f64::from(v[i]))),
            TensorData::Fp32(v) => find(v),
            TensorData::Fp64(v) => find(v),
            _ => None,
        }
    }

    /// Elements as `f32`, for post-processing of scores; `None` for non-numeric types.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        Some(match self {
            TensorData::Fp16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::Fp32(v) => v.clone(),
            TensorData::Fp64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| x as f32).collect(),
            _ => return None,
        })
    }
}

/// A dense tensor: shape plus row-major data. Axis 0 is the batch ("row") axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that `shape` matches the number of elements.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, InputError> {
        let expected = checked_elements(&shape)?;
        if expected != data.len() {
            return Err(InputError::new(format!(
                "shape {shape:?} needs {expected} elements but {} were given",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of `shape` filled with zeros (empty strings for BYTES).
    pub fn zeros(data_type: DataType, shape: Vec<usize>) -> Tensor {
        let n: usize = shape.iter().product();
        let data = match data_type {
            DataType::Bool => TensorData::Bool(vec![false; n]),
            DataType::Uint8 => TensorData::Uint8(vec![0; n]),
            DataType::Uint16 => TensorData::Uint16(vec![0; n]),
            DataType::Uint32 => TensorData::Uint32(vec![0; n]),
            DataType::Uint64 => TensorData::Uint64(vec![0; n]),
            DataType::Int8 => TensorData::Int8(vec![0; n]),
            DataType::Int16 => TensorData::Int16(vec![0; n]),
            DataType::Int32 => TensorData::Int32(vec![0; n]),
            DataType::Int64 => TensorData::Int64(vec![0; n]),
            DataType::Fp16 => TensorData::Fp16(vec![half::f16::ZERO; n]),
            DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
            DataType::Bytes => TensorData::Bytes(vec![String::new(); n]),
        };
        Tensor { shape, data }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element buffer.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Consumes the tensor, returning shape and buffer.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// The element type.
    pub fn data_type(&self) -> DataType {
        self.data.data_type()
    }

    /// Size of axis 0, the number of instances; 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row (product of all axes but the first).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Rows `start..end` as a new tensor.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        let row_len = self.row_len();
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = end - start;
        }
        let data = map_tensor_data!(&self.data, v => v[start * row_len..end * row_len].to_vec());
        Tensor { shape, data }
    }

    /// The given rows, in the given order, as a new tensor.
    ///
    /// # Panics
    /// When a row index is out of range: callers pick rows of this tensor.
    pub fn take_rows(&self, rows: &[usize]) -> Tensor {
        let row_len = self.row_len();
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = rows.len();
        }
        let data = map_tensor_data!(&self.data, v => rows
            .iter()
            .flat_map(|&r| v[r * row_len..(r + 1) * row_len].iter().cloned())
            .collect());
        Tensor { shape, data }
    }

    /// Concatenates tensors of the same type and row shape along axis 0.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor, InputError> {
        let Some(first) = parts.first() else {
            return Err(InputError::new("cannot concatenate zero tensors"));
        };
        let mut shape = first.shape.clone();
        let mut rows = 0;
        let mut data = TensorData::empty(first.data_type());
        for part in parts {
            if part.shape.get(1..) != first.shape.get(1..) || part.data_type() != first.data_type()
            {
                return Err(InputError::new(format!(
                    "cannot batch a {} tensor of shape {:?} with a {} tensor of shape {:?}",
                    part.data_type(),
                    part.shape,
                    first.data_type(),
                    first.shape
                )));
            }
            rows += part.rows();
            extend_data(&mut data, &part.data);
        }
        if let Some(first) = shape.first_mut() {
            *first = rows;
        }
        Ok(Tensor { shape, data })
    }
}

fn extend_data(into: &mut TensorData, from: &TensorData) {
    macro_rules! extend {
        ($($variant:ident),*) => {
            match (into, from) {
                $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend_from_slice(b),)*
                _ => unreachable!("concat_rows checked the types. This is a bug."),
            }
        };
    }
    extend!(
        Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
    );
}

/// Number of elements of `shape`, or an error when the product overflows (hostile shapes).
pub fn checked_elements(shape: &[usize]) -> Result<usize, InputError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| InputError::new(format!("shape {shape:?} has too many elements")))
}

macro_rules! impl_from_vec {
    ($($ty:ty => $variant:ident),*) => {$(
        impl From<Vec<$ty>> for TensorData {
            fn from(v: Vec<$ty>) -> TensorData {
                TensorData::$variant(v)
            }
        }
    )*};
}
impl_from_vec!(bool => Bool, u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64, f16 => Fp16, f32 => Fp32, f64 => Fp64,
    String => Bytes);

/// How a refused non-finite input value is named: `NaN`, or an infinity, which a number beyond
/// the input type's range (1e39 for float32) also becomes.
pub fn non_finite_name(value: f64) -> &'static str {
    if value.is_nan() {
        "NaN"
    } else if value > 0.0 {
        "Infinity (or a number beyond the input type's range)"
    } else {
        "-Infinity (or a number beyond the input type's range)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_rows_picks_rows_in_the_order_given() {
        let t = Tensor::new(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].into()).unwrap();
        let picked = t.take_rows(&[2, 0]);
        assert_eq!(picked.shape(), &[2, 2]);
        assert_eq!(picked.data(), &TensorData::Fp32(vec![5.0, 6.0, 1.0, 2.0]));
    }

    #[test]
    fn concat_then_slice_round_trips_rows() {
        let a = Tensor::new(vec![1, 2], vec![1.0f32, 2.0].into()).unwrap();
        let b = Tensor::new(vec![2, 2], vec![3.0f32, 4.0, 5.0, 6.0].into()).unwrap();
        let ab = Tensor::concat_rows(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(ab.shape(), &[3, 2]);
        assert_eq!(ab.slice_rows(0, 1), a);
        assert_eq!(ab.slice_rows(1, 3), b);
    }

    #[test]
    fn concat_refuses_mixed_types() {
        let a = Tensor::new(vec![1], vec![1.0f32].into()).unwrap();
        let b = Tensor::new(vec![1], vec![1i64].into()).unwrap();
        let err = Tensor::concat_rows(&[a, b]).unwrap_err();
        assert!(err.to_string().contains("cannot batch"), "{err}");
    }

    #[test]
    fn hostile_shape_is_an_error_not_an_overflow() {
        let err = Tensor::new(vec![usize::MAX, 4], TensorData::Fp32(vec![])).unwrap_err();
        assert!(err.to_string().contains("too many elements"), "{err}");
    }
}
