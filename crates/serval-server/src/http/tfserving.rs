//! TensorFlow Serving's REST API: `:predict` in row (`instances`) and columnar (`inputs`)
//! formats, version status and signature metadata, with version numbers and labels.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use serval_core::TensorData;
use serval_core::instances::{
    DecodedInstances, InstancesSeed, KeyedPredictions, RowView, TensorView, decode_instances,
    decode_whole, json_nodes_within,
};

use super::{
    AppState, JSON_NODE_BYTES, header_timeout, json_ok, parse_json, parse_json_tree,
    read_admitted_body,
};
use crate::budget::Reservation;
use crate::error::{Result, ServerError};
use crate::pipeline::{Decoded, Limits, RequestOptions, Target};
use crate::store::{ServedModel, VersionSelector};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/models",
            get(|| async { ServerError::BadRequest("Missing model name in request.".into()) }),
        )
        .route("/v1/models/{*rest}", get(get_model).post(post_model))
}

/// `<model>[/versions/<n>|/labels/<l>]` followed by `:verb` (POST) or `[/metadata]` (GET).
fn parse_target(path: &str) -> Result<Target> {
    let mut parts = path.split('/');
    let model = parts
        .next()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ServerError::BadRequest("Missing model name in request.".into()))?;
    let version = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => VersionSelector::Default,
        // TF Serving's grammar: versions are digits, labels go under /labels/.
        (Some("versions"), Some(v), None)
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) =>
        {
            VersionSelector::parse(Some(v))?
        }
        (Some("versions"), Some(v), None) => {
            return Err(ServerError::BadRequest(format!(
                "version '{v}' is not a positive integer"
            )));
        }
        (Some("labels"), Some(l), None) if !l.is_empty() => VersionSelector::Label(l.to_owned()),
        _ => {
            return Err(ServerError::NotFound(format!(
                "no route for /v1/models/{path}"
            )));
        }
    };
    Ok(Target {
        model: model.to_owned(),
        version,
        protocol: "tfserving",
    })
}

async fn get_model(State(state): State<AppState>, Path(rest): Path<String>) -> Result<Response> {
    let (path, metadata) = match rest.strip_suffix("/metadata") {
        Some(path) => (path, true),
        None => (rest.as_str(), false),
    };
    let target = parse_target(path)?;
    let served_model = state.pipeline.store().model(&target.model)?;
    if metadata {
        let served = served_model.resolve(&target.version)?;
        return json_ok(&metadata_json(&served_model, &served.model));
    }
    let versions: Vec<u64> = match &target.version {
        VersionSelector::Default => served_model.versions.keys().copied().collect(),
        selector => vec![served_model.resolve(selector)?.model.version()],
    };
    let mut statuses: Vec<Value> = versions
        .iter()
        .map(|v| json!({"version": v.to_string(), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}))
        .collect();
    if target.version == VersionSelector::Default {
        // Versions that failed to load are reported with their error, as TF Serving does.
        for failed in state
            .pipeline
            .store()
            .index()
            .into_iter()
            .filter(|s| s.name == target.model && s.state == "UNAVAILABLE")
        {
            statuses.push(json!({"version": failed.version.to_string(), "state": "END", "status": {"error_code": "UNKNOWN", "error_message": failed.reason}}));
        }
    }
    json_ok(&json!({ "model_version_status": statuses }))
}

/// `POST /v1/models/<m>/labels` with `{"labels": [{"key": k, "label": l}, ...]}`: ground truth
/// for predictions made earlier, joined to them by key. All entries or none are recorded.
async fn post_labels(
    state: AppState,
    model: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LabelsRequest {
        labels: Vec<Map<String, Value>>,
    }
    let body = read_admitted_body(&headers, body, &state.pipeline).await?;
    let request: LabelsRequest = parse_json_tree(&body.bytes, &body.memory)?;
    let mut labels = Vec::with_capacity(request.labels.len());
    for (i, entry) in request.labels.iter().enumerate() {
        let bad = |why: String| {
            ServerError::BadRequest(format!(
                "labels[{i}]: {why}; no label of this request was recorded"
            ))
        };
        if let Some(field) = entry.keys().find(|k| *k != "key" && *k != "label") {
            return Err(bad(format!(
                "unknown field '{field}' (expected 'key' and 'label')"
            )));
        }
        let key = match entry.get("key") {
            Some(Value::String(key)) if !key.is_empty() => key.clone(),
            Some(Value::String(_)) => return Err(bad("'key' is empty".into())),
            Some(_) => return Err(bad("'key' must be a string".into())),
            None => return Err(bad("'key' is missing".into())),
        };
        let label = entry
            .get("label")
            .ok_or_else(|| bad("'label' is missing".into()))
            .and_then(|v| serval_log::Label::from_json(v).map_err(bad))?;
        labels.push((key, label));
    }
    let accepted = labels.len();
    state.pipeline.record_labels(model, labels).await?;
    json_ok(&json!({ "accepted": accepted }))
}

fn metadata_json(served_model: &ServedModel, model: &serval_core::Model) -> Value {
    let tensor_info = |specs: &[serval_core::TensorSpec]| -> Value {
        specs
            .iter()
            .map(|s| {
                let dims: Vec<Value> = s.shape_i64().iter().map(|d| json!({"size": d.to_string(), "name": ""})).collect();
                (s.name.clone(), json!({"dtype": s.data_type.tf_name(), "tensor_shape": {"dim": dims, "unknown_rank": false}, "name": s.name}))
            })
            .collect::<Map<String, Value>>()
            .into()
    };
    let signatures: Map<String, Value> = model
        .signatures()
        .iter()
        .map(|sig| {
            (sig.name.clone(), json!({"inputs": tensor_info(&sig.inputs), "outputs": tensor_info(&sig.outputs), "method_name": "tensorflow/serving/predict"}))
        })
        .collect();
    json!({
        "model_spec": {"name": served_model.name, "signature_name": "", "version": model.version().to_string()},
        "metadata": {"signature_def": {"signature_def": signatures}}
    })
}

/// A `:predict` body, its bulk left as text until its `Value` tree is known to be affordable.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest<'a> {
    signature_name: Option<String>,
    #[serde(borrow)]
    instances: Option<&'a RawValue>,
    #[serde(borrow)]
    inputs: Option<&'a RawValue>,
}

async fn post_model(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    if let Some(model) = rest.strip_suffix("/labels").filter(|m| !m.contains('/')) {
        return post_labels(state, model, headers, body).await;
    }
    let Some((path, verb)) = rest.rsplit_once(':') else {
        return Err(ServerError::NotFound(format!(
            "no route for POST /v1/models/{rest}; use :predict"
        )));
    };
    let target = parse_target(path)?;
    match verb {
        "predict" => {}
        "classify" | "regress" => {
            return classify_or_regress(state, target, verb == "classify", headers, body).await;
        }
        _ => {
            return Err(ServerError::BadRequest(format!(
                "':{verb}' is not supported; use ':predict', ':classify' or ':regress'"
            )));
        }
    }
    let body = read_admitted_body(&headers, body, &state.pipeline).await?;
    let options = RequestOptions {
        timeout: header_timeout(&headers)?,
        ..RequestOptions::default()
    };
    let limits = state.pipeline.limits();
    let mut columnar = false;
    let mut warnings = Vec::new();
    let response = state
        .pipeline
        .predict(target, &body.memory, |model| {
            let (signature, decoded, is_columnar) = match decode_fast(&body.bytes, model, limits) {
                Some((signature, decoded)) => (signature, decoded, false),
                None => decode_slow(&body.bytes, model, limits, &body.memory)?,
            };
            columnar = is_columnar;
            warnings = decoded.warnings;
            Ok(Decoded {
                signature: Some(signature),
                inputs: decoded.inputs,
                keys: Some(decoded.keys),
                options: options.clone(),
            })
        })
        .await?;
    let version_answered = response.version();
    // ZipMap outputs go out as `{label: probability}` per instance, labelled as the answering
    // version declares them.
    let class_maps = response
        .model
        .signature(Some(&response.signature))
        .map(|s| s.class_maps.clone())
        .unwrap_or_default();
    let precomputed_at = response.precomputed_at;
    let keyed = KeyedPredictions {
        key_name: response.key_name,
        keys: response.keys,
        outputs: response.outputs,
        warnings,
        class_maps,
        // Row-format instances stack on axis 0 for every model (TF Serving's rule); columnar
        // outputs go out whole anyway.
        whole: false,
    };
    // TF Serving drops the name of a single output; keyed predictions need named fields.
    let bare = keyed.outputs.len() == 1 && keyed.keys.iter().all(Option::is_none);
    let body = PredictResponse {
        predictions: (!columnar).then_some(RowPredictions {
            keyed: &keyed,
            bare,
        }),
        outputs: columnar.then_some(ColumnarOutputs {
            keyed: &keyed,
            bare,
        }),
        warnings: &keyed.warnings,
    };
    let mut response = json_ok(&body)?;
    response.headers_mut().insert(
        super::VERSION_HEADER,
        axum::http::HeaderValue::from(version_answered),
    );
    super::mark_precomputed(&mut response, precomputed_at.as_deref());
    Ok(response)
}

/// The common request, `{"instances": [...]}` with an optional `signature_name`, decoded in one
/// pass without `serde_json::Value`s into the signature's name and its inputs. `None` for
/// anything else, valid or not: the slow path decides (and names the error), so both paths
/// answer every request the same way.
fn decode_fast(
    bytes: &[u8],
    model: &serval_core::Model,
    limits: &Limits,
) -> Option<(String, DecodedInstances)> {
    let default = model.signature(None).ok()?;
    let seed = FastRequest(InstancesSeed {
        inputs: &default.inputs,
        key_name: &model.config().key,
        max_instances: limits.max_instances,
    });
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (name, decoded) = seed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    // Every signature of a model has the graph's inputs; decoding used the default's.
    let signature = model.signature(name.as_deref()).ok()?;
    (signature.inputs == default.inputs).then(|| (signature.name.clone(), decoded))
}

/// The top level of a fast-path request: `signature_name` and `instances`, nothing else.
struct FastRequest<'a>(InstancesSeed<'a>);

impl<'de> DeserializeSeed<'de> for FastRequest<'_> {
    type Value = (Option<String>, DecodedInstances);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FastRequest<'_> {
    type Value = (Option<String>, DecodedInstances);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a predict request")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut seed = Some(self.0);
        let mut signature_name = None;
        let mut decoded = None;
        while let Some(field) = map.next_key::<&'de str>()? {
            match field {
                "signature_name" if signature_name.is_none() => {
                    signature_name = Some(map.next_value::<String>()?);
                }
                "instances" => match seed.take() {
                    Some(seed) => decoded = Some(map.next_value_seed(seed)?),
                    None => return Err(A::Error::custom("duplicate field")),
                },
                _ => return Err(A::Error::custom("not a fast-path field")),
            }
        }
        let decoded = decoded.ok_or_else(|| A::Error::custom("no instances"))?;
        Ok((signature_name, decoded))
    }
}

/// Any request, through `serde_json::Value`: every error is reported here, in the order the
/// checks have always run (JSON, signature, request form, size, instances). The tree is built
/// only once it is known to fit: within what the model takes in one request where its shapes
/// are static (413 beyond, found without reading further), and within the memory budget.
fn decode_slow(
    bytes: &[u8],
    model: &serval_core::Model,
    limits: &Limits,
    memory: &Reservation,
) -> Result<(String, DecodedInstances, bool)> {
    let request: PredictRequest = parse_json(bytes)?;
    let signature = model
        .signature(request.signature_name.as_deref())
        .map_err(ServerError::from)?;
    let key_name = &model.config().key;
    let (raw, columnar) = match (request.instances, request.inputs) {
        (Some(_), Some(_)) => {
            return Err(ServerError::BadRequest(
                "expecting only one of 'inputs' or 'instances' keys".into(),
            ));
        }
        (None, None) => {
            return Err(ServerError::BadRequest(
                "missing 'instances' or 'inputs' in request".into(),
            ));
        }
        (Some(instances), None) => (instances, false),
        (None, Some(inputs)) => (inputs, true),
    };
    let most = most_json_nodes(model, signature, limits);
    let nodes =
        json_nodes_within(raw.get().as_bytes(), most.unwrap_or(usize::MAX)).ok_or_else(|| {
            ServerError::PayloadTooLarge(format!(
                "'{}' holds more values than model '{}' takes in one request ({} instances of \
                 its inputs {}, at most)",
                if columnar { "inputs" } else { "instances" },
                model.name(),
                limits.max_instances,
                signature.input_names()
            ))
        })?;
    memory.grow(nodes.saturating_mul(JSON_NODE_BYTES) + raw.get().len())?;
    // The text is valid JSON by now (`RawValue` checked it); only the nesting limit is left.
    let tree = |raw: &RawValue| -> Result<Value> {
        serde_json::from_str(raw.get())
            .map_err(|e| ServerError::BadRequest(format!("malformed JSON request: {e}")))
    };
    let instances = match columnar {
        false => match tree(raw)? {
            Value::Array(instances) => instances,
            other => {
                return Err(ServerError::BadRequest(format!(
                    "'instances' must be a list, got {}",
                    serval_core::instances::json_kind(&other)
                )));
            }
        },
        true if !model.is_batchable() => {
            // A model that does not batch takes columnar inputs as the whole tensors they are.
            let request = match tree(raw)? {
                Value::Object(map) => Value::Object(map),
                bare if signature.inputs.len() == 1 => {
                    json!({ signature.inputs[0].name.clone(): bare })
                }
                _ => {
                    return Err(ServerError::BadRequest(format!(
                        "'inputs' must be an object naming the model's inputs ({})",
                        signature.input_names()
                    )));
                }
            };
            let decoded =
                decode_whole(signature, key_name, &request).map_err(serval_core::Error::from)?;
            return Ok((signature.name.clone(), decoded, true));
        }
        true => columnar_to_instances(tree(raw)?, signature, key_name)?,
    };
    // Before decoding: the tensors would cost memory the limit is there to bound.
    limits.check_instances(instances.len())?;
    let decoded = decode_instances(signature, key_name, &instances).map_err(|e| {
        if model.is_batchable() {
            return serval_core::Error::from(e);
        }
        serval_core::InputError::new(format!(
            "{e}; model '{}' does not batch (no shared leading batch axis): send its whole \
             tensors as columnar 'inputs'",
            model.name()
        ))
        .into()
    })?;
    Ok((signature.name.clone(), decoded, columnar))
}

/// The most JSON values a valid request for `signature` can hold, when its inputs' shapes are
/// static: each instance an object with its key and every input as nested lists, up to the
/// instance limit. `None` when an axis is dynamic (then only the memory budget bounds it).
fn most_json_nodes(
    model: &serval_core::Model,
    signature: &serval_core::Signature,
    limits: &Limits,
) -> Option<usize> {
    let skip = usize::from(model.is_batchable());
    let mut per_instance = 2usize; // the instance's object and its key
    for spec in &signature.inputs {
        // Each level of nesting is one list per element of the levels above it.
        let mut level = 1usize;
        for dim in spec.shape.iter().skip(skip) {
            per_instance = per_instance.checked_add(level)?;
            level = level.checked_mul((*dim)?)?;
        }
        per_instance = per_instance.checked_add(level)?;
    }
    let instances = if model.is_batchable() {
        limits.max_instances
    } else {
        1
    };
    // The outer list or object, and one list per input for columnar requests.
    per_instance
        .checked_mul(instances)?
        .checked_add(2 + signature.inputs.len())
}

/// A `:predict` response, serialized straight from the output tensors (f32 stays f32).
#[derive(Serialize)]
struct PredictResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<RowPredictions<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<ColumnarOutputs<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// Row format: one entry per instance, a bare value when `bare`.
struct RowPredictions<'a> {
    keyed: &'a KeyedPredictions,
    bare: bool,
}

impl Serialize for RowPredictions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let rows = self.keyed.len();
        let mut seq = serializer.serialize_seq(Some(rows))?;
        for row in 0..rows {
            if self.bare {
                seq.serialize_element(&RowView {
                    tensor: &self.keyed.outputs[0].1,
                    row,
                })?;
            } else {
                seq.serialize_element(&self.keyed.row(row))?;
            }
        }
        seq.end()
    }
}

/// Columnar format: one tensor per output (plus the keys), a bare tensor when `bare`.
struct ColumnarOutputs<'a> {
    keyed: &'a KeyedPredictions,
    bare: bool,
}

impl Serialize for ColumnarOutputs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if self.bare {
            return TensorView(&self.keyed.outputs[0].1).serialize(serializer);
        }
        let mut map = serializer.serialize_map(None)?;
        if self.keyed.keys.iter().any(Option::is_some) {
            map.serialize_entry(&self.keyed.key_name, &self.keyed.keys)?;
        }
        for (name, tensor) in &self.keyed.outputs {
            map.serialize_entry(name, &TensorView(tensor))?;
        }
        map.end()
    }
}

/// Columnar `inputs` (one tensor per input, axis 0 = instance) as row instances.
fn columnar_to_instances(
    inputs: Value,
    signature: &serval_core::Signature,
    key_name: &str,
) -> Result<Vec<Value>> {
    let columns: Map<String, Value> = match inputs {
        Value::Object(map)
            if map
                .keys()
                .all(|k| k == key_name || signature.inputs.iter().any(|s| &s.name == k)) =>
        {
            map
        }
        bare if signature.inputs.len() == 1 => {
            Map::from_iter([(signature.inputs[0].name.clone(), bare)])
        }
        _ => {
            return Err(ServerError::BadRequest(format!(
                "'inputs' must be an object naming the model's inputs ({})",
                signature.input_names()
            )));
        }
    };
    let mut rows: Option<usize> = None;
    for (name, value) in &columns {
        let Value::Array(items) = value else {
            return Err(ServerError::BadRequest(format!(
                "input '{name}' must be a list with one entry per instance"
            )));
        };
        match rows {
            Some(n) if n != items.len() => {
                return Err(ServerError::BadRequest(format!(
                    "input '{name}' has {} instances, others have {n}",
                    items.len()
                )));
            }
            _ => rows = Some(items.len()),
        }
    }
    let rows = rows.unwrap_or(0);
    let mut instances: Vec<Map<String, Value>> = vec![Map::new(); rows];
    for (name, value) in columns {
        if let Value::Array(items) = value {
            for (instance, item) in instances.iter_mut().zip(items) {
                instance.insert(name.clone(), item);
            }
        }
    }
    Ok(instances.into_iter().map(Value::Object).collect())
}

/// TF Serving's Classify and Regress request: `examples` (feature objects, like row-format
/// instances) with `context` features shared by all of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExamplesRequest {
    signature_name: Option<String>,
    #[serde(default)]
    context: Map<String, Value>,
    examples: Vec<Map<String, Value>>,
}

/// `:classify` answers `{"result": [[[label, score], ...], ...]}` from the signature's one
/// `[N, C]` float output (labels from a ZipMap's classes or `class_labels`, else class indices);
/// `:regress` answers `{"result": [value, ...]}` from its one `[N]` or `[N, 1]` float output.
async fn classify_or_regress(
    state: AppState,
    target: Target,
    classify: bool,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_admitted_body(&headers, body, &state.pipeline).await?;
    let request: ExamplesRequest = parse_json_tree(&body.bytes, &body.memory)?;
    state
        .pipeline
        .limits()
        .check_instances(request.examples.len())?;
    let verb = if classify { "classify" } else { "regress" };
    let options = RequestOptions {
        timeout: header_timeout(&headers)?,
        ..RequestOptions::default()
    };
    let instances: Vec<Value> = request
        .examples
        .iter()
        .map(|example| {
            let mut example = example.clone();
            for (name, value) in &request.context {
                example.entry(name.clone()).or_insert_with(|| value.clone());
            }
            Value::Object(example)
        })
        .collect();
    let model_name = target.model.clone();
    let mut scores_name = String::new();
    let response = state
        .pipeline
        .predict(target, &body.memory, |model| {
            let signature = model
                .signature(request.signature_name.as_deref())
                .map_err(ServerError::from)?;
            scores_name = scores_output(signature, classify, verb, &model_name)?;
            let decoded = decode_instances(signature, &model.config().key, &instances)
                .map_err(serval_core::Error::from)?;
            Ok(Decoded {
                signature: Some(signature.name.clone()),
                inputs: decoded.inputs,
                keys: Some(decoded.keys),
                options: options.clone(),
            })
        })
        .await?;
    let labels = response
        .model
        .signature(Some(&response.signature))
        .ok()
        .and_then(|s| s.class_maps.get(&scores_name).cloned())
        .unwrap_or_else(|| response.model.config().class_labels.clone());
    let Some((_, tensor)) = response.outputs.iter().find(|(n, _)| *n == scores_name) else {
        return Err(ServerError::Core(serval_core::Error::Inference {
            model: model_name,
            version: response.version(),
            reason: format!("output '{scores_name}' missing from the reply. This is a bug."),
        }));
    };
    let values: Vec<Score> = match tensor.data() {
        TensorData::Fp32(v) => v.iter().copied().map(Score::F32).collect(),
        TensorData::Fp64(v) => v.iter().copied().map(Score::F64).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| Score::F32(x.to_f32())).collect(),
        other => {
            return Err(ServerError::Core(serval_core::Error::Inference {
                model: model_name,
                version: response.version(),
                reason: format!("output '{scores_name}' is {}, not float", other.data_type()),
            }));
        }
    };
    let result = if classify {
        let classes = values.len() / response.keys.len().max(1);
        ExamplesResult::Classes(
            values
                .chunks(classes.max(1))
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .map(|(c, &p)| {
                            let label = labels.get(c).cloned().unwrap_or_else(|| c.to_string());
                            (label, p)
                        })
                        .collect()
                })
                .collect(),
        )
    } else {
        ExamplesResult::Values(values)
    };
    let mut res = json_ok(&ExamplesResponse { result })?;
    res.headers_mut().insert(
        super::VERSION_HEADER,
        axum::http::HeaderValue::from(response.version()),
    );
    Ok(res)
}

/// The one float output `:classify` (`[N, C]`) or `:regress` (`[N]` or `[N, 1]`) reads.
fn scores_output(
    signature: &serval_core::Signature,
    classify: bool,
    verb: &str,
    model: &str,
) -> Result<String> {
    let floats = |want: fn(&[Option<usize>]) -> bool| -> Vec<&serval_core::TensorSpec> {
        signature
            .outputs
            .iter()
            .filter(|o| o.data_type.is_float() && want(&o.shape))
            .collect()
    };
    let scores = if classify {
        floats(|s| s.len() == 2 && s[1] != Some(1))
    } else {
        floats(|s| s.len() == 1 || (s.len() == 2 && s[1] == Some(1)))
    };
    match scores.as_slice() {
        [scores] => Ok(scores.name.clone()),
        _ => Err(ServerError::BadRequest(format!(
            "':{verb}' needs signature '{}' of model '{model}' to have exactly one {} float \
             output, it has {}; use ':predict'",
            signature.name,
            if classify { "[N, C]" } else { "[N] or [N, 1]" },
            scores.len()
        ))),
    }
}

/// A score as the engine computed it (f32 stays f32 in JSON, as in `:predict`).
#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
enum Score {
    F32(f32),
    F64(f64),
}

/// Serialized from the scores directly: a `serde_json::Value` would widen f32 to f64 digits.
#[derive(Serialize)]
struct ExamplesResponse {
    result: ExamplesResult,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ExamplesResult {
    /// Per example, `[label, score]` for every class.
    Classes(Vec<Vec<(String, Score)>>),
    /// Per example, the regression value.
    Values(Vec<Score>),
}
