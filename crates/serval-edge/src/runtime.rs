//! The edge runtime: phase 1 in-process, the cascade policy, phase 2 when needed, the offline
//! queue when phase 2 is out of reach.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serval_client::PostError;
use serval_core::cascade::{CascadePolicy, ForwardReason, Verdict};
use serval_core::instances::{decode_for, predict_instances};
use serval_core::{Model, ModelConfig};

use crate::error::EdgeError;
use crate::phase2::Phase2Client;
use crate::queue::OfflineQueue;

/// One instance's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The instance's key (the client's, or minted on the device).
    pub key: String,
    /// Which model produced `outputs`: 1 (on the device) or 2 (the cloud model).
    pub phase: u8,
    /// `true` while phase 1's answer stands in for a forward phase 2 has not answered yet
    /// (queued offline, or refused): a later answer with the same key may replace it.
    pub provisional: bool,
    /// Why phase 1 forwarded it, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<ForwardReason>,
    /// The forward waits in the offline queue.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
    /// This is phase 2's answer to a forward queued earlier.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Phase 1's class and confidence.
    pub phase1: Verdict,
    /// The phase-2 version that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The answering model's outputs for this instance.
    pub outputs: Map<String, Value>,
    /// Why a forward got no phase-2 answer (queue full, refused by phase 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts since the runtime started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EdgeStats {
    /// Instances phase 1 judged.
    pub instances: u64,
    /// Answered by phase 1 alone.
    pub local: u64,
    /// Forwarded by the policy.
    pub forwarded: u64,
    /// Answered by phase 2 (live or replayed).
    pub phase2_answered: u64,
    /// Requests sent to phase 2 (each with its retries).
    pub phase2_requests: u64,
    /// Put in the offline queue.
    pub queued: u64,
    /// Answered by phase 2 from the queue.
    pub replayed: u64,
    /// Forwards the full queue refused.
    pub queue_refused: u64,
    /// Queued forwards dropped to make room (`drop-oldest`): they get no phase-2 answer.
    pub queue_dropped: u64,
    /// Forwards phase 2 refused (never retried).
    pub phase2_refused: u64,
    /// Phase-1 predictions reported to the server's prediction log.
    pub reported: u64,
    /// Sampled phase-1 predictions whose report failed (a sample: not retried).
    pub reports_failed: u64,
}

/// Which phase-1 predictions are reported to the server's prediction log, and as which model.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The phase-1 model's name in the server's repository.
    pub model: String,
    /// Its version there (the server's default when `None`).
    pub version: Option<String>,
    /// The share of keys reported, by the key's hash (a key is always in or always out, so its
    /// label joins).
    pub sample_rate: f64,
}

/// A forwarded instance as the offline queue keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Forward {
    key: String,
    /// The instance as the client sent it, key included.
    instance: Value,
    class: String,
    confidence: f32,
    reason: Option<ForwardReason>,
}

impl Forward {
    fn verdict(&self) -> Verdict {
        Verdict {
            class: self.class.clone(),
            confidence: self.confidence,
            forward: self.reason,
        }
    }
}

impl From<Judged> for Forward {
    fn from(judged: Judged) -> Forward {
        let verdict = judged.answer.phase1;
        Forward {
            key: judged.answer.key,
            instance: judged.instance,
            class: verdict.class,
            confidence: verdict.confidence,
            reason: verdict.forward,
        }
    }
}

impl Answer {
    /// Phase 2's answer to an instance phase 1 judged as `phase1` and forwarded.
    pub fn from_phase2(
        key: String,
        phase1: Verdict,
        version: &str,
        outputs: Map<String, Value>,
    ) -> Answer {
        Answer {
            key,
            phase: 2,
            provisional: false,
            forwarded: phase1.forward,
            queued: false,
            replayed: false,
            phase1,
            version: Some(version.to_owned()),
            outputs,
            error: None,
        }
    }
}

/// One instance as phase 1 judged it.
#[derive(Debug, Clone)]
pub struct Judged {
    /// Phase 1's answer (provisional when the policy forwards it).
    pub answer: Answer,
    /// The instance, as an object holding its key (minted when it came without one).
    pub instance: Value,
}

/// Phase 1 and its policy: the part of the edge runtime that needs no network, disk or clock,
/// so the browser build (`serval-edge-wasm`) runs exactly what the native runtime does.
pub struct Phase1 {
    model: Model,
    policy: CascadePolicy,
    /// The policy's scores output (resolved once).
    scores: String,
    /// Phase 1's signature, as the policy names it (resolved once).
    signature: String,
}

impl std::fmt::Debug for Phase1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phase1")
            .field("model", &self.model)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Phase1 {
    /// Checks `policy` against `model` (its signature, scores output and classes).
    pub fn new(model: Model, policy: CascadePolicy) -> Result<Phase1, EdgeError> {
        policy.check().map_err(EdgeError::Config)?;
        let scores = policy.scores_output(&model).map_err(EdgeError::Config)?;
        let signature = model.signature(policy.signature.as_deref())?.name.clone();
        Ok(Phase1 {
            model,
            policy,
            scores,
            signature,
        })
    }

    /// The phase-1 model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The cascade policy.
    pub fn policy(&self) -> &CascadePolicy {
        &self.policy
    }

    /// The signature phase 1 runs.
    pub fn signature(&self) -> &str {
        &self.signature
    }

    /// Runs phase 1 on `instances` (JSON objects, keys optional: UUIDv7s are minted) and
    /// judges each by the policy, in order. An instance phase 1 cannot take fails the call,
    /// naming it.
    pub fn judge(&self, instances: &[Value]) -> Result<Vec<Judged>, EdgeError> {
        let instances = self.keyed(instances)?;
        let predictions = predict_instances(&self.model, Some(&self.signature), &instances)?;
        let scores = predictions
            .outputs
            .iter()
            .find(|(name, _)| *name == self.scores)
            .map(|(_, t)| t)
            .ok_or_else(|| EdgeError::Config(format!("phase 1 gave no '{}'", self.scores)))?;
        let verdicts = self
            .policy
            .judge(scores, &self.model.config().class_labels)
            .map_err(EdgeError::Config)?;
        let key_name = &predictions.key_name;
        instances
            .into_iter()
            .zip(verdicts)
            .enumerate()
            .map(|(row, (instance, verdict))| {
                // Through text, so float32 outputs keep their shortest form (0.9998355, not
                // the float64 expansion `to_value` would give them).
                let mut outputs = serde_json::to_string(&predictions.row(row))
                    .and_then(|text| serde_json::from_str::<Map<String, Value>>(&text))
                    .map_err(|e| EdgeError::Encode(e.to_string()))?;
                outputs.remove(key_name);
                // `keyed` gave every instance a key.
                let key = predictions.keys[row].clone().unwrap_or_default();
                let answer = Answer {
                    key,
                    phase: 1,
                    provisional: verdict.forward.is_some(),
                    forwarded: verdict.forward,
                    queued: false,
                    replayed: false,
                    phase1: verdict,
                    version: None,
                    outputs,
                    error: None,
                };
                Ok(Judged { answer, instance })
            })
            .collect()
    }

    /// The v2 infer request that forwards `instances` (keyed objects, as [`Judged::instance`])
    /// to phase 2, their `keys` as its `key_name` BYTES input.
    pub fn phase2_request(
        &self,
        key_name: &str,
        keys: &[String],
        instances: &[Value],
    ) -> Result<Value, EdgeError> {
        let signature = self.model.signature(Some(&self.signature))?;
        let decoded =
            decode_for(&self.model, signature, instances).map_err(serval_core::Error::from)?;
        Ok(crate::phase2::infer_request(
            key_name,
            keys,
            &decoded.inputs,
        ))
    }

    /// Gives every instance a key (minting UUIDv7s), as an object holding it.
    fn keyed(&self, instances: &[Value]) -> Result<Vec<Value>, EdgeError> {
        let key_name = &self.model.config().key;
        let signature = self.model.signature(Some(&self.signature))?;
        instances
            .iter()
            .map(|instance| {
                let mut object = match instance {
                    Value::Object(map) => map.clone(),
                    // A bare value is the single input's (as in the server's row format).
                    other => match signature.inputs.as_slice() {
                        [only] => Map::from_iter([(only.name.clone(), other.clone())]),
                        _ => {
                            return Err(EdgeError::Model(serval_core::Error::from(
                                serval_core::InputError::new(format!(
                                    "an instance must be an object naming the inputs {:?}",
                                    signature.inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
                                )),
                            )));
                        }
                    },
                };
                if !object.contains_key(key_name) {
                    object.insert(
                        key_name.clone(),
                        Value::String(uuid::Uuid::now_v7().to_string()),
                    );
                }
                Ok(Value::Object(object))
            })
            .collect()
    }
}

/// Phase 2 found out of reach: no request goes out until `until`, then one probe (a single
/// attempt); each failed probe doubles the wait, up to [`MAX_OUTAGE_PROBE`]. A device offline
/// for hours so costs one connection attempt per interval, not a retry cycle per batch.
#[derive(Debug, Clone, Copy)]
struct Outage {
    until: Instant,
    interval: Duration,
}

/// The default wait before the first probe of an unreachable phase 2.
pub const FIRST_OUTAGE_PROBE: Duration = Duration::from_secs(1);
/// The longest wait between probes.
const MAX_OUTAGE_PROBE: Duration = Duration::from_secs(30);

/// Phase 1 on the device, with the policy and, when configured, phase 2 and the queue.
pub struct EdgeRuntime {
    phase1: Phase1,
    phase2: Option<Phase2Client>,
    queue: Option<OfflineQueue>,
    report: Option<ReportOptions>,
    outage: Option<Outage>,
    first_probe: Duration,
    stats: EdgeStats,
}

impl std::fmt::Debug for EdgeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeRuntime")
            .field("phase1", &self.phase1)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Loads phase 1 from a whole ONNX file in memory, on tract (the edge never needs ONNX Runtime).
pub fn load_phase1(name: &str, bytes: &[u8], mut config: ModelConfig) -> Result<Model, EdgeError> {
    config.backend = serval_core::config::BackendPreference::Tract;
    Ok(Model::from_bytes(name, 1, bytes, config)?)
}

impl EdgeRuntime {
    /// Phase 1 on the device, forwarding to `phase2` (when given), through `queue` while it
    /// is out of reach (when given).
    pub fn new(
        phase1: Phase1,
        phase2: Option<Phase2Client>,
        queue: Option<OfflineQueue>,
    ) -> EdgeRuntime {
        EdgeRuntime {
            phase1,
            phase2,
            queue,
            report: None,
            outage: None,
            first_probe: FIRST_OUTAGE_PROBE,
            stats: EdgeStats::default(),
        }
    }

    /// Waits `first` after phase 2 is found unreachable before probing it again (doubling up
    /// to 30 s while it stays down); zero probes on every batch.
    pub fn with_outage_probe(mut self, first: Duration) -> EdgeRuntime {
        self.first_probe = first;
        self
    }

    /// Reports a sample of phase-1 predictions (`source = edge`) to phase 2's server, so the
    /// device's model is evaluated like the server's (needs a phase-2 client).
    pub fn with_report(mut self, report: ReportOptions) -> EdgeRuntime {
        self.report = Some(report);
        self
    }

    /// Phase 1 and its policy.
    pub fn phase1(&self) -> &Phase1 {
        &self.phase1
    }

    /// Counts so far.
    pub fn stats(&self) -> &EdgeStats {
        &self.stats
    }

    /// Forwards waiting in the offline queue.
    pub fn queued(&self) -> u64 {
        self.queue.as_ref().map_or(0, OfflineQueue::len)
    }

    /// Answers `instances` (JSON objects, keys optional) through `emit`, in order, after
    /// replaying whatever waits in the queue (those answers first, see [`EdgeRuntime::replay`]).
    /// An instance phase 1 cannot take fails the call, naming it; nothing is forwarded or
    /// queued then.
    pub fn answer<E: From<EdgeError>>(
        &mut self,
        instances: &[Value],
        emit: &mut impl FnMut(&[Answer]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.replay(emit)?;
        let answers = self.judge_and_forward(instances)?;
        emit(&answers)
    }

    /// Phase 1 on `instances`, then phase 2 or the queue for the forwarded ones.
    fn judge_and_forward(&mut self, instances: &[Value]) -> Result<Vec<Answer>, EdgeError> {
        let judged = self.phase1.judge(instances)?;
        let key_name = &self.phase1.model().config().key;
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let mut answers = Vec::with_capacity(judged.len());
        let mut forwards = Vec::new();
        let mut reports = Vec::new();
        for judged in judged {
            self.stats.instances += 1;
            let answer = &judged.answer;
            if let Some(report) = &self.report
                && serval_core::instances::sampled(Some(&answer.key), "", 0, report.sample_rate)
            {
                let mut inputs = judged.instance.as_object().cloned().unwrap_or_default();
                inputs.remove(key_name);
                reports.push(serde_json::json!({
                    "key": answer.key, "timestamp_us": now_us, "inputs": inputs,
                    "outputs": answer.outputs,
                }));
            }
            answers.push(answer.clone());
            if answer.forwarded.is_some() {
                self.stats.forwarded += 1;
                forwards.push((answers.len() - 1, Forward::from(judged)));
            } else {
                self.stats.local += 1;
            }
        }
        self.forward(forwards, &mut answers)?;
        self.send_report(reports);
        Ok(answers)
    }

    /// Sends sampled phase-1 predictions to the server's log; a failure is counted, not retried.
    fn send_report(&mut self, predictions: Vec<Value>) {
        let (Some(report), Some(client)) = (&self.report, &self.phase2) else {
            return;
        };
        if predictions.is_empty() {
            return;
        }
        if self.outage.is_some() {
            self.stats.reports_failed += predictions.len() as u64;
            return;
        }
        let count = predictions.len() as u64;
        match client.report(
            &report.model,
            report.version.as_deref(),
            self.phase1.signature(),
            predictions,
        ) {
            Ok(accepted) => self.stats.reported += accepted as u64,
            Err(e) => {
                if self.stats.reports_failed == 0 {
                    tracing::warn!(error = %e, "phase-1 predictions could not be reported (counted, not retried)");
                }
                self.stats.reports_failed += count;
            }
        }
    }

    /// Sends `forwards` to phase 2 behind anything queued, filling in their answers; what
    /// phase 2 cannot take now goes to the queue, in order.
    fn forward(
        &mut self,
        forwards: Vec<(usize, Forward)>,
        answers: &mut [Answer],
    ) -> Result<(), EdgeError> {
        let mut pending = forwards.as_slice();
        // Only when nothing waits may new forwards overtake the queue.
        if self.queued() == 0 && self.phase2.is_some() {
            while !pending.is_empty() {
                let take = pending.len().min(self.max_batch());
                let (batch, rest) = pending.split_at(take);
                let sent: Vec<Forward> = batch.iter().map(|(_, f)| f.clone()).collect();
                match self.send(&sent) {
                    Ok(mut phase2) => {
                        for ((at, _), answer) in batch.iter().zip(phase2.drain(..)) {
                            answers[*at] = answer;
                        }
                    }
                    Err(EdgeError::Unreachable(_)) => break,
                    Err(EdgeError::Phase2(why)) => {
                        for (at, _) in batch {
                            answers[*at].error = Some(why.clone());
                            self.stats.phase2_refused += 1;
                        }
                    }
                    Err(e) => return Err(e),
                }
                pending = rest;
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let Some(queue) = &mut self.queue else {
            for (at, _) in pending {
                answers[*at].error = Some(match &self.phase2 {
                    Some(_) => "phase 2 is unreachable and no offline queue is configured".into(),
                    None => "no phase 2 is configured".into(),
                });
            }
            return Ok(());
        };
        let payloads = pending
            .iter()
            .map(|(_, f)| serde_json::to_vec(f).map_err(|e| EdgeError::Encode(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let dropped_before = queue.dropped();
        let queued = match queue.push(&payloads) {
            Ok(range) => range,
            Err(EdgeError::QueueFull { .. }) => 0..0,
            Err(e) => return Err(e),
        };
        let full = EdgeError::QueueFull {
            records: queue.len(),
            bytes: queue.bytes(),
        }
        .to_string();
        let dropped = queue.dropped() - dropped_before;
        for (i, (at, _)) in pending.iter().enumerate() {
            if queued.contains(&i) {
                answers[*at].queued = true;
            } else {
                answers[*at].error = Some(full.clone());
            }
        }
        let refused = (pending.len() - queued.len()) as u64;
        self.stats.queued += queued.len() as u64;
        self.stats.queue_refused += refused;
        // Drop-oldest: what went beyond this push's own refused ones were queued earlier.
        self.stats.queue_dropped += dropped.saturating_sub(refused);
        Ok(())
    }

    fn max_batch(&self) -> usize {
        self.phase2.as_ref().map_or(1, Phase2Client::max_batch)
    }

    /// Sends the queue to phase 2, oldest first, until it is empty or phase 2 is out of reach,
    /// handing each batch's answers (`replayed`) to `emit` before acknowledging it: a crash in
    /// between replays the batch again (a duplicate, same keys), never loses it. A batch phase
    /// 2 refuses is answered with the error and leaves the queue, so one bad record never
    /// blocks the rest.
    pub fn replay<E: From<EdgeError>>(
        &mut self,
        emit: &mut impl FnMut(&[Answer]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.phase2.is_none() {
            return Ok(());
        }
        let limit = self.max_batch();
        while let Some(queue) = &mut self.queue {
            let records = queue.peek(limit)?;
            if records.is_empty() {
                break;
            }
            let forwards: Vec<Forward> = records
                .iter()
                .map(|r| serde_json::from_slice(r))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    EdgeError::Config(format!("an offline queue record is unreadable: {e}"))
                })?;
            let answers: Vec<Answer> = match self.send(&forwards) {
                Ok(mut sent) => {
                    for answer in &mut sent {
                        answer.replayed = true;
                    }
                    self.stats.replayed += sent.len() as u64;
                    sent
                }
                Err(EdgeError::Unreachable(_)) => break,
                Err(EdgeError::Phase2(why)) => {
                    self.stats.phase2_refused += forwards.len() as u64;
                    forwards
                        .iter()
                        .map(|f| Answer {
                            key: f.key.clone(),
                            phase: 1,
                            provisional: true,
                            forwarded: f.reason,
                            queued: false,
                            replayed: true,
                            phase1: f.verdict(),
                            version: None,
                            outputs: Map::new(),
                            error: Some(why.clone()),
                        })
                        .collect()
                }
                Err(e) => return Err(e.into()),
            };
            emit(&answers)?;
            if let Some(queue) = &mut self.queue {
                queue.ack(forwards.len())?;
            }
        }
        Ok(())
    }

    /// One phase-2 request for `forwards`; their answers in order.
    fn send(&mut self, forwards: &[Forward]) -> Result<Vec<Answer>, EdgeError> {
        let Some(client) = &self.phase2 else {
            return Err(EdgeError::Config("no phase 2 is configured".into()));
        };
        let instances: Vec<Value> = forwards.iter().map(|f| f.instance.clone()).collect();
        let keys: Vec<String> = forwards.iter().map(|f| f.key.clone()).collect();
        let request = self
            .phase1
            .phase2_request(client.key_name(), &keys, &instances)?;
        let now = Instant::now();
        let probe = match self.outage {
            Some(outage) if now < outage.until => {
                return Err(EdgeError::Unreachable(PostError::Unreachable {
                    url: client.url().to_owned(),
                    last: "it was unreachable moments ago; not tried again yet".into(),
                    attempts: 0,
                }));
            }
            Some(_) => true,
            None => false,
        };
        self.stats.phase2_requests += 1;
        let phase2 = match client.infer(&keys, &request, probe) {
            Ok(answer) => {
                if self.outage.take().is_some() {
                    tracing::info!("phase 2 answers again");
                }
                answer
            }
            Err(e @ EdgeError::Unreachable(_)) => {
                if self.outage.is_none() {
                    tracing::warn!(error = %e, "phase 2 unreachable: forwards wait in the queue");
                }
                let interval = self.outage.map_or(self.first_probe, |o| {
                    (o.interval * 2).min(MAX_OUTAGE_PROBE.max(self.first_probe))
                });
                self.outage = Some(Outage {
                    until: Instant::now() + interval,
                    interval,
                });
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.stats.phase2_answered += forwards.len() as u64;
        Ok(forwards
            .iter()
            .zip(phase2.outputs)
            .map(|(f, outputs)| {
                Answer::from_phase2(f.key.clone(), f.verdict(), &phase2.version, outputs)
            })
            .collect())
    }
}
