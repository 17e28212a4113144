//! Row-format ("instances") prediction: JSON objects in, keyed JSON objects out.
//!
//! This is the format of TF Serving's `{"instances": [...]}`, of `serval predict`'s JSON Lines,
//! and of the book's keyed predictions: each instance may carry a key (a string under the
//! model's key name) that is never fed to the model and comes back with that instance's outputs.

use std::collections::{BTreeMap, HashMap};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::error::{InputError, Result};
use crate::graph::TensorSpec;
use crate::model::Model;
use crate::signature::Signature;
use crate::tensor::{Tensor, TensorData};

/// Predictions for a list of instances, one row per instance, keys alongside.
#[derive(Debug, Clone)]
pub struct KeyedPredictions {
    /// The key field name (the model's `key` setting).
    pub key_name: String,
    /// Each instance's key as sent (`None` when it had none).
    pub keys: Vec<Option<String>>,
    /// Output tensors in signature order, one row per instance.
    pub outputs: Vec<(String, Tensor)>,
    /// Non-fatal remarks about the request (e.g. duplicate keys).
    pub warnings: Vec<String>,
    /// Outputs the model produces as `{class: probability}` maps (the signature's
    /// `class_maps`): each row of these goes out as such an object, as the converter meant.
    pub class_maps: BTreeMap<String, Vec<String>>,
    /// The outputs are one request's whole tensors (a model that does not batch), not rows.
    pub whole: bool,
}

impl KeyedPredictions {
    /// The prediction for instance `row`, serializable as a JSON object (key first).
    pub fn row(&self, row: usize) -> Prediction<'_> {
        Prediction {
            predictions: self,
            row,
        }
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no instances.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One instance's outputs; serializes as `{"key": ..., "<output>": ..., ...}`.
#[derive(Debug, Clone, Copy)]
pub struct Prediction<'a> {
    predictions: &'a KeyedPredictions,
    row: usize,
}

impl Serialize for Prediction<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let p = self.predictions;
        let mut map = serializer.serialize_map(None)?;
        if let Some(key) = &p.keys[self.row] {
            map.serialize_entry(&p.key_name, key)?;
        }
        for (name, tensor) in &p.outputs {
            if p.whole {
                map.serialize_entry(name, &TensorView(tensor))?;
                continue;
            }
            let row = RowView {
                tensor,
                row: self.row,
            };
            match p.class_maps.get(name) {
                Some(labels) => map.serialize_entry(name, &ClassMap { row, labels })?,
                None => map.serialize_entry(name, &row)?,
            }
        }
        map.end()
    }
}

/// Predicts a list of JSON instances through `signature` (or `serving_default`).
///
/// An instance is an object of named inputs plus an optional key, or a bare value when the
/// signature has a single input. Errors name the instance and the input at fault.
pub fn predict_instances(
    model: &Model,
    signature: Option<&str>,
    instances: &[Value],
) -> Result<KeyedPredictions> {
    let sig = model.signature(signature)?;
    let decoded = decode_for(model, sig, instances)?;
    let outputs = model.predict(Some(&sig.name), decoded.inputs)?;
    Ok(KeyedPredictions {
        key_name: model.config().key.clone(),
        keys: decoded.keys,
        outputs,
        warnings: decoded.warnings,
        class_maps: sig.class_maps.clone(),
        whole: !model.is_batchable(),
    })
}

/// Whether an instance is in the sample: by its key's hash, so a key is always in or always out
/// (its label can always be joined); an instance without a key hashes its request and position.
pub fn sampled(key: Option<&str>, request_id: &str, row: usize, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    // FNV-1a: stable across processes and releases (std's hasher is neither promised).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match key {
        Some(key) => feed(key.as_bytes()),
        None => {
            feed(request_id.as_bytes());
            feed(&row.to_le_bytes());
        }
    }
    // FNV's high bits barely move between similar keys (`key-1`, `key-2`): mix them
    // (splitmix64's finalizer) before taking the top 53 as a fraction.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    ((hash >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// Instances decoded into batched tensors.
#[derive(Debug)]
pub struct DecodedInstances {
    /// Each instance's key.
    pub keys: Vec<Option<String>>,
    /// One tensor per signature input, axis 0 = instance.
    pub inputs: Vec<(String, Tensor)>,
    /// Non-fatal remarks (duplicate keys).
    pub warnings: Vec<String>,
}

/// Decodes JSON instances into one batched tensor per input of `signature`.
pub fn decode_instances(
    signature: &Signature,
    key_name: &str,
    instances: &[Value],
) -> Result<DecodedInstances, InputError> {
    decode(signature, key_name, instances, Layout::Rows)
}

/// Decodes one request of whole tensors for a model that does not batch (Triton's
/// `max_batch_size = 0`): an object naming every input with its full value, plus an optional key.
/// The tensors keep exactly the shape sent; nothing is stacked or stripped.
pub fn decode_whole(
    signature: &Signature,
    key_name: &str,
    request: &Value,
) -> Result<DecodedInstances, InputError> {
    decode(
        signature,
        key_name,
        std::slice::from_ref(request),
        Layout::Whole,
    )
}

/// Decodes JSON values as `model` takes them: instances stacked on axis 0 when it batches, else
/// each value one whole request (so exactly one value).
pub fn decode_for(
    model: &Model,
    signature: &Signature,
    values: &[Value],
) -> Result<DecodedInstances, InputError> {
    let key = &model.config().key;
    match values {
        [one] if !model.is_batchable() => decode_whole(signature, key, one),
        _ if !model.is_batchable() => Err(InputError::new(format!(
            "model '{}' does not batch (its inputs share no leading batch axis): send one request \
             of whole tensors, not {} instances",
            model.name(),
            values.len()
        ))),
        _ => decode_instances(signature, key, values),
    }
}

/// Whether decoded values are instances along a batch axis or one request's whole tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Rows,
    Whole,
}

fn decode(
    signature: &Signature,
    key_name: &str,
    instances: &[Value],
    layout: Layout,
) -> Result<DecodedInstances, InputError> {
    if instances.is_empty() {
        return Err(InputError::new("empty input: no instances to predict"));
    }
    let mut keys = Vec::with_capacity(instances.len());
    let mut columns: Vec<Column> = signature
        .inputs
        .iter()
        .map(|spec| Column::new(spec, layout))
        .collect();
    let expected = || signature.input_names();
    for (ix, instance) in instances.iter().enumerate() {
        let at = |e: InputError| match layout {
            Layout::Rows => e.context(format_args!("instance {ix}")),
            Layout::Whole => e,
        };
        match instance {
            Value::Object(fields) => {
                let key = match fields.get(key_name) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(k)) => Some(k.clone()),
                    Some(other) => {
                        return Err(at(InputError::new(format!(
                            "key '{key_name}' must be a string, got {}",
                            json_kind(other)
                        ))));
                    }
                };
                keys.push(key);
                if let Some(unknown) = fields
                    .keys()
                    .find(|f| *f != key_name && !signature.inputs.iter().any(|s| &s.name == *f))
                {
                    return Err(at(InputError::new(format!(
                        "unknown input '{unknown}' (expected: {})",
                        expected()
                    ))));
                }
                for column in &mut columns {
                    let value = fields.get(&column.spec.name).ok_or_else(|| {
                        at(InputError::new(format!(
                            "missing input '{}' (expected: {})",
                            column.spec.name,
                            expected()
                        )))
                    })?;
                    column.push(value).map_err(at)?;
                }
            }
            bare if columns.len() == 1 => {
                keys.push(None);
                columns[0].push(bare).map_err(at)?;
            }
            _ => {
                return Err(at(InputError::new(format!(
                    "the model has {} inputs, so each instance must be an object naming them ({})",
                    columns.len(),
                    expected()
                ))));
            }
        }
    }
    let inputs = columns
        .into_iter()
        .map(|c| {
            let name = c.spec.name.clone();
            c.finish().map(|t| (name, t))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let warnings = duplicate_key_warnings(&keys);
    Ok(DecodedInstances {
        keys,
        inputs,
        warnings,
    })
}

fn duplicate_key_warnings(keys: &[Option<String>]) -> Vec<String> {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut warnings = Vec::new();
    for (ix, key) in keys.iter().enumerate() {
        if let Some(key) = key.as_deref()
            && let Some(first) = first_seen.insert(key, ix)
        {
            first_seen.insert(key, first);
            warnings.push(format!(
                "duplicate key '{key}' in instances {first} and {ix}"
            ));
        }
    }
    warnings
}

/// Decodes a JSON list of instances straight into column buffers, without building
/// `serde_json::Value` trees: the request path's fast form of [`decode_instances`].
///
/// It accepts exactly what `decode_instances` accepts and decodes it to the same tensors (scalars
/// go through the same conversion), but refuses, with an uninformative error, anything unusual
/// or wrong: the caller then falls back to `decode_instances`, which reports the problem in
/// detail. `inputs` are the signature's inputs.
pub struct InstancesSeed<'a> {
    /// The signature's inputs.
    pub inputs: &'a [TensorSpec],
    /// The model's key field name.
    pub key_name: &'a str,
    /// Most instances a request may hold: past it the fast path stops reading (the caller's
    /// slow path then refuses the request without building it).
    pub max_instances: usize,
}

/// Checks the fast path against the slow one on any bytes: the fast path either refuses or
/// decodes what [`decode_instances`] (the reference, through `Value`) decodes, to the same
/// keys, tensors and warnings; it never accepts what the slow path refuses. Panics when they
/// disagree: for tests and the fuzz targets.
#[doc(hidden)]
pub fn assert_fast_path_agrees(signature: &Signature, json: &[u8]) {
    let shown = String::from_utf8_lossy(json);
    let slow = serde_json::from_slice::<Vec<Value>>(json)
        .map_err(|e| e.to_string())
        .and_then(|instances| {
            decode_instances(signature, "key", &instances).map_err(|e| e.to_string())
        });
    let seed = InstancesSeed {
        inputs: &signature.inputs,
        key_name: "key",
        max_instances: usize::MAX,
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let fast = seed
        .deserialize(&mut de)
        .and_then(|decoded| de.end().map(|()| decoded));
    match (slow, fast) {
        (Ok(slow), Ok(fast)) => {
            assert_eq!(slow.keys, fast.keys, "{shown}");
            // Debug output, so NaN compares equal to NaN.
            assert_eq!(
                format!("{:?}", slow.inputs),
                format!("{:?}", fast.inputs),
                "{shown}"
            );
            assert_eq!(slow.warnings, fast.warnings, "{shown}");
        }
        (Err(_), Err(_)) | (Ok(_), Err(_)) => {}
        (Err(e), Ok(_)) => panic!("fast path accepted {shown}, slow path says {e}"),
    }
}

/// Why the fast path gave up (never shown to clients: the slow path reports the real error).
fn refuse<E: serde::de::Error>() -> E {
    E::custom("not decodable on the fast path")
}

impl<'de> DeserializeSeed<'de> for InstancesSeed<'_> {
    type Value = DecodedInstances;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for InstancesSeed<'_> {
    type Value = DecodedInstances;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of instances")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut columns: Vec<FastColumn> = self.inputs.iter().map(FastColumn::new).collect();
        let mut keys = Vec::new();
        while let Some(key) = seq.next_element_seed(InstanceSeed {
            columns: &mut columns,
            key_name: self.key_name,
        })? {
            keys.push(key);
            if keys.len() > self.max_instances {
                return Err(refuse());
            }
        }
        if keys.is_empty() {
            return Err(refuse());
        }
        let inputs = columns
            .into_iter()
            .map(|c| {
                let name = c.spec.name.clone();
                c.finish(keys.len()).map(|t| (name, t))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(refuse)?;
        let warnings = duplicate_key_warnings(&keys);
        Ok(DecodedInstances {
            keys,
            inputs,
            warnings,
        })
    }
}

/// One instance: an object of inputs (plus the key), or a bare value for a single input.
struct InstanceSeed<'c, 's> {
    columns: &'c mut [FastColumn<'s>],
    key_name: &'c str,
}

impl<'c, 's> InstanceSeed<'c, 's> {
    /// The only column of a single-input signature, which a bare instance fills.
    fn bare<E: serde::de::Error>(self) -> std::result::Result<ValueSeed<'c, 's>, E> {
        match self.columns {
            [only] => Ok(ValueSeed {
                column: only,
                depth: 0,
            }),
            _ => Err(refuse()),
        }
    }
}

impl<'de> DeserializeSeed<'de> for InstanceSeed<'_, '_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InstanceSeed<'_, '_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an instance")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut key = None;
        let mut key_seen = false;
        let mut seen = 0;
        while let Some(field) = map.next_key::<&'de str>()? {
            if field == self.key_name && !key_seen {
                key_seen = true;
                key = map.next_value::<Option<String>>()?;
                continue;
            }
            let column = self
                .columns
                .iter_mut()
                .find(|c| c.spec.name == field && !c.seen)
                .ok_or_else(refuse)?;
            column.seen = true;
            seen += 1;
            map.next_value_seed(ValueSeed { column, depth: 0 })?;
        }
        if seen != self.columns.len() {
            return Err(refuse());
        }
        self.columns.iter_mut().for_each(|c| c.seen = false);
        Ok(key)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Self::Value, A::Error> {
        self.bare()?.visit_seq(seq).map(|()| None)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Self::Value, E> {
        self.bare()?.visit_f64(v).map(|()| None)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
        self.bare()?.visit_i64(v).map(|()| None)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
        self.bare()?.visit_u64(v).map(|()| None)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Self::Value, E> {
        self.bare()?.visit_bool(v).map(|()| None)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        self.bare()?.visit_str(v).map(|()| None)
    }
}

/// One input's values, accumulated without `Value`s; the per-instance shape is fixed by the
/// model where it is static and by the first instance where it is dynamic.
struct FastColumn<'s> {
    spec: &'s TensorSpec,
    /// The model's per-instance axes (`None` where dynamic).
    static_dims: &'s [Option<usize>],
    /// Those axes, the dynamic ones fixed by the first instance.
    dims: Vec<Option<usize>>,
    data: TensorData,
    /// Whether the current instance has given this input already.
    seen: bool,
}

impl<'s> FastColumn<'s> {
    fn new(spec: &'s TensorSpec) -> FastColumn<'s> {
        let static_dims = &spec.shape[1.min(spec.shape.len())..];
        FastColumn {
            spec,
            static_dims,
            dims: static_dims.to_vec(),
            data: TensorData::empty(spec.data_type),
            seen: false,
        }
    }

    fn finish(self, rows: usize) -> Option<Tensor> {
        let mut shape = vec![rows];
        for d in self.dims {
            shape.push(d?);
        }
        Tensor::new(shape, self.data).ok()
    }
}

/// A value (or part of one, at `depth` of its nested lists) of one input.
struct ValueSeed<'c, 's> {
    column: &'c mut FastColumn<'s>,
    depth: usize,
}

impl ValueSeed<'_, '_> {
    /// A scalar, only where the shape puts scalars, converted as `decode_instances` does.
    fn scalar<E: serde::de::Error>(self, value: Value) -> std::result::Result<(), E> {
        if self.depth != self.column.dims.len() {
            return Err(refuse());
        }
        push_json_scalar(&value, &mut self.column.data).map_err(|_| refuse())
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an input value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let depth = self.depth;
        if depth >= self.column.dims.len() {
            return Err(refuse());
        }
        // A static axis bounds the list: past it the request is wrong, so stop reading (a
        // mis-shaped instance may be a whole maximal body).
        let most = self.column.static_dims[depth].unwrap_or(usize::MAX);
        let mut n = 0;
        while seq
            .next_element_seed(ValueSeed {
                column: &mut *self.column,
                depth: depth + 1,
            })?
            .is_some()
        {
            n += 1;
            if n > most {
                return Err(refuse());
            }
        }
        // An empty list above the last axis hides the shape below it (`infer_shape` stops there).
        if n == 0 && depth + 1 < self.column.dims.len() {
            return Err(refuse());
        }
        match &mut self.column.dims[depth] {
            Some(d) if *d != n => Err(refuse()),
            Some(_) => Ok(()),
            free => {
                *free = Some(n);
                Ok(())
            }
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        let number = serde_json::Number::from_f64(v).ok_or_else(refuse)?;
        self.scalar(Value::Number(number))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.scalar(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.scalar(Value::from(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.scalar(Value::Bool(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.scalar(Value::String(v.to_owned()))
    }
}

/// One input's values, accumulated instance by instance.
struct Column<'s> {
    spec: &'s TensorSpec,
    layout: Layout,
    /// Shape of one instance (axes after the batch axis, or every axis for whole tensors);
    /// dynamic axes fixed by the first instance.
    row_shape: Option<Vec<usize>>,
    rows: usize,
    data: TensorData,
}

impl<'s> Column<'s> {
    fn new(spec: &'s TensorSpec, layout: Layout) -> Column<'s> {
        Column {
            spec,
            layout,
            row_shape: None,
            rows: 0,
            data: TensorData::empty(spec.data_type),
        }
    }

    fn push(&mut self, value: &Value) -> Result<(), InputError> {
        let name = &self.spec.name;
        let mut shape = Vec::new();
        infer_shape(value, &mut shape);
        let expected = match self.layout {
            Layout::Rows => &self.spec.shape[1.min(self.spec.shape.len())..],
            Layout::Whole => &self.spec.shape[..],
        };
        // A flat list of scalars for a [N] input is allowed only as one scalar per instance.
        let fits = shape.len() == expected.len()
            && shape
                .iter()
                .zip(expected)
                .all(|(&d, e)| e.is_none_or(|e| e == d));
        if !fits {
            let per = match self.layout {
                Layout::Rows => " per instance",
                Layout::Whole => "",
            };
            return Err(InputError::new(format!(
                "input '{name}' has shape {shape:?}{per} but the model expects {:?}",
                expected
                    .iter()
                    .map(|d| d.map_or(-1, |d| d as i64))
                    .collect::<Vec<_>>()
            )));
        }
        match &self.row_shape {
            Some(first) if first != &shape => {
                return Err(InputError::new(format!(
                    "input '{name}' has shape {shape:?} but earlier instances have {first:?}"
                )));
            }
            Some(_) => {}
            None => self.row_shape = Some(shape),
        }
        push_leaves(value, &mut self.data)
            .map_err(|e| e.context(format_args!("input '{name}'")))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(self) -> Result<Tensor, InputError> {
        let mut shape = match self.layout {
            Layout::Rows => vec![self.rows],
            Layout::Whole => Vec::new(),
        };
        shape.extend(self.row_shape.unwrap_or_default());
        Tensor::new(shape, self.data)
    }
}

/// Shape of nested JSON arrays, following first elements (ragged arrays fail in `push_leaves`).
fn infer_shape(value: &Value, shape: &mut Vec<usize>) {
    if let Value::Array(items) = value {
        shape.push(items.len());
        if let Some(first) = items.first() {
            infer_shape(first, shape);
        }
    }
}

fn push_leaves(value: &Value, data: &mut TensorData) -> Result<(), InputError> {
    fn walk(
        value: &Value,
        depth: usize,
        shape: &[usize],
        data: &mut TensorData,
    ) -> Result<(), InputError> {
        match value {
            Value::Array(items) => {
                if shape.get(depth) != Some(&items.len()) {
                    return Err(InputError::new(
                        "ragged nested list (rows of different lengths)",
                    ));
                }
                items
                    .iter()
                    .try_for_each(|item| walk(item, depth + 1, shape, data))
            }
            scalar if depth == shape.len() => push_json_scalar(scalar, data),
            _ => Err(InputError::new(
                "ragged nested list (a scalar where a list was expected)",
            )),
        }
    }
    let mut shape = Vec::new();
    infer_shape(value, &mut shape);
    walk(value, 0, &shape, data)
}

/// The one conversion of a JSON scalar into a tensor element, for every protocol: integers
/// range-checked into integer types, numbers and the [`non_finite`] words into floats, strings
/// (and TF Serving's `{"b64": ...}`) into BYTES. Errors name what the value was.
pub fn push_json_scalar(value: &Value, data: &mut TensorData) -> Result<(), InputError> {
    let data_type = data.data_type();
    let mismatch = || {
        InputError::new(format!(
            "expected {data_type} value, got {}",
            json_kind(value)
        ))
    };
    macro_rules! int {
        ($v:expr, $ty:ty) => {{
            let n = value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from))
                .ok_or_else(mismatch)?;
            $v.push(
                <$ty>::try_from(n)
                    .map_err(|_| InputError::new(format!("{n} is out of range for {data_type}")))?,
            );
        }};
    }
    match data {
        TensorData::Bool(v) => v.push(value.as_bool().ok_or_else(mismatch)?),
        TensorData::Uint8(v) => int!(v, u8),
        TensorData::Uint16(v) => int!(v, u16),
        TensorData::Uint32(v) => int!(v, u32),
        TensorData::Uint64(v) => int!(v, u64),
        TensorData::Int8(v) => int!(v, i8),
        TensorData::Int16(v) => int!(v, i16),
        TensorData::Int32(v) => int!(v, i32),
        TensorData::Int64(v) => int!(v, i64),
        TensorData::Fp16(v) => v.push(half::f16::from_f64(float(value).ok_or_else(mismatch)?)),
        TensorData::Fp32(v) => v.push(float(value).ok_or_else(mismatch)? as f32),
        TensorData::Fp64(v) => v.push(float(value).ok_or_else(mismatch)?),
        TensorData::Bytes(v) => v.push(bytes_value(value).ok_or_else(mismatch)??),
    }
    Ok(())
}

/// A string, or TF Serving's `{"b64": "..."}` form of binary values (which must decode to UTF-8,
/// since ONNX string tensors are UTF-8).
fn bytes_value(value: &Value) -> Option<Result<String, InputError>> {
    use base64::Engine as _;
    match value {
        Value::String(s) => Some(Ok(s.clone())),
        Value::Object(map) if map.len() == 1 => {
            let encoded = map.get("b64")?.as_str()?;
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| {
                        InputError::new(format!("invalid base64 in {{\"b64\": ...}}: {e}"))
                    })
                    .and_then(|bytes| {
                        String::from_utf8(bytes)
                            .map_err(|_| InputError::new("{\"b64\": ...} value is not UTF-8 text"))
                    }),
            )
        }
        _ => None,
    }
}

/// A JSON number, or a string [`non_finite`] reads.
fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => non_finite(s),
        _ => None,
    }
}

/// The one reading of non-finite numbers in JSON, for every protocol: JSON has no literals for
/// them, so they come as the strings JavaScript and Python write (`NaN`, `Infinity`,
/// `-Infinity`) or numpy and TF print (`nan`, `inf`, `-inf`). Whether a model accepts them is
/// its `allow_nan` setting, checked after decoding.
pub fn non_finite(word: &str) -> Option<f64> {
    match word {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// How many values (scalars, lists and objects) a JSON text holds, counted in one pass that
/// allocates nothing, or `None` as soon as there are more than `limit`: what a `Value` tree of
/// the text would cost is known before it is built. Counting stops at a syntax error, which the
/// parse that follows reports.
pub fn json_nodes_within(text: &[u8], limit: usize) -> Option<usize> {
    let mut counter = NodeCounter { nodes: 0, limit };
    let mut de = serde_json::Deserializer::from_slice(text);
    let _ = (&mut counter).deserialize(&mut de);
    (counter.nodes <= limit).then_some(counter.nodes)
}

/// See [`json_nodes_within`]; `nodes` goes past `limit` by one when the limit stopped it.
struct NodeCounter {
    nodes: usize,
    limit: usize,
}

impl NodeCounter {
    fn count<E: serde::de::Error>(&mut self) -> std::result::Result<(), E> {
        self.nodes += 1;
        if self.nodes > self.limit {
            return Err(E::custom("too many values"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for &mut NodeCounter {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut NodeCounter {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        self.count()?;
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        self.count()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(&mut *self)?;
        }
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<(), E> {
        self.count()
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<(), E> {
        self.count()
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<(), E> {
        self.count()
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<(), E> {
        self.count()
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<(), E> {
        self.count()
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.count()
    }
}

/// How a JSON value reads in an error message.
pub fn json_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.len() <= 40 => format!("string \"{s}\""),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Row `row` of a tensor as nested JSON arrays (a scalar for `[N]` tensors).
pub struct RowView<'a> {
    /// The tensor.
    pub tensor: &'a Tensor,
    /// The row (instance) index.
    pub row: usize,
}

impl Serialize for RowView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let row_len = self.tensor.row_len();
        let dims = self.tensor.shape().get(1..).unwrap_or(&[]);
        let start = self.row * row_len;
        crate::with_tensor_data!(self.tensor.data(), v => Nested { values: &v[start..start + row_len], dims }.serialize(serializer))
    }
}

/// Row `row` of a `[N, C]` probabilities tensor as `{label: probability}` (a ZipMap's output).
struct ClassMap<'a> {
    row: RowView<'a>,
    labels: &'a [String],
}

impl Serialize for ClassMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let TensorData::Fp32(values) = self.row.tensor.data() else {
            return self.row.serialize(serializer);
        };
        let row_len = self.row.tensor.row_len();
        let start = self.row.row * row_len;
        let mut map = serializer.serialize_map(Some(self.labels.len()))?;
        for (label, p) in self.labels.iter().zip(&values[start..start + row_len]) {
            map.serialize_entry(label, p)?;
        }
        map.end()
    }
}

/// A whole tensor as nested JSON arrays (TF Serving's columnar `outputs` format).
pub struct TensorView<'a>(pub &'a Tensor);

impl Serialize for TensorView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let dims = self.0.shape();
        crate::with_tensor_data!(self.0.data(), v => Nested { values: v, dims }.serialize(serializer))
    }
}

/// A whole tensor as one flat JSON list, row-major (Open Inference Protocol `data`).
pub struct FlatView<'a>(pub &'a Tensor);

impl Serialize for FlatView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        crate::with_tensor_data!(self.0.data(), v => Nested { values: v, dims: &[v.len()] }.serialize(serializer))
    }
}

/// A row-major slice shaped by `dims`, serialized as nested sequences.
struct Nested<'a, T> {
    values: &'a [T],
    dims: &'a [usize],
}

impl<T: Scalar> Serialize for Nested<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self.dims.split_first() {
            None => self.values[0].serialize_scalar(serializer),
            Some((&n, rest)) => {
                let stride: usize = rest.iter().product();
                let mut seq = serializer.serialize_seq(Some(n))?;
                for i in 0..n {
                    seq.serialize_element(&Nested {
                        values: &self.values[i * stride..(i + 1) * stride],
                        dims: rest,
                    })?;
                }
                seq.end()
            }
        }
    }
}

/// Scalars serialize themselves; f16 goes out as f32 because JSON has no half type.
trait Scalar {
    fn serialize_scalar<S: Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error>;
}

macro_rules! scalar_via_serde {
    ($($ty:ty),*) => {$(
        impl Scalar for $ty {
            fn serialize_scalar<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                self.serialize(serializer)
            }
        }
    )*};
}
scalar_via_serde!(bool, u8, u16, u32, u64, i8, i16, i32, i64, f32, f64, String);

impl Scalar for half::f16 {
    fn serialize_scalar<S: Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_f32(self.to_f32())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::de::DeserializeSeed;
    use serde_json::Value;

    use super::{InstancesSeed, assert_fast_path_agrees, json_nodes_within, sampled};
    use crate::graph::TensorSpec;
    use crate::signature::Signature;
    use crate::tensor::DataType;

    fn signature(inputs: &[(&str, DataType, &[Option<usize>])]) -> Signature {
        Signature {
            name: "serving_default".into(),
            inputs: inputs
                .iter()
                .map(|(name, data_type, shape)| TensorSpec {
                    name: (*name).into(),
                    data_type: *data_type,
                    shape: shape.to_vec(),
                })
                .collect(),
            outputs: vec![],
            postprocess: vec![],
            class_maps: Default::default(),
        }
    }

    /// JSON built from the pieces instances are made of (and the wrong ones), nested a few
    /// levels, so that random cases reach the decoders' corners rather than their first check.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            (-3i64..300).prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec!["x", "NaN", "-inf", "1", "k1", ""])
                .prop_map(|s| Value::String(s.into())),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(4, 64, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec!["features", "key", "a", "b", "s", "b64"])
                        .prop_map(String::from),
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn fast_path_agrees_on_any_instances(
            instances in prop::collection::vec(json_value(), 0..4),
            which in 0usize..4,
        ) {
            let sigs = [
                signature(&[("features", DataType::Fp32, &[None, Some(3)])]),
                signature(&[("features", DataType::Int64, &[None, None])]),
                signature(&[("a", DataType::Uint8, &[None]), ("b", DataType::Bytes, &[None, Some(2)])]),
                signature(&[("s", DataType::Bool, &[None])]),
            ];
            let json = serde_json::to_string(&instances).unwrap();
            assert_fast_path_agrees(&sigs[which], json.as_bytes());
        }

        #[test]
        fn any_bytes_decode_alike_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let sig = signature(&[("features", DataType::Fp32, &[None, Some(3)])]);
            assert_fast_path_agrees(&sig, &bytes);
            let _ = json_nodes_within(&bytes, 10);
        }
    }

    #[test]
    fn json_nodes_are_counted_up_to_the_limit() {
        let text = br#"{"instances": [[1, 2.5, "x"], {"a": null, "b": [true]}], "k": "v"}"#;
        // The object, its list, [1, 2.5, "x"] (4), {"a", "b"} (4) and "v".
        assert_eq!(json_nodes_within(text, usize::MAX), Some(11));
        assert_eq!(json_nodes_within(text, 11), Some(11));
        assert_eq!(json_nodes_within(text, 10), None);
        // Counting stops at a syntax error; the real parse names it.
        assert_eq!(json_nodes_within(b"[1, 2, oops", usize::MAX), Some(3));
        let zeros = format!("[{}0]", "0,".repeat(1_000_000));
        assert_eq!(json_nodes_within(zeros.as_bytes(), 100), None);
    }

    /// A static axis stops the fast path as soon as a list outgrows it, before the rest of a
    /// (possibly huge) instance is read.
    #[test]
    fn fast_path_stops_at_a_static_axis() {
        let row3 = signature(&[("features", DataType::Fp32, &[None, Some(3)])]);
        let json = format!("[[{}0]]", "0,".repeat(100_000));
        let seed = InstancesSeed {
            inputs: &row3.inputs,
            key_name: "key",
            max_instances: usize::MAX,
        };
        let mut de = serde_json::Deserializer::from_str(&json);
        let err = seed.deserialize(&mut de).unwrap_err();
        assert!(err.column() < 20, "read on to column {}", err.column());
    }

    /// The fast path decodes exactly what the slow path accepts, to the same tensors, and
    /// refuses everything the slow path rejects.
    #[test]
    fn fast_path_agrees_with_decode_instances() {
        let row3 = signature(&[("features", DataType::Fp32, &[None, Some(3)])]);
        let dynamic = signature(&[("x", DataType::Fp32, &[None, None, None])]);
        let two = signature(&[
            ("a", DataType::Int64, &[None]),
            ("b", DataType::Bytes, &[None, Some(2)]),
        ]);
        let scalar = signature(&[("s", DataType::Fp64, &[None])]);
        let cases: &[(&Signature, &str)] = &[
            (&row3, r#"[{"features": [1, 2.5, -3e2]}]"#),
            (
                &row3,
                r#"[{"key": "k1", "features": [1, 2, 3]}, {"features": [4, 5, 6], "key": null}]"#,
            ),
            (
                &row3,
                r#"[{"key": "k", "features": [1, 2, 3]}, {"key": "k", "features": [4, 5, 6]}]"#,
            ),
            (&row3, r#"[[1, 2, 3], [4, 5, "NaN"]]"#),
            (&row3, r#"[]"#),
            (&row3, r#"[{"features": [1, 2]}]"#),
            (&row3, r#"[{"features": [1, 2, 3], "extra": 1}]"#),
            (&row3, r#"[{"key": 7, "features": [1, 2, 3]}]"#),
            (&row3, r#"[{"features": [1, 2, 3], "features": [4, 5, 6]}]"#),
            (&row3, r#"[{"features": [1, 2, "x"]}]"#),
            (&row3, r#"[{"features": [[1], 2, 3]}]"#),
            (&row3, r#"[{}]"#),
            (&row3, r#"[{"features": null}]"#),
            (
                &dynamic,
                r#"[{"x": [[1, 2], [3, 4]]}, {"x": [[5, 6], [7, 8]]}]"#,
            ),
            (&dynamic, r#"[{"x": [[1, 2], [3]]}]"#),
            (&dynamic, r#"[{"x": [[1, 2]]}, {"x": [[5, 6], [7, 8]]}]"#),
            (&dynamic, r#"[{"x": []}]"#),
            (&dynamic, r#"[{"x": [[]]}]"#),
            (
                &two,
                r#"[{"a": 1, "b": ["x", "y"]}, {"b": ["z", "w"], "a": -2}]"#,
            ),
            (&two, r#"[{"a": 1.5, "b": ["x", "y"]}]"#),
            (&two, r#"[{"a": 1, "b": ["x", {"b64": "eQ=="}]}]"#),
            (&two, r#"[{"a": 1}]"#),
            (&two, r#"[1]"#),
            (&scalar, r#"[1, 2.5, 3e300]"#),
            (&scalar, r#"[{"s": 1}, {"s": 2}]"#),
            (&scalar, r#"[[1]]"#),
            (&scalar, r#"[true]"#),
        ];
        for (sig, json) in cases {
            assert_fast_path_agrees(sig, json.as_bytes());
        }
        // The common forms take the fast path.
        for (sig, json) in [
            &cases[0], &cases[1], &cases[3], &cases[13], &cases[18], &cases[23],
        ] {
            let seed = InstancesSeed {
                inputs: &sig.inputs,
                key_name: "key",
                max_instances: usize::MAX,
            };
            let fast = seed.deserialize(&mut serde_json::Deserializer::from_str(json));
            assert!(fast.is_ok(), "{json}: {:?}", fast.err());
        }
    }

    #[test]
    fn sampling_by_key_is_stable_and_near_the_rate() {
        let kept = (0..10_000)
            .filter(|i| sampled(Some(&format!("key-{i}")), "r", 0, 0.25))
            .count();
        assert!((2_300..2_700).contains(&kept), "{kept}");
        for i in 0..100 {
            let key = format!("key-{i}");
            assert_eq!(
                sampled(Some(&key), "a", 0, 0.5),
                sampled(Some(&key), "b", 9, 0.5)
            );
        }
    }
}
