//! Tensor encodings shared by the protocols: raw little-endian bytes (Triton's binary
//! extension and gRPC `raw_*_contents`) and Open Inference Protocol JSON `data`.

use half::f16;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use serval_core::instances::push_json_scalar;
use serval_core::tensor::checked_elements;
use serval_core::{DataType, Tensor, TensorData};

use crate::error::{Result, ServerError};
use crate::pipeline::Limits;

/// Validates a protocol shape (no negatives, no overflow) and converts it.
pub fn shape_of(name: &str, shape: &[i64]) -> Result<Vec<usize>> {
    let shape: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ServerError::BadRequest(format!(
                "input '{name}' has a negative dimension in shape {shape:?}"
            ))
        })?;
    checked_elements(&shape)
        .map_err(|e| ServerError::BadRequest(format!("input '{name}': {e}")))?;
    Ok(shape)
}

/// Refuses a tensor that declares more instances (axis 0) than `rows_limit` allows, before
/// its values are read; `None` for a model that does not batch on axis 0.
pub fn check_declared_rows(shape: &[usize], rows_limit: Option<&Limits>) -> Result<()> {
    match (rows_limit, shape.first()) {
        (Some(limits), Some(&rows)) => limits.check_instances(rows),
        _ => Ok(()),
    }
}

/// Parses a protocol datatype name.
pub fn data_type_of(name: &str, datatype: &str) -> Result<DataType> {
    DataType::parse(datatype).ok_or_else(|| {
        ServerError::BadRequest(format!("input '{name}' has unknown datatype '{datatype}'"))
    })
}

/// Decodes raw little-endian bytes (BYTES: 4-byte length prefix per element).
pub fn decode_raw(
    name: &str,
    data_type: DataType,
    shape: Vec<usize>,
    bytes: &[u8],
) -> Result<Tensor> {
    let n = checked_elements(&shape)
        .map_err(|e| ServerError::BadRequest(format!("input '{name}': {e}")))?;
    let bad = |msg: String| ServerError::BadRequest(format!("input '{name}': {msg}"));
    if let Some(size) = data_type.size_of() {
        let expected = n
            .checked_mul(size)
            .ok_or_else(|| bad("shape too large".into()))?;
        if bytes.len() != expected {
            return Err(bad(format!(
                "{} bytes of binary data, but shape {shape:?} of {data_type} needs {expected}",
                bytes.len()
            )));
        }
    }
    macro_rules! le {
        ($ty:ty, $variant:ident) => {
            TensorData::$variant(
                bytes
                    .chunks_exact(std::mem::size_of::<$ty>())
                    .map(|c| {
                        <$ty>::from_le_bytes(
                            c.try_into()
                                .expect("chunks_exact yields exact sizes. This is a bug."),
                        )
                    })
                    .collect(),
            )
        };
    }
    let data = match data_type {
        DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
        DataType::Uint16 => le!(u16, Uint16),
        DataType::Uint32 => le!(u32, Uint32),
        DataType::Uint64 => le!(u64, Uint64),
        DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::Int16 => le!(i16, Int16),
        DataType::Int32 => le!(i32, Int32),
        DataType::Int64 => le!(i64, Int64),
        DataType::Fp16 => le!(f16, Fp16),
        DataType::Fp32 => le!(f32, Fp32),
        DataType::Fp64 => le!(f64, Fp64),
        DataType::Bytes => {
            let mut strings = Vec::with_capacity(n.min(bytes.len() / 4 + 1));
            let mut rest = bytes;
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| bad("truncated BYTES length prefix".into()))?;
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(bad(format!(
                        "BYTES element claims {len} bytes but only {} remain",
                        tail.len()
                    )));
                }
                let (value, tail) = tail.split_at(len);
                let value = std::str::from_utf8(value)
                    .map_err(|_| bad("BYTES element is not valid UTF-8".into()))?;
                strings.push(value.to_owned());
                rest = tail;
            }
            if strings.len() != n {
                return Err(bad(format!(
                    "{} BYTES elements, but shape {shape:?} needs {n}",
                    strings.len()
                )));
            }
            TensorData::Bytes(strings)
        }
    };
    Tensor::new(shape, data).map_err(|e| bad(e.to_string()))
}

/// Encodes a tensor as raw little-endian bytes (BYTES: 4-byte length prefix per element).
pub fn encode_raw(tensor: &Tensor) -> Vec<u8> {
    macro_rules! le {
        ($v:expr) => {
            $v.iter().flat_map(|x| x.to_le_bytes()).collect()
        };
    }
    match tensor.data() {
        TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        TensorData::Uint8(v) => v.clone(),
        TensorData::Uint16(v) => le!(v),
        TensorData::Uint32(v) => le!(v),
        TensorData::Uint64(v) => le!(v),
        TensorData::Int8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::Int16(v) => le!(v),
        TensorData::Int32(v) => le!(v),
        TensorData::Int64(v) => le!(v),
        TensorData::Fp16(v) => le!(v),
        TensorData::Fp32(v) => le!(v),
        TensorData::Fp64(v) => le!(v),
        TensorData::Bytes(v) => {
            let mut out = Vec::with_capacity(v.iter().map(|s| s.len() + 4).sum());
            for s in v {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            out
        }
    }
}

/// Decodes OIP JSON `data` (flat or nested lists, row-major) into a tensor of `shape`. The
/// request keeps `data` as its raw text, since its datatype may come after it; it is read here
/// in one pass straight into the tensor, each scalar converted by the one JSON scalar reading
/// every protocol shares, and reading stops at the first value past what the shape holds.
pub fn decode_json(
    name: &str,
    data_type: DataType,
    shape: Vec<usize>,
    data: &RawValue,
) -> Result<Tensor> {
    let n = checked_elements(&shape)
        .map_err(|e| ServerError::BadRequest(format!("input '{name}': {e}")))?;
    let bad = |msg: String| ServerError::BadRequest(format!("input '{name}': {msg}"));
    let mut reader = FlatData {
        values: TensorData::empty(data_type),
        expected: n,
        problem: None,
    };
    let mut de = serde_json::Deserializer::from_str(data.get());
    if let Err(e) = (&mut reader).deserialize(&mut de) {
        return Err(bad(match reader.problem.take() {
            Some(problem) => problem,
            None => e.to_string(),
        }));
    }
    let found = reader.values.len();
    if found != n {
        return Err(bad(format!(
            "{found} values in data, but shape {shape:?} needs {n}"
        )));
    }
    Tensor::new(shape, reader.values).map_err(|e| bad(e.to_string()))
}

/// Reads `data` into `values`; `problem` says why it stopped, in words for the client (the
/// parser's own error would add its position inside `data`).
struct FlatData {
    values: TensorData,
    expected: usize,
    problem: Option<String>,
}

impl FlatData {
    fn scalar<E: serde::de::Error>(&mut self, value: Value) -> std::result::Result<(), E> {
        if self.values.len() == self.expected {
            self.problem = Some(format!(
                "more values in data than the {} its shape needs",
                self.expected
            ));
            return Err(E::custom("too many values"));
        }
        push_json_scalar(&value, &mut self.values).map_err(|e| {
            self.problem = Some(e.to_string());
            E::custom("bad value")
        })
    }
}

impl<'de> DeserializeSeed<'de> for &mut FlatData {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut FlatData {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<(), A::Error> {
        // An object is one value to the scalar reading (`{"b64": ...}`, or named as wrong).
        let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        self.scalar(value)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.scalar(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.scalar(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.scalar(Value::from(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.scalar(Value::Bool(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.scalar(Value::String(v.to_owned()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.scalar(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TYPES: [DataType; 6] = [
        DataType::Fp32,
        DataType::Int64,
        DataType::Uint8,
        DataType::Bool,
        DataType::Fp16,
        DataType::Bytes,
    ];

    /// The reference reading of OIP JSON `data`: the whole value as a `Value` tree, its nested
    /// lists flattened, every leaf through the shared scalar conversion.
    fn reference_json(data_type: DataType, shape: &[usize], data: &Value) -> Option<Tensor> {
        fn flatten<'v>(value: &'v Value, leaves: &mut Vec<&'v Value>) {
            match value {
                Value::Array(items) => items.iter().for_each(|v| flatten(v, leaves)),
                leaf => leaves.push(leaf),
            }
        }
        let mut leaves = Vec::new();
        flatten(data, &mut leaves);
        let mut values = TensorData::empty(data_type);
        for leaf in &leaves {
            push_json_scalar(leaf, &mut values).ok()?;
        }
        (leaves.len() == checked_elements(shape).ok()?)
            .then(|| Tensor::new(shape.to_vec(), values).ok())
            .flatten()
    }

    fn json_data() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            (-2i64..300).prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec!["a", "NaN", "inf", "7"])
                .prop_map(|s| Value::String(s.into())),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            Just(serde_json::json!({"b64": "eQ=="})),
        ];
        leaf.prop_recursive(3, 32, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(Value::Array)
        })
    }

    proptest! {
        #[test]
        fn json_data_decodes_as_the_reference_does(
            data in json_data(),
            which in 0usize..TYPES.len(),
            shape in prop::collection::vec(0usize..4, 0..3),
        ) {
            let data_type = TYPES[which];
            let raw = serde_json::value::to_raw_value(&data).unwrap();
            let decoded = decode_json("x", data_type, shape.clone(), &raw).ok();
            let reference = reference_json(data_type, &shape, &data);
            // Debug output, so NaN compares equal to NaN.
            prop_assert_eq!(format!("{decoded:?}"), format!("{reference:?}"), "{}", raw.get());
        }

        #[test]
        fn raw_bytes_decode_exactly_when_they_fill_the_shape(
            bytes in prop::collection::vec(any::<u8>(), 0..40),
            which in 0usize..TYPES.len(),
            shape in prop::collection::vec(0usize..4, 0..3),
        ) {
            let data_type = TYPES[which];
            match decode_raw("x", data_type, shape.clone(), &bytes) {
                // Whatever decodes encodes back to the same bytes (BYTES: the same strings).
                Ok(tensor) => {
                    prop_assert_eq!(tensor.shape(), &shape[..]);
                    // (BOOL reads any non-zero byte as true.)
                    if data_type != DataType::Bool {
                        prop_assert_eq!(&encode_raw(&tensor), &bytes);
                    }
                }
                Err(e) => prop_assert!(e.to_string().starts_with("input 'x': "), "{e}"),
            }
            if let Some(size) = data_type.size_of() {
                let fits = checked_elements(&shape).ok().map(|n| n * size) == Some(bytes.len());
                prop_assert_eq!(decode_raw("x", data_type, shape.clone(), &bytes).is_ok(), fits);
            }
        }

        #[test]
        fn no_json_text_panics_the_decoder(text in "[\\[\\]{}0-9., \"a-z:-]{0,40}") {
            if let Ok(raw) = serde_json::from_str::<&RawValue>(&text) {
                let _ = decode_json("x", DataType::Fp32, vec![2], raw);
            }
        }
    }

    fn data(value: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&value).unwrap()
    }

    #[test]
    fn raw_round_trip_every_type() {
        let tensors = [
            Tensor::new(vec![2], TensorData::Fp32(vec![1.5, -2.0])).unwrap(),
            Tensor::new(vec![2], TensorData::Int64(vec![-1, 7])).unwrap(),
            Tensor::new(vec![2], TensorData::Bool(vec![true, false])).unwrap(),
            Tensor::new(
                vec![2],
                TensorData::Fp16(vec![f16::from_f32(0.5), f16::from_f32(2.0)]),
            )
            .unwrap(),
            Tensor::new(vec![2], TensorData::Bytes(vec!["a".into(), "héllo".into()])).unwrap(),
        ];
        for t in tensors {
            let bytes = encode_raw(&t);
            let back = decode_raw("x", t.data_type(), t.shape().to_vec(), &bytes).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn wrong_binary_size_is_named() {
        let err = decode_raw("x", DataType::Fp32, vec![2, 3], &[0; 20]).unwrap_err();
        assert!(
            err.to_string().contains("20 bytes") && err.to_string().contains("needs 24"),
            "{err}"
        );
    }

    #[test]
    fn nested_and_flat_json_agree() {
        let nested = decode_json(
            "x",
            DataType::Int32,
            vec![2, 2],
            &data(serde_json::json!([[1, 2], [3, 4]])),
        )
        .unwrap();
        let flat = decode_json(
            "x",
            DataType::Int32,
            vec![2, 2],
            &data(serde_json::json!([1, 2, 3, 4])),
        )
        .unwrap();
        assert_eq!(nested, flat);
    }

    #[test]
    fn json_leaves_convert_as_their_datatype_says() {
        let floats = decode_json(
            "x",
            DataType::Fp32,
            vec![4],
            &data(serde_json::json!([1, -2, 2.5, "NaN"])),
        )
        .unwrap();
        let TensorData::Fp32(v) = floats.data() else {
            panic!("{floats:?}")
        };
        assert_eq!(v[..3], [1.0, -2.0, 2.5]);
        assert!(v[3].is_nan());
        let ints = decode_json(
            "x",
            DataType::Uint64,
            vec![1],
            &data(serde_json::json!([u64::MAX])),
        )
        .unwrap();
        assert_eq!(ints.data(), &TensorData::Uint64(vec![u64::MAX]));
    }

    #[test]
    fn wrong_json_leaves_are_named() {
        for (datatype, value, expected) in [
            (DataType::Int32, serde_json::json!([1.5]), "got number 1.5"),
            (
                DataType::Fp32,
                serde_json::json!(["abc"]),
                "got string \"abc\"",
            ),
            (
                DataType::Fp32,
                serde_json::json!([{"a": 1}]),
                "got an object",
            ),
            (DataType::Bool, serde_json::json!([null]), "got null"),
            (
                DataType::Bytes,
                serde_json::json!([true]),
                "got boolean true",
            ),
            (
                DataType::Int8,
                serde_json::json!([300]),
                "300 is out of range for INT8",
            ),
        ] {
            let err = decode_json("x", datatype, vec![1], &data(value)).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn huge_shape_is_refused_without_allocating() {
        let err = shape_of("x", &[i64::MAX, i64::MAX]).unwrap_err();
        assert!(err.to_string().contains("too many elements"), "{err}");
        let err = decode_json(
            "x",
            DataType::Fp32,
            vec![1 << 40],
            &data(serde_json::json!([1.0])),
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
    }
}
