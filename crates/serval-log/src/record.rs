//! What is logged: one record per instance, built on the writer thread from a request's tensors.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serval_core::Tensor;
use serval_core::instances::{RowView, TensorView, sampled};

use crate::error::LogError;

/// Where a prediction was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The online server.
    Online,
    /// `serval batch`.
    Batch,
    /// The edge runtime.
    Edge,
}

impl Source {
    /// The label stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Online => "online",
            Source::Batch => "batch",
            Source::Edge => "edge",
        }
    }
}

/// One request's predictions as the pipeline hands them over; the writer thread splits them
/// into one [`PredictionRecord`] per instance, so the request path pays no serialization.
pub struct LoggedRequest {
    /// Model name.
    pub model: String,
    /// Version that answered.
    pub version: u64,
    /// Signature that ran.
    pub signature: String,
    /// When it was answered, µs since the Unix epoch (UTC).
    pub timestamp_us: i64,
    /// Each instance's own time, overriding `timestamp_us` (`serval batch --time-column`:
    /// back-testing over history).
    pub instance_timestamps_us: Option<Vec<i64>>,
    /// The request's id (the client's, else minted).
    pub request_id: String,
    /// Protocol it came through (`tfserving`, `v2_rest`, `v2_grpc`, `batch`).
    pub protocol: &'static str,
    /// Where it was made.
    pub source: Source,
    /// Each instance's key (`None` only when minting is off and the client sent none).
    pub keys: Vec<Option<String>>,
    /// Inputs by name, when logged.
    pub inputs: Option<Vec<(String, Tensor)>>,
    /// Outputs by name (after post-processing), when logged.
    pub outputs: Option<Vec<(String, Tensor)>>,
    /// Whether axis 0 of the tensors is the instance axis (else the request is one instance).
    pub batched: bool,
    /// Time queued for an engine thread, µs.
    pub queue_us: u64,
    /// Engine time, µs.
    pub compute_us: u64,
    /// Share of instances to keep, 0 to 1, chosen by key.
    pub sample_rate: f64,
}

/// One logged instance, as a segment stores it (JSON) and Parquet columns hold it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// The instance's key.
    pub key: Option<String>,
    /// Model name.
    pub model: String,
    /// Version that answered.
    pub version: u64,
    /// Signature that ran.
    pub signature: String,
    /// µs since the Unix epoch (UTC).
    pub ts_us: i64,
    /// The request's id.
    pub request_id: String,
    /// Protocol.
    pub protocol: String,
    /// Where it was made.
    pub source: Source,
    /// Queue time, µs.
    pub queue_us: u64,
    /// Engine time, µs.
    pub compute_us: u64,
    /// Inputs as a JSON object `{name: value}`.
    pub inputs: Option<Box<RawValue>>,
    /// Outputs as a JSON object `{name: value}`.
    pub outputs: Option<Box<RawValue>>,
}

impl LoggedRequest {
    /// Instances in the request: one for a model that does not batch.
    pub fn instances(&self) -> usize {
        if self.batched { self.keys.len() } else { 1 }
    }

    /// The records of the sampled instances, serialized for a segment.
    pub(crate) fn records(&self) -> Result<Vec<Vec<u8>>, LogError> {
        let instances = self.instances();
        let mut out = Vec::with_capacity(instances);
        for row in 0..instances {
            let key = self.keys.get(row).cloned().flatten();
            if !sampled(key.as_deref(), &self.request_id, row, self.sample_rate) {
                continue;
            }
            let view = |tensors: &Option<Vec<(String, Tensor)>>| -> Result<_, LogError> {
                tensors
                    .as_ref()
                    .map(|tensors| {
                        let instance = Instance {
                            tensors,
                            row: self.batched.then_some(row),
                        };
                        serde_json::value::to_raw_value(&instance).map_err(encode_error)
                    })
                    .transpose()
            };
            let record = PredictionRecord {
                key,
                model: self.model.clone(),
                version: self.version,
                signature: self.signature.clone(),
                ts_us: self
                    .instance_timestamps_us
                    .as_ref()
                    .and_then(|t| t.get(row).copied())
                    .unwrap_or(self.timestamp_us),
                request_id: self.request_id.clone(),
                protocol: self.protocol.to_owned(),
                source: self.source,
                queue_us: self.queue_us,
                compute_us: self.compute_us,
                inputs: view(&self.inputs)?,
                outputs: view(&self.outputs)?,
            };
            out.push(serde_json::to_vec(&Entry::Prediction(record)).map_err(encode_error)?);
        }
        Ok(out)
    }
}

/// Ground truth for one key, as a client or a file gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// The text of the label: a class name, or a number or boolean as written.
    pub text: String,
    /// Its numeric value when it has one (a number, `true`/`false` as 1/0, or numeric text),
    /// so a label joins a class index or a regression output without a cast.
    pub value: Option<f64>,
}

impl Label {
    /// A label from JSON: a string, a finite number or a boolean.
    pub fn from_json(value: &serde_json::Value) -> Result<Label, String> {
        match value {
            serde_json::Value::String(text) => Ok(Label::text(text.clone())),
            serde_json::Value::Number(n) => match n.as_f64().filter(|v| v.is_finite()) {
                Some(v) => Ok(Label {
                    text: n.to_string(),
                    value: Some(v),
                }),
                None => Err(format!("label {n} is not a finite number")),
            },
            serde_json::Value::Bool(b) => Ok(Label {
                text: b.to_string(),
                value: Some(f64::from(u8::from(*b))),
            }),
            other => Err(format!(
                "label must be a string, a number or a boolean, not {}",
                json_kind(other)
            )),
        }
    }

    /// A label from text, numeric when the text is a finite number.
    pub fn text(text: String) -> Label {
        let value = text.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        Label { text, value }
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Labels for one model received together: one record per key, all with one timestamp.
pub struct LabelBatch {
    /// Model the keys were predicted by.
    pub model: String,
    /// When they were received, µs since the Unix epoch (UTC).
    pub timestamp_us: i64,
    /// `(key, label)`, a key at most once.
    labels: Vec<(String, Label)>,
}

impl LabelBatch {
    /// Labels received together; of a key given more than once, the last counts (a later label
    /// replaces an earlier one, here as across batches).
    pub fn new(model: String, timestamp_us: i64, labels: Vec<(String, Label)>) -> LabelBatch {
        let mut last: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(labels.len());
        for (i, (key, _)) in labels.iter().enumerate() {
            last.insert(key, i);
        }
        let keep: Vec<bool> = labels
            .iter()
            .enumerate()
            .map(|(i, (key, _))| last.get(key.as_str()) == Some(&i))
            .collect();
        let labels = labels
            .into_iter()
            .zip(keep)
            .filter_map(|(label, keep)| keep.then_some(label))
            .collect();
        LabelBatch {
            model,
            timestamp_us,
            labels,
        }
    }

    /// Distinct keys labelled.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub(crate) fn records(&self) -> Result<Vec<Vec<u8>>, LogError> {
        self.labels
            .iter()
            .map(|(key, label)| {
                let record = LabelRecord {
                    key: key.clone(),
                    model: self.model.clone(),
                    label: label.text.clone(),
                    value: label.value,
                    ts_us: self.timestamp_us,
                };
                serde_json::to_vec(&Entry::Label(record)).map_err(encode_error)
            })
            .collect()
    }
}

/// One key's label, as a segment stores it.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabelRecord {
    /// The key it labels.
    pub key: String,
    /// Model name.
    pub model: String,
    /// The label's text.
    pub label: String,
    /// Its numeric value, if any.
    pub value: Option<f64>,
    /// When it was received, µs since the Unix epoch (UTC).
    pub ts_us: i64,
}

/// A segment record: which table it belongs to, and its row. Externally tagged, so a reader
/// dispatches without buffering (the inputs and outputs stay raw JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Entry {
    Prediction(PredictionRecord),
    Label(LabelRecord),
}

fn encode_error(e: serde_json::Error) -> LogError {
    LogError::Encode(e.to_string())
}

/// One instance's tensors as `{name: value}`: row `row` of each, or each whole.
struct Instance<'a> {
    tensors: &'a [(String, Tensor)],
    row: Option<usize>,
}

impl Serialize for Instance<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.tensors.len()))?;
        for (name, tensor) in self.tensors {
            match self.row {
                Some(row) => map.serialize_entry(name, &RowView { tensor, row })?,
                None => map.serialize_entry(name, &TensorView(tensor))?,
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serval_core::TensorData;

    fn request(sample_rate: f64) -> LoggedRequest {
        let features = Tensor::new(vec![2, 2], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0])).unwrap();
        let label = Tensor::new(vec![2], TensorData::Bytes(vec!["a".into(), "b".into()])).unwrap();
        LoggedRequest {
            model: "m".into(),
            version: 3,
            signature: "serving_default".into(),
            timestamp_us: 1_700_000_000_000_000,
            instance_timestamps_us: None,
            request_id: "r".into(),
            protocol: "v2_rest",
            source: Source::Online,
            keys: vec![Some("k0".into()), None],
            inputs: Some(vec![("features".into(), features)]),
            outputs: Some(vec![("label".into(), label)]),
            batched: true,
            queue_us: 5,
            compute_us: 7,
            sample_rate,
        }
    }

    #[test]
    fn one_record_per_instance_with_its_row() {
        let records = request(1.0).records().unwrap();
        assert_eq!(records.len(), 2);
        let Entry::Prediction(second) = serde_json::from_slice(&records[1]).unwrap() else {
            panic!("a prediction was logged as a label");
        };
        assert_eq!(second.key, None);
        assert_eq!(second.inputs.unwrap().get(), r#"{"features":[3.0,4.0]}"#);
        assert_eq!(second.outputs.unwrap().get(), r#"{"label":"b"}"#);
        assert_eq!(
            (second.version, second.queue_us, second.compute_us),
            (3, 5, 7)
        );
    }

    #[test]
    fn a_request_that_does_not_batch_is_one_record_of_whole_tensors() {
        let mut r = request(1.0);
        r.batched = false;
        let records = r.records().unwrap();
        assert_eq!(records.len(), 1);
        let Entry::Prediction(only) = serde_json::from_slice(&records[0]).unwrap() else {
            panic!("a prediction was logged as a label");
        };
        assert_eq!(
            only.inputs.unwrap().get(),
            r#"{"features":[[1.0,2.0],[3.0,4.0]]}"#
        );
    }

    #[test]
    fn labels_are_text_with_a_numeric_value_when_they_have_one() {
        let label = |v: serde_json::Value| Label::from_json(&v);
        assert_eq!(label(json!("setosa")).unwrap().value, None);
        assert_eq!(label(json!(3.5)).unwrap().text, "3.5");
        assert_eq!(label(json!(2)).unwrap().value, Some(2.0));
        assert_eq!(label(json!("2")).unwrap().value, Some(2.0));
        assert_eq!(label(json!(true)).unwrap().value, Some(1.0));
        assert!(label(json!(null)).unwrap_err().contains("not null"));
        assert!(label(json!([1])).unwrap_err().contains("an array"));
        assert_eq!(Label::text("nan".into()).value, None);
    }

    #[test]
    fn label_records_name_their_table_and_the_last_label_of_a_key_counts() {
        let text = |t: &str| Label::text(t.into());
        let batch = LabelBatch::new(
            "m".into(),
            1,
            vec![
                ("k".into(), text("a")),
                ("j".into(), text("b")),
                ("k".into(), text("c")),
            ],
        );
        let records = batch.records().unwrap();
        let labels: Vec<(String, String)> = records
            .iter()
            .map(|r| match serde_json::from_slice(r).unwrap() {
                Entry::Label(l) => (l.key, l.label),
                Entry::Prediction(_) => panic!("a label was logged as a prediction"),
            })
            .collect();
        assert_eq!(labels, [("j".into(), "b".into()), ("k".into(), "c".into())]);
    }

    #[test]
    fn a_sample_rate_of_zero_logs_nothing() {
        assert!(request(0.0).records().unwrap().is_empty());
    }
}
