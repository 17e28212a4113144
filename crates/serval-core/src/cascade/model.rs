//! A cascade served as one model (`kind = "cascade"`): the two-phase prediction when both
//! phases run on the server. Each batch goes through phase 1 whole; only the rows its policy
//! forwards go on to phase 2, as one smaller batch. The phases are models of the same
//! repository, shared with their own serving (the server hands over the versions it already
//! loaded), so a cascade costs no second copy of either.

use std::sync::Arc;

use super::{CascadeConfig, CascadePolicy, scores_output, top_classes};
use crate::backend::Backend;
use crate::graph::TensorSpec;
use crate::model::Model;
use crate::tensor::{DataType, Tensor, TensorData};

/// The cascade's output holding each instance's class (the answering phase's label).
pub const OUTPUT_CLASS: &str = "class";
/// The cascade's output holding the answering phase's probability of that class.
pub const OUTPUT_CONFIDENCE: &str = "confidence";
/// The cascade's output saying which phase answered (1 or 2).
pub const OUTPUT_PHASE: &str = "phase";

/// Finds a model of the repository by name and version (a number or label; `None`: its
/// default), loaded and warmed up; `Err` says why not.
pub type PhaseSource<'a> = dyn Fn(&str, Option<&str>) -> Result<Arc<Model>, String> + 'a;

/// Two loaded models and the policy between them, run as one engine.
pub struct Cascade {
    phase1: Arc<Model>,
    phase2: Arc<Model>,
    policy: CascadePolicy,
    phase1_signature: String,
    phase1_scores: String,
    phase2_signature: String,
    phase2_scores: String,
    /// Phase 1's signature inputs: the cascade's inputs.
    inputs: Vec<TensorSpec>,
}

impl Cascade {
    /// Finds both phases through `phases` and checks that they can be chained: phase 1 has the
    /// policy's scores, phase 2 has scores and takes the inputs phase 1 takes.
    pub fn resolve(config: &CascadeConfig, phases: &PhaseSource<'_>) -> Result<Cascade, String> {
        let phase1 = phases(&config.phase1, config.phase1_version.as_deref())
            .map_err(|e| format!("phase 1 '{}': {e}", config.phase1))?;
        let policy = match &config.policy {
            Some(policy) => policy.clone(),
            None => phase1.config().edge.clone().ok_or_else(|| {
                format!(
                    "no policy: set [cascade.policy], or [edge] in the config.toml of '{}'",
                    phase1.name()
                )
            })?,
        };
        let phase2_name = policy.phase2.clone().ok_or_else(|| {
            "the policy names no phase-2 model: set `phase2 = \"...\"` in it".to_owned()
        })?;
        let phase2 = phases(&phase2_name, policy.phase2_version.as_deref())
            .map_err(|e| format!("phase 2 '{phase2_name}': {e}"))?;
        Cascade::new(config, policy, phase1, phase2)
    }

    fn new(
        config: &CascadeConfig,
        policy: CascadePolicy,
        phase1: Arc<Model>,
        phase2: Arc<Model>,
    ) -> Result<Cascade, String> {
        for (phase, model) in [("phase 1", &phase1), ("phase 2", &phase2)] {
            if model.cascade().is_some() {
                return Err(format!(
                    "{phase} '{}' is itself a cascade: the phases are ONNX models",
                    model.name()
                ));
            }
            if !model.is_batchable() {
                return Err(format!(
                    "{phase} '{}' does not batch on axis 0: a cascade decides row by row",
                    model.name()
                ));
            }
        }
        let phase1_scores = policy
            .scores_output(&phase1)
            .map_err(|e| format!("phase 1: {e}"))?;
        let phase2_scores = scores_output(
            &phase2,
            config.phase2_signature.as_deref(),
            config.phase2_scores.as_deref(),
        )
        .map_err(|e| format!("phase 2: {e}"))?;
        let first = phase1
            .signature(policy.signature.as_deref())
            .map_err(|e| e.to_string())?;
        let second = phase2
            .signature(config.phase2_signature.as_deref())
            .map_err(|e| e.to_string())?;
        for spec in &first.inputs {
            match second.inputs.iter().find(|s| s.name == spec.name) {
                Some(s) if s.data_type == spec.data_type && shapes_agree(&s.shape, &spec.shape) => {
                }
                Some(s) => {
                    return Err(format!(
                        "input '{}' is {} {:?} in phase 1 '{}' but {} {:?} in phase 2 '{}': \
                         forwarded instances must fit both",
                        spec.name,
                        spec.data_type,
                        spec.shape_i64(),
                        phase1.name(),
                        s.data_type,
                        s.shape_i64(),
                        phase2.name()
                    ));
                }
                None => {
                    return Err(format!(
                        "phase 2 '{}' has no input '{}', which phase 1 '{}' takes: both phases \
                         take the same inputs",
                        phase2.name(),
                        spec.name,
                        phase1.name()
                    ));
                }
            }
        }
        if let Some(extra) = second
            .inputs
            .iter()
            .find(|s| !first.inputs.iter().any(|f| f.name == s.name))
        {
            return Err(format!(
                "phase 2 '{}' needs input '{}', which phase 1 '{}' does not take",
                phase2.name(),
                extra.name,
                phase1.name()
            ));
        }
        Ok(Cascade {
            phase1_signature: first.name.clone(),
            phase2_signature: second.name.clone(),
            inputs: first.inputs.clone(),
            phase1,
            phase2,
            policy,
            phase1_scores,
            phase2_scores,
        })
    }

    /// Phase 1, which sees every instance.
    pub fn phase1(&self) -> &Arc<Model> {
        &self.phase1
    }

    /// Phase 2, which sees what phase 1 forwards.
    pub fn phase2(&self) -> &Arc<Model> {
        &self.phase2
    }

    /// The policy between them.
    pub fn policy(&self) -> &CascadePolicy {
        &self.policy
    }

    /// The cascade's inputs: phase 1's.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The cascade's outputs: per instance, the answering phase's class and confidence, and
    /// which phase it was.
    pub fn outputs() -> Vec<TensorSpec> {
        let spec = |name: &str, data_type| TensorSpec {
            name: name.to_owned(),
            data_type,
            shape: vec![None],
        };
        vec![
            spec(OUTPUT_CLASS, DataType::Bytes),
            spec(OUTPUT_CONFIDENCE, DataType::Fp32),
            spec(OUTPUT_PHASE, DataType::Int32),
        ]
    }

    /// What runs the cascade, for `inspect`, `/config` and the load log.
    pub fn describe(&self) -> String {
        let phase = |m: &Model| {
            format!(
                "{} v{} on {}",
                m.name(),
                m.version(),
                m.backend_choice().kind.as_str()
            )
        };
        format!(
            "cascade: phase 1 {}, phase 2 {}",
            phase(&self.phase1),
            phase(&self.phase2)
        )
    }
}

impl Backend for Cascade {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let rows = inputs.first().map_or(0, Tensor::rows);
        let named: Vec<(String, Tensor)> = self
            .inputs
            .iter()
            .map(|s| s.name.clone())
            .zip(inputs)
            .collect();
        let first = self
            .phase1
            .predict(Some(&self.phase1_signature), named.clone())
            .map_err(|e| format!("phase 1: {e}"))?;
        let verdicts = self
            .policy
            .judge(
                output(&first, &self.phase1_scores)?,
                &self.phase1.config().class_labels,
            )
            .map_err(|e| format!("phase 1: {e}"))?;
        let forwarded: Vec<usize> = verdicts
            .iter()
            .enumerate()
            .filter_map(|(row, v)| v.forward.map(|_| row))
            .collect();
        let (mut class, mut confidence): (Vec<String>, Vec<f32>) = verdicts
            .into_iter()
            .map(|v| (v.class, v.confidence))
            .unzip();
        let mut phase = vec![1i32; rows];
        if !forwarded.is_empty() {
            let subset = named
                .iter()
                .map(|(name, t)| (name.clone(), t.take_rows(&forwarded)))
                .collect();
            let second = self
                .phase2
                .predict(Some(&self.phase2_signature), subset)
                .map_err(|e| format!("phase 2: {e}"))?;
            let answers = top_classes(
                output(&second, &self.phase2_scores)?,
                &self.phase2.config().class_labels,
            )
            .map_err(|e| format!("phase 2: {e}"))?;
            for (&row, (c, p)) in forwarded.iter().zip(answers) {
                class[row] = c;
                confidence[row] = p;
                phase[row] = 2;
            }
        }
        let tensor = |data| Tensor::new(vec![rows], data).map_err(|e| e.to_string());
        Ok(vec![
            tensor(TensorData::Bytes(class))?,
            tensor(TensorData::Fp32(confidence))?,
            tensor(TensorData::Int32(phase))?,
        ])
    }
}

/// Whether one tensor can fit both shapes: same rank, and no axis fixed at two sizes.
fn shapes_agree(a: &[Option<usize>], b: &[Option<usize>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.is_none() || y.is_none() || x == y)
}

fn output<'a>(outputs: &'a [(String, Tensor)], name: &str) -> Result<&'a Tensor, String> {
    outputs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| format!("output '{name}' was not produced. This is a bug."))
}
