//! OIP `infer` over REST, JSON or with Triton's binary tensor extension: decodes the request's
//! tensors and encodes the pipeline's prediction, nothing in between.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serval_core::Tensor;
use serval_core::instances::FlatView;

use super::ModelPath;
use crate::codec;
use crate::error::{Result, ServerError};
use crate::http::{AppState, header_timeout, json_bytes, parse_json, read_admitted_body};
use crate::pipeline::{Decoded, RequestOptions, Target, take_key_tensor};
use crate::store::VersionSelector;

/// Header giving the JSON part's length when binary tensor data follows it.
const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct InferRequestBody {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<codec::JsonData>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
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
    let (bytes, _admitted) = read_admitted_body(&headers, body, &state.pipeline).await?;
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
        .predict(target, |model| {
            let request: InferRequestBody = parse_json(json_part)?;
            let options = RequestOptions {
                timeout: match request.parameters.get("timeout") {
                    // Triton's schedule-policy extension: the timeout parameter is in microseconds.
                    Some(v) => RequestOptions::timeout_parameter(
                        v.as_i64().map(i128::from).ok_or_else(|| {
                            ServerError::BadRequest(
                                "parameter 'timeout' must be a non-negative integer (microseconds)"
                                    .into(),
                            )
                        })?,
                    )?
                    .or(header_timeout(&headers)?),
                    None => header_timeout(&headers)?,
                },
                outputs: request
                    .outputs
                    .as_ref()
                    .map(|outputs| outputs.iter().map(|o| o.name.clone()).collect()),
                request_id: request.id.clone(),
            };
            let mut inputs = decode_inputs(&request.inputs, binary)?;
            let keys = take_key_tensor(&mut inputs, &model.config().key)?;
            binary_outputs = BinaryOutputs::of(&request);
            id = request.id;
            Ok(Decoded {
                signature: match request.parameters.get("signature_name") {
                    Some(Value::String(s)) => Some(s.clone()),
                    _ => None,
                },
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

/// Which outputs a request wants as Triton binary parts rather than JSON.
#[derive(Default)]
struct BinaryOutputs {
    all: bool,
    by_name: Vec<(String, bool)>,
}

impl BinaryOutputs {
    fn of(request: &InferRequestBody) -> BinaryOutputs {
        BinaryOutputs {
            all: request
                .parameters
                .get("binary_data_output")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            by_name: request
                .outputs
                .iter()
                .flatten()
                .filter_map(|r| Some((r.name.clone(), r.parameters.get("binary_data")?.as_bool()?)))
                .collect(),
        }
    }

    fn wanted(&self, name: &str) -> bool {
        self.by_name
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.all, |(_, binary)| *binary)
    }
}

/// The request's tensors, JSON `data` or Triton binary parts (taken in input order).
fn decode_inputs(inputs: &[InputTensor], mut binary: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut decoded = Vec::with_capacity(inputs.len());
    for input in inputs {
        let data_type = codec::data_type_of(&input.name, &input.datatype)?;
        let shape = codec::shape_of(&input.name, &input.shape)?;
        let tensor = match (input.parameters.get("binary_data_size"), &input.data) {
            (Some(size), _) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        ServerError::BadRequest(format!(
                            "input '{}': binary_data_size must be a non-negative integer",
                            input.name
                        ))
                    })?;
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
