//! The optional per-model `config.toml`: everything has a default derived from the ONNX graph.
//!
//! ```toml
//! backend = "auto"              # auto | tract | ort
//! key = "key"                   # instance field carrying the client's key
//! class_labels = ["setosa", "versicolor", "virginica"]
//! [inputs]                      # graph input name -> public name
//! X = "features"
//! [signatures.classify]
//! outputs = ["label", "probabilities"]
//! postprocess = [{ op = "softmax", from = "logits", to = "probabilities" },
//!                { op = "argmax", from = "probabilities", to = "label" }]
//! [batching]
//! max_batch_size = 64
//! [versions]
//! policy = { latest = 2 }       # or "all", or { specific = [1, 3] }
//! labels = { stable = 1, canary = 2 }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cascade::{CascadeConfig, CascadePolicy};
use crate::error::{Error, Result};

/// File name of the per-model config, beside the version directories.
pub const CONFIG_FILE: &str = "config.toml";

/// A model's configuration. Unknown keys are rejected so typos do not pass silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// What the model is: an ONNX graph in each version directory (`onnx`), or a cascade of two
    /// models of the repository described by `[cascade]`.
    pub kind: ModelKind,
    /// For `kind = "cascade"`: the phase-1 model and the policy that forwards to phase 2.
    pub cascade: Option<CascadeConfig>,
    /// Which inference engine runs the model.
    pub backend: BackendPreference,
    /// Name of the per-instance key field (never fed to the model).
    pub key: String,
    /// Whether servers mint a key for instances that carry none.
    pub mint_keys: bool,
    /// Whether NaN is accepted in float inputs (refused by default: it is almost always a bug upstream).
    pub allow_nan: bool,
    /// Class names, indexed by class id; used by `argmax`, `threshold` and `top_k`.
    pub class_labels: Vec<String>,
    /// Renames of graph inputs: graph name -> public name.
    pub inputs: BTreeMap<String, String>,
    /// Renames of graph outputs: graph name -> public name.
    pub outputs: BTreeMap<String, String>,
    /// Named signatures. `serving_default` returns the raw (renamed) outputs unless set here.
    pub signatures: BTreeMap<String, SignatureConfig>,
    /// Dynamic batching limits (used by the server).
    pub batching: BatchingConfig,
    /// Version policy and labels (used by the server).
    pub versions: VersionConfig,
    /// Engine sessions (ONNX Runtime) or run states (tract) kept per loaded version; defaults to
    /// the number of cores.
    pub instances: Option<usize>,
    /// What the prediction log records of this model (used when the server runs with one).
    pub logging: LoggingConfig,
    /// How the model's logged predictions are evaluated (`serval eval`).
    pub monitor: MonitorConfig,
    /// This model as phase 1 of a two-phase prediction, `[edge]`: when it forwards and to
    /// which model. `serval edge --phase1-config` takes its policy from here, and only a model
    /// with this section is offered to browsers on `/edge` (its ONNX file downloadable there).
    pub edge: Option<CascadePolicy>,
}

impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig {
            kind: ModelKind::Onnx,
            cascade: None,
            backend: BackendPreference::Auto,
            key: "key".to_owned(),
            mint_keys: true,
            allow_nan: false,
            class_labels: Vec::new(),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            signatures: BTreeMap::new(),
            batching: BatchingConfig::default(),
            versions: VersionConfig::default(),
            instances: None,
            logging: LoggingConfig::default(),
            monitor: MonitorConfig::default(),
            edge: None,
        }
    }
}

/// What a repository model is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// `<version>/model.onnx`.
    #[default]
    Onnx,
    /// Two served models, the second asked only for what the first forwards (Triton's
    /// ensembles are the nearest kin); a version directory holds at most a `warmup.jsonl`.
    Cascade,
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendPreference {
    /// ONNX Runtime for graphs tract gets wrong or slow (when available), tract otherwise.
    #[default]
    Auto,
    /// tract, the pure-Rust engine.
    Tract,
    /// ONNX Runtime.
    Ort,
}

/// A named signature: which outputs to return and how to post-process them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignatureConfig {
    /// Outputs returned, in order; all raw and post-processed outputs when absent.
    pub outputs: Option<Vec<String>>,
    /// Steps applied in order; each reads a named tensor and adds a new one.
    pub postprocess: Vec<PostprocessStep>,
}

/// One post-processing step over a `[N]` or `[N, C]` float tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PostprocessStep {
    /// Element-wise logistic function of logits.
    Sigmoid {
        /// Input tensor name.
        from: String,
        /// Output tensor name.
        to: String,
    },
    /// Softmax over the last axis.
    Softmax {
        /// Input tensor name.
        from: String,
        /// Output tensor name.
        to: String,
    },
    /// Index of the largest score per row, mapped to `class_labels` when set.
    Argmax {
        /// Input tensor name.
        from: String,
        /// Output tensor name.
        to: String,
    },
    /// Binary decision: class 1 when the score (of `column` for `[N, C]` inputs) is at least
    /// `threshold`, else class 0; mapped to `class_labels` when set.
    Threshold {
        /// Input tensor name.
        from: String,
        /// Output tensor name.
        to: String,
        /// Decision threshold.
        threshold: f32,
        /// Score column for `[N, C]` inputs (default 1, the positive class).
        #[serde(default)]
        column: Option<usize>,
    },
    /// The `k` best classes per row: `to` holds labels (or ids), `<to>_scores` their scores.
    TopK {
        /// Input tensor name.
        from: String,
        /// Output tensor name of the classes; scores go to `<to>_scores`.
        to: String,
        /// How many classes.
        k: usize,
    },
}

impl PostprocessStep {
    /// The tensor this step reads.
    pub fn from(&self) -> &str {
        match self {
            PostprocessStep::Sigmoid { from, .. }
            | PostprocessStep::Softmax { from, .. }
            | PostprocessStep::Argmax { from, .. }
            | PostprocessStep::Threshold { from, .. }
            | PostprocessStep::TopK { from, .. } => from,
        }
    }

    /// The name this step writes (`top_k` also writes `<to>_scores`).
    pub fn to(&self) -> &str {
        match self {
            PostprocessStep::Sigmoid { to, .. }
            | PostprocessStep::Softmax { to, .. }
            | PostprocessStep::Argmax { to, .. }
            | PostprocessStep::Threshold { to, .. }
            | PostprocessStep::TopK { to, .. } => to,
        }
    }
}

/// Dynamic batching limits, Triton-style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Largest batch sent to the engine (client batches larger than this are split); 0 means
    /// the model does not batch (Triton's meaning): each request carries whole tensors.
    pub max_batch_size: usize,
    /// How long to wait for more requests before running a partial batch; 0 runs what is queued.
    pub max_queue_delay_us: u64,
    /// Batch sizes the batcher prefers to cut at.
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests allowed to wait for a busy engine thread; beyond it the server answers 429 at
    /// once. An admitted request waits for at most about `max_queue_size / instances` runs ahead
    /// of its own; 0 admits a request only while an engine thread is free to start it.
    pub max_queue_size: usize,
    /// Bytes of input allowed to wait (so memory stays bounded whatever the request sizes).
    pub max_queue_bytes: usize,
}

impl Default for BatchingConfig {
    fn default() -> BatchingConfig {
        BatchingConfig {
            max_batch_size: 64,
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            max_queue_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What the prediction log records of one model, `[logging]` in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Share of instances logged, 0 to 1. The choice hashes the instance's key, so a key is
    /// always logged or never (its label can always be joined).
    pub sample_rate: f64,
    /// Whether inputs are logged (keys always are).
    pub inputs: bool,
    /// Whether outputs (after post-processing) are logged.
    pub outputs: bool,
    /// When a logged prediction is answered.
    pub durability: Durability,
}

impl Default for LoggingConfig {
    fn default() -> LoggingConfig {
        LoggingConfig {
            sample_rate: 1.0,
            inputs: true,
            outputs: true,
            durability: Durability::Buffered,
        }
    }
}

/// How the model's logged predictions are evaluated, `[monitor]` in `config.toml`. Everything is
/// inferred from the signature when left out.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// What the model predicts (default: classification when an output is a class or a
    /// `[N, C]` score, regression when the only output is one number per instance).
    pub task: Option<MonitorTask>,
    /// The output holding the predicted class or value.
    pub prediction: Option<String>,
    /// The output holding per-class scores (probabilities), column i for class i.
    pub scores: Option<String>,
    /// Fewer labelled rows in a window than this give no metrics, only the count (default 30).
    pub min_labelled: Option<usize>,
    /// The drift test of every column (Evidently's names: `ks`, `chisquare`, `z`,
    /// `wasserstein`, `psi`, `kl_div`, `jensenshannon`, `hellinger`; default: Evidently's
    /// choice by column type and reference size). Columns it does not apply to keep the choice.
    pub drift_method: Option<String>,
    /// The drift threshold of every column (default: the method's).
    pub drift_threshold: Option<f64>,
    /// Per column (`"features[3]" = { method = "psi", threshold = 0.2 }`), over the two above.
    pub drift: BTreeMap<String, DriftConfig>,
    /// When a window's values call for attention (`[[monitor.rules]]`).
    pub rules: Vec<MonitorRule>,
    /// URLs every alert of this model is POSTed to (besides the evaluator's `--webhook`s).
    pub webhooks: Vec<String>,
    /// A command run once per alert with the alert as JSON on stdin (e.g. a retraining
    /// trigger): program and arguments, no shell. Its exit status is recorded with the alert.
    pub on_alert: Vec<String>,
}

/// One column's drift test, `[monitor.drift]` in `config.toml`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// The test (default: the model's `drift_method`, else Evidently's choice).
    pub method: Option<String>,
    /// Its threshold (default: the model's `drift_threshold`, else the method's).
    pub threshold: Option<f64>,
}

/// One alerting rule: a window value below or above a threshold, or falling, for some
/// consecutive windows. It fires in the window where its condition starts to hold, and again
/// only after the condition has cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorRule {
    /// What the alert is called (default: the metric and the condition, e.g. `accuracy < 0.9`).
    pub name: Option<String>,
    /// The window value: a metric (`accuracy`, `macro_f1`, `roc_auc`, `log_loss`, `ece`, `mae`,
    /// `rmse`, `mape`, `r2`, `f1.<class>`, …), `estimated.<metric>`, `drift_share`,
    /// `drift.<column>` (the column's test value), `label_coverage`, `rows`, `labelled`, or
    /// `data_quality` (columns with a finding).
    pub metric: String,
    /// Holds when the value is below this.
    pub below: Option<f64>,
    /// Holds when the value is above this.
    pub above: Option<f64>,
    /// Holds when the value fell from one window to the next this many times in a row.
    pub falling: Option<usize>,
    /// Consecutive windows the condition must hold before the rule fires (default 1).
    pub windows: Option<usize>,
    /// How urgent the alert is.
    #[serde(default)]
    pub severity: Severity,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    #[default]
    Warning,
    /// The model is not fit for purpose.
    Critical,
}

/// What a model predicts, for choosing its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorTask {
    /// A class per instance (accuracy, F1, ROC AUC, log loss, calibration).
    Classification,
    /// A number per instance (MAE, RMSE, MAPE, R²).
    Regression,
}

/// When a logged prediction is answered, relative to its record reaching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Answered at once; the record is fsynced by the next group commit. A crash loses at most
    /// the records still queued in memory; a full queue drops (and counts) records rather than
    /// slowing predictions.
    Buffered,
    /// Answered only after the record's group commit: an answered prediction is a logged one.
    /// A log that cannot be written fails the request (503).
    Synced,
}

/// Which versions to serve and what to call them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersionConfig {
    /// Which versions on disk are loaded.
    pub policy: VersionPolicy,
    /// Names for versions, e.g. `stable = 1`.
    pub labels: BTreeMap<String, u64>,
    /// Version answering requests that name none; the highest loaded when absent.
    pub default: Option<u64>,
    /// Send a share of the requests that name no version to a canary version.
    pub canary: Option<CanaryConfig>,
}

/// A traffic split between the default version and a canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The canary version.
    pub version: u64,
    /// Percentage (0-100) of requests naming no version that go to the canary.
    pub percent: f64,
    /// Route by a hash of the (first) instance key, so a key always gets the same version.
    #[serde(default)]
    pub sticky: bool,
}

/// Version policy, as in TF Serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// The `n` highest versions.
    Latest(usize),
    /// Every version on disk.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> VersionPolicy {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to load out of those present (ascending in, ascending out).
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest(n) => available[available.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::All => available.to_vec(),
            VersionPolicy::Specific(wanted) => available
                .iter()
                .copied()
                .filter(|v| wanted.contains(v))
                .collect(),
        }
    }
}

impl ModelConfig {
    /// Reads `config.toml` in `model_dir`, or the defaults when there is none.
    pub fn load(model_name: &str, model_dir: &Path) -> Result<ModelConfig> {
        ModelConfig::load_file(model_name, &model_dir.join(CONFIG_FILE))
    }

    /// Reads a model config from `path`, or the defaults when there is no such file.
    pub fn load_file(model_name: &str, path: &Path) -> Result<ModelConfig> {
        let path = path.to_owned();
        let load_error = |reason: String| Error::Load {
            model: Some(model_name.to_owned()),
            version: None,
            path: path.clone(),
            reason,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
            Err(e) => return Err(load_error(format!("cannot read config: {e}"))),
        };
        let cfg: ModelConfig = toml::from_str(&text)
            .map_err(|e| load_error(format!("invalid config: {}", e.to_string().trim_end())))?;
        cfg.validate().map_err(load_error)?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.key.is_empty() {
            return Err("`key` must not be empty".to_owned());
        }
        if let VersionPolicy::Latest(0) = self.versions.policy {
            return Err("`versions.policy = { latest = 0 }` would serve nothing".to_owned());
        }
        if let Some(canary) = &self.versions.canary
            && !(0.0..=100.0).contains(&canary.percent)
        {
            return Err(format!(
                "`versions.canary.percent` must be within 0-100, got {}",
                canary.percent
            ));
        }
        if let Some(edge) = &self.edge {
            edge.check().map_err(|e| format!("[edge]: {e}"))?;
        }
        match (self.kind, &self.cascade) {
            (ModelKind::Cascade, None) => {
                return Err("kind = \"cascade\" needs a [cascade] section naming phase1".into());
            }
            (ModelKind::Onnx, Some(_)) => {
                return Err("[cascade] is only read for kind = \"cascade\"".into());
            }
            (_, Some(cascade)) => cascade.check().map_err(|e| format!("[cascade]: {e}"))?,
            (ModelKind::Onnx, None) => {}
        }
        if self.instances == Some(0) {
            return Err("`instances` must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.logging.sample_rate) {
            return Err(format!(
                "[logging] sample_rate must be between 0 and 1, got {}",
                self.logging.sample_rate
            ));
        }
        for (name, signature) in &self.signatures {
            for step in &signature.postprocess {
                if let PostprocessStep::TopK { k: 0, .. } = step {
                    return Err(format!("signature '{name}': top_k needs k >= 1"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<ModelConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        ModelConfig::load("m", dir.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn missing_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ModelConfig::load("m", dir.path()).unwrap(),
            ModelConfig::default()
        );
    }

    #[test]
    fn full_config_parses() {
        let cfg = parse(
            r#"
            backend = "ort"
            key = "id"
            class_labels = ["a", "b"]
            [inputs]
            X = "features"
            [signatures.decide]
            outputs = ["decision"]
            postprocess = [{ op = "threshold", from = "probabilities", to = "decision", threshold = 0.3 }]
            [batching]
            max_batch_size = 8
            [versions]
            policy = { specific = [1, 3] }
            labels = { stable = 1 }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.backend, BackendPreference::Ort);
        assert_eq!(cfg.versions.policy, VersionPolicy::Specific(vec![1, 3]));
        assert_eq!(cfg.versions.policy.select(&[1, 2, 3]), vec![1, 3]);
        assert_eq!(cfg.signatures["decide"].postprocess[0].to(), "decision");
    }

    #[test]
    fn logging_parses_and_sample_rate_is_bounded() {
        let cfg = parse("[logging]\nsample_rate = 0.25\ninputs = false\ndurability = \"synced\"\n")
            .unwrap();
        assert_eq!(cfg.logging.sample_rate, 0.25);
        assert!(!cfg.logging.inputs && cfg.logging.outputs);
        assert_eq!(cfg.logging.durability, Durability::Synced);
        let err = parse("[logging]\nsample_rate = 1.5\n").unwrap_err();
        assert!(err.contains("sample_rate"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("bakend = \"ort\"").unwrap_err();
        assert!(err.contains("unknown field `bakend`"), "{err}");
        assert!(
            err.contains("model 'm'") && err.contains("config.toml"),
            "{err}"
        );
    }

    #[test]
    fn unknown_postprocess_op_is_named() {
        let err =
            parse("[signatures.s]\npostprocess = [{ op = \"relu\", from = \"a\", to = \"b\" }]")
                .unwrap_err();
        assert!(err.contains("relu"), "{err}");
    }

    #[test]
    fn latest_policy_keeps_highest() {
        assert_eq!(VersionPolicy::Latest(2).select(&[1, 4, 7]), vec![4, 7]);
        assert_eq!(VersionPolicy::All.select(&[1, 4]), vec![1, 4]);
    }
}
