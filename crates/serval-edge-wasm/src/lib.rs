//! Serval's edge runtime in the browser: [`serval_edge::Phase1`] (tract, compiled to
//! WebAssembly) behind a JSON interface for the page's script, which owns the transport.
//!
//! The script loads the phase-1 ONNX file and its config, builds an [`Edge`], and per batch of
//! instances calls [`Edge::judge`]: phase 1's answers, and for the instances the policy
//! forwards a ready-made Open Inference Protocol v2 request for phase 2 (keys as the BYTES
//! input). It POSTs that with `fetch` and hands the reply to [`Edge::phase2`], which checks the
//! keys came back and gives phase 2's answers. A browser cannot block on the network, so the
//! request and reply cross the boundary as JSON text instead of the native runtime's
//! synchronous client; the decisions, the request and the reading of the reply are the same
//! code as `serval edge`'s.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serval_core::ModelConfig;
use serval_core::cascade::Verdict;
use serval_edge::{Answer, EdgeError, Phase1, load_phase1, split_reply};
use wasm_bindgen::prelude::*;

/// Phase 1 in the page.
#[wasm_bindgen]
pub struct Edge {
    phase1: Phase1,
    /// The key input's name on the phase-2 server.
    phase2_key: String,
}

/// [`Edge::judge`]'s answer.
#[derive(Debug, Serialize)]
struct Judgement {
    /// Phase 1's answer per instance, in order (provisional where forwarded).
    answers: Vec<Answer>,
    /// What goes to phase 2, when anything does.
    forward: Option<Forward>,
}

/// The instances phase 1 forwards.
#[derive(Debug, Serialize)]
struct Forward {
    /// Their positions in [`Judgement::answers`].
    at: Vec<usize>,
    /// The v2 infer request body for phase 2.
    request: Value,
}

/// A forwarded instance as [`Edge::phase2`] needs it back: its key and phase 1's verdict
/// (a whole provisional [`Answer`] reads as one).
#[derive(Debug, Deserialize)]
struct Forwarded {
    key: String,
    phase1: Verdict,
}

#[wasm_bindgen]
impl Edge {
    /// Loads phase 1 from its ONNX file's bytes under `config` (the model's config as JSON;
    /// its `edge` section is the cascade policy). `phase2_key` names the key input on the
    /// phase-2 server.
    #[wasm_bindgen(constructor)]
    pub fn new(name: &str, model: &[u8], config: &str, phase2_key: &str) -> Result<Edge, JsError> {
        Edge::load(name, model, config, phase2_key).map_err(JsError::from)
    }

    /// Phase 1 on `instances` (a JSON array of instance objects, keys optional: minted when
    /// missing): `{"answers": [...], "forward": null | {"at": [...], "request": {...}}}`.
    pub fn judge(&self, instances: &str) -> Result<String, JsError> {
        self.judge_json(instances).map_err(JsError::from)
    }

    /// Phase 2's answers (a JSON array, in order) from its v2 `reply` to the request
    /// [`Edge::judge`] built for `forwarded` (the JSON array of those instances' provisional
    /// answers).
    pub fn phase2(&self, forwarded: &str, reply: &str) -> Result<String, JsError> {
        self.phase2_json(forwarded, reply).map_err(JsError::from)
    }

    /// The phase-1 signature's inputs and the class labels, for the page's form:
    /// `{"signature": ..., "inputs": [{"name", "datatype", "shape"}], "class_labels": [...]}`.
    pub fn describe(&self) -> Result<String, JsError> {
        let model = self.phase1.model();
        let signature = model
            .signature(Some(self.phase1.signature()))
            .map_err(EdgeError::from)?;
        let inputs: Vec<Value> = signature
            .inputs
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name, "datatype": i.data_type.as_str(), "shape": i.shape,
                })
            })
            .collect();
        Ok(serde_json::json!({
            "signature": signature.name,
            "inputs": inputs,
            "class_labels": model.config().class_labels,
            "key": model.config().key,
        })
        .to_string())
    }
}

impl Edge {
    fn load(name: &str, model: &[u8], config: &str, phase2_key: &str) -> Result<Edge, EdgeError> {
        let config: ModelConfig = serde_json::from_str(config)
            .map_err(|e| EdgeError::Config(format!("the phase-1 config is not usable: {e}")))?;
        let policy = config.edge.clone().ok_or_else(|| {
            EdgeError::Config(format!(
                "model '{name}' has no [edge] section: it is not configured as a phase 1"
            ))
        })?;
        let phase1 = Phase1::new(load_phase1(name, model, config)?, policy)?;
        Ok(Edge {
            phase1,
            phase2_key: phase2_key.to_owned(),
        })
    }

    fn judge_json(&self, instances: &str) -> Result<String, EdgeError> {
        let instances: Vec<Value> = serde_json::from_str(instances).map_err(|e| {
            EdgeError::Config(format!("instances must be a JSON array of objects: {e}"))
        })?;
        let judged = self.phase1.judge(&instances)?;
        let mut at = Vec::new();
        let mut keys = Vec::new();
        let mut forwarded = Vec::new();
        let mut answers = Vec::with_capacity(judged.len());
        for (i, judged) in judged.into_iter().enumerate() {
            if judged.answer.forwarded.is_some() {
                at.push(i);
                keys.push(judged.answer.key.clone());
                forwarded.push(judged.instance);
            }
            answers.push(judged.answer);
        }
        let forward = if at.is_empty() {
            None
        } else {
            let request = self
                .phase1
                .phase2_request(&self.phase2_key, &keys, &forwarded)?;
            Some(Forward { at, request })
        };
        serde_json::to_string(&Judgement { answers, forward })
            .map_err(|e| EdgeError::Encode(e.to_string()))
    }

    fn phase2_json(&self, forwarded: &str, reply: &str) -> Result<String, EdgeError> {
        let forwarded: Vec<Forwarded> = serde_json::from_str(forwarded).map_err(|e| {
            EdgeError::Config(format!(
                "forwarded must be the JSON array of the forwarded answers: {e}"
            ))
        })?;
        let reply: Value = serde_json::from_str(reply)
            .map_err(|e| EdgeError::Phase2(format!("answered with something not JSON: {e}")))?;
        let keys: Vec<String> = forwarded.iter().map(|f| f.key.clone()).collect();
        let answer = split_reply(&self.phase2_key, &keys, &reply)?;
        let answers: Vec<Answer> = forwarded
            .into_iter()
            .zip(answer.outputs)
            .map(|(f, outputs)| Answer::from_phase2(f.key, f.phase1, &answer.version, outputs))
            .collect();
        serde_json::to_string(&answers).map_err(|e| EdgeError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

    fn edge() -> Edge {
        let dir = format!("{EXAMPLES}/models/digits_phase1");
        let bytes = std::fs::read(format!("{dir}/1/model.onnx")).unwrap();
        let config = ModelConfig::load("digits_phase1", dir.as_ref()).unwrap();
        let config = serde_json::to_string(&config).unwrap();
        Edge::load("digits_phase1", &bytes, &config, "key").unwrap()
    }

    fn lines(n: usize) -> Vec<Value> {
        let text =
            std::fs::read_to_string(format!("{EXAMPLES}/data/digits_two_phase.jsonl")).unwrap();
        text.lines()
            .take(n)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn judge_builds_the_phase2_request_for_the_forwarded_and_reads_its_reply() {
        let edge = edge();
        let instances = lines(60);
        let judged: Value = serde_json::from_str(
            &edge
                .judge_json(&Value::from(instances.clone()).to_string())
                .unwrap(),
        )
        .unwrap();
        let answers = judged["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 60);
        let at: Vec<usize> = judged["forward"]["at"]
            .as_array()
            .expect("the example's first 60 lines hold an unsure digit")
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect();
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer["key"], instances[i]["key"]);
            assert_eq!(answer["provisional"], Value::Bool(at.contains(&i)));
        }
        let request = &judged["forward"]["request"];
        let key_input = request["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "key")
            .unwrap();
        let keys: Vec<&Value> = at.iter().map(|&i| &instances[i]["key"]).collect();
        assert_eq!(
            key_input["data"]
                .as_array()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            keys
        );
        // Phase 2's reply, as the server would give it: label 7 for each.
        let reply = serde_json::json!({"model_version": "3", "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [at.len()], "data": vec![7; at.len()]},
            {"name": "key", "datatype": "BYTES", "shape": [at.len()], "data": keys},
        ]});
        let forwarded: Vec<&Value> = at.iter().map(|&i| &answers[i]).collect();
        let phase2: Value = serde_json::from_str(
            &edge
                .phase2_json(
                    &serde_json::to_string(&forwarded).unwrap(),
                    &reply.to_string(),
                )
                .unwrap(),
        )
        .unwrap();
        for (answer, sent) in phase2.as_array().unwrap().iter().zip(&forwarded) {
            assert_eq!(answer["phase"], 2);
            assert_eq!(answer["key"], sent["key"]);
            assert_eq!(answer["phase1"], sent["phase1"]);
            assert_eq!(answer["version"], "3");
            assert_eq!(answer["outputs"]["label"], 7);
        }
    }

    #[test]
    fn bad_input_and_replies_with_other_keys_are_refused_by_name() {
        let edge = edge();
        let err = edge
            .judge_json("{\"not\": \"an array\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("JSON array"), "{err}");
        let err = edge
            .judge_json("[{\"features\": [1, 2]}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("features"), "{err}");
        let forwarded = r#"[{"key": "a", "phase1": {"class": "1", "confidence": 0.5, "forward": "confidence"}}]"#;
        let reply =
            r#"{"outputs": [{"name": "key", "datatype": "BYTES", "shape": [1], "data": ["b"]}]}"#;
        let err = edge.phase2_json(forwarded, reply).unwrap_err().to_string();
        assert!(err.contains("other keys"), "{err}");
    }

    #[test]
    fn a_model_without_an_edge_section_is_not_a_phase1() {
        let dir = format!("{EXAMPLES}/models/digits_phase2");
        let bytes = std::fs::read(format!("{dir}/1/model.onnx")).unwrap();
        let err = Edge::load("digits_phase2", &bytes, "{}", "key")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[edge]"), "{err}");
    }
}
