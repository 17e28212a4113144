//! The Open Inference Protocol v2 gRPC service (`inference.GRPCInferenceService`), as
//! `tritonclient.grpc` calls it: typed `contents` or `raw_input_contents` in, raw out.

use std::collections::HashMap;
use std::time::Duration;

use serval_core::{DataType, Tensor, TensorData};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::error::ServerError;
use crate::pipeline::{Decoded, Pipeline, RequestOptions, Target, take_key_tensor};
use crate::store::VersionSelector;

/// Generated protobuf types and service traits.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::*;

/// prost's codec, except that a request that is not valid protobuf is INVALID_ARGUMENT (the
/// client's fault, which it must not retry as is) rather than prost's INTERNAL, which blames
/// the server and maps to HTTP 500. gRPC's status-code table lists a request-parsing error
/// as INTERNAL; Serval follows the REST front ends, where a malformed body is a 400.
pub struct Codec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(tonic_prost::ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(self.0.decoder())
    }
}

/// See [`Codec`].
pub struct Decoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}

/// The gRPC service over the shared request path.
pub struct InferenceService {
    pipeline: Pipeline,
}

impl InferenceService {
    /// A tonic server for the service, with the REST front end's message size limit.
    pub fn server(pipeline: Pipeline) -> GrpcInferenceServiceServer<InferenceService> {
        let max_message = pipeline.limits().max_body_bytes;
        GrpcInferenceServiceServer::new(InferenceService { pipeline })
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.pipeline.server_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self
            .pipeline
            .store()
            .model(&r.name)
            .and_then(|m| {
                m.resolve(&VersionSelector::parse(Some(&r.version))?)
                    .map(|_| ())
            })
            .is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "serval".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::http::server_extensions()
                .into_iter()
                .map(String::from)
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let served_model = self.pipeline.store().model(&r.name)?;
        let served = served_model.resolve(&VersionSelector::parse(Some(&r.version))?)?;
        let signature = served.model.signature(None).map_err(ServerError::from)?;
        let metadata = |specs: &[serval_core::TensorSpec]| {
            specs
                .iter()
                .map(|s| model_metadata_response::TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.data_type.as_str().into(),
                    shape: s.shape_i64(),
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: r.name,
            versions: served_model.versions.keys().map(u64::to_string).collect(),
            platform: "onnx_onnxv1".into(),
            inputs: metadata(&signature.inputs),
            outputs: metadata(&signature.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let _permit = self.pipeline.try_admit()?;
        let deadline = grpc_deadline(request.metadata());
        let r = request.into_inner();
        let target = Target {
            model: r.model_name.clone(),
            version: VersionSelector::parse(Some(&r.model_version))?,
            protocol: "v2_grpc",
        };
        let parameter = |name: &str| {
            r.parameters
                .get(name)
                .and_then(|p| p.parameter_choice.clone())
        };
        let options = RequestOptions {
            timeout: match parameter("timeout") {
                // Triton's schedule-policy extension: microseconds.
                Some(infer_parameter::ParameterChoice::Int64Param(us)) => {
                    RequestOptions::timeout_parameter(i128::from(us))?.or(deadline)
                }
                Some(infer_parameter::ParameterChoice::Uint64Param(us)) => {
                    RequestOptions::timeout_parameter(i128::from(us))?.or(deadline)
                }
                _ => deadline,
            },
            request_id: (!r.id.is_empty()).then(|| r.id.clone()),
            outputs: (!r.outputs.is_empty())
                .then(|| r.outputs.iter().map(|o| o.name.clone()).collect()),
        };
        let signature = match parameter("signature_name") {
            Some(infer_parameter::ParameterChoice::StringParam(s)) => Some(s),
            _ => None,
        };
        let response = self
            .pipeline
            .predict(target, |model| {
                let mut inputs = decode_inputs(&r)?;
                let keys = take_key_tensor(&mut inputs, &model.config().key)?;
                Ok(Decoded {
                    signature: signature.clone(),
                    inputs,
                    keys,
                    options: options.clone(),
                })
            })
            .await?;
        let key_tensor = response.key_tensor();
        let mut outputs = response.outputs;
        if let Some(tensor) = key_tensor {
            outputs.push((response.key_name, tensor));
        }
        let raw_output_contents = outputs.iter().map(|(_, t)| codec::encode_raw(t)).collect();
        let outputs = outputs
            .into_iter()
            .map(|(name, t)| InferOutputTensor {
                name,
                datatype: t.data_type().as_str().into(),
                shape: t.shape().iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            })
            .collect();
        let parameters = response
            .precomputed_at
            .iter()
            .map(|at| {
                let value = InferParameter {
                    parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(
                        at.clone(),
                    )),
                };
                ("precomputed_at".to_owned(), value)
            })
            .collect();
        Ok(Response::new(ModelInferResponse {
            model_name: r.model_name,
            model_version: response.model.version().to_string(),
            id: r.id,
            parameters,
            outputs,
            raw_output_contents,
        }))
    }
}

/// The request's tensors, from `raw_input_contents` or typed `contents`.
fn decode_inputs(r: &ModelInferRequest) -> Result<Vec<(String, Tensor)>, ServerError> {
    let use_raw = !r.raw_input_contents.is_empty();
    if use_raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ServerError::BadRequest(format!(
            "{} raw_input_contents for {} inputs: send one per input, in order",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (ix, input) in r.inputs.iter().enumerate() {
        let data_type = codec::data_type_of(&input.name, &input.datatype)?;
        let shape = codec::shape_of(&input.name, &input.shape)?;
        let tensor = if use_raw {
            codec::decode_raw(&input.name, data_type, shape, &r.raw_input_contents[ix])?
        } else {
            from_contents(input, data_type, shape)?
        };
        inputs.push((input.name.clone(), tensor));
    }
    Ok(inputs)
}

/// Decodes typed `InferTensorContents` (the non-raw gRPC form).
fn from_contents(
    input: &InferInputTensor,
    data_type: DataType,
    shape: Vec<usize>,
) -> Result<Tensor, ServerError> {
    let empty = InferTensorContents::default();
    let c = input.contents.as_ref().unwrap_or(&empty);
    let narrow = |what: &str| {
        ServerError::BadRequest(format!(
            "input '{}': a value does not fit {what}",
            input.name
        ))
    };
    let data = match data_type {
        DataType::Bool => TensorData::Bool(c.bool_contents.clone()),
        DataType::Uint8 => TensorData::Uint8(
            c.uint_contents
                .iter()
                .map(|&x| u8::try_from(x))
                .collect::<Result<_, _>>()
                .map_err(|_| narrow("UINT8"))?,
        ),
        DataType::Uint16 => TensorData::Uint16(
            c.uint_contents
                .iter()
                .map(|&x| u16::try_from(x))
                .collect::<Result<_, _>>()
                .map_err(|_| narrow("UINT16"))?,
        ),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents.clone()),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents.clone()),
        DataType::Int8 => TensorData::Int8(
            c.int_contents
                .iter()
                .map(|&x| i8::try_from(x))
                .collect::<Result<_, _>>()
                .map_err(|_| narrow("INT8"))?,
        ),
        DataType::Int16 => TensorData::Int16(
            c.int_contents
                .iter()
                .map(|&x| i16::try_from(x))
                .collect::<Result<_, _>>()
                .map_err(|_| narrow("INT16"))?,
        ),
        DataType::Int32 => TensorData::Int32(c.int_contents.clone()),
        DataType::Int64 => TensorData::Int64(c.int64_contents.clone()),
        DataType::Fp16 => {
            return Err(ServerError::BadRequest(format!(
                "input '{}': FP16 must be sent in raw_input_contents",
                input.name
            )));
        }
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents.clone()),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents.clone()),
        DataType::Bytes => TensorData::Bytes(
            c.bytes_contents
                .iter()
                .map(|b| String::from_utf8(b.clone()))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    ServerError::BadRequest(format!(
                        "input '{}': BYTES element is not valid UTF-8",
                        input.name
                    ))
                })?,
        ),
    };
    Tensor::new(shape, data)
        .map_err(|e| ServerError::BadRequest(format!("input '{}': {e}", input.name)))
}

/// The client's deadline from the standard `grpc-timeout` header (`<digits><unit>`).
fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
