//! Model tensors to Apache Arrow arrays and back.
//!
//! Batch serving feeds record batches to models and writes their outputs as columns; the
//! server reads those columns back to answer requests from precomputed results. Both sides use
//! this one mapping, so a column written by `serval batch` reads back as the tensor the model
//! returned.
//!
//! A record batch is columnar; a model input is row-major `[rows, features...]`. Reading copies
//! each column into its slot of every row, casting to the input's element type; writing scatters
//! each output tensor back into an Arrow array with one entry per input row, null where the row
//! could not be predicted. Rows that cannot be read (a null, a value that does not parse, a NaN
//! the model refuses) are reported per row instead of failing the whole batch, so the caller can
//! apply the job's `--on-error` policy.
#![deny(missing_docs)]

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, ListArray, PrimitiveArray,
    StringArray,
};
use arrow::buffer::{BooleanBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType as ArrowType, Field, FieldRef, Float16Type, Float32Type,
    Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serval_core::{DataType, Tensor, TensorData, TensorSpec};

/// Calls `$body` with `$t` bound to the Arrow primitive type of a numeric [`DataType`], and
/// `$variant` to the matching [`TensorData`] constructor; `$other` handles bool and bytes.
macro_rules! with_arrow_primitive {
    ($dtype:expr, $t:ident, $variant:ident => $body:expr, _ => $other:expr) => {{
        match $dtype {
            DataType::Fp32 => {
                type $t = Float32Type;
                let $variant = TensorData::Fp32;
                $body
            }
            DataType::Fp64 => {
                type $t = Float64Type;
                let $variant = TensorData::Fp64;
                $body
            }
            DataType::Fp16 => {
                type $t = Float16Type;
                let $variant = TensorData::Fp16;
                $body
            }
            DataType::Int8 => {
                type $t = Int8Type;
                let $variant = TensorData::Int8;
                $body
            }
            DataType::Int16 => {
                type $t = Int16Type;
                let $variant = TensorData::Int16;
                $body
            }
            DataType::Int32 => {
                type $t = Int32Type;
                let $variant = TensorData::Int32;
                $body
            }
            DataType::Int64 => {
                type $t = Int64Type;
                let $variant = TensorData::Int64;
                $body
            }
            DataType::Uint8 => {
                type $t = UInt8Type;
                let $variant = TensorData::Uint8;
                $body
            }
            DataType::Uint16 => {
                type $t = UInt16Type;
                let $variant = TensorData::Uint16;
                $body
            }
            DataType::Uint32 => {
                type $t = UInt32Type;
                let $variant = TensorData::Uint32;
                $body
            }
            DataType::Uint64 => {
                type $t = UInt64Type;
                let $variant = TensorData::Uint64;
                $body
            }
            DataType::Bool | DataType::Bytes => $other,
        }
    }};
}

/// The Arrow element type a tensor element type is stored as.
pub fn arrow_type(dtype: DataType) -> ArrowType {
    match dtype {
        DataType::Bool => ArrowType::Boolean,
        DataType::Bytes => ArrowType::Utf8,
        numeric => with_arrow_primitive!(numeric, T, _v => T::DATA_TYPE, _ => unreachable!()),
    }
}

/// The Arrow type of one row of a tensor: a scalar when a row holds one value, a fixed-size
/// list when its shape is static, a list when a dimension is dynamic.
pub fn row_type(spec: &TensorSpec) -> ArrowType {
    let item = arrow_type(spec.data_type);
    let row_dims = spec.shape.get(1..).unwrap_or_default();
    let static_len: Option<usize> = row_dims.iter().copied().product();
    match static_len {
        Some(1) => item,
        Some(len) => ArrowType::FixedSizeList(item_field(item), len as i32),
        None => ArrowType::List(item_field(item)),
    }
}

fn item_field(item: ArrowType) -> FieldRef {
    Arc::new(Field::new_list_field(item, true))
}

/// A column (or a struct field, or a list column) feeding consecutive values of every row.
#[derive(Debug, Clone)]
pub struct FeatureColumn {
    /// The column's name, for error messages.
    pub name: String,
    /// The column as the batch holds it.
    pub array: ArrayRef,
}

impl FeatureColumn {
    /// Expands struct columns into their fields, in order; other columns are kept whole.
    pub fn flatten(name: &str, array: ArrayRef) -> Vec<FeatureColumn> {
        match array.as_struct_opt() {
            Some(st) => st
                .fields()
                .iter()
                .zip(st.columns())
                .flat_map(|(f, child)| FeatureColumn::flatten(f.name(), child.clone()))
                .collect(),
            None => vec![FeatureColumn {
                name: name.to_owned(),
                array,
            }],
        }
    }

    /// Values each row contributes: 1 for scalars, the length of (fixed-size) lists.
    pub fn width(&self) -> Result<usize, String> {
        match self.array.data_type() {
            ArrowType::FixedSizeList(_, n) => Ok(*n as usize),
            ArrowType::List(_) | ArrowType::LargeList(_) => self.uniform_list_len(),
            _ => Ok(1),
        }
    }

    fn uniform_list_len(&self) -> Result<usize, String> {
        let lens: Vec<usize> = match self.array.data_type() {
            ArrowType::LargeList(_) => {
                let list = self.array.as_list::<i64>();
                (0..list.len())
                    .map(|r| list.value_length(r) as usize)
                    .collect()
            }
            _ => {
                let list = self.array.as_list::<i32>();
                (0..list.len())
                    .map(|r| list.value_length(r) as usize)
                    .collect()
            }
        };
        let valid = |r: &usize| self.array.is_valid(*r);
        let mut rows = (0..lens.len()).filter(valid);
        let Some(first) = rows.next() else {
            return Ok(0);
        };
        match rows.find(|r| lens[*r] != lens[first]) {
            None => Ok(lens[first]),
            Some(r) => Err(format!(
                "column '{}' holds lists of different lengths ({} in row {first}, {} in row {r})",
                self.name, lens[first], lens[r]
            )),
        }
    }

    /// The flat values and the row-level nulls of this column.
    fn values_and_nulls(&self) -> (ArrayRef, Option<NullBuffer>) {
        let nulls = self.array.logical_nulls();
        match self.array.data_type() {
            ArrowType::FixedSizeList(..) => {
                (self.array.as_fixed_size_list().values().clone(), nulls)
            }
            ArrowType::List(_) => {
                let list = self.array.as_list::<i32>();
                let (start, end) = (list.value_offsets()[0], list.value_offsets()[list.len()]);
                (
                    list.values().slice(start as usize, (end - start) as usize),
                    nulls,
                )
            }
            ArrowType::LargeList(_) => {
                let list = self.array.as_list::<i64>();
                let (start, end) = (list.value_offsets()[0], list.value_offsets()[list.len()]);
                (
                    list.values().slice(start as usize, (end - start) as usize),
                    nulls,
                )
            }
            _ => (self.array.clone(), None),
        }
    }
}

/// Per-row reasons a row could not be predicted; `None` for rows that are fine.
#[derive(Debug, Clone)]
pub struct RowErrors {
    errors: Vec<Option<String>>,
    failed: usize,
}

impl RowErrors {
    /// No row has failed yet.
    pub fn new(rows: usize) -> RowErrors {
        RowErrors {
            errors: vec![None; rows],
            failed: 0,
        }
    }

    /// Records why `row` fails; the first reason per row is kept.
    pub fn fail(&mut self, row: usize, reason: impl FnOnce() -> String) {
        if self.errors[row].is_none() {
            self.errors[row] = Some(reason());
            self.failed += 1;
        }
    }

    /// Marks every row failed for one reason (the engine refused the whole batch).
    pub fn fail_all(&mut self, reason: &str) {
        for row in 0..self.errors.len() {
            self.fail(row, || reason.to_owned());
        }
    }

    /// How many rows failed.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Rows that failed with their reasons, in row order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &str)> {
        self.errors
            .iter()
            .enumerate()
            .filter_map(|(r, e)| e.as_deref().map(|e| (r, e)))
    }

    /// Whether `row` can be predicted.
    pub fn is_ok(&self, row: usize) -> bool {
        self.errors[row].is_none()
    }

    /// Rows that can be predicted, ascending.
    pub fn ok_rows(&self) -> Vec<usize> {
        (0..self.errors.len()).filter(|r| self.is_ok(*r)).collect()
    }

    /// The reason per row, null for rows that are fine.
    pub fn reasons(&self) -> StringArray {
        self.errors.iter().map(Option::as_deref).collect()
    }

    /// Validity of each row (true = predicted), for the output's null buffer.
    pub fn validity(&self) -> Option<NullBuffer> {
        (self.failed > 0).then(|| NullBuffer::from_iter(self.errors.iter().map(Option::is_none)))
    }
}

/// Reads `columns` into one tensor for `spec` with a row per batch row (failed rows included,
/// holding placeholder values), recording unreadable rows in `errors`.
///
/// Fails (for the whole call) only when the columns cannot fit the input at all: wrong number of
/// values per row, a type that does not convert.
pub fn read_input(
    spec: &TensorSpec,
    columns: &[FeatureColumn],
    rows: usize,
    allow_nan: bool,
    errors: &mut RowErrors,
) -> Result<Tensor, String> {
    let row_dims: Option<Vec<usize>> = spec
        .shape
        .get(1..)
        .unwrap_or_default()
        .iter()
        .copied()
        .collect();
    let widths = columns
        .iter()
        .map(FeatureColumn::width)
        .collect::<Result<Vec<_>, _>>()?;
    let given: usize = widths.iter().sum();
    let row_dims = match row_dims {
        Some(dims) => dims,
        // A dynamic feature axis takes whatever the columns provide.
        None if spec.shape.len() == 2 => vec![given],
        None => {
            return Err(format!(
                "input '{}' has shape {:?} with a dynamic dimension other than the batch axis; \
                 batch prediction needs the row shape fixed",
                spec.name,
                spec.shape_i64()
            ));
        }
    };
    let row_len: usize = row_dims.iter().product();
    if given != row_len {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "input '{}' takes {row_len} values per row, the {} column(s) given ({}) provide {given}",
            spec.name,
            columns.len(),
            names.join(", ")
        ));
    }
    let target = arrow_type(spec.data_type);
    let mut casts = Vec::with_capacity(columns.len());
    for (col, width) in columns.iter().zip(&widths) {
        let (values, row_nulls) = col.values_and_nulls();
        if let Some(nulls) = &row_nulls {
            for row in (0..rows).filter(|r| nulls.is_null(*r)) {
                errors.fail(row, || format!("column '{}' is null", col.name));
            }
        }
        let cast = cast_with_options(
            &values,
            &target,
            &CastOptions {
                safe: true,
                ..Default::default()
            },
        )
        .map_err(|e| {
            format!(
                "column '{}' ({}) cannot feed input '{}' ({}): {e}",
                col.name,
                values.data_type(),
                spec.name,
                spec.data_type
            )
        })?;
        if cast.null_count() > 0 {
            let shown = ArrayFormatter::try_new(values.as_ref(), &FormatOptions::default()).ok();
            for ix in (0..cast.len()).filter(|i| cast.is_null(*i)) {
                let row = ix / width.max(&1);
                if row < rows && row_nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                    errors.fail(row, || match (&shown, values.is_null(ix)) {
                        (_, true) | (None, _) => format!("column '{}' is null", col.name),
                        (Some(f), false) => format!(
                            "column '{}': '{}' is not a valid {}",
                            col.name,
                            f.value(ix),
                            spec.data_type
                        ),
                    });
                }
            }
        }
        casts.push((cast, *width));
    }
    let data = with_arrow_primitive!(spec.data_type, T, variant => {
        let arrays: Vec<(&PrimitiveArray<T>, usize)> = casts.iter().map(|(a, w)| (a.as_primitive::<T>(), *w)).collect();
        variant(interleave(&arrays, rows, row_len, |a, i| a.values()[i]))
    }, _ => match spec.data_type {
        DataType::Bool => {
            let arrays: Vec<(&BooleanArray, usize)> = casts.iter().map(|(a, w)| (a.as_boolean(), *w)).collect();
            TensorData::Bool(interleave(&arrays, rows, row_len, |a, i| a.value(i)))
        }
        _ => {
            let arrays: Vec<(&StringArray, usize)> = casts.iter().map(|(a, w)| (a.as_string::<i32>(), *w)).collect();
            TensorData::Bytes(interleave(&arrays, rows, row_len, |a, i| a.value(i).to_owned()))
        }
    });
    if !allow_nan && spec.data_type.is_float() {
        let values = data.to_f32_vec().unwrap_or_default();
        for (row, chunk) in values.chunks(row_len.max(1)).enumerate() {
            if let Some(pos) = chunk.iter().position(|v| !v.is_finite()) {
                let what = serval_core::tensor::non_finite_name(f64::from(chunk[pos]));
                errors.fail(row, || format!("{} is {what} (the model refuses non-finite values; set allow_nan = true in its config.toml to accept them)", value_name(columns, &widths, pos)));
            }
        }
    }
    let mut shape = vec![rows];
    shape.extend(row_dims);
    Tensor::new(shape, data).map_err(|e| e.to_string())
}

/// Names the column (and list position) holding value `pos` of a row.
fn value_name(columns: &[FeatureColumn], widths: &[usize], mut pos: usize) -> String {
    for (col, width) in columns.iter().zip(widths) {
        if pos < *width {
            return if *width == 1 {
                format!("column '{}'", col.name)
            } else {
                format!("column '{}'[{pos}]", col.name)
            };
        }
        pos -= width;
    }
    "a value".to_owned()
}

/// Row-major copy of columnar values: row `r` is the concatenation of every column's values
/// for `r`. Null slots hold whatever the array stores there (the row is failed anyway).
fn interleave<A, T: Clone + Default>(
    arrays: &[(A, usize)],
    rows: usize,
    row_len: usize,
    value: impl Fn(&A, usize) -> T,
) -> Vec<T> {
    let mut out = vec![T::default(); rows * row_len];
    let mut offset = 0;
    for (array, width) in arrays {
        for row in 0..rows {
            for i in 0..*width {
                out[row * row_len + offset + i] = value(array, row * width + i);
            }
        }
        offset += width;
    }
    out
}

/// Keeps only `rows` of a tensor (all rows when every row is fine).
pub fn select_rows(tensor: Tensor, rows: &[usize]) -> Tensor {
    if rows.len() == tensor.rows() {
        return tensor;
    }
    let row_len = tensor.row_len();
    let mut shape = tensor.shape().to_vec();
    shape[0] = rows.len();
    let (_, data) = tensor.into_parts();
    let data = serval_core::map_tensor_data!(data, v => {
        rows.iter().flat_map(|r| v[r * row_len..(r + 1) * row_len].iter().cloned()).collect()
    });
    Tensor::new(shape, data)
        .unwrap_or_else(|_| unreachable!("row selection keeps the element count consistent"))
}

/// Builds the Arrow array of one output: one entry per batch row, `tensor` holding the rows in
/// `ok_rows` (in order), null elsewhere. `row_type` is the type planned for the column.
pub fn write_output(
    tensor: Tensor,
    row_type: &ArrowType,
    ok_rows: &[usize],
    rows: usize,
    validity: Option<NullBuffer>,
) -> Result<ArrayRef, String> {
    let row_len = tensor.row_len();
    let (_, data) = tensor.into_parts();
    let values: ArrayRef =
        serval_core::with_tensor_data!(data, v => scatter_values(v, row_len, ok_rows, rows));
    let item = match row_type {
        ArrowType::FixedSizeList(f, _) | ArrowType::List(f) => f.data_type().clone(),
        other => other.clone(),
    };
    let values = if values.data_type() == &item {
        values
    } else {
        cast_with_options(&values, &item, &CastOptions::default()).map_err(|e| {
            format!(
                "output of type {} does not fit column type {item}: {e}",
                values.data_type()
            )
        })?
    };
    match row_type {
        ArrowType::FixedSizeList(field, len) if *len as usize == row_len => Ok(Arc::new(
            FixedSizeListArray::try_new(field.clone(), *len, values, validity)
                .map_err(|e| e.to_string())?,
        )),
        ArrowType::List(field) => {
            let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(row_len, rows));
            Ok(Arc::new(
                ListArray::try_new(field.clone(), offsets, values, validity)
                    .map_err(|e| e.to_string())?,
            ))
        }
        ArrowType::FixedSizeList(_, len) => Err(format!(
            "the model returned {row_len} values per row, its signature declares {len}"
        )),
        _ if row_len == 1 => Ok(with_nulls(values, validity)),
        _ => Err(format!(
            "the model returned {row_len} values per row, its signature declares 1"
        )),
    }
}

/// Scatters row-major `v` (rows `ok_rows`) into a flat array of `rows * row_len` values.
fn scatter_values<T: IntoArrowValues>(
    v: Vec<T>,
    row_len: usize,
    ok_rows: &[usize],
    rows: usize,
) -> ArrayRef {
    if ok_rows.len() == rows {
        return T::into_array(v);
    }
    let mut out = vec![T::default(); rows * row_len];
    for (i, r) in ok_rows.iter().enumerate() {
        out[r * row_len..(r + 1) * row_len].clone_from_slice(&v[i * row_len..(i + 1) * row_len]);
    }
    T::into_array(out)
}

fn with_nulls(values: ArrayRef, nulls: Option<NullBuffer>) -> ArrayRef {
    match nulls {
        None => values,
        Some(nulls) => {
            let data = values.to_data().into_builder().nulls(Some(nulls)).build();
            data.map(arrow::array::make_array).unwrap_or(values)
        }
    }
}

/// Tensor element types that become an Arrow array without nulls.
trait IntoArrowValues: Clone + Default {
    fn into_array(v: Vec<Self>) -> ArrayRef;
}

macro_rules! primitive_into_arrow {
    ($($native:ty => $arrow:ty),*) => {$(
        impl IntoArrowValues for $native {
            fn into_array(v: Vec<Self>) -> ArrayRef {
                Arc::new(PrimitiveArray::<$arrow>::new(ScalarBuffer::from(v), None))
            }
        }
    )*};
}

primitive_into_arrow!(f32 => Float32Type, f64 => Float64Type, half::f16 => Float16Type,
    i8 => Int8Type, i16 => Int16Type, i32 => Int32Type, i64 => Int64Type,
    u8 => UInt8Type, u16 => UInt16Type, u32 => UInt32Type, u64 => UInt64Type);

impl IntoArrowValues for bool {
    fn into_array(v: Vec<Self>) -> ArrayRef {
        Arc::new(BooleanArray::new(BooleanBuffer::from(v), None))
    }
}

impl IntoArrowValues for String {
    fn into_array(v: Vec<Self>) -> ArrayRef {
        Arc::new(StringArray::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};

    fn spec(dtype: DataType, shape: Vec<Option<usize>>) -> TensorSpec {
        TensorSpec {
            name: "X".into(),
            data_type: dtype,
            shape,
        }
    }

    fn col(name: &str, array: ArrayRef) -> FeatureColumn {
        FeatureColumn {
            name: name.into(),
            array,
        }
    }

    #[test]
    fn columns_become_rows_and_bad_values_fail_their_row_only() {
        let a: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)]));
        let b: ArrayRef = Arc::new(StringArray::from(vec!["10", "20", "x"]));
        let mut errors = RowErrors::new(3);
        let t = read_input(
            &spec(DataType::Fp32, vec![None, Some(2)]),
            &[col("a", a), col("b", b)],
            3,
            false,
            &mut errors,
        )
        .unwrap();
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(
            t.data(),
            &TensorData::Fp32(vec![1.0, 10.0, 0.0, 20.0, 3.0, 0.0])
        );
        let failed: Vec<(usize, &str)> = errors.iter().collect();
        assert_eq!(
            failed,
            vec![
                (1, "column 'a' is null"),
                (2, "column 'b': 'x' is not a valid FP32")
            ]
        );
    }

    #[test]
    fn wrong_width_names_the_columns() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let err = read_input(
            &spec(DataType::Fp32, vec![None, Some(3)]),
            &[col("a", a)],
            2,
            false,
            &mut RowErrors::new(2),
        )
        .unwrap_err();
        assert!(
            err.contains("takes 3 values per row") && err.contains("(a) provide 1"),
            "{err}"
        );
    }

    #[test]
    fn nan_fails_the_row_unless_allowed() {
        let a: ArrayRef = Arc::new(Float64Array::from(vec![1.0, f64::NAN]));
        let mut errors = RowErrors::new(2);
        read_input(
            &spec(DataType::Fp32, vec![None, Some(1)]),
            &[col("a", a.clone())],
            2,
            false,
            &mut errors,
        )
        .unwrap();
        assert_eq!(errors.ok_rows(), vec![0]);
        let mut errors = RowErrors::new(2);
        read_input(
            &spec(DataType::Fp32, vec![None, Some(1)]),
            &[col("a", a)],
            2,
            true,
            &mut errors,
        )
        .unwrap();
        assert_eq!(errors.failed(), 0);
    }

    #[test]
    fn outputs_scatter_back_with_nulls_for_failed_rows() {
        let t = Tensor::new(vec![2, 2], TensorData::Fp32(vec![0.1, 0.9, 0.7, 0.3])).unwrap();
        let mut errors = RowErrors::new(3);
        errors.fail(1, || "bad".into());
        let ty = row_type(&spec(DataType::Fp32, vec![None, Some(2)]));
        let array = write_output(t, &ty, &errors.ok_rows(), 3, errors.validity()).unwrap();
        let list = array.as_fixed_size_list();
        assert!(list.is_valid(0) && list.is_null(1) && list.is_valid(2));
        assert_eq!(
            list.value(2).as_primitive::<Float32Type>().values(),
            &[0.7, 0.3]
        );

        let labels = Tensor::new(vec![2], TensorData::Bytes(vec!["a".into(), "b".into()])).unwrap();
        let array = write_output(
            labels,
            &ArrowType::Utf8,
            &errors.ok_rows(),
            3,
            errors.validity(),
        )
        .unwrap();
        let strings = array.as_string::<i32>();
        assert_eq!(
            (strings.value(0), strings.is_null(1), strings.value(2)),
            ("a", true, "b")
        );
    }
}
