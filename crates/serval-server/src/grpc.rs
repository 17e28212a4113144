//! The Open Inference Protocol v2 gRPC service (`inference.GRPCInferenceService`), as
//! `tritonclient.grpc` calls it: typed `contents` or `raw_input_contents` in, raw out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serval_core::{DataType, Tensor, TensorData};
use tonic::{Request, Response, Status};

use crate::auth::{Access, AuthTokens};
use crate::budget::{Reservation, off_io_threads};
use crate::codec;
use crate::error::ServerError;
use crate::pipeline::{Decoded, Limits, Pipeline, RequestOptions, Target, take_key_tensor};
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

impl<U: prost::Message + Default + 'static> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf as _;
        // What prost is about to allocate, charged first: a message of millions of empty
        // entries is a few bytes each on the wire and a `Vec` or a struct each decoded.
        let cost = if std::any::TypeId::of::<U>() == std::any::TypeId::of::<ModelInferRequest>() {
            decoded_bytes(buf.chunk()).unwrap_or(0)
        } else {
            buf.remaining().saturating_mul(SMALL_MESSAGE_AMPLIFICATION)
        };
        let charged = CALL_MEMORY.try_with(|memory| memory.grow(cost));
        if let Ok(Err(refused)) = charged {
            return Err(refused.into());
        }
        let decoded = off_io_threads(buf.remaining(), || self.0.decode(buf));
        decoded.map_err(|status| {
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

/// What every call goes through before tonic reads it, a tower layer over the whole gRPC
/// server (tonic's interceptors see neither the method nor the body): the token check (when
/// the server has tokens), UNIMPLEMENTED naming a method this server lacks, `ModelInfer` shed
/// while the server is saturated, and a share of the memory budget that the message fills as
/// it arrives (RESOURCE_EXHAUSTED once the budget is taken, before the message is whole):
/// tonic reads and decodes a message before the handler runs, so the handler alone could
/// bound nothing.
#[derive(Clone)]
pub struct AdmissionLayer {
    /// The request path, for its limits and budget.
    pub pipeline: Pipeline,
    /// The tokens calls must carry; `None` lets every call in.
    pub tokens: Option<Arc<AuthTokens>>,
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            gate: self.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    gate: AdmissionLayer,
}

impl AdmissionLayer {
    /// Why a call is refused before it is read, if it is.
    fn refusal<B>(&self, request: &axum::http::Request<B>) -> Option<Status> {
        let path = request.uri().path();
        if let Some(tokens) = &self.tokens {
            let header = request.headers().get(axum::http::header::AUTHORIZATION);
            match tokens.authorize(Access::of_grpc(path), header.map(|v| v.as_bytes())) {
                Ok(Some(name)) => {
                    tracing::Span::current().record("token", name);
                }
                Ok(None) => {}
                Err(refused) => return Some(refused.into()),
            }
        }
        if let Some(status) = unserved(path) {
            return Some(status);
        }
        (path == MODEL_INFER && self.pipeline.is_saturated())
            .then(|| ServerError::Busy(self.pipeline.limits().max_concurrent_requests).into())
    }
}

/// A call's share of the memory budget, in its request's extensions for the handler.
#[derive(Clone)]
struct CallMemory(Arc<Reservation>);

tokio::task_local! {
    /// The same share, for the codec: tonic decodes the message inside the call's future.
    static CALL_MEMORY: Arc<Reservation>;
}

/// What the metadata and repository messages may cost decoded, per wire byte, at most (their
/// maps and strings; they are small).
const SMALL_MESSAGE_AMPLIFICATION: usize = 32;

/// Bytes prost allocates decoding a `ModelInferRequest` (beyond the message's own bytes),
/// read off the wire format without decoding it: each entry of a repeated field of messages
/// or bytes is a struct or a `Vec` of its own, each repeated scalar 8 bytes (twice, for the
/// doubling of the `Vec` it is pushed to). `None` when the bytes are not well-formed (prost
/// then says why).
fn decoded_bytes(message: &[u8]) -> Option<usize> {
    use model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use std::mem::size_of;
    /// Which message a nested slice is, for the fields that hold further entries.
    #[derive(Clone, Copy)]
    enum Kind {
        Request,
        Input,
        Contents,
        Output,
    }
    fn walk(mut buf: &[u8], kind: Kind) -> Option<usize> {
        const MAP_ENTRY: usize = 128;
        const SCALAR: usize = 16;
        let mut cost = 0usize;
        while !buf.is_empty() {
            let (tag, wire) = prost::encoding::decode_key(&mut buf).ok()?;
            let entry = match wire {
                prost::encoding::WireType::LengthDelimited => {
                    let len =
                        usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
                    let (field, rest) = buf.split_at_checked(len)?;
                    buf = rest;
                    let nested = |kind| walk(field, kind);
                    match (kind, tag) {
                        (Kind::Request, 5) => size_of::<InferInputTensor>() + nested(Kind::Input)?,
                        (Kind::Request, 6) => {
                            size_of::<InferRequestedOutputTensor>() + nested(Kind::Output)?
                        }
                        (Kind::Request, 4) | (Kind::Input, 4) | (Kind::Output, 2) => {
                            MAP_ENTRY + len
                        }
                        (Kind::Input, 5) => nested(Kind::Contents)?,
                        // Packed scalars: at most one per byte.
                        (Kind::Input, 3) | (Kind::Contents, 1..=7) => SCALAR * len,
                        _ => size_of::<Vec<u8>>() + len,
                    }
                }
                prost::encoding::WireType::Varint => {
                    prost::encoding::decode_varint(&mut buf).ok()?;
                    SCALAR
                }
                prost::encoding::WireType::SixtyFourBit => {
                    buf = buf.get(8..)?;
                    SCALAR
                }
                prost::encoding::WireType::ThirtyTwoBit => {
                    buf = buf.get(4..)?;
                    SCALAR
                }
                _ => return None,
            };
            cost = cost.saturating_add(entry);
        }
        Some(cost)
    }
    walk(message, Kind::Request)
}

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The methods of `inference.GRPCInferenceService` this server has.
const SERVED: &[&str] = &[
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
];

/// UNIMPLEMENTED for a method this server lacks, naming it and what to use instead (tonic's
/// own answer has no message at all).
fn unserved(path: &str) -> Option<Status> {
    let method = path.strip_prefix("/inference.GRPCInferenceService/");
    if method.is_some_and(|m| SERVED.contains(&m)) {
        return None;
    }
    let shown: String = path.chars().take(200).collect();
    let instead = match method {
        Some("ModelStatistics") => " (statistics are on REST: GET /v2/models/{model}/stats)",
        Some("ModelConfig") => " (configuration is on REST: GET /v2/models/{model}/config)",
        _ => "",
    };
    Some(Status::unimplemented(format!(
        "{shown} is not served{instead}; inference.GRPCInferenceService here has {}",
        SERVED.join(", ")
    )))
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for Admission<S>
where
    S: tower_service::Service<
            axum::http::Request<tonic::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        if let Some(status) = self.gate.refusal(&request) {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let memory = Arc::new(self.gate.pipeline.reserve());
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(CallMemory(memory.clone()));
        let body = tonic::body::Body::new(BudgetedBody {
            inner: body,
            memory: memory.clone(),
        });
        // The clone takes the readiness this service was polled for (tower's idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(axum::http::Request::from_parts(parts, body));
        Box::pin(CALL_MEMORY.scope(memory, call))
    }
}

/// A request body whose bytes are added to a reservation as they arrive.
struct BudgetedBody<B> {
    inner: B,
    memory: Arc<Reservation>,
}

impl<B> hyper::body::Body for BudgetedBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = bytes::Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        let checked = frame.map(|frame| {
            let frame = frame.map_err(Into::into)?;
            if let Some(data) = frame.data_ref() {
                // tonic reads the error back as this status.
                self.memory
                    .grow(data.len())
                    .map_err(|e| Box::new(Status::from(e)) as tonic::codegen::StdError)?;
            }
            Ok(frame)
        });
        std::task::Poll::Ready(checked)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
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

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready_only = request.into_inner().ready;
        let models = self
            .pipeline
            .store()
            .index()
            .into_iter()
            .filter(|s| !ready_only || s.state == "READY")
            .map(|s| repository_index_response::ModelIndex {
                name: s.name,
                version: if s.version == 0 {
                    String::new()
                } else {
                    s.version.to_string()
                },
                state: s.state.into(),
                reason: s.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        refuse_repository_options(&r.repository_name, &r.parameters)?;
        self.pipeline.load_model(&r.model_name).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        refuse_repository_options(&r.repository_name, &r.parameters)?;
        self.pipeline.unload_model(&r.model_name).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let _permit = self.pipeline.try_admit()?;
        let memory = match request.extensions().get::<CallMemory>() {
            Some(CallMemory(memory)) => memory.clone(),
            // Served without the admission layer (library use): the message is not counted.
            None => Arc::new(self.pipeline.reserve()),
        };
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
        use infer_parameter::ParameterChoice as Choice;
        let wrong = |name: &str, what: &str| {
            ServerError::BadRequest(format!("parameter '{name}' must be {what}"))
        };
        let options = RequestOptions {
            timeout: match parameter("timeout") {
                // Triton's schedule-policy extension: microseconds.
                Some(Choice::Int64Param(us)) => {
                    RequestOptions::timeout_parameter(i128::from(us))?.or(deadline)
                }
                Some(Choice::Uint64Param(us)) => {
                    RequestOptions::timeout_parameter(i128::from(us))?.or(deadline)
                }
                Some(_) => return Err(wrong("timeout", "an int64 or uint64 (microseconds)").into()),
                None => deadline,
            },
            request_id: (!r.id.is_empty()).then(|| r.id.clone()),
            outputs: (!r.outputs.is_empty())
                .then(|| r.outputs.iter().map(|o| o.name.clone()).collect()),
        };
        let signature = match parameter("signature_name") {
            Some(Choice::StringParam(s)) => Some(s),
            Some(_) => return Err(wrong("signature_name", "a string").into()),
            None => None,
        };
        let response = self
            .pipeline
            .predict(target, &memory, |model| {
                let rows_limit = model.is_batchable().then_some(self.pipeline.limits());
                let mut inputs = decode_inputs(&r, rows_limit)?;
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

/// Serval serves one repository and loads models from it as they are: Triton's named
/// repositories and load-time overrides (`config`, `file:...` contents) are refused, not
/// ignored. `unload_dependents` (which tritonclient always sends) has nothing to act on: no
/// model depends on another.
fn refuse_repository_options(
    repository: &str,
    parameters: &HashMap<String, ModelRepositoryParameter>,
) -> Result<(), ServerError> {
    let mut parameters = parameters.keys().filter(|k| *k != "unload_dependents");
    if !repository.is_empty() {
        return Err(ServerError::BadRequest(format!(
            "repository_name '{repository}': this server has one repository; leave it empty"
        )));
    }
    match parameters.next() {
        Some(name) => Err(ServerError::BadRequest(format!(
            "load/unload parameter '{name}' is not supported: models load from the repository's \
             files as they are"
        ))),
        None => Ok(()),
    }
}

/// The request's tensors, from `raw_input_contents` or typed `contents`.
pub(crate) fn decode_inputs(
    r: &ModelInferRequest,
    rows_limit: Option<&Limits>,
) -> Result<Vec<(String, Tensor)>, ServerError> {
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
        codec::check_declared_rows(&shape, rows_limit)?;
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
