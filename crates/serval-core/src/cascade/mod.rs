//! Two-phase predictions' decision (the book's Two-Phase Predictions pattern): which instances
//! the small phase-1 model answers itself and which go on to the large phase-2 model.
//!
//! The same policy decides on the device (`serval-edge`) and in a server-side cascade, so a
//! policy tuned offline behaves the same wherever it runs.
//!
//! ```toml
//! # Forward what phase 1 thinks is a digit, or anything it is unsure of, to `digits_phase2`.
//! phase2 = "digits_phase2"
//! scores = "probabilities"
//! [forward]
//! classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
//! confidence = [0.0, 0.95]
//! when = "any"
//! ```

mod model;

use serde::{Deserialize, Serialize};

pub use model::{Cascade, OUTPUT_CLASS, OUTPUT_CONFIDENCE, OUTPUT_PHASE, PhaseSource};

use crate::model::Model;
use crate::tensor::{Tensor, TensorData};

/// `[cascade]` of a model with `kind = "cascade"`: the two-phase prediction run whole on the
/// server. Phase 1 sees every instance; phase 2 only those the policy forwards.
///
/// ```toml
/// kind = "cascade"
/// [cascade]
/// phase1 = "digits_phase1"   # its [edge] section is the policy unless [cascade.policy] is set
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// The phase-1 model of the repository.
    pub phase1: String,
    /// Its version, a number or label (its default when unset).
    #[serde(default)]
    pub phase1_version: Option<String>,
    /// When to forward and to which phase-2 model. Unset: phase 1's own `[edge]` section, so
    /// the device, the browser and the server cascade by one policy.
    #[serde(default)]
    pub policy: Option<CascadePolicy>,
    /// Phase 2's signature (default `serving_default`).
    #[serde(default)]
    pub phase2_signature: Option<String>,
    /// Phase 2's output of `[N, C]` class probabilities; by default its signature's only one.
    #[serde(default)]
    pub phase2_scores: Option<String>,
}

impl CascadeConfig {
    /// Refuses an empty phase-1 name or an invalid inline policy.
    pub fn check(&self) -> Result<(), String> {
        if self.phase1.is_empty() {
            return Err("`phase1` must name a model of the repository".into());
        }
        if let Some(policy) = &self.policy {
            policy.check().map_err(|e| format!("policy: {e}"))?;
        }
        Ok(())
    }
}

/// When phase 1 hands an instance to phase 2.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CascadePolicy {
    /// The phase-2 model forwarded instances go to, on the server (`serval edge --model` and
    /// the browser page `/edge` default to it).
    #[serde(default)]
    pub phase2: Option<String>,
    /// Its version, a number or label (the server's default when unset).
    #[serde(default)]
    pub phase2_version: Option<String>,
    /// Phase 1's signature (default `serving_default`).
    #[serde(default)]
    pub signature: Option<String>,
    /// Phase 1's output of class scores, `[N, C]` float probabilities; by default the
    /// signature's only such output.
    #[serde(default)]
    pub scores: Option<String>,
    /// The forwarding rule.
    pub forward: ForwardRule,
}

/// Forward when phase 1's class is in a set and/or its confidence is inside a band.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    /// Classes that always need phase 2 (the book: "is this an instrument at all?" forwards the
    /// instruments): `class_labels` names, or class indices as text when the model has none.
    #[serde(default)]
    pub classes: Vec<String>,
    /// `[low, high)`: forward when phase 1's top probability lies in it.
    #[serde(default)]
    pub confidence: Option<[f64; 2]>,
    /// With both conditions set: `any` forwards when either holds, `all` only when both do.
    #[serde(default)]
    pub when: Combine,
}

/// How the two conditions of a [`ForwardRule`] combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Either condition forwards.
    #[default]
    Any,
    /// Both conditions must hold.
    All,
}

/// Why an instance went to phase 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardReason {
    /// Its class is one of [`ForwardRule::classes`].
    Class,
    /// Its confidence is inside [`ForwardRule::confidence`].
    Confidence,
    /// Both (with `when = "all"`, or both held under `any`).
    ClassAndConfidence,
}

/// Phase 1's view of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The class phase 1 predicts (its label, or its index as text).
    pub class: String,
    /// Phase 1's top probability.
    pub confidence: f32,
    /// Why the instance goes to phase 2; `None` when phase 1's answer stands.
    pub forward: Option<ForwardReason>,
}

impl CascadePolicy {
    /// Parses a policy file's TOML.
    pub fn from_toml(text: &str) -> Result<CascadePolicy, String> {
        let policy: CascadePolicy = toml::from_str(text).map_err(|e| e.to_string())?;
        policy.check()?;
        Ok(policy)
    }

    /// Refuses a rule that can never forward, or a band outside `[0, 1]`.
    pub fn check(&self) -> Result<(), String> {
        let rule = &self.forward;
        if rule.classes.is_empty() && rule.confidence.is_none() {
            return Err("[forward] needs `classes`, `confidence` or both".into());
        }
        if let Some([low, high]) = rule.confidence
            && (!(0.0..=1.0).contains(&low) || !(0.0..=1.0).contains(&high) || low >= high)
        {
            return Err(format!(
                "[forward] confidence = [{low}, {high}] must be a band [low, high) within [0, 1]"
            ));
        }
        Ok(())
    }

    /// Checks the policy against phase 1: its signature exists, has the scores output, and
    /// every forwarded class is one of its classes. Returns the scores output's name.
    pub fn scores_output(&self, phase1: &Model) -> Result<String, String> {
        let name = scores_output(phase1, self.signature.as_deref(), self.scores.as_deref())?;
        let labels = &phase1.config().class_labels;
        if !labels.is_empty()
            && let Some(unknown) = self.forward.classes.iter().find(|c| !labels.contains(c))
        {
            return Err(format!(
                "[forward] classes names '{unknown}', which is not among phase 1's class_labels {labels:?}"
            ));
        }
        Ok(name)
    }

    /// Phase 1's verdict on each row of its `scores` output (`[N, C]` probabilities).
    pub fn judge(&self, scores: &Tensor, class_labels: &[String]) -> Result<Vec<Verdict>, String> {
        let (values, classes) = score_rows(scores)?;
        Ok(values
            .chunks(classes)
            .map(|row| {
                let (class, confidence) = top_class(row, class_labels);
                let forward = self.decide(&class, confidence);
                Verdict {
                    class,
                    confidence,
                    forward,
                }
            })
            .collect())
    }

    /// Whether (and why) an instance phase 1 classed as `class` with `confidence` goes to
    /// phase 2. An unset condition neither forwards nor vetoes.
    pub fn decide(&self, class: &str, confidence: f32) -> Option<ForwardReason> {
        let rule = &self.forward;
        let by_class = (!rule.classes.is_empty()).then(|| rule.classes.iter().any(|c| c == class));
        let by_confidence = rule.confidence.map(|[low, high]| {
            // In the scores' own precision: `0.9` means the float32 nearest 0.9, which a model
            // answering 0.9 does reach. NaN scores are never confident.
            let (low, high) = (low as f32, high as f32);
            confidence.is_nan() || (low <= confidence && confidence < high)
        });
        let reason = |class: bool, confidence: bool| match (class, confidence) {
            (true, true) => Some(ForwardReason::ClassAndConfidence),
            (true, false) => Some(ForwardReason::Class),
            (false, true) => Some(ForwardReason::Confidence),
            (false, false) => None,
        };
        match (by_class, by_confidence, rule.when) {
            (Some(c), Some(p), Combine::All) => reason(c && p, c && p),
            (c, p, _) => reason(c.unwrap_or(false), p.unwrap_or(false)),
        }
    }
}

/// The float `[N, C]` output of `model`'s signature holding class scores: the one named, else
/// the signature's only such output.
pub fn scores_output(
    model: &Model,
    signature: Option<&str>,
    scores: Option<&str>,
) -> Result<String, String> {
    let signature = model.signature(signature).map_err(|e| e.to_string())?;
    let is_scores = |spec: &&crate::TensorSpec| {
        spec.data_type == crate::DataType::Fp32 && spec.shape.len() == 2
    };
    match scores {
        Some(name) => signature
            .outputs
            .iter()
            .find(|o| o.name == name)
            .filter(is_scores)
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                format!(
                    "scores = '{name}' is not a float [N, C] output of {}'s signature '{}'",
                    model.name(),
                    signature.name
                )
            }),
        None => {
            let candidates: Vec<_> = signature.outputs.iter().filter(is_scores).collect();
            match candidates.as_slice() {
                [one] => Ok(one.name.clone()),
                _ => Err(format!(
                    "{}'s signature '{}' has {} float [N, C] outputs: name the class \
                     probabilities with `scores = \"...\"`",
                    model.name(),
                    signature.name,
                    candidates.len()
                )),
            }
        }
    }
}

/// The rows of an `[N, C]` FP32 scores tensor: its values and `C`.
fn score_rows(scores: &Tensor) -> Result<(&[f32], usize), String> {
    let TensorData::Fp32(values) = scores.data() else {
        return Err(format!(
            "the scores are {}, not FP32",
            scores.data_type().as_str()
        ));
    };
    match scores.shape() {
        [_, c] if *c > 0 => Ok((values, *c)),
        shape => Err(format!("the scores have shape {shape:?}, not [N, C]")),
    }
}

/// Each row's top class (its label, or its index as text when there are no labels) and its
/// score, from `[N, C]` probabilities.
pub fn top_classes(scores: &Tensor, class_labels: &[String]) -> Result<Vec<(String, f32)>, String> {
    let (values, classes) = score_rows(scores)?;
    Ok(values
        .chunks(classes)
        .map(|row| top_class(row, class_labels))
        .collect())
}

/// The first highest score of a row (NaN never wins) and its class.
fn top_class(row: &[f32], class_labels: &[String]) -> (String, f32) {
    let (index, confidence) =
        row.iter()
            .copied()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, p)| {
                if p > best.1 { (i, p) } else { best }
            });
    let class = class_labels
        .get(index)
        .cloned()
        .unwrap_or_else(|| index.to_string());
    (class, confidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> CascadePolicy {
        CascadePolicy::from_toml(text).unwrap()
    }

    #[test]
    fn classes_forward_under_any_and_confidence_adds_unsure_ones() {
        let p = policy("[forward]\nclasses = [\"cat\"]\nconfidence = [0.0, 0.9]\n");
        assert_eq!(p.decide("cat", 0.99), Some(ForwardReason::Class));
        assert_eq!(p.decide("dog", 0.5), Some(ForwardReason::Confidence));
        assert_eq!(
            p.decide("cat", 0.5),
            Some(ForwardReason::ClassAndConfidence)
        );
        assert_eq!(p.decide("dog", 0.9), None, "the band's top is open");
    }

    #[test]
    fn all_needs_both_conditions() {
        let p = policy("[forward]\nclasses = [\"cat\"]\nconfidence = [0.5, 1.0]\nwhen = \"all\"\n");
        assert_eq!(
            p.decide("cat", 0.7),
            Some(ForwardReason::ClassAndConfidence)
        );
        assert_eq!(p.decide("cat", 0.2), None);
        assert_eq!(p.decide("dog", 0.7), None);
    }

    #[test]
    fn nan_confidence_is_never_confident() {
        let p = policy("[forward]\nconfidence = [0.0, 0.9]\n");
        assert_eq!(p.decide("x", f32::NAN), Some(ForwardReason::Confidence));
    }

    #[test]
    fn rules_that_cannot_forward_or_bad_bands_are_refused() {
        for text in [
            "[forward]\n",
            "[forward]\nconfidence = [0.9, 0.5]\n",
            "[forward]\nconfidence = [0.0, 1.5]\n",
            "[forward]\nclasses = [\"a\"]\nbogus = 1\n",
        ] {
            assert!(CascadePolicy::from_toml(text).is_err(), "{text}");
        }
    }

    #[test]
    fn judge_takes_the_top_class_per_row_with_its_label() {
        let p = policy("[forward]\nclasses = [\"b\"]\n");
        let scores = Tensor::new(vec![2, 2], TensorData::Fp32(vec![0.2, 0.8, 0.7, 0.3])).unwrap();
        let labels = ["a".to_owned(), "b".to_owned()];
        let verdicts = p.judge(&scores, &labels).unwrap();
        assert_eq!(verdicts[0].class, "b");
        assert_eq!(verdicts[0].forward, Some(ForwardReason::Class));
        assert_eq!(verdicts[1].class, "a");
        assert!((verdicts[1].confidence - 0.7).abs() < 1e-6);
        assert_eq!(verdicts[1].forward, None);
    }
}
