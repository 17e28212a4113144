//! OIP `infer` over REST, JSON or with Triton's binary tensor extension: decodes the request's
//! tensors and encodes the pipeline's prediction, nothing in between.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use serval_core::Tensor;
use serval_core::instances::FlatView;

use super::ModelPath;
use crate::codec;
use crate::error::{Result, ServerError};
use crate::http::{AppState, Object, header_timeout, json_bytes, parse_json, read_admitted_body};
use crate::pipeline::{Decoded, Limits, RequestOptions, Target, take_key_tensor};
use crate::store::VersionSelector;

/// Header giving the JSON part's length when binary tensor data follows it.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// An `infer` request's JSON part; each input's `data` stays raw text until it is decoded
/// into its tensor, so no tree of values is ever built from a request's bulk.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InferRequestBody<'a> {
    id: Option<String>,
    /// KServe's client names the model in the body as well as in the path.
    model_name: Option<String>,
    model_version: Option<String>,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(borrow)]
    inputs: Vec<Object<InputTensor<'a>>>,
    #[serde(borrow)]
    outputs: Option<Vec<Object<RequestedOutput<'a>>>>,
}

/// OIP `parameters`: names to booleans, numbers or strings, as the protocol defines them. Kept
/// as raw text (borrowed from the body) and read only by name, so a huge list in a parameter
/// costs nothing until it is refused.
type Parameters<'a> = std::collections::HashMap<String, &'a RawValue>;

/// Parameter `name` read by `read`, or a 400 saying it must be `what`.
fn parameter<T>(
    parameters: &Parameters,
    name: &str,
    what: &str,
    read: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>> {
    let Some(raw) = parameters.get(name) else {
        return Ok(None);
    };
    let text = raw.get();
    let value = match text.as_bytes().first() {
        Some(b'[') => Err("a list".to_owned()),
        Some(b'{') => Err("an object".to_owned()),
        _ => serde_json::from_str::<Value>(text).map_err(|e| e.to_string()),
    };
    let kind = match &value {
        Ok(value) => match read(value) {
            Some(read) => return Ok(Some(read)),
            None => serval_core::instances::json_kind(value),
        },
        Err(kind) => kind.clone(),
    };
    Err(ServerError::BadRequest(format!(
        "parameter '{name}' must be {what}, got {kind}"
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputTensor<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
}

/// An `infer` response's JSON part, serialized straight from the output tensors: building a
/// `serde_json::Value` tree first cost an allocation per number.
#[derive(Serialize)]
struct InferResponseBody<'a> {
    /// Echoed only when the request had one (OIP: an optional string, never `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ResponseParameters<'a>>,
    outputs: Vec<OutputTensor<'a>>,
}

#[derive(Serialize)]
struct ResponseParameters<'a> {
    precomputed_at: &'a str,
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<FlatView<'a>>,
}

/// Triton's binary extension: the output's bytes follow the JSON part.
#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

pub(super) async fn infer(
    State(state): State<AppState>,
    Path(ModelPath { model, version }): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_admitted_body(&headers, body, &state.pipeline).await?;
    let bytes = &body.bytes;
    let path_version = version.clone();
    let target = Target {
        model,
        version: VersionSelector::parse(version.as_deref())?,
        protocol: "v2_rest",
    };
    let json_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    ServerError::BadRequest(format!(
                        "{HEADER_LENGTH} must be a non-negative integer"
                    ))
                })?,
        ),
    };
    let (json_part, binary) = match json_len {
        Some(n) if n > bytes.len() => {
            return Err(ServerError::BadRequest(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                bytes.len()
            )));
        }
        Some(0) => {
            return Err(ServerError::BadRequest(
                "raw binary requests (header length 0) are not supported; send a JSON header"
                    .into(),
            ));
        }
        Some(n) => (&bytes[..n], &bytes[n..]),
        None => (&bytes[..], &[][..]),
    };
    let mut id = None;
    let mut binary_outputs = BinaryOutputs::default();
    let response = state
        .pipeline
        .predict(target, &body.memory, |model| {
            let rows_limit = model.is_batchable().then_some(state.pipeline.limits());
            let (request, mut inputs, binary_wanted) = read_request(json_part, binary, rows_limit)?;
            check_named_target(&request, model, path_version.as_deref())?;
            let options = RequestOptions {
                // Triton's schedule-policy extension: the timeout parameter is in microseconds.
                timeout: match parameter(
                    &request.parameters,
                    "timeout",
                    "a non-negative integer (microseconds)",
                    Value::as_i64,
                )? {
                    Some(us) => RequestOptions::timeout_parameter(i128::from(us))?
                        .or(header_timeout(&headers)?),
                    None => header_timeout(&headers)?,
                },
                outputs: request
                    .outputs
                    .as_ref()
                    .map(|outputs| outputs.iter().map(|o| o.name.clone()).collect()),
                request_id: request.id.clone(),
            };
            let keys = take_key_tensor(&mut inputs, &model.config().key)?;
            binary_outputs = binary_wanted;
            let signature = parameter(&request.parameters, "signature_name", "a string", |v| {
                v.as_str().map(str::to_owned)
            })?;
            id = request.id;
            Ok(Decoded {
                signature,
                inputs,
                keys,
                options,
            })
        })
        .await?;
    let key_tensor = response.key_tensor();
    let mut outputs: Vec<(&str, &Tensor)> = response
        .outputs
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    if let Some(key_tensor) = &key_tensor {
        outputs.push((response.key_name.as_str(), key_tensor));
    }
    let mut tail = Vec::new();
    let mut encoded = Vec::with_capacity(outputs.len());
    for (name, tensor) in &outputs {
        if binary_outputs.wanted(name) {
            let raw = codec::encode_raw(tensor);
            let parameters = BinaryParameters {
                binary_data_size: raw.len(),
            };
            tail.extend_from_slice(&raw);
            encoded.push(OutputTensor {
                name,
                datatype: tensor.data_type().as_str(),
                shape: tensor.shape(),
                parameters: Some(parameters),
                data: None,
            });
        } else {
            encoded.push(OutputTensor {
                name,
                datatype: tensor.data_type().as_str(),
                shape: tensor.shape(),
                parameters: None,
                data: Some(FlatView(tensor)),
            });
        }
    }
    let header_json = InferResponseBody {
        id: id.as_deref(),
        model_name: response.model.name(),
        model_version: response.version().to_string(),
        parameters: response
            .precomputed_at
            .as_deref()
            .map(|at| ResponseParameters { precomputed_at: at }),
        outputs: encoded,
    };
    let mut body = serde_json::to_vec(&header_json)
        .map_err(|e| ServerError::BadRequest(format!("cannot encode response: {e}")))?;
    if tail.is_empty() {
        let mut res = json_bytes(StatusCode::OK, body);
        crate::http::mark_precomputed(&mut res, response.precomputed_at.as_deref());
        return Ok(res);
    }
    let json_len = body.len();
    body.extend_from_slice(&tail);
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    res.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    crate::http::mark_precomputed(&mut res, response.precomputed_at.as_deref());
    Ok(res)
}

/// A body that names its model or version must name the ones of its path: a client that sends
/// `model_name: a` to `/v2/models/b/infer` has a bug, which answering from `b` would hide.
fn check_named_target(
    request: &InferRequestBody,
    model: &serval_core::Model,
    path_version: Option<&str>,
) -> Result<()> {
    if let Some(named) = &request.model_name
        && named != model.name()
    {
        return Err(ServerError::BadRequest(format!(
            "the body's model_name '{named}' is not the model of the path ('{}')",
            model.name()
        )));
    }
    if let Some(named) = request.model_version.as_deref().filter(|v| !v.is_empty())
        && Some(named) != path_version
    {
        return Err(ServerError::BadRequest(format!(
            "the body's model_version '{named}' is not the version of the path ({})",
            path_version.unwrap_or("none: the default version")
        )));
    }
    Ok(())
}

/// Which outputs a request wants as Triton binary parts rather than JSON.
#[derive(Default)]
pub(crate) struct BinaryOutputs {
    all: bool,
    by_name: Vec<(String, bool)>,
}

impl BinaryOutputs {
    fn of(request: &InferRequestBody) -> Result<BinaryOutputs> {
        let flag = |parameters, name| parameter(parameters, name, "a boolean", Value::as_bool);
        let mut by_name = Vec::new();
        for output in request.outputs.iter().flatten() {
            let binary = flag(&output.parameters, "binary_data").map_err(|e| {
                ServerError::BadRequest(format!("requested output '{}': {e}", output.name))
            })?;
            if let Some(binary) = binary {
                by_name.push((output.name.clone(), binary));
            }
        }
        Ok(BinaryOutputs {
            all: flag(&request.parameters, "binary_data_output")?.unwrap_or(false),
            by_name,
        })
    }

    fn wanted(&self, name: &str) -> bool {
        self.by_name
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.all, |(_, binary)| *binary)
    }
}

/// A request's tensors, as decoded.
type Inputs = Vec<(String, Tensor)>;

/// What `infer` reads from a body: its JSON part, its tensors from JSON `data` or the binary
/// parts after it, and which outputs go back binary (the fuzz target's entry too). With
/// `rows_limit` (a model that batches on axis 0), a tensor declaring more instances than the
/// limit is refused before its values are read.
pub(crate) fn read_request<'a>(
    json_part: &'a [u8],
    binary: &[u8],
    rows_limit: Option<&Limits>,
) -> Result<(InferRequestBody<'a>, Inputs, BinaryOutputs)> {
    let request: InferRequestBody = parse_json(json_part)?;
    let inputs = decode_inputs(&request.inputs, binary, rows_limit)?;
    let binary_outputs = BinaryOutputs::of(&request)?;
    Ok((request, inputs, binary_outputs))
}

/// The request's tensors, JSON `data` or Triton binary parts (taken in input order).
fn decode_inputs(
    inputs: &[Object<InputTensor>],
    mut binary: &[u8],
    rows_limit: Option<&Limits>,
) -> Result<Vec<(String, Tensor)>> {
    let mut decoded = Vec::with_capacity(inputs.len());
    for input in inputs {
        let data_type = codec::data_type_of(&input.name, &input.datatype)?;
        let shape = codec::shape_of(&input.name, &input.shape)?;
        codec::check_declared_rows(&shape, rows_limit)?;
        let size = parameter(
            &input.parameters,
            "binary_data_size",
            "a non-negative integer",
            |v| v.as_u64().and_then(|s| usize::try_from(s).ok()),
        )
        .map_err(|e| ServerError::BadRequest(format!("input '{}': {e}", input.name)))?;
        let tensor = match (size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(ServerError::BadRequest(format!(
                    "input '{}' has both data and binary_data_size: send its values one way",
                    input.name
                )));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(ServerError::BadRequest(format!(
                        "input '{}': binary_data_size {size} exceeds the {} bytes of binary data left",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                codec::decode_raw(&input.name, data_type, shape, mine)?
            }
            (None, Some(data)) => codec::decode_json(&input.name, data_type, shape, data)?,
            (None, None) => {
                return Err(ServerError::BadRequest(format!(
                    "input '{}' has neither data nor binary_data_size",
                    input.name
                )));
            }
        };
        decoded.push((input.name.clone(), tensor));
    }
    if !binary.is_empty() {
        return Err(ServerError::BadRequest(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    Ok(decoded)
}
