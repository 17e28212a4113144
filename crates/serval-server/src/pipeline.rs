//! The one place where a prediction happens whole, whatever the protocol.
//!
//! [`Pipeline::predict`] takes a request's target and a front end's decoder, and owns everything
//! between: load shedding, routing (labels, the default, the canary, by key when sticky), limits,
//! validation, keys (kept or minted), the precomputed lookup, the deadline, the engine queue and
//! output selection. It has a single exit, where every outcome is counted and traced. Front ends
//! (TF Serving REST, OIP REST, OIP gRPC) only decode bodies into tensors and encode
//! [`Prediction`]s; none of them resolves a version, batches or runs a model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serval_core::config::Durability;
use serval_core::{Model, Tensor, TensorData, ValidInputs};
use serval_log::{Ack, Label, LabelBatch, LogError, LoggedRequest, PredictionLog, Source};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use tracing::field::Empty;

use crate::budget::{MemoryBudget, Reservation, off_io_threads};
use crate::error::{Result, ServerError};
use crate::metrics;
use crate::precomputed::PrecomputedTables;
use crate::store::{ModelStore, ServedModel, ServedVersion, VersionSelector};

/// Request limits, the same for every protocol.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body or gRPC message (413 / RESOURCE_EXHAUSTED beyond).
    pub max_body_bytes: usize,
    /// Most instances accepted in one request (413 beyond).
    pub max_instances: usize,
    /// Requests handled at once across all models and protocols (429 beyond).
    pub max_concurrent_requests: usize,
    /// How slowly a request body may arrive (408 below).
    pub body_rate: BodyRate,
    /// Bytes all requests in flight may hold together: bodies and what decoding them takes
    /// (429 / RESOURCE_EXHAUSTED beyond; see [`crate::budget`]).
    pub max_request_memory: usize,
}

/// The slowest a request body may arrive, as Kestrel's `MinRequestBodyDataRate` states it:
/// after a grace period, the average rate since the body began must stay above a minimum. A
/// client trickling a body in holds its connection only that long.
#[derive(Debug, Clone, Copy)]
pub struct BodyRate {
    /// Bytes per second, on average since the body began.
    pub min_bytes_per_sec: u64,
    /// Time every body gets before the rate is checked.
    pub grace: Duration,
}

impl Default for BodyRate {
    /// Kestrel's: 240 bytes/s after 5 s.
    fn default() -> Self {
        Self {
            min_bytes_per_sec: 240,
            grace: Duration::from_secs(5),
        }
    }
}

impl BodyRate {
    /// How long after the body began the next bytes may come, `received` bytes in.
    pub fn allowed(&self, received: usize) -> Duration {
        // No minimum: a year stands for never (an `Instant` plus `Duration::MAX` overflows).
        let earned = match self.min_bytes_per_sec {
            0 => Duration::from_secs(365 * 24 * 3600),
            rate => Duration::from_secs_f64(received as f64 / rate as f64),
        };
        self.grace.max(earned)
    }
}

impl Limits {
    /// Refuses requests with more instances than allowed.
    pub fn check_instances(&self, rows: usize) -> Result<()> {
        if rows > self.max_instances {
            return Err(ServerError::PayloadTooLarge(format!(
                "{rows} instances exceed the limit of {} per request",
                self.max_instances
            )));
        }
        Ok(())
    }
}

/// Which model a request is for, and through which protocol it came.
pub struct Target {
    /// Model name.
    pub model: String,
    /// Which version.
    pub version: VersionSelector,
    /// Protocol label for metrics and the log (`tfserving`, `v2_rest`, `v2_grpc`).
    pub protocol: &'static str,
}

/// What a request asks besides its inputs.
#[derive(Default, Clone)]
pub struct RequestOptions {
    /// The client's own deadline, capped by the server's.
    pub timeout: Option<Duration>,
    /// Outputs to return (`None`: all of the signature's); the key's name is always allowed.
    pub outputs: Option<Vec<String>>,
    /// The client's request id (OIP `id`); the log mints one when absent.
    pub request_id: Option<String>,
}

impl RequestOptions {
    /// The client's deadline from Triton's `timeout` parameter (microseconds): 0 sets none, as
    /// in Triton, and the server's own applies; a negative one is refused.
    pub fn timeout_parameter(us: i128) -> Result<Option<Duration>> {
        match u64::try_from(us) {
            Ok(0) => Ok(None),
            Ok(us) => Ok(Some(Duration::from_micros(us))),
            Err(_) => Err(ServerError::BadRequest(format!(
                "parameter 'timeout' must be a non-negative number of microseconds, got {us}"
            ))),
        }
    }
}

/// A request body decoded against the model of the version that will answer it.
pub struct Decoded {
    /// Signature name (`None`: `serving_default`).
    pub signature: Option<String>,
    /// Inputs by public name; the key tensor is not among them.
    pub inputs: Vec<(String, Tensor)>,
    /// Per-instance client keys, when the request carried any.
    pub keys: Option<Vec<Option<String>>>,
    /// What the request asks besides its inputs.
    pub options: RequestOptions,
}

/// One request's answer.
pub struct Prediction {
    /// The version that answered (its signatures describe the outputs).
    pub model: Arc<Model>,
    /// The signature that ran.
    pub signature: String,
    /// The model's key field name.
    pub key_name: String,
    /// Each instance's key: the client's, else a minted one; `None` only when minting is off.
    pub keys: Vec<Option<String>>,
    /// Signature outputs (those asked for), one row per instance.
    pub outputs: Vec<(String, Tensor)>,
    /// When the outputs come from a batch job's table: the job's finish time (RFC 3339).
    pub precomputed_at: Option<String>,
    /// Time spent waiting for an engine thread.
    pub queued: Duration,
    /// Engine time of the batch (or batches) the request ran in.
    pub compute: Duration,
}

impl Prediction {
    /// The version number that answered.
    pub fn version(&self) -> u64 {
        self.model.version()
    }

    /// The keys as a BYTES tensor `[N]` (the v2 protocols' key output), when every instance has one.
    pub fn key_tensor(&self) -> Option<Tensor> {
        key_tensor(&self.keys)
    }
}

fn key_tensor(keys: &[Option<String>]) -> Option<Tensor> {
    let keys: Vec<String> = keys.iter().cloned().collect::<Option<_>>()?;
    let tensor = Tensor::new(vec![keys.len()], TensorData::Bytes(keys));
    Some(tensor.expect("one key per element of shape [N]. This is a bug."))
}

/// The shared request path, cloned into every front end.
#[derive(Clone)]
pub struct Pipeline {
    store: Arc<ModelStore>,
    timeout: Duration,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    memory: Arc<MemoryBudget>,
    precomputed: Arc<PrecomputedTables>,
    strict_readiness: bool,
    log: Option<Arc<PredictionLog>>,
}

impl Pipeline {
    /// A pipeline over loaded models with a per-request deadline and request limits.
    pub fn new(store: Arc<ModelStore>, timeout: Duration, mut limits: Limits) -> Pipeline {
        limits.max_concurrent_requests = limits.max_concurrent_requests.max(1);
        Pipeline {
            store,
            timeout,
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            memory: MemoryBudget::new(limits.max_request_memory),
            precomputed: Arc::new(PrecomputedTables::default()),
            strict_readiness: false,
            log: None,
        }
    }

    /// Records every answered prediction in this log.
    pub fn with_prediction_log(mut self, log: Arc<PredictionLog>) -> Pipeline {
        self.log = Some(log);
        self
    }

    /// Makes server readiness need every model ready, as Triton's `--strict-readiness`.
    pub fn with_strict_readiness(mut self, strict: bool) -> Pipeline {
        self.strict_readiness = strict;
        self
    }

    /// Answers requests whose keys are in these tables from them instead of the models.
    pub fn with_precomputed(mut self, tables: Arc<PrecomputedTables>) -> Pipeline {
        self.precomputed = tables;
        self
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the server is ready (`/v2/health/ready`, gRPC `ServerReady`); per-model
    /// readiness is each model's own.
    pub fn server_ready(&self) -> bool {
        self.store.ready(self.strict_readiness)
    }

    /// Whether every place under the in-flight limit is taken: front ends refuse a request
    /// before reading its body then, so overload is shed before it costs memory or parsing.
    pub fn is_saturated(&self) -> bool {
        self.in_flight.available_permits() == 0
    }

    /// Admits one more request into the server, or refuses at once when the limit is reached.
    /// Front ends call this once the request is read; the permit is held until the response
    /// is ready.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServerError::Busy(self.limits.max_concurrent_requests))
    }

    /// A new request's share of the memory budget, empty until it grows.
    pub fn reserve(&self) -> Reservation {
        self.memory.reservation()
    }

    /// The loaded models.
    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// Loads (or reloads) a model now, off the async threads; answers once it serves or says
    /// why it cannot (the repository API of every protocol).
    pub async fn load_model(&self, name: &str) -> Result<()> {
        let store = self.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.load_model(&name))
            .await
            .map_err(|e| ServerError::Unavailable(format!("load task failed: {e}")))?
    }

    /// Stops serving a model (in-flight requests finish) until it is loaded again. Waits for
    /// any reconciliation in progress, so it runs off the async threads like a load.
    pub async fn unload_model(&self, name: &str) -> Result<()> {
        let store = self.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.unload_model(&name))
            .await
            .map_err(|e| ServerError::Unavailable(format!("unload task failed: {e}")))?
    }

    /// A shared handle to the loaded models, for work moved off the async threads.
    pub fn store_handle(&self) -> Arc<ModelStore> {
        self.store.clone()
    }

    /// Runs one request end to end. `decode` turns the body into tensors for the model of the
    /// version chosen to answer (after load shedding, so overload costs no parsing); it runs once, or twice when a sticky canary's key routes the
    /// request to a version whose inputs differ from the one it was first decoded for.
    ///
    /// `memory` is the request's share of the memory budget, holding its body: a large body is
    /// decoded off the I/O threads, and the decoded tensors are added to it.
    pub async fn predict(
        &self,
        target: Target,
        memory: &Reservation,
        mut decode: impl FnMut(&Model) -> Result<Decoded>,
    ) -> Result<Prediction> {
        let decode = |model: &Model| {
            let decoded = off_io_threads(memory.bytes(), || decode(model))?;
            let tensors = decoded.inputs.iter().map(|(_, t)| t.data().memory_bytes());
            memory.grow(tensors.sum())?;
            Ok(decoded)
        };
        let started = Instant::now();
        let span = tracing::debug_span!(
            "predict",
            model = %target.model,
            protocol = target.protocol,
            version = Empty,
            instances = Empty,
            decode_us = Empty,
            queue_us = Empty,
            compute_us = Empty,
        );
        let mut answered = None;
        let outcome = self
            .run(&target, decode, started, &mut answered)
            .instrument(span.clone())
            .await;
        // The single exit: every outcome of every protocol is counted here.
        let status = match &outcome {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        };
        let elapsed = started.elapsed();
        match &answered {
            Some(served) => {
                served
                    .batcher
                    .metrics()
                    .record_request(target.protocol, status, elapsed)
            }
            None => metrics::record_request(&target.model, "", target.protocol, status, elapsed),
        }
        if let Ok(prediction) = &outcome {
            span.record("queue_us", prediction.queued.as_micros() as u64);
            span.record("compute_us", prediction.compute.as_micros() as u64);
        }
        span.in_scope(|| {
            tracing::debug!(status, elapsed_us = elapsed.as_micros() as u64, "request");
        });
        outcome
    }

    async fn run(
        &self,
        target: &Target,
        mut decode: impl FnMut(&Model) -> Result<Decoded>,
        started: Instant,
        answered: &mut Option<Arc<ServedVersion>>,
    ) -> Result<Prediction> {
        let span = tracing::Span::current();
        let served_model = self.store.model(&target.model)?;
        let precomputed = self.precomputed.table(&target.model);
        // Refused before decoding, so overload costs a body read but no parsing. Models with a
        // precomputed table are never shed here: the table may answer without the queue.
        if precomputed.is_none() && served_model.saturated(&target.version) {
            return Err(ServerError::Overloaded(served_model.name.clone()));
        }
        let decode_started = Instant::now();
        let (served, decoded) = match served_model.sticky_canary(&target.version) {
            None => {
                let served = served_model.route(&target.version, None)?;
                let decoded = decode(&served.model)?;
                (served, decoded)
            }
            Some(canary) => {
                let default = served_model.resolve(&target.version)?;
                route_by_key(&served_model, &target.version, default, canary, &mut decode)?
            }
        };
        span.record("decode_us", decode_started.elapsed().as_micros() as u64);
        span.record("version", served.model.version());
        *answered = Some(served.clone());
        let model = &served.model;
        // Validation runs here, per request, so one bad request can never fail a whole batch.
        let options = decoded.options;
        let valid = model.validate(decoded.signature.as_deref(), decoded.inputs)?;
        let rows = valid.rows();
        span.record("instances", rows);
        self.limits.check_instances(rows)?;
        let config = model.config();
        let keys = finish_keys(decoded.keys, rows, config.mint_keys)?;
        let signature = model.signature(Some(valid.signature()))?;
        let mut prediction = Prediction {
            model: model.clone(),
            signature: signature.name.clone(),
            key_name: config.key.clone(),
            keys,
            outputs: Vec::new(),
            precomputed_at: None,
            queued: Duration::ZERO,
            compute: Duration::ZERO,
        };
        let logging = &config.logging;
        let logged_inputs = (self.log.is_some() && logging.inputs && logging.sample_rate > 0.0)
            .then(|| named_inputs(signature, &valid));
        let batched = valid.is_batched();
        let from_table = precomputed.as_ref().and_then(|table| {
            let outputs = table.lookup(model.version(), signature, &prediction.keys)?;
            Some((outputs, table.manifest().finished_at.clone()))
        });
        match from_table {
            Some((outputs, finished_at)) => {
                served
                    .batcher
                    .metrics()
                    .record_precomputed(prediction.keys.len());
                prediction.outputs = outputs;
                prediction.precomputed_at = Some(finished_at);
            }
            None => {
                let timeout = options
                    .timeout
                    .map_or(self.timeout, |t| t.min(self.timeout));
                let deadline = started + timeout;
                let computed = tokio::time::timeout_at(
                    deadline.into(),
                    served.batcher.submit(valid, deadline),
                )
                .await
                .map_err(|_| ServerError::Timeout(timeout.as_millis() as u64))??;
                prediction.outputs = computed.outputs;
                prediction.queued = computed.queued;
                prediction.compute = computed.compute;
            }
        }
        if let Some(log) = &self.log {
            let request = LoggedRequest {
                model: model.name().to_owned(),
                version: model.version(),
                signature: prediction.signature.clone(),
                timestamp_us: now_us(),
                instance_timestamps_us: None,
                request_id: options.request_id.unwrap_or_else(mint_key),
                protocol: target.protocol,
                source: Source::Online,
                keys: prediction.keys.clone(),
                inputs: logged_inputs,
                outputs: logging.outputs.then(|| prediction.outputs.clone()),
                batched,
                queue_us: prediction.queued.as_micros() as u64,
                compute_us: prediction.compute.as_micros() as u64,
                sample_rate: logging.sample_rate,
            };
            record(log, request, logging.durability).await?;
        }
        if let Some(requested) = &options.outputs {
            select_outputs(&mut prediction, requested)?;
        }
        Ok(prediction)
    }
}

impl Pipeline {
    /// Records ground truth for keys of `model`, with the durability its predictions have
    /// (synced for a model known but not served now: its configuration is not at hand).
    pub async fn record_labels(&self, model: &str, labels: Vec<(String, Label)>) -> Result<()> {
        let Some(log) = &self.log else {
            return Err(ServerError::NotEnabled(
                "this server keeps no prediction log, so it cannot take labels: start it with \
                 --prediction-log DIR"
                    .into(),
            ));
        };
        let durability = match self.store.model(model) {
            Ok(served) => served.config.logging.durability,
            Err(_) if self.store.index().iter().any(|s| s.name == model) => Durability::Synced,
            Err(e) => return Err(e),
        };
        let batch = LabelBatch::new(model.to_owned(), now_us(), labels);
        let unwritten = |e: LogError| {
            ServerError::Unavailable(format!("the labels were not recorded: {e}; retry later"))
        };
        committed(log.submit_labels(batch, durability == Durability::Synced))
            .await
            .map_err(unwritten)
    }
}

/// A prediction made elsewhere (the edge runtime's phase 1), as it reports it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedPrediction {
    /// The instance's key.
    pub key: String,
    /// When it was made, µs since the Unix epoch (UTC); the time it arrives if absent.
    #[serde(default)]
    pub timestamp_us: Option<i64>,
    /// The instance's inputs, `{name: value}` as in the row format.
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Its outputs, `{name: value}` for the signature's outputs.
    pub outputs: serde_json::Map<String, serde_json::Value>,
}

impl Pipeline {
    /// Records predictions `version` of `model` made elsewhere (`source = edge`), so they are
    /// evaluated like the server's own: inputs and outputs are decoded against the signature
    /// (a record that does not fit it refuses the whole report, naming it), then logged with the
    /// model's durability. Returns the records taken.
    pub async fn record_reported(
        &self,
        model: &str,
        version: &VersionSelector,
        signature: Option<&str>,
        records: Vec<ReportedPrediction>,
    ) -> Result<usize> {
        let Some(log) = &self.log else {
            return Err(ServerError::NotEnabled(
                "this server keeps no prediction log, so it cannot take reported predictions: \
                 start it with --prediction-log DIR"
                    .into(),
            ));
        };
        let served = self.store.model(model)?;
        let version = served.resolve(version)?;
        let model = &version.model;
        if !model.is_batchable() {
            return Err(ServerError::BadRequest(format!(
                "model '{}' does not batch: reported predictions need rows",
                model.name()
            )));
        }
        let signature = model.signature(signature)?;
        let key_name = &model.config().key;
        let rows =
            |part: fn(&ReportedPrediction) -> &serde_json::Map<String, serde_json::Value>| {
                records
                    .iter()
                    .map(|r| {
                        let mut row = part(r).clone();
                        row.insert(key_name.clone(), serde_json::Value::String(r.key.clone()));
                        serde_json::Value::Object(row)
                    })
                    .collect::<Vec<_>>()
            };
        let inputs =
            serval_core::instances::decode_instances(signature, key_name, &rows(|r| &r.inputs))
                .map_err(|e| ServerError::BadRequest(format!("inputs of {e}")))?;
        // The outputs are checked as a signature whose inputs are the real one's outputs.
        let as_inputs = serval_core::Signature {
            inputs: signature.outputs.clone(),
            outputs: Vec::new(),
            postprocess: Vec::new(),
            ..signature.clone()
        };
        let outputs =
            serval_core::instances::decode_instances(&as_inputs, key_name, &rows(|r| &r.outputs))
                .map_err(|e| ServerError::BadRequest(format!("outputs of {e}")))?;
        let now = now_us();
        let taken = records.len();
        let request = LoggedRequest {
            model: model.name().to_owned(),
            version: model.version(),
            signature: signature.name.clone(),
            timestamp_us: now,
            instance_timestamps_us: Some(
                records
                    .iter()
                    .map(|r| r.timestamp_us.unwrap_or(now))
                    .collect(),
            ),
            request_id: mint_key(),
            protocol: "v2_rest",
            source: Source::Edge,
            keys: inputs.keys,
            inputs: Some(inputs.inputs),
            outputs: Some(outputs.inputs),
            batched: true,
            queue_us: 0,
            compute_us: 0,
            // The reporter sampled already.
            sample_rate: 1.0,
        };
        record(log, request, served.config.logging.durability).await?;
        Ok(taken)
    }
}

/// Hands a prediction to the log. Buffered: never fails the request (a full queue drops the
/// record, counted). Synced: answers only once the record is on disk, else 503.
async fn record(log: &PredictionLog, request: LoggedRequest, durability: Durability) -> Result<()> {
    if request.sample_rate <= 0.0 {
        return Ok(());
    }
    let synced = durability == Durability::Synced;
    let unlogged = |e: LogError| {
        ServerError::Unavailable(format!(
            "the prediction was not answered because it could not be logged (durability = \
             \"synced\"): {e}"
        ))
    };
    match committed(log.submit(request, synced)).await {
        Ok(()) => Ok(()),
        Err(e) if synced => Err(unlogged(e)),
        // Buffered: counted by the log, the prediction stands.
        Err(_) => Ok(()),
    }
}

/// Waits for a submitted write's group commit, when it has one to wait for.
async fn committed(submitted: Result<Option<Ack>, LogError>) -> Result<(), LogError> {
    match submitted? {
        None => Ok(()),
        Some(ack) => ack.await.unwrap_or(Err(LogError::Closed)),
    }
}

/// A request's validated inputs with their public names, for the log.
fn named_inputs(signature: &serval_core::Signature, valid: &ValidInputs) -> Vec<(String, Tensor)> {
    signature
        .inputs
        .iter()
        .zip(valid.tensors())
        .map(|(spec, tensor)| (spec.name.clone(), tensor.clone()))
        .collect()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Decodes a request that a sticky canary routes by its key, which is only known once decoded:
/// against the default version, or the canary when the inputs fit only the canary's signature;
/// then again against the version the key routes to, if its inputs differ. A request that fits
/// neither gets the default version's error.
fn route_by_key(
    model: &ServedModel,
    selector: &VersionSelector,
    default: Arc<ServedVersion>,
    canary: Arc<ServedVersion>,
    decode: &mut impl FnMut(&Model) -> Result<Decoded>,
) -> Result<(Arc<ServedVersion>, Decoded)> {
    let (decoded_for, decoded) = match decode(&default.model) {
        Ok(decoded) => (default, decoded),
        Err(err) => match decode(&canary.model) {
            Ok(decoded) => (canary, decoded),
            Err(_) => return Err(err),
        },
    };
    let key = decoded.keys.iter().flatten().flatten().next();
    let routed = model.route(selector, key.map(String::as_str))?;
    if Arc::ptr_eq(&routed, &decoded_for) {
        return Ok((routed, decoded));
    }
    let inputs = |m: &Model| {
        m.signature(decoded.signature.as_deref())
            .ok()
            .map(|s| s.inputs.clone())
    };
    let same_inputs = inputs(&routed.model).is_some_and(|i| Some(i) == inputs(&decoded_for.model));
    if same_inputs {
        return Ok((routed, decoded));
    }
    let decoded = decode(&routed.model)?;
    Ok((routed, decoded))
}

/// Keeps the outputs a request asked for, refusing names that are not outputs of the model.
fn select_outputs(prediction: &mut Prediction, requested: &[String]) -> Result<()> {
    let known = |name: &str| prediction.outputs.iter().any(|(n, _)| n == name);
    if let Some(unknown) = requested
        .iter()
        .find(|r| **r != prediction.key_name && !known(r))
    {
        return Err(ServerError::BadRequest(format!(
            "requested output '{unknown}' is not an output of model '{}' (outputs: {})",
            prediction.model.name(),
            prediction
                .outputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    prediction
        .outputs
        .retain(|(n, _)| requested.iter().any(|r| r == n));
    Ok(())
}

/// Keeps client keys untouched and, when `mint` is on, mints a UUIDv7 for every instance without
/// one. With minting off a missing key stays missing: the server never invents a key's value.
fn finish_keys(
    keys: Option<Vec<Option<String>>>,
    rows: usize,
    mint: bool,
) -> Result<Vec<Option<String>>> {
    let keys = keys.unwrap_or_else(|| vec![None; rows]);
    if keys.len() != rows {
        return Err(ServerError::BadRequest(format!(
            "{} keys for {rows} instances: send one key per instance",
            keys.len()
        )));
    }
    Ok(keys
        .into_iter()
        .map(|k| {
            if mint {
                Some(k.unwrap_or_else(mint_key))
            } else {
                k
            }
        })
        .collect())
}

fn mint_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Splits the key tensor (named `key_name`) out of protocol inputs: it is never fed to the model.
pub fn take_key_tensor(
    inputs: &mut Vec<(String, Tensor)>,
    key_name: &str,
) -> Result<Option<Vec<Option<String>>>> {
    let Some(ix) = inputs.iter().position(|(n, _)| n == key_name) else {
        return Ok(None);
    };
    let (_, tensor) = inputs.swap_remove(ix);
    if tensor.shape().len() > 2 || (tensor.shape().len() == 2 && tensor.shape()[1] != 1) {
        return Err(ServerError::BadRequest(format!(
            "key tensor '{key_name}' must have shape [N] (one key per instance), got {:?}",
            tensor.shape()
        )));
    }
    match tensor.into_parts().1 {
        TensorData::Bytes(keys) => Ok(Some(keys.into_iter().map(Some).collect())),
        other => Err(ServerError::BadRequest(format!(
            "key tensor '{key_name}' must be BYTES (strings), got {}",
            other.data_type()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_are_kept_and_missing_ones_minted() {
        let keys = finish_keys(Some(vec![Some("a".into()), None]), 2, true).unwrap();
        assert_eq!(keys[0].as_deref(), Some("a"));
        let minted = keys[1].as_deref().expect("a minted key");
        assert_eq!(uuid::Uuid::parse_str(minted).unwrap().get_version_num(), 7);
    }

    #[test]
    fn without_minting_a_missing_key_stays_missing() {
        let keys = finish_keys(Some(vec![Some("a".into()), None]), 2, false).unwrap();
        assert_eq!(keys, vec![Some("a".to_owned()), None]);
        assert_eq!(finish_keys(None, 3, false).unwrap(), vec![None, None, None]);
    }

    #[test]
    fn key_count_must_match_instances() {
        let err = finish_keys(Some(vec![Some("a".into())]), 2, true).unwrap_err();
        assert!(err.to_string().contains("1 keys for 2 instances"), "{err}");
    }

    #[test]
    fn key_tensor_needs_every_key() {
        assert!(key_tensor(&[Some("a".into()), None]).is_none());
        let tensor = key_tensor(&[Some("a".into()), Some("b".into())]).unwrap();
        assert_eq!(
            tensor.data(),
            &TensorData::Bytes(vec!["a".into(), "b".into()])
        );
    }
}
