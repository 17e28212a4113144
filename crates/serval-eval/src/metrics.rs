//! Model-quality metrics of one window, defined as scikit-learn defines them (its default
//! arguments), so its functions are the oracle of the tests.

use std::collections::BTreeMap;

use serde::Serialize;

/// The classes a classifier's predictions and labels are counted in: the configured class
/// labels (or the columns of its scores) first, in their order, then any other class met.
#[derive(Debug, Clone, Default)]
pub struct ClassTable {
    names: Vec<String>,
    /// How many leading names are the model's own classes (index = class id).
    known: usize,
}

impl ClassTable {
    /// A table of the model's classes: `labels` when configured, else `"0"`..`"width-1"` for a
    /// score output of `width` columns.
    pub fn new(labels: &[String], width: Option<usize>) -> ClassTable {
        let names: Vec<String> = if labels.is_empty() {
            (0..width.unwrap_or(0)).map(|i| i.to_string()).collect()
        } else {
            labels.to_vec()
        };
        ClassTable {
            known: names.len(),
            names,
        }
    }

    /// The class of a predicted class id.
    pub fn predicted_id(&mut self, id: i64) -> usize {
        match usize::try_from(id) {
            Ok(i) if i < self.known => i,
            _ => self.intern(&id.to_string()),
        }
    }

    /// The class of a predicted class name.
    pub fn predicted_name(&mut self, name: &str) -> usize {
        self.intern(name)
    }

    /// The class a label names: its text when that is a class, else its value as a class id
    /// (a label `1` is the model's class 1, `"benign"` with class labels `[malignant, benign]`
    /// too).
    pub fn label(&mut self, text: &str, value: Option<f64>) -> usize {
        if let Some(i) = self.names.iter().position(|n| n == text) {
            return i;
        }
        match value {
            Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => self.predicted_id(v as i64),
            _ => self.intern(text),
        }
    }

    /// The class's name.
    pub fn name(&self, class: usize) -> &str {
        self.names.get(class).map_or("", String::as_str)
    }

    fn intern(&mut self, name: &str) -> usize {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_owned());
                self.names.len() - 1
            }
        }
    }

    /// `classes` in report order: the model's own by id, then the others sorted (numerically
    /// when they are numbers), as scikit-learn sorts labels.
    fn sorted(&self, mut classes: Vec<usize>) -> Vec<usize> {
        classes.sort_by(|&a, &b| {
            let key = |c: usize| (c >= self.known, if c < self.known { c } else { 0 });
            key(a).cmp(&key(b)).then_with(|| {
                let (x, y) = (self.name(a), self.name(b));
                match (x.parse::<f64>(), y.parse::<f64>()) {
                    (Ok(x), Ok(y)) => x.total_cmp(&y),
                    _ => x.cmp(y),
                }
            })
        });
        classes
    }
}

/// A window's labelled predictions of a classifier.
#[derive(Debug, Clone, Default)]
pub struct ClassificationAccumulator {
    truth: Vec<usize>,
    predicted: Vec<usize>,
    /// Row-major scores, `width` per row, for rows that had them.
    scores: Vec<f64>,
    width: usize,
    rows_without_scores: usize,
}

impl ClassificationAccumulator {
    /// Adds one labelled prediction; `scores` are the model's per-class scores, column i for
    /// class i.
    pub fn push(&mut self, truth: usize, predicted: usize, scores: Option<&[f64]>) {
        self.truth.push(truth);
        self.predicted.push(predicted);
        match scores {
            Some(s) if self.width == 0 || s.len() == self.width => {
                self.width = s.len();
                self.scores.extend_from_slice(s);
            }
            _ => self.rows_without_scores += 1,
        }
    }

    /// Labelled rows so far.
    pub fn len(&self) -> usize {
        self.truth.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.truth.is_empty()
    }

    /// The window's metrics (at least one row).
    pub fn finish(&self, classes: &ClassTable) -> ClassificationMetrics {
        let n = self.len() as f64;
        let mut present: Vec<usize> = self.truth.iter().chain(&self.predicted).copied().collect();
        present.sort_unstable();
        present.dedup();
        let present = classes.sorted(present);
        let position = |class: usize| present.iter().position(|&c| c == class).unwrap_or(0);
        let mut counts = vec![vec![0u64; present.len()]; present.len()];
        for (&t, &p) in self.truth.iter().zip(&self.predicted) {
            counts[position(t)][position(p)] += 1;
        }
        let correct: u64 = (0..present.len()).map(|i| counts[i][i]).sum();
        let mut metrics = ClassificationMetrics {
            accuracy: correct as f64 / n,
            ..ClassificationMetrics::default()
        };
        let (mut macro_f1, mut weighted_f1) = (0.0, 0.0);
        for (i, &class) in present.iter().enumerate() {
            let tp = counts[i][i] as f64;
            let support: u64 = counts[i].iter().sum();
            let predicted: u64 = counts.iter().map(|row| row[i]).sum();
            // scikit-learn's zero_division default: 0 where the ratio is 0/0.
            let ratio = |num: f64, den: f64| if den == 0.0 { 0.0 } else { num / den };
            let precision = ratio(tp, predicted as f64);
            let recall = ratio(tp, support as f64);
            let f1 = ratio(2.0 * tp, (support + predicted) as f64);
            let name = classes.name(class).to_owned();
            metrics.precision.insert(name.clone(), precision);
            metrics.recall.insert(name.clone(), recall);
            metrics.f1.insert(name, f1);
            macro_f1 += f1 / present.len() as f64;
            weighted_f1 += f1 * support as f64 / n;
        }
        metrics.macro_f1 = macro_f1;
        metrics.weighted_f1 = weighted_f1;
        metrics.confusion_matrix = ConfusionMatrix {
            classes: present
                .iter()
                .map(|&c| classes.name(c).to_owned())
                .collect(),
            counts,
        };
        self.score_metrics(&mut metrics, classes);
        metrics
    }

    /// ROC AUC, log loss and calibration, which need every labelled row's scores and every
    /// label among the scores' classes.
    fn score_metrics(&self, metrics: &mut ClassificationMetrics, classes: &ClassTable) {
        let mut undefined = |reason: String| {
            for metric in ["roc_auc", "log_loss", "ece"] {
                metrics.undefined.insert(metric, reason.clone());
            }
        };
        if self.width == 0 {
            return undefined("the model logs no scores".to_owned());
        }
        if self.rows_without_scores > 0 {
            return undefined(format!(
                "{} labelled rows have no scores",
                self.rows_without_scores
            ));
        }
        let mut outside: Vec<&str> = self
            .truth
            .iter()
            .filter(|&&t| t >= self.width)
            .map(|&t| classes.name(t))
            .collect();
        if !outside.is_empty() {
            outside.sort_unstable();
            outside.dedup();
            return undefined(format!(
                "labels outside the scores' {} classes: {}",
                self.width,
                outside.join(", ")
            ));
        }
        let rows = || self.scores.chunks_exact(self.width).zip(&self.truth);
        let n = self.len() as f64;
        // scikit-learn clips probabilities to [eps, 1 - eps] of their float type (f64 here).
        let eps = f64::EPSILON;
        metrics.log_loss = Some(
            rows()
                .map(|(s, &t)| -s[t].clamp(eps, 1.0 - eps).ln())
                .sum::<f64>()
                / n,
        );
        metrics.ece = Some(expected_calibration_error(rows()));
        match self.roc_auc() {
            Ok(auc) => metrics.roc_auc = Some(auc),
            Err(reason) => {
                metrics.undefined.insert("roc_auc", reason);
            }
        }
    }

    /// Binary: the AUC of class 1's score. More classes: the mean of each class's one-vs-rest
    /// AUC over the classes among the labels (scikit-learn's `multi_class="ovr"`, macro).
    fn roc_auc(&self) -> Result<f64, String> {
        let column = |class: usize| -> Vec<f64> {
            self.scores
                .chunks_exact(self.width)
                .map(|s| s[class])
                .collect()
        };
        let mut among_labels: Vec<usize> = self.truth.clone();
        among_labels.sort_unstable();
        among_labels.dedup();
        if among_labels.len() < 2 {
            return Err("only one class among the labels".to_owned());
        }
        if self.width == 2 {
            let positive: Vec<bool> = self.truth.iter().map(|&t| t == 1).collect();
            return Ok(binary_auc(&column(1), &positive));
        }
        let aucs: Vec<f64> = among_labels
            .iter()
            .map(|&class| {
                let positive: Vec<bool> = self.truth.iter().map(|&t| t == class).collect();
                binary_auc(&column(class), &positive)
            })
            .collect();
        Ok(aucs.iter().sum::<f64>() / aucs.len() as f64)
    }
}

/// ROC AUC as the Mann–Whitney statistic with tied scores sharing their average rank, which is
/// exactly the area under scikit-learn's (trapezoidal) ROC curve. Needs both kinds of row.
fn binary_auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        // Ranks start..end (1-based start+1..=end) share their mean.
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let positives = order[start..end].iter().filter(|&&i| positive[i]).count();
        rank_sum += mean_rank * positives as f64;
        start = end;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Expected calibration error over 10 equal-width bins of the top score, `(0, 0.1]` …
/// `(0.9, 1]`: the row-weighted mean gap between each bin's accuracy (the top-scored class is
/// the label) and its mean top score.
fn expected_calibration_error<'a>(rows: impl Iterator<Item = (&'a [f64], &'a usize)>) -> f64 {
    const BINS: usize = 10;
    let mut count = [0usize; BINS];
    let mut confidence = [0.0f64; BINS];
    let mut correct = [0usize; BINS];
    let mut n = 0usize;
    for (scores, &truth) in rows {
        let (top, best) = argmax(scores);
        // Bin b holds b/10 < c <= (b+1)/10, the edges as numpy computes them (`0.3 * 10` is
        // above 3, so multiplying would put 0.3 in the wrong bin).
        let bin = (0..BINS)
            .find(|&b| best <= (b + 1) as f64 / BINS as f64)
            .unwrap_or(BINS - 1);
        count[bin] += 1;
        confidence[bin] += best;
        correct[bin] += usize::from(top == truth);
        n += 1;
    }
    (0..BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let size = count[b] as f64;
            (size / n as f64) * (correct[b] as f64 / size - confidence[b] / size).abs()
        })
        .sum()
}

/// Performance expected from the scores alone, before any label (NannyML's confidence-based
/// performance estimation, CBPE, without calibration): a row's predicted class is right with the
/// probability its score gives it. It assumes calibrated scores and no concept drift: when the
/// relation between inputs and labels changes, the estimate does not move (the realised metric,
/// once labels come, does).
#[derive(Debug, Clone, Default)]
pub struct ConfidenceEstimate {
    predicted: Vec<usize>,
    /// Row-major, `width` per row.
    scores: Vec<f64>,
    width: usize,
}

impl ConfidenceEstimate {
    /// Adds one prediction, labelled or not; rows whose scores do not cover the predicted class
    /// are left out.
    pub fn push(&mut self, predicted: usize, scores: &[f64]) {
        if (self.width != 0 && scores.len() != self.width) || predicted >= scores.len() {
            return;
        }
        self.width = scores.len();
        self.predicted.push(predicted);
        self.scores.extend_from_slice(scores);
    }

    /// Expected `accuracy`, `macro_f1` (one-vs-rest over the scores' classes) and `roc_auc`
    /// (class 1's for two classes, else the one-vs-rest mean); empty without rows.
    pub fn finish(&self) -> BTreeMap<&'static str, f64> {
        let mut estimated = BTreeMap::new();
        if self.predicted.is_empty() || self.width < 2 {
            return estimated;
        }
        let rows = || self.scores.chunks_exact(self.width).zip(&self.predicted);
        let n = self.predicted.len() as f64;
        estimated.insert("accuracy", rows().map(|(s, &p)| s[p]).sum::<f64>() / n);
        let mut f1 = 0.0;
        let mut aucs = Vec::with_capacity(self.width);
        for class in 0..self.width {
            let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
            for (s, &p) in rows() {
                if p == class {
                    tp += s[class];
                    fp += 1.0 - s[class];
                } else {
                    fn_ += s[class];
                }
            }
            let denominator = 2.0 * tp + fp + fn_;
            f1 += if denominator > 0.0 {
                2.0 * tp / denominator
            } else {
                0.0
            };
            let column: Vec<f64> = rows().map(|(s, _)| s[class]).collect();
            aucs.push(expected_auc(&column));
        }
        estimated.insert("macro_f1", f1 / self.width as f64);
        let auc = if self.width == 2 {
            aucs[1]
        } else {
            aucs.iter().sum::<f64>() / aucs.len() as f64
        };
        if auc.is_finite() {
            estimated.insert("roc_auc", auc);
        }
        estimated
    }
}

/// The area under the expected ROC curve when row i is positive with probability `p[i]` and
/// scored `p[i]`: over every pair, a positive scored above a negative counts 1, a tie ½ (a row
/// with itself included, as the trapezoid over the expected curve counts it).
fn expected_auc(p: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let (mut pairs, mut negatives_below) = (0.0, 0.0);
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && p[order[end]] == p[order[start]] {
            end += 1;
        }
        let group = &order[start..end];
        let positives: f64 = group.iter().map(|&i| p[i]).sum();
        let negatives: f64 = group.iter().map(|&i| 1.0 - p[i]).sum();
        pairs += positives * (negatives_below + 0.5 * negatives);
        negatives_below += negatives;
        start = end;
    }
    let positives: f64 = p.iter().sum();
    pairs / (positives * negatives_below)
}

/// The highest score's column and value; the first of equal maxima, as numpy's `argmax`.
pub(crate) fn argmax(scores: &[f64]) -> (usize, f64) {
    scores.iter().enumerate().fold(
        (0, f64::NEG_INFINITY),
        |(i, m), (j, &s)| {
            if s > m { (j, s) } else { (i, m) }
        },
    )
}

/// Classification metrics of one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassificationMetrics {
    /// Share of labelled rows predicted right.
    pub accuracy: f64,
    /// Per class: right among the rows predicted as it.
    pub precision: BTreeMap<String, f64>,
    /// Per class: right among the rows labelled as it.
    pub recall: BTreeMap<String, f64>,
    /// Per class: the harmonic mean of precision and recall.
    pub f1: BTreeMap<String, f64>,
    /// Unweighted mean of the per-class F1 over the classes in labels and predictions.
    pub macro_f1: f64,
    /// Per-class F1 weighted by each class's labelled rows.
    pub weighted_f1: f64,
    /// Counts by true class (rows) and predicted class (columns).
    pub confusion_matrix: ConfusionMatrix,
    /// Area under the ROC curve (one-vs-rest macro for more than two classes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// Mean negative log-likelihood of the labels under the scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    /// Expected calibration error (10 bins of the top score).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
    /// Metrics left out, with why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub undefined: BTreeMap<&'static str, String>,
}

/// Counts by true class (rows) and predicted class (columns).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConfusionMatrix {
    /// Row and column order.
    pub classes: Vec<String>,
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

/// A window's labelled predictions of a regressor, as running sums: memory does not grow with
/// the window.
#[derive(Debug, Clone, Default)]
pub struct RegressionAccumulator {
    n: usize,
    abs_error: f64,
    squared_error: f64,
    abs_percentage_error: f64,
    // Welford's running mean and sum of squared deviations of the labels, for R².
    truth_mean: f64,
    truth_m2: f64,
}

impl RegressionAccumulator {
    /// Adds one labelled prediction.
    pub fn push(&mut self, truth: f64, predicted: f64) {
        let error = predicted - truth;
        self.n += 1;
        self.abs_error += error.abs();
        self.squared_error += error * error;
        // scikit-learn's MAPE: a fraction, the label's magnitude floored at f64's epsilon.
        self.abs_percentage_error += error.abs() / truth.abs().max(f64::EPSILON);
        let delta = truth - self.truth_mean;
        self.truth_mean += delta / self.n as f64;
        self.truth_m2 += delta * (truth - self.truth_mean);
    }

    /// Labelled rows so far.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The window's metrics (at least one row).
    pub fn finish(&self) -> RegressionMetrics {
        let n = self.n as f64;
        // scikit-learn's force_finite: constant labels give 1 for a perfect fit, else 0.
        let r2 = if self.n < 2 {
            None
        } else if self.truth_m2 == 0.0 {
            Some(if self.squared_error == 0.0 { 1.0 } else { 0.0 })
        } else {
            Some(1.0 - self.squared_error / self.truth_m2)
        };
        let mut undefined = BTreeMap::new();
        if r2.is_none() {
            undefined.insert("r2", "fewer than two labelled rows".to_owned());
        }
        RegressionMetrics {
            mae: self.abs_error / n,
            rmse: (self.squared_error / n).sqrt(),
            mape: self.abs_percentage_error / n,
            r2,
            undefined,
        }
    }
}

/// Regression metrics of one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RegressionMetrics {
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Mean absolute percentage error, as a fraction (scikit-learn's unit, not Evidently's %).
    pub mape: f64,
    /// Coefficient of determination (needs two rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
    /// Metrics left out, with why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub undefined: BTreeMap<&'static str, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_shares_ranks_of_tied_scores() {
        // scikit-learn: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.75, and a tie
        // between a positive and a negative counts one half.
        assert_eq!(
            binary_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            0.75
        );
        assert_eq!(binary_auc(&[0.5, 0.5], &[false, true]), 0.5);
    }

    #[test]
    fn labels_name_classes_by_text_or_id() {
        let mut classes = ClassTable::new(&["malignant".into(), "benign".into()], Some(2));
        assert_eq!(classes.label("benign", None), 1);
        assert_eq!(classes.label("1", Some(1.0)), 1);
        assert_eq!(classes.predicted_id(0), 0);
        assert_eq!(classes.label("unknown", None), 2);
        let mut ids = ClassTable::new(&[], None);
        assert_eq!(ids.predicted_id(7), ids.label("7.0", Some(7.0)));
    }
}
