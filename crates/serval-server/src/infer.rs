//! The protocol-neutral request path: resolve the version, validate, mint keys, hand the request
//! to the version's [`crate::batcher::Batcher`] under a deadline, record metrics.
//!
//! Every front end (TF Serving REST, OIP REST, OIP gRPC) decodes into [`InferRequest`] and
//! encodes [`InferResponse`]; none of them batches, queues or runs models itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serval_core::{Tensor, TensorData};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Result, ServerError};
use crate::metrics;
use crate::precomputed::PrecomputedTables;
use crate::store::{ModelStore, ServedModel, ServedVersion, VersionSelector};

/// A decoded request, independent of protocol.
pub struct InferRequest {
    /// Model name.
    pub model: String,
    /// Which version.
    pub version: VersionSelector,
    /// Signature name (`None`: `serving_default`).
    pub signature: Option<String>,
    /// Inputs by public name, axis 0 = instance; the key tensor is not among them.
    pub inputs: Vec<(String, Tensor)>,
    /// Per-instance client keys, when the request carried any.
    pub keys: Option<Vec<Option<String>>>,
    /// Protocol label for metrics (`tfserving`, `v2_rest`, `v2_grpc`).
    pub protocol: &'static str,
    /// The client's own deadline, capped by the server's.
    pub timeout: Option<Duration>,
}

/// The result of one request.
pub struct InferResponse {
    /// Model name.
    pub model: String,
    /// The version that answered.
    pub version: u64,
    /// The model's key field name.
    pub key_name: String,
    /// Each instance's key: the client's, else a minted one; `None` only when minting is off.
    pub keys: Vec<Option<String>>,
    /// Signature outputs, one row per instance.
    pub outputs: Vec<(String, Tensor)>,
    /// When the outputs come from a batch job's table: the job's finish time (RFC 3339).
    pub precomputed_at: Option<String>,
}

impl InferResponse {
    /// The keys as a BYTES tensor `[N]` (the v2 protocols' key output), when every instance has one.
    pub fn key_tensor(&self) -> Option<Tensor> {
        let keys: Vec<String> = self.keys.iter().cloned().collect::<Option<_>>()?;
        let tensor = Tensor::new(vec![keys.len()], TensorData::Bytes(keys));
        Some(tensor.expect("one key per element of shape [N]. This is a bug."))
    }
}

/// Shared handle used by every protocol.
#[derive(Clone)]
pub struct Inferencer {
    store: Arc<ModelStore>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    precomputed: Arc<PrecomputedTables>,
    strict_readiness: bool,
}

impl Inferencer {
    /// A handle over loaded models with a per-request deadline and a limit on requests in flight.
    pub fn new(store: Arc<ModelStore>, timeout: Duration, max_in_flight: usize) -> Inferencer {
        let max_in_flight = max_in_flight.max(1);
        Inferencer {
            store,
            timeout,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            precomputed: Arc::new(PrecomputedTables::default()),
            strict_readiness: false,
        }
    }

    /// Makes server readiness need every model ready, as Triton's `--strict-readiness`.
    pub fn with_strict_readiness(mut self, strict: bool) -> Inferencer {
        self.strict_readiness = strict;
        self
    }

    /// Whether the server is ready (`/v2/health/ready`, gRPC `ServerReady`); per-model
    /// readiness is each model's own.
    pub fn server_ready(&self) -> bool {
        self.store.ready(self.strict_readiness)
    }

    /// Answers requests whose keys are in these tables from them instead of the models.
    pub fn with_precomputed(mut self, tables: Arc<PrecomputedTables>) -> Inferencer {
        self.precomputed = tables;
        self
    }

    /// Admits one more request into the server, or refuses at once when the limit is reached.
    ///
    /// Front ends call this before reading a request body, so overload is shed before it costs
    /// memory or parsing time; the permit is held until the response is ready.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServerError::Busy(self.max_in_flight))
    }

    /// Refuses a request at once when its model's queues are full, so overload costs a body read
    /// but no decoding. Models with a precomputed table are never shed here: the table may
    /// answer without the queue.
    pub fn shed_if_saturated(
        &self,
        model: &ServedModel,
        version: &VersionSelector,
        protocol: &'static str,
    ) -> Result<()> {
        if model.saturated(version) && self.precomputed.table(&model.name).is_none() {
            // Counted like the batcher's own refusals, which go through `infer`.
            metrics::record_request(&model.name, "", protocol, 429, Duration::ZERO);
            return Err(ServerError::Overloaded(model.name.clone()));
        }
        Ok(())
    }

    /// The loaded models.
    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// A shared handle to the loaded models, for work moved off the async threads.
    pub fn store_handle(&self) -> Arc<ModelStore> {
        self.store.clone()
    }

    /// Runs one request end to end, recording metrics whatever the outcome.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        let protocol = request.protocol;
        let mut answered = None;
        let model_name = request.model.clone();
        let res = self.infer_inner(request, started, &mut answered).await;
        let status = match &res {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        };
        let elapsed = started.elapsed();
        match &answered {
            Some(served) => served
                .batcher
                .metrics()
                .record_request(protocol, status, elapsed),
            None => metrics::record_request(&model_name, "", protocol, status, elapsed),
        }
        tracing::debug!(model = %model_name, version = answered.as_ref().map(|s| s.model.version()), protocol, status, elapsed_us = elapsed.as_micros() as u64, "request");
        res
    }

    async fn infer_inner(
        &self,
        request: InferRequest,
        started: Instant,
        answered: &mut Option<Arc<ServedVersion>>,
    ) -> Result<InferResponse> {
        let served_model = self.store.model(&request.model)?;
        let routing_key = request
            .keys
            .as_ref()
            .and_then(|keys| keys.iter().flatten().next())
            .map(String::as_str);
        let served = served_model.route(&request.version, routing_key)?;
        let version = served.model.version();
        *answered = Some(served.clone());
        let model_cfg = served.model.config();
        // Validation runs here, per request, so one bad request can never fail a whole batch.
        let valid = served
            .model
            .validate(request.signature.as_deref(), request.inputs)?;
        let keys = finish_keys(request.keys, valid.rows(), model_cfg.mint_keys)?;
        if let Some(table) = self.precomputed.table(&request.model) {
            let signature = served.model.signature(Some(valid.signature()))?;
            if let Some(outputs) = table.lookup(version, signature, &keys) {
                served.batcher.metrics().record_precomputed(keys.len());
                return Ok(InferResponse {
                    model: request.model,
                    version,
                    key_name: model_cfg.key.clone(),
                    keys,
                    outputs,
                    precomputed_at: Some(table.manifest().finished_at.clone()),
                });
            }
        }
        let timeout = request
            .timeout
            .map_or(self.timeout, |t| t.min(self.timeout));
        let deadline = started + timeout;
        let outputs =
            tokio::time::timeout_at(deadline.into(), served.batcher.submit(valid, deadline))
                .await
                .map_err(|_| ServerError::Timeout(timeout.as_millis() as u64))??;
        Ok(InferResponse {
            model: request.model,
            version,
            key_name: model_cfg.key.clone(),
            keys,
            outputs,
            precomputed_at: None,
        })
    }
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
        let response = |keys| InferResponse {
            model: "m".into(),
            version: 1,
            key_name: "key".into(),
            keys,
            outputs: vec![],
            precomputed_at: None,
        };
        assert!(
            response(vec![Some("a".into()), None])
                .key_tensor()
                .is_none()
        );
        let tensor = response(vec![Some("a".into()), Some("b".into())])
            .key_tensor()
            .unwrap();
        assert_eq!(
            tensor.data(),
            &TensorData::Bytes(vec!["a".into(), "b".into()])
        );
    }
}
