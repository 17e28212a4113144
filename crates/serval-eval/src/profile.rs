//! Column profiles: what a reference (training data, or a window of the log) looked like, and
//! what a window looks like, in the same shape so that drift compares like with like.
//!
//! A profile keeps counts, moments, range, category frequencies and a bounded uniform sample
//! (reservoir sampling). Drift tests run on the samples: exact (Evidently's numbers) while a
//! column has no more values than the sample holds, a uniform sample of them beyond.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::drift::Sample;

/// The file a version's reference profile is stored in, beside its `model.onnx`.
pub const PROFILE_FILE: &str = "reference_profile.json";

/// Values a reference profile keeps per column for drift tests (`serval profile --sample-size`).
pub const DEFAULT_PROFILE_SAMPLE: usize = 5_000;

/// Values a window keeps per column: windows up to this size are tested exactly.
pub const WINDOW_SAMPLE: usize = 100_000;

/// Distinct categories counted per column; rarer ones beyond are counted together.
const MAX_CATEGORIES: usize = 1_000;

/// How a column's values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// Floating-point values.
    Numerical,
    /// Class ids, text, booleans: compared by frequency.
    Categorical,
}

/// The reference a model version's windows are compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The model.
    pub model: String,
    /// The version whose inputs and outputs were profiled.
    pub version: u64,
    /// The signature whose outputs were profiled.
    pub signature: String,
    /// Where the rows came from (a data file, or a window of a log).
    pub source: String,
    /// Rows profiled.
    pub rows: u64,
    /// Per input element and output element (`features[3]`, `label`, `probabilities[1]`).
    pub columns: BTreeMap<String, ColumnProfile>,
}

impl Profile {
    /// Where `version`'s profile lives in a repository.
    pub fn path(repository: &Path, model: &str, version: u64) -> PathBuf {
        repository
            .join(model)
            .join(version.to_string())
            .join(PROFILE_FILE)
    }

    /// Reads a stored profile; `None` when the version has none.
    pub fn read(path: &Path) -> Result<Option<Profile>, EvalError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EvalError::Io(path.display().to_string(), e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| EvalError::Invalid(format!("{}: not a profile: {e}", path.display())))
    }

    /// Writes the profile (to a temporary file renamed into place: a reader never sees half).
    pub fn write(&self, path: &Path) -> Result<(), EvalError> {
        let io = |e| EvalError::Io(path.display().to_string(), e);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(self)
            .map_err(|e| EvalError::Invalid(format!("cannot encode the profile: {e}")))?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// One column's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// How values are compared.
    pub kind: ColumnKind,
    /// Values present (finite numbers, non-null categories).
    pub count: u64,
    /// Nulls, NaN and infinities.
    pub missing: u64,
    /// Mean of the numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Standard deviation of the numbers (population, ddof 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// Smallest number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Counts of each category (the most frequent, up to a thousand).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub frequencies: BTreeMap<String, u64>,
    /// A uniform sample of the numbers, every one while they fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<f64>,
    /// A uniform sample of the categories, every one while they fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

impl ColumnProfile {
    /// Calls `f` with the sample as a drift test takes it.
    pub fn with_sample<T>(&self, f: impl FnOnce(Sample<'_>) -> T) -> T {
        match self.kind {
            ColumnKind::Numerical => f(Sample::Numbers(&self.numbers)),
            ColumnKind::Categorical => {
                let texts: Vec<&str> = self.categories.iter().map(String::as_str).collect();
                f(Sample::Categories(&texts))
            }
        }
    }
}

/// A column's distribution in a reference and in a window, on shared bins, for plots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// Numerical columns: the bins' edges (one more than bins), equal widths over both ranges.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    /// Categorical columns: the categories (the reference's most frequent first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// The reference's share per bin.
    pub reference: Vec<f64>,
    /// The window's share per bin.
    pub current: Vec<f64>,
}

/// Bins of a numerical column's plot; categories beyond this many are left out.
const HISTOGRAM_BINS: usize = 20;

impl Histogram {
    /// Both sides from their samples (uniform, so their shares estimate the whole column's).
    pub fn of(reference: &ColumnProfile, current: &ColumnProfile) -> Histogram {
        match reference.kind {
            ColumnKind::Numerical => {
                let values = reference.numbers.iter().chain(&current.numbers);
                let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
                let bins = if hi > lo { HISTOGRAM_BINS } else { 1 };
                let width = if hi > lo {
                    (hi - lo) / bins as f64
                } else {
                    1.0
                };
                let shares = |sample: &[f64]| {
                    let mut counts = vec![0.0; bins];
                    for &v in sample {
                        let bin = (((v - lo) / width) as usize).min(bins - 1);
                        counts[bin] += 1.0;
                    }
                    let n = sample.len().max(1) as f64;
                    counts.iter().map(|c| c / n).collect()
                };
                Histogram {
                    edges: (0..=bins).map(|i| lo + width * i as f64).collect(),
                    categories: Vec::new(),
                    reference: shares(&reference.numbers),
                    current: shares(&current.numbers),
                }
            }
            ColumnKind::Categorical => {
                let mut categories: Vec<(&String, u64)> =
                    reference.frequencies.iter().map(|(c, n)| (c, *n)).collect();
                for category in current.frequencies.keys() {
                    if !reference.frequencies.contains_key(category) {
                        categories.push((category, 0));
                    }
                }
                categories.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
                categories.truncate(HISTOGRAM_BINS);
                let share = |profile: &ColumnProfile, category: &String| {
                    profile.frequencies.get(category).copied().unwrap_or(0) as f64
                        / profile.count.max(1) as f64
                };
                Histogram {
                    edges: Vec::new(),
                    reference: categories
                        .iter()
                        .map(|(c, _)| share(reference, c))
                        .collect(),
                    current: categories.iter().map(|(c, _)| share(current, c)).collect(),
                    categories: categories.into_iter().map(|(c, _)| c.clone()).collect(),
                }
            }
        }
    }
}

/// A number as a category: integers without a fraction (`1`, not `1.0`), as class ids print.
pub(crate) fn category_text(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        (value as i64).to_string()
    } else {
        value.to_string()
    }
}

/// Builds a [`ColumnProfile`] from values pushed one at a time, in bounded memory.
#[derive(Debug, Clone)]
pub struct ColumnCollector {
    kind: ColumnKind,
    count: u64,
    missing: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    frequencies: HashMap<String, u64>,
    numbers: Vec<f64>,
    categories: Vec<String>,
    capacity: usize,
    rng: SmallRng,
}

impl ColumnCollector {
    /// A collector keeping at most `capacity` sampled values; `seed` fixes which.
    pub fn new(kind: ColumnKind, capacity: usize, seed: u64) -> ColumnCollector {
        ColumnCollector {
            kind,
            count: 0,
            missing: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            frequencies: HashMap::new(),
            numbers: Vec::new(),
            categories: Vec::new(),
            capacity,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The column's kind.
    pub fn kind(&self) -> ColumnKind {
        self.kind
    }

    /// Adds a number (NaN and infinities count as missing). A categorical column counts it by
    /// its text, with integers written without a fraction (`1`, not `1.0`).
    pub fn push_number(&mut self, value: f64) {
        if !value.is_finite() {
            self.missing += 1;
            return;
        }
        if self.kind == ColumnKind::Categorical {
            return self.push_category(&category_text(value));
        }
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if let Some(slot) = self.reservoir_slot() {
            match self.numbers.get_mut(slot) {
                Some(kept) => *kept = value,
                None => self.numbers.push(value),
            }
        }
    }

    /// Adds a category.
    pub fn push_category(&mut self, value: &str) {
        self.count += 1;
        if let Some(n) = self.frequencies.get_mut(value) {
            *n += 1;
        } else if self.frequencies.len() < MAX_CATEGORIES {
            self.frequencies.insert(value.to_owned(), 1);
        }
        if let Some(slot) = self.reservoir_slot() {
            match self.categories.get_mut(slot) {
                Some(kept) => value.clone_into(kept),
                None => self.categories.push(value.to_owned()),
            }
        }
    }

    /// Adds a null.
    pub fn push_missing(&mut self) {
        self.missing += 1;
    }

    /// Algorithm R: the first `capacity` values are kept; the n-th after that replaces a random
    /// kept one with probability capacity / n, so the sample stays uniform.
    fn reservoir_slot(&mut self) -> Option<usize> {
        let kept = self.numbers.len() + self.categories.len();
        if kept < self.capacity {
            return Some(kept);
        }
        let slot = self.rng.random_range(0..self.count) as usize;
        (slot < self.capacity).then_some(slot)
    }

    /// The summary of everything pushed.
    pub fn finish(self) -> ColumnProfile {
        let numeric = self.kind == ColumnKind::Numerical && self.count > 0;
        let mut frequencies: Vec<(String, u64)> = self.frequencies.into_iter().collect();
        frequencies.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        frequencies.truncate(MAX_CATEGORIES);
        ColumnProfile {
            kind: self.kind,
            count: self.count,
            missing: self.missing,
            mean: numeric.then_some(self.mean),
            std: numeric.then(|| (self.m2 / self.count as f64).sqrt()),
            min: numeric.then_some(self.min),
            max: numeric.then_some(self.max),
            frequencies: frequencies.into_iter().collect(),
            numbers: self.numbers,
            categories: self.categories,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_while_it_fits_then_a_bounded_sample() {
        let mut small = ColumnCollector::new(ColumnKind::Numerical, 10, 1);
        for v in [3.0, f64::NAN, 1.0, 2.0] {
            small.push_number(v);
        }
        let profile = small.finish();
        assert_eq!(profile.numbers, vec![3.0, 1.0, 2.0]);
        assert_eq!((profile.count, profile.missing), (3, 1));
        assert_eq!(
            (profile.min, profile.max, profile.mean),
            (Some(1.0), Some(3.0), Some(2.0))
        );
        let mut large = ColumnCollector::new(ColumnKind::Numerical, 100, 1);
        for i in 0..10_000 {
            large.push_number(i as f64);
        }
        let profile = large.finish();
        assert_eq!(profile.numbers.len(), 100);
        // A uniform sample of 0..10000 has its mean near 5000 (σ of the mean ≈ 290).
        let mean = profile.numbers.iter().sum::<f64>() / 100.0;
        assert!((3500.0..6500.0).contains(&mean), "{mean}");
    }

    #[test]
    fn categorical_numbers_are_counted_by_their_text() {
        let mut classes = ColumnCollector::new(ColumnKind::Categorical, 10, 1);
        for v in [1.0, 0.0, 1.0] {
            classes.push_number(v);
        }
        let profile = classes.finish();
        assert_eq!(profile.frequencies.get("1"), Some(&2));
        assert_eq!(profile.categories, vec!["1", "0", "1"]);
    }
}
