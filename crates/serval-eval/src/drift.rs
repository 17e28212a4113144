//! Data drift between a reference sample and a current one, computed as Evidently 0.7.23 computes
//! it (`evidently/legacy/calculations/stattests`), so Evidently is the oracle of the tests
//! (`tests/fixtures/generate_drift.py` writes its answers to `tests/fixtures/drift.json`).
//!
//! Evidently's rules, followed here:
//! - psi, kl_div and jensenshannon compare shares per bin (`get_binned_data`): a numerical column
//!   whose reference has more than 20 distinct values is cut into Sturges bins over reference and
//!   current together (new edges on every call); any other column gets one bin per value of
//!   reference ∪ current. psi and kl_div then give empty bins a small share (`feel_zeroes`).
//! - hellinger: categories by share; numbers always in Sturges bins over the distinct values of
//!   reference ∪ current, as densities times the bin width.
//! - wasserstein: scipy's W1 over the reference's standard deviation (ddof 0, at least 0.001).
//! - ks: scipy's `ks_2samp` (two-sided, method "auto"), ported with its exact and asymptotic
//!   distributions; chisquare: goodness of fit of the current counts to the reference's shares;
//!   z: pooled two-proportion z-test of the first value in sorted order against all others.

use std::collections::{BTreeMap, BTreeSet};

use statrs::function::{erf, gamma};

/// A column's values as the test sees them: numbers (NaN and ±inf already removed by the caller —
/// but be defensive: drop them again), or categories as text.
#[derive(Debug, Clone, Copy)]
pub enum Sample<'a> {
    /// A numerical column.
    Numbers(&'a [f64]),
    /// A categorical column.
    Categories(&'a [&'a str]),
}

/// A drift test, named as Evidently names its stattest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Two-sample Kolmogorov–Smirnov test, p-value (numbers only).
    Ks,
    /// Pearson's chi-squared goodness of fit of the current counts to the reference's shares,
    /// p-value.
    Chisquare,
    /// Two-proportion z-test of the first value in sorted order against the others, p-value.
    Z,
    /// Jensen–Shannon distance (the square root of the divergence), natural log: at most √ln 2.
    Jensenshannon,
    /// Wasserstein-1 distance over the reference's standard deviation (numbers only).
    Wasserstein,
    /// Population stability index.
    Psi,
    /// Kullback–Leibler divergence KL(reference ‖ current) of the shares, natural log.
    KlDiv,
    /// Hellinger distance.
    Hellinger,
}

impl Method {
    /// Every method, p-value tests first.
    pub const ALL: [Method; 8] = [
        Method::Ks,
        Method::Chisquare,
        Method::Z,
        Method::Jensenshannon,
        Method::Wasserstein,
        Method::Psi,
        Method::KlDiv,
        Method::Hellinger,
    ];

    /// Evidently's name of the stattest.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ks => "ks",
            Method::Chisquare => "chisquare",
            Method::Z => "z",
            Method::Jensenshannon => "jensenshannon",
            Method::Wasserstein => "wasserstein",
            Method::Psi => "psi",
            Method::KlDiv => "kl_div",
            Method::Hellinger => "hellinger",
        }
    }

    /// The method Evidently calls `name`.
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|method| method.name() == name)
    }

    /// Evidently's default threshold: 0.05 for a p-value, 0.1 for a distance.
    pub fn default_threshold(self) -> f64 {
        if self.is_p_value() { 0.05 } else { 0.1 }
    }

    /// Whether the value is a p-value (drift when small) rather than a distance (drift when large).
    pub fn is_p_value(self) -> bool {
        matches!(self, Method::Ks | Method::Chisquare | Method::Z)
    }

    /// Evidently's verdict: ks drifts at p ≤ threshold, chisquare and z at p < threshold, every
    /// distance at value ≥ threshold.
    pub fn drifted(self, value: f64, threshold: f64) -> bool {
        match self {
            Method::Ks => value <= threshold,
            Method::Chisquare | Method::Z => value < threshold,
            _ => value >= threshold,
        }
    }

    /// The value of two samples that do not differ at all.
    fn no_drift_value(self) -> f64 {
        if self.is_p_value() { 1.0 } else { 0.0 }
    }
}

/// One test's outcome.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DriftResult {
    pub method: Method,
    /// The p-value or the distance; always finite.
    pub value: f64,
    pub threshold: f64,
    pub drifted: bool,
}

/// Why two samples cannot be tested.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DriftError {
    #[error("the reference sample is empty")]
    EmptyReference,
    #[error("the current sample is empty")]
    EmptyCurrent,
    #[error("{method} needs numbers, and this column is categorical")]
    NeedsNumbers { method: &'static str },
    #[error("the reference is {reference} and the current sample {current}")]
    KindMismatch {
        reference: &'static str,
        current: &'static str,
    },
}

/// Reference rows up to which Evidently's automatic choice takes a p-value test.
const MAX_ROWS_FOR_P_VALUE_TESTS: usize = 1000;
/// Distinct values up to which Evidently's automatic choice treats a numerical column as
/// categories.
const MAX_VALUES_FOR_CATEGORY_TESTS: usize = 5;
/// Distinct reference values up to which Evidently gives a numerical column one bin per value
/// (`get_binned_data`), instead of Sturges bins.
const MAX_VALUES_AS_BINS: usize = 20;

/// Evidently's automatic choice (`_get_default_stattest`): kind from the Sample variant,
/// n_values = unique values in reference ∪ current, size test on reference rows only.
///
/// Up to 1000 reference rows: ks for numbers with more than 5 values, else chisquare with more
/// than 2 values and z with 1 or 2. Above 1000: wasserstein for numbers with more than 5 values,
/// else jensenshannon. Rows and values are counted after dropping NaN and ±inf, as Evidently
/// cleans a column before choosing. For samples of different kinds, which [`test`] refuses, the
/// reference's kind decides.
pub fn auto_method(reference: Sample, current: Sample) -> Method {
    let reference_rows = match reference {
        Sample::Numbers(values) => values.iter().filter(|v| v.is_finite()).count(),
        Sample::Categories(values) => values.len(),
    };
    let n_values = match Pair::new(reference, current) {
        Ok(pair) => paired_counts(&pair).len(),
        // No value is shared between an empty sample, or a sample of the other kind, and this one.
        Err(_) => distinct_values(reference) + distinct_values(current),
    };
    let numbers_with_many_values =
        matches!(reference, Sample::Numbers(_)) && n_values > MAX_VALUES_FOR_CATEGORY_TESTS;
    match (
        reference_rows <= MAX_ROWS_FOR_P_VALUE_TESTS,
        numbers_with_many_values,
    ) {
        (true, true) => Method::Ks,
        (true, false) if n_values > 2 => Method::Chisquare,
        (true, false) => Method::Z,
        (false, true) => Method::Wasserstein,
        (false, false) => Method::Jensenshannon,
    }
}

/// Runs one test, with Evidently's default threshold unless one is given.
///
/// The value is never NaN or infinite (JSON has none): where Evidently returns NaN — chisquare on
/// a column with a single value (no degree of freedom), or a rounding error just below zero
/// under jensenshannon's square root — this returns the no-drift value, a p-value of 1.0 or a
/// distance of 0.0. A constant column equal on both sides gets p = 1.0 from every p-value test.
/// ks and wasserstein need numbers; every method takes numbers.
pub fn test(
    method: Method,
    reference: Sample,
    current: Sample,
    threshold: Option<f64>,
) -> Result<DriftResult, DriftError> {
    let pair = Pair::new(reference, current)?;
    let value = match method {
        Method::Ks => {
            let (reference, current) = pair.numbers(method)?;
            ks::p_value(reference, current)
        }
        Method::Wasserstein => {
            let (reference, current) = pair.numbers(method)?;
            wasserstein_normed(reference, current)
        }
        Method::Chisquare => chisquare_p_value(&pair),
        Method::Z => z_test_p_value(&pair),
        Method::Jensenshannon => {
            let (reference, current) = binned_shares(&pair, false);
            jensen_shannon_distance(&reference, &current)
        }
        Method::Psi => {
            let (reference, current) = binned_shares(&pair, true);
            psi(&reference, &current)
        }
        Method::KlDiv => {
            let (reference, current) = binned_shares(&pair, true);
            kl_divergence(&reference, &current)
        }
        Method::Hellinger => hellinger_distance(&pair),
    };
    // The undefined cases Evidently meets are handled where they arise; this keeps the promise of
    // a finite value for any other.
    let value = if value.is_finite() {
        value
    } else {
        method.no_drift_value()
    };
    let threshold = threshold.unwrap_or(method.default_threshold());
    Ok(DriftResult {
        method,
        value,
        threshold,
        drifted: method.drifted(value, threshold),
    })
}

impl Sample<'_> {
    fn kind(self) -> &'static str {
        match self {
            Sample::Numbers(_) => "numerical",
            Sample::Categories(_) => "categorical",
        }
    }
}

/// Two samples of one kind, neither empty, numbers finite and sorted.
enum Pair<'a> {
    Numbers {
        reference: Vec<f64>,
        current: Vec<f64>,
    },
    Categories {
        reference: &'a [&'a str],
        current: &'a [&'a str],
    },
}

impl<'a> Pair<'a> {
    fn new(reference: Sample<'a>, current: Sample<'a>) -> Result<Pair<'a>, DriftError> {
        let pair = match (reference, current) {
            (Sample::Numbers(r), Sample::Numbers(c)) => Pair::Numbers {
                reference: finite_sorted(r),
                current: finite_sorted(c),
            },
            (Sample::Categories(r), Sample::Categories(c)) => Pair::Categories {
                reference: r,
                current: c,
            },
            (r, c) => {
                return Err(DriftError::KindMismatch {
                    reference: r.kind(),
                    current: c.kind(),
                });
            }
        };
        match pair.lens() {
            (0, _) => Err(DriftError::EmptyReference),
            (_, 0) => Err(DriftError::EmptyCurrent),
            _ => Ok(pair),
        }
    }

    /// Row counts of (reference, current).
    fn lens(&self) -> (usize, usize) {
        match self {
            Pair::Numbers { reference, current } => (reference.len(), current.len()),
            Pair::Categories { reference, current } => (reference.len(), current.len()),
        }
    }

    /// The sorted numbers, for a method that takes nothing else.
    fn numbers(&self, method: Method) -> Result<(&[f64], &[f64]), DriftError> {
        match self {
            Pair::Numbers { reference, current } => Ok((reference.as_slice(), current.as_slice())),
            Pair::Categories { .. } => Err(DriftError::NeedsNumbers {
                method: method.name(),
            }),
        }
    }
}

/// Evidently drops NaN and ±inf. −0 becomes +0, so that equal values stay equal under the total
/// order used for sorting.
fn finite_sorted(values: &[f64]) -> Vec<f64> {
    let mut kept: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .map(|v| if v == 0.0 { 0.0 } else { v })
        .collect();
    kept.sort_by(f64::total_cmp);
    kept
}

fn distinct_values(sample: Sample) -> usize {
    match sample {
        Sample::Numbers(values) => value_counts(&finite_sorted(values)).len(),
        Sample::Categories(values) => values.iter().collect::<BTreeSet<_>>().len(),
    }
}

/// The distinct values of a sorted slice with how often each occurs.
fn value_counts(sorted: &[f64]) -> Vec<(f64, usize)> {
    sorted
        .chunk_by(|a, b| a == b)
        .map(|run| (run[0], run.len()))
        .collect()
}

/// How often each value of reference ∪ current (Evidently's `keys`) occurs in (reference,
/// current), in ascending order of value: numbers by value, text by code point as Python's
/// `sorted` orders it. The z-test takes the first; the other tests only sum over all of them.
fn paired_counts(pair: &Pair) -> Vec<(usize, usize)> {
    match pair {
        Pair::Numbers { reference, current } => {
            merge_counts(&value_counts(reference), &value_counts(current))
        }
        Pair::Categories { reference, current } => {
            let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for &value in reference.iter() {
                counts.entry(value).or_default().0 += 1;
            }
            for &value in current.iter() {
                counts.entry(value).or_default().1 += 1;
            }
            counts.into_values().collect()
        }
    }
}

/// Joins two ascending value counts into (count in a, count in b) per value of either.
fn merge_counts(a: &[(f64, usize)], b: &[(f64, usize)]) -> Vec<(usize, usize)> {
    let mut merged = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (Some(&(x, count_a)), Some(&(y, count_b))) => match x.total_cmp(&y) {
                std::cmp::Ordering::Equal => {
                    merged.push((count_a, count_b));
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    merged.push((count_a, 0));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    merged.push((0, count_b));
                    j += 1;
                }
            },
            (Some(&(_, count_a)), None) => {
                merged.push((count_a, 0));
                i += 1;
            }
            (None, Some(&(_, count_b))) => {
                merged.push((0, count_b));
                j += 1;
            }
            (None, None) => return merged,
        }
    }
}

/// Evidently's `get_binned_data`: the reference's and the current sample's share per bin, empty
/// bins filled when `fill_empty` (psi and kl_div; jensenshannon keeps zeros).
fn binned_shares(pair: &Pair, fill_empty: bool) -> (Vec<f64>, Vec<f64>) {
    let (mut reference_shares, mut current_shares) = match pair {
        Pair::Numbers { reference, current }
            if value_counts(reference).len() > MAX_VALUES_AS_BINS =>
        {
            let (lo, hi) = value_range(reference, current);
            let edges = sturges_edges(lo, hi, reference.len() + current.len());
            (
                shares(histogram(reference, &edges), reference.len()),
                shares(histogram(current, &edges), current.len()),
            )
        }
        _ => {
            let counts = paired_counts(pair);
            let (n_reference, n_current) = pair.lens();
            (
                shares(counts.iter().map(|c| c.0), n_reference),
                shares(counts.iter().map(|c| c.1), n_current),
            )
        }
    };
    if fill_empty {
        fill_empty_bins(&mut reference_shares);
        fill_empty_bins(&mut current_shares);
    }
    (reference_shares, current_shares)
}

fn shares(counts: impl IntoIterator<Item = usize>, total: usize) -> Vec<f64> {
    counts
        .into_iter()
        .map(|count| count as f64 / total as f64)
        .collect()
}

/// Smallest and largest value of two samples.
fn value_range(a: &[f64], b: &[f64]) -> (f64, f64) {
    a.iter()
        .chain(b)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// `np.histogram_bin_edges(data, bins="sturges")` for `size` values spanning [lo, hi]: ⌈range /
/// width⌉ equal bins of width range / (log2(size) + 1), computed in numpy's order of operations so
/// the count of bins matches it (a size that is a power of two makes the quotient land on an
/// integer); a constant column gets the one bin [v − ½, v + ½].
fn sturges_edges(lo: f64, hi: f64, size: usize) -> Vec<f64> {
    let width = (hi - lo) / ((size as f64).log2() + 1.0);
    let (first, last) = if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let bins = if width == 0.0 {
        1
    } else {
        ((last - first) / width).ceil() as usize
    };
    // np.linspace(first, last, bins + 1): i · step + first, the last edge exactly `last`.
    let step = (last - first) / bins as f64;
    let mut edges: Vec<f64> = (0..=bins).map(|i| i as f64 * step + first).collect();
    if let Some(end) = edges.last_mut() {
        *end = last;
    }
    edges
}

/// `np.histogram(sorted, edges)[0]`: counts in [e_i, e_i+1), the last bin closed.
fn histogram(sorted: &[f64], edges: &[f64]) -> Vec<usize> {
    let Some((&last_edge, inner)) = edges.split_last() else {
        return Vec::new();
    };
    let cumulative: Vec<usize> = inner
        .iter()
        .map(|&edge| sorted.partition_point(|&v| v < edge))
        .chain(std::iter::once(sorted.partition_point(|&v| v <= last_edge)))
        .collect();
    cumulative
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect()
}

/// Evidently's `feel_zeroes` on one side's shares: empty bins get the smallest non-empty share
/// / 10⁶ when that share is at most 10⁻⁴, else 10⁻⁴. The shares are not renormalised.
fn fill_empty_bins(shares: &mut [f64]) {
    let smallest = shares
        .iter()
        .copied()
        .filter(|&s| s != 0.0)
        .fold(f64::INFINITY, f64::min);
    let fill = if smallest <= 1e-4 {
        smallest / 1e6
    } else {
        1e-4
    };
    for share in shares.iter_mut().filter(|s| **s == 0.0) {
        *share = fill;
    }
}

/// Σ (p − q) ln(p / q).
fn psi(reference: &[f64], current: &[f64]) -> f64 {
    reference
        .iter()
        .zip(current)
        .map(|(&p, &q)| (p - q) * (p / q).ln())
        .sum()
}

/// `scipy.stats.entropy(p, q)`: both sides renormalised first (filled bins no longer sum to 1),
/// then Σ p ln(p / q).
fn kl_divergence(reference: &[f64], current: &[f64]) -> f64 {
    let (p, q) = (normalised(reference), normalised(current));
    p.iter()
        .zip(&q)
        .map(|(&p, &q)| relative_entropy(p, q))
        .sum()
}

/// `scipy.spatial.distance.jensenshannon(p, q)`, natural log: √((KL(p‖m) + KL(q‖m)) / 2) with
/// m = (p + q) / 2, after renormalising both sides.
fn jensen_shannon_distance(reference: &[f64], current: &[f64]) -> f64 {
    let (p, q) = (normalised(reference), normalised(current));
    let (mut left, mut right) = (0.0, 0.0);
    for (&p, &q) in p.iter().zip(&q) {
        let m = (p + q) / 2.0;
        left += relative_entropy(p, m);
        right += relative_entropy(q, m);
    }
    // Equal shares can round the sum a hair below zero, where scipy's square root gives NaN.
    ((left + right) / 2.0).max(0.0).sqrt()
}

/// `scipy.special.rel_entr(x, y)`: x ln(x / y), and 0 at x = 0.
fn relative_entropy(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * (x / y).ln() }
}

fn normalised(values: &[f64]) -> Vec<f64> {
    let total: f64 = values.iter().sum();
    values.iter().map(|v| v / total).collect()
}

/// Evidently's Hellinger distance √(1 − BC), the Bhattacharyya coefficient BC clipped to [0, 1]:
/// over the shares of each category, or for numbers over Sturges bins of the distinct values of
/// reference ∪ current, as Σ √(density_ref · density_cur) × the mean bin width.
fn hellinger_distance(pair: &Pair) -> f64 {
    let coefficient = match pair {
        Pair::Numbers { reference, current } => {
            let (lo, hi) = value_range(reference, current);
            let distinct = merge_counts(&value_counts(reference), &value_counts(current)).len();
            let edges = sturges_edges(lo, hi, distinct);
            bhattacharyya(&densities(reference, &edges), &densities(current, &edges))
                * mean_width(&edges)
        }
        Pair::Categories { .. } => {
            let counts = paired_counts(pair);
            let (n_reference, n_current) = pair.lens();
            bhattacharyya(
                &shares(counts.iter().map(|c| c.0), n_reference),
                &shares(counts.iter().map(|c| c.1), n_current),
            )
        }
    };
    hellinger_from_coefficient(coefficient)
}

/// Σ √(p q): 1 for equal distributions.
fn bhattacharyya(reference: &[f64], current: &[f64]) -> f64 {
    reference
        .iter()
        .zip(current)
        .map(|(&p, &q)| (p * q).sqrt())
        .sum()
}

fn hellinger_from_coefficient(coefficient: f64) -> f64 {
    (1.0 - coefficient.clamp(0.0, 1.0)).sqrt()
}

/// `np.histogram(sorted, edges, density=True)[0]`: count / bin width / total count.
fn densities(sorted: &[f64], edges: &[f64]) -> Vec<f64> {
    let counts = histogram(sorted, edges);
    let total = counts.iter().sum::<usize>() as f64;
    counts
        .iter()
        .zip(edges.windows(2))
        .map(|(&count, edge)| count as f64 / (edge[1] - edge[0]) / total)
        .collect()
}

/// (last edge − first edge) / bins, Evidently's `bin_width`.
fn mean_width(edges: &[f64]) -> f64 {
    match edges {
        [first, .., last] => (last - first) / (edges.len() - 1) as f64,
        _ => 0.0,
    }
}

/// Evidently's normed Wasserstein distance: `scipy.stats.wasserstein_distance(reference,
/// current)` over max(std(reference, ddof = 0), 0.001).
fn wasserstein_normed(reference: &[f64], current: &[f64]) -> f64 {
    wasserstein_1(reference, current) / population_std(reference).max(0.001)
}

/// `scipy.stats.wasserstein_distance` of two sorted samples: ∫ |F_u − F_v| over the pooled values.
fn wasserstein_1(u: &[f64], v: &[f64]) -> f64 {
    let mut pooled = [u, v].concat();
    pooled.sort_by(f64::total_cmp);
    let (n_u, n_v) = (u.len() as f64, v.len() as f64);
    let (mut below_u, mut below_v) = (0, 0);
    let mut distance = 0.0;
    for step in pooled.windows(2) {
        while below_u < u.len() && u[below_u] <= step[0] {
            below_u += 1;
        }
        while below_v < v.len() && v[below_v] <= step[0] {
            below_v += 1;
        }
        distance += (below_u as f64 / n_u - below_v as f64 / n_v).abs() * (step[1] - step[0]);
    }
    distance
}

fn population_std(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
}

/// Evidently's chisquare: `scipy.stats.chisquare(f_obs = current counts, f_exp = reference counts
/// · n_cur / n_ref)` over the values of reference ∪ current. A value the reference lacks has an
/// expected count of 0, an infinite statistic and p = 0. A single value leaves no degree of
/// freedom, where scipy returns NaN: reported as 1.0, no drift.
fn chisquare_p_value(pair: &Pair) -> f64 {
    let counts = paired_counts(pair);
    if counts.len() < 2 {
        return 1.0;
    }
    let (n_reference, n_current) = pair.lens();
    let scale = n_current as f64 / n_reference as f64;
    let statistic: f64 = counts
        .iter()
        .map(|&(reference, current)| {
            let expected = reference as f64 * scale;
            let difference = current as f64 - expected;
            difference * difference / expected
        })
        .sum();
    chi_squared_sf(statistic, (counts.len() - 1) as f64)
}

/// Upper tail of the chi-squared distribution (`scipy.special.chdtrc`).
fn chi_squared_sf(statistic: f64, degrees_of_freedom: f64) -> f64 {
    if statistic <= 0.0 {
        return 1.0;
    }
    if statistic.is_infinite() {
        return 0.0;
    }
    // The arguments are finite and positive here, the only ones statrs accepts.
    gamma::checked_gamma_ur(degrees_of_freedom / 2.0, statistic / 2.0).unwrap_or(1.0)
}

/// Evidently's z: values equal to the first value of reference ∪ current in sorted order count as
/// 0, all others as 1; pooled two-proportion z, p = 2 (1 − Φ(|z|)). The same single value on
/// both sides gives p = 1.
fn z_test_p_value(pair: &Pair) -> f64 {
    let counts = paired_counts(pair);
    let Some(&(reference_first, current_first)) = counts.first() else {
        return 1.0;
    };
    if counts.len() == 1 {
        return 1.0;
    }
    let (n1, n2) = pair.lens();
    let (n1, n2) = (n1 as f64, n2 as f64);
    let p1 = (n1 - reference_first as f64) / n1;
    let p2 = (n2 - current_first as f64) / n2;
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let z = (p1 - p2) / (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    2.0 * (1.0 - standard_normal_cdf(z.abs()))
}

/// `scipy.special.ndtr`, with cephes' branches: erf near 0, erfc in the tails.
fn standard_normal_cdf(x: f64) -> f64 {
    let t = x * std::f64::consts::FRAC_1_SQRT_2;
    if t.abs() < 1.0 {
        0.5 + 0.5 * erf::erf(t)
    } else {
        let tail = 0.5 * erf::erfc(t.abs());
        if t > 0.0 { 1.0 - tail } else { tail }
    }
}

/// scipy 1.17's `ks_2samp(reference, current)` p-value, two-sided, method "auto"
/// (`scipy/stats/_stats_py.py` and `_stats_pythran.py`): exact while neither sample has more
/// than 10 000 values, else the asymptotic `kstwo.sf(D, round(n1 n2 / (n1 + n2)))`.
mod ks {
    /// scipy's `MAX_AUTO_N`.
    const MAX_EXACT_N: usize = 10_000;

    pub(super) fn p_value(a: &[f64], b: &[f64]) -> f64 {
        let d = statistic(a, b);
        let (n1, n2) = (a.len(), b.len());
        let d = if n1.max(n2) <= MAX_EXACT_N {
            match exact(n1, n2, d) {
                Exact::PValue(p) => return p.clamp(0.0, 1.0),
                Exact::Failed { lattice_d } => lattice_d,
            }
        } else {
            d
        };
        asymptotic(n1, n2, d)
    }

    /// D = max |F_a − F_b| over the pooled values of two sorted samples, each F counting the
    /// values ≤ x (scipy's `searchsorted(side="right")`).
    fn statistic(a: &[f64], b: &[f64]) -> f64 {
        let (n1, n2) = (a.len() as f64, b.len() as f64);
        let (mut i, mut j) = (0, 0);
        let (mut above, mut below) = (0.0_f64, 0.0_f64);
        // A sample's next value, none once it is exhausted.
        let next = |sample: &[f64], k: usize| sample.get(k).copied().unwrap_or(f64::INFINITY);
        while i < a.len() || j < b.len() {
            let x = next(a, i).min(next(b, j));
            while i < a.len() && a[i] <= x {
                i += 1;
            }
            while j < b.len() && b[j] <= x {
                j += 1;
            }
            let difference = i as f64 / n1 - j as f64 / n2;
            above = above.max(difference);
            below = below.max(-difference);
        }
        above.max(below.min(1.0))
    }

    enum Exact {
        PValue(f64),
        /// The exact computation gave no probability; scipy goes on with the asymptotic one,
        /// with D rounded to the lattice of multiples of 1 / lcm(n1, n2).
        Failed {
            lattice_d: f64,
        },
    }

    /// scipy's `_attempt_exact_2kssamp`, two-sided.
    fn exact(n1: usize, n2: usize, d: f64) -> Exact {
        let g = gcd(n1, n2);
        let lcm = (n1 / g) * n2;
        let h = (d * lcm as f64).round_ties_even() as usize;
        if h == 0 {
            return Exact::PValue(1.0);
        }
        let p = if n1 == n2 {
            prob_outside_square(n1, h)
        } else {
            outer_prob_inside(n1, n2, g, h)
        };
        if (0.0..=1.0).contains(&p) {
            Exact::PValue(p)
        } else {
            Exact::Failed {
                lattice_d: h as f64 / lcm as f64,
            }
        }
    }

    fn gcd(mut a: usize, mut b: usize) -> usize {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }

    /// scipy's `_compute_prob_outside_square(n, h)`: P(D ≥ h/n) for two samples of n values,
    /// 2 Σ_k (−1)^(k−1) C(2n, n − kh) / C(2n, n) in a Horner form that avoids cancellation.
    fn prob_outside_square(n: usize, h: usize) -> f64 {
        let (n, h) = (n as i64, h as i64);
        let mut p = 0.0;
        for k in (0..=n / h).rev() {
            let mut term = 1.0;
            for j in 0..h {
                term = (n - k * h - j) as f64 * term / (n + k * h + j + 1) as f64;
            }
            p = term * (1.0 - p);
        }
        2.0 * p
    }

    /// scipy's `_compute_outer_prob_inside_method(m, n, g, h)`: the share of lattice paths from
    /// (0, 0) to (m, n) that leave the band |x/m − y/n| < h / lcm(m, n), i.e. P(D ≥ h / lcm),
    /// by Hodges' inside method with Viehmann's recursion for 1 − p.
    fn outer_prob_inside(m: usize, n: usize, g: usize, h: usize) -> f64 {
        let (m, n) = if m < n { (n, m) } else { (m, n) };
        let (m, n, g, h) = (m as i64, n as i64, g as i64, h as i64);
        let (mg, ng) = (m / g, n / g);
        // One column of the table over a sliding window of rows. scipy allocates
        // min(2 maxj + 2, n + 1) entries; n + 1 holds every window, and entries past the window
        // hold 1 in both.
        let mut column = vec![1.0; (n + 1) as usize];
        let mut min_j = 0_i64;
        let mut max_j = ceil_div(h, mg).min(n + 1);
        column[..max_j as usize].fill(0.0);
        let mut window = max_j - min_j;
        for i in 1..=m {
            let (last_min_j, last_window) = (min_j, window);
            min_j = ((ng * i - h).div_euclid(mg) + 1).clamp(0, n);
            max_j = ceil_div(ng * i + h, mg).min(n + 1);
            if max_j <= min_j {
                return 1.0;
            }
            let mut value = if min_j == 0 { 0.0 } else { 1.0 };
            for jj in 0..max_j - min_j {
                let j = jj + min_j;
                let left = column[(jj + min_j - last_min_j) as usize];
                value = (left * i as f64 + value * j as f64) / (i + j) as f64;
                column[jj as usize] = value;
            }
            window = max_j - min_j;
            if last_window > window {
                let start = window as usize;
                let end = (start + (last_window - window) as usize).min(column.len());
                column[start..end].fill(1.0);
            }
        }
        column[(max_j - min_j - 1) as usize]
    }

    /// ⌈a / b⌉ for b > 0.
    fn ceil_div(a: i64, b: i64) -> i64 {
        -(-a).div_euclid(b)
    }

    /// scipy's asymptotic branch: the one-sample two-sided Kolmogorov distribution at the
    /// effective sample size round(n1 n2 / (n1 + n2)).
    fn asymptotic(n1: usize, n2: usize, d: f64) -> f64 {
        let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
        let effective_n = (m * n / (m + n)).round_ties_even() as u64;
        super::kstwo::sf(effective_n, d).clamp(0.0, 1.0)
    }
}

/// scipy's `kstwo.sf(x, n)`: P(D_n ≥ x) for the two-sided one-sample Kolmogorov–Smirnov statistic
/// of n values (`scipy/stats/_ksstats.py`, after Simard and L'Ecuyer 2011), with `rv_continuous`'s
/// support: 1 at x ≤ 1/(2n), 0 at x ≥ 1.
///
/// Every branch is scipy's: Ruben–Gambino's closed forms near the ends, Durbin's matrix
/// (Marsaglia–Tsang–Wang), Pomeranz's recursion, Pelz–Good's series and twice Smirnov's one-sided
/// tail. One departure: scipy sums Smirnov's terms in double-double arithmetic, here in logarithms
/// of f64; they agree to about 1e-12 relative for n ≤ 10⁵ (6e-10 at n = 2·10⁵ and p ≈ 1e-56),
/// and scipy's intermediate 80-bit scaling in Durbin's and Pomeranz's methods is kept in f64.
mod kstwo {
    /// Intermediate results are rescaled by 2^±128 to stay in range.
    const SCALE: f64 = 3.402823669209385e38;
    const SCALE_EXPONENT: i32 = 128;
    const SQRT_2PI: f64 = 2.5066282746310002;
    const LN_2PI: f64 = 1.8378770664093453;
    const PI: f64 = std::f64::consts::PI;
    const PI_SQUARED: f64 = 9.869604401089358;
    const PI_FOUR: f64 = 97.40909103400242;
    const PI_SIX: f64 = 961.3891935753043;
    /// Below this, exp() underflows (Pelz–Good's cut-off).
    const MIN_LOG: f64 = -708.0;
    /// log(2⁻¹⁰⁷⁵), cephes' `MINLOG`: Smirnov's tail is 0 beyond it.
    const SMIRNOV_MIN_LOG: f64 = -745.1332191019412;
    /// Above this n, Smirnov's tail is approximated (cephes' `SMIRNOV_MAX_COMPUTE_N`).
    const SMIRNOV_MAX_COMPUTE_N: u64 = 1_000_000;
    /// Bernoulli terms B_2j / (2j (2j − 1)) of Stirling's series, highest first.
    const STIRLING_COEFFICIENTS: [f64; 8] = [
        -0.029550653594771242,
        0.00641025641025641,
        -0.0019175269175269176,
        0.0008417508417508417,
        -0.0005952380952380953,
        0.0007936507936507937,
        -0.002777777777777778,
        0.08333333333333333,
    ];

    /// `_kolmogn(n, x, cdf=False)` behind `kstwo.sf`'s support check.
    pub(super) fn sf(n: u64, x: f64) -> f64 {
        let nf = n as f64;
        if x <= 0.5 / nf {
            return 1.0;
        }
        if x >= 1.0 {
            return 0.0;
        }
        let t = nf * x;
        let p = if t <= 1.0 {
            if t <= 0.5 {
                return 1.0;
            }
            1.0 - ruben_gambino_cdf(n, t)
        } else if t >= nf - 1.0 {
            2.0 * (1.0 - x).powf(nf)
        } else if x >= 0.5 {
            2.0 * smirnov_sf(n, x)
        } else {
            middle_sf(n, x)
        };
        p.clamp(0.0, 1.0)
    }

    /// The sf for 1/n < x < min(1/2, 1 − 1/n), by the method Simard and L'Ecuyer pick for n x².
    fn middle_sf(n: u64, x: f64) -> f64 {
        let n_x_squared = n as f64 * x * x;
        if n <= 140 {
            return if n_x_squared <= 0.754693 {
                1.0 - durbin_cdf(n, x)
            } else if n_x_squared <= 4.0 {
                1.0 - pomeranz_cdf(n, x)
            } else {
                2.0 * smirnov_sf(n, x)
            };
        }
        if n_x_squared >= 370.0 {
            return 0.0;
        }
        if n_x_squared >= 2.2 {
            return 2.0 * smirnov_sf(n, x);
        }
        let cdf = if n <= 100_000 && n as f64 * x.powf(1.5) <= 1.4 {
            durbin_cdf(n, x)
        } else {
            pelz_good_cdf(n, x)
        };
        1.0 - cdf
    }

    /// P(D_n < x) at 1/2 < t = n x ≤ 1: n!/nⁿ (2t − 1)ⁿ (Ruben and Gambino).
    fn ruben_gambino_cdf(n: u64, t: f64) -> f64 {
        let nf = n as f64;
        if n <= 140 {
            (1..=n)
                .map(|i| i as f64 * (1.0 / nf) * (2.0 * t - 1.0))
                .product()
        } else {
            (ln_factorial_over_power(n) + nf * (2.0 * t - 1.0).ln()).exp()
        }
    }

    /// ln(n! / nⁿ) by Stirling's series, n ln n removed up front against cancellation.
    fn ln_factorial_over_power(n: u64) -> f64 {
        let nf = n as f64;
        let reciprocal = 1.0 / nf;
        let series = STIRLING_COEFFICIENTS
            .iter()
            .fold(0.0, |acc, &c| acc * (reciprocal / nf) + c);
        nf.ln() / 2.0 - nf + LN_2PI / 2.0 + reciprocal * series
    }

    /// x · 2^exponent without overflow or underflow in the factor.
    fn ldexp(mut x: f64, mut exponent: i32) -> f64 {
        while exponent > 512 {
            x *= 2f64.powi(512);
            exponent -= 512;
        }
        while exponent < -512 {
            x *= 2f64.powi(-512);
            exponent += 512;
        }
        x * 2f64.powi(exponent)
    }

    /// Durbin's matrix method as Marsaglia, Tsang and Wang compute it (`_kolmogn_DMTW`):
    /// P(D_n < d) = n!/nⁿ · (Hⁿ)_kk with k = ⌈nd⌉.
    fn durbin_cdf(n: u64, d: f64) -> f64 {
        if d >= 1.0 {
            return 1.0;
        }
        let nd = n as f64 * d;
        if nd <= 0.5 {
            return 0.0;
        }
        let k = nd.ceil() as usize;
        let size = 2 * k - 1;
        let diagonal = (k - 1) * size + (k - 1);
        let mut matrix = durbin_matrix(size, k as f64 - nd);
        let mut power = identity(size);
        let (mut exponent, mut matrix_exponent) = (0_i32, 0_i32);
        let mut remaining = n;
        while remaining > 0 {
            if remaining % 2 == 1 {
                power = multiply(&power, &matrix, size);
                exponent += matrix_exponent;
            }
            matrix = multiply(&matrix, &matrix, size);
            matrix_exponent *= 2;
            if matrix[diagonal].abs() > SCALE {
                matrix.iter_mut().for_each(|v| *v /= SCALE);
                matrix_exponent += SCALE_EXPONENT;
            }
            remaining /= 2;
        }
        let mut p = power[diagonal];
        for i in 1..=n {
            p = i as f64 * p / n as f64;
            if p.abs() < 1.0 / SCALE {
                p *= SCALE;
                exponent -= SCALE_EXPONENT;
            }
        }
        ldexp(p, exponent).clamp(0.0, 1.0)
    }

    /// Durbin's H (size × size, row-major) for fractional part h = k − nd: 1/(i − j + 1)! on and
    /// below the superdiagonal, with first column and last row (1 − h^i)/i!.
    fn durbin_matrix(size: usize, h: f64) -> Vec<f64> {
        let mut edge: Vec<f64> = (1..=size).map(|j| 1.0 - h.powf(j as f64)).collect();
        let mut inverse_factorials = vec![0.0; size];
        let mut inverse_factorial = 1.0;
        for (j, (slot, value)) in inverse_factorials.iter_mut().zip(&mut edge).enumerate() {
            *slot = inverse_factorial;
            inverse_factorial /= (j + 1) as f64;
            *value *= inverse_factorial;
        }
        let corner = (2.0 * h - 1.0).max(0.0).powf(size as f64) - 2.0 * h.powf(size as f64);
        if let Some(last) = edge.last_mut() {
            *last = (1.0 + corner) * inverse_factorial;
        }
        let mut matrix = vec![0.0; size * size];
        for column in 1..size {
            for row in column - 1..size {
                matrix[row * size + column] = inverse_factorials[row + 1 - column];
            }
        }
        for (row, &value) in edge.iter().enumerate() {
            matrix[row * size] = value;
        }
        for (column, &value) in edge.iter().rev().enumerate() {
            matrix[(size - 1) * size + column] = value;
        }
        matrix
    }

    fn identity(size: usize) -> Vec<f64> {
        let mut matrix = vec![0.0; size * size];
        for i in 0..size {
            matrix[i * size + i] = 1.0;
        }
        matrix
    }

    fn multiply(a: &[f64], b: &[f64], size: usize) -> Vec<f64> {
        let mut product = vec![0.0; size * size];
        for i in 0..size {
            for l in 0..size {
                let a_il = a[i * size + l];
                if a_il == 0.0 {
                    continue;
                }
                for j in 0..size {
                    product[i * size + j] += a_il * b[l * size + j];
                }
            }
        }
        product
    }

    /// Pomeranz's recursion for P(D_n < x) (`_kolmogn_Pomeranz`): 2n + 1 convolutions of a sliding
    /// row with Poisson-like weights, rescaled by 2^±128.
    fn pomeranz_cdf(n: u64, x: f64) -> f64 {
        let nf = n as f64;
        let t = nf * x;
        let whole = t.floor();
        let fraction = t - whole;
        let bounds = PomeranzBounds {
            n: n as i64,
            whole: whole as i64,
            ceil_fraction: i64::from(fraction > 0.0),
            round_fraction: i64::from(fraction > 0.5),
        };
        let g = fraction.min(1.0 - fraction);
        let n_powers = (2 * (bounds.whole + 1)) as usize;
        // ratio^m / m!, m < n_powers: Poisson probabilities short of their normalising factor.
        let poisson_weights = |ratio: f64| -> Vec<f64> {
            let later = (1..n_powers).scan(1.0, |power, m| {
                *power = *power * ratio / m as f64;
                Some(*power)
            });
            std::iter::once(1.0).chain(later).collect()
        };
        let g_weights = poisson_weights(g / nf);
        let two_g_weights = poisson_weights(2.0 * g / nf);
        let rest_weights = poisson_weights((1.0 - 2.0 * g) / nf);

        let mut previous = vec![0.0; n_powers];
        let mut row = vec![0.0; n_powers];
        row[0] = 1.0;
        let (mut previous_start, mut row_start) = (0_i64, 0_i64);
        let mut exponent = 0_i32;
        let (mut j1, _) = bounds.at(0);
        let last_step = 2 * bounds.n + 1;
        for i in 1..=last_step {
            let k1 = j1;
            std::mem::swap(&mut previous, &mut row);
            std::mem::swap(&mut previous_start, &mut row_start);
            row.fill(0.0);
            let (next_j1, j2) = bounds.at(i);
            j1 = next_j1;
            let weights = if i == 1 || i == last_step {
                &g_weights
            } else if i % 2 == 1 {
                &two_g_weights
            } else {
                &rest_weights
            };
            let len = j2 - k1 + 1;
            if len <= 0 {
                continue;
            }
            let start = (k1 - previous_start).max(0) as usize;
            let segment = &previous[start.min(n_powers)..(start + len as usize).min(n_powers)];
            let kernel = &weights[..(len as usize).min(n_powers)];
            let offset = (j1 - k1).max(0) as usize;
            let count = (j2 - j1 + 1).max(0) as usize;
            for (o, slot) in row.iter_mut().take(count).enumerate() {
                *slot = convolution_at(segment, kernel, offset + o);
            }
            let largest = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if largest > 0.0 && largest < 1.0 / SCALE {
                row.iter_mut().for_each(|v| *v *= SCALE);
                exponent -= SCALE_EXPONENT;
            }
            row_start = previous_start + j1 - k1;
        }
        let mut answer = row
            .get((bounds.n - row_start).max(0) as usize)
            .copied()
            .unwrap_or(0.0);
        for m in 1..=n {
            if answer.abs() > SCALE {
                answer /= SCALE;
                exponent += SCALE_EXPONENT;
            }
            answer *= m as f64;
        }
        ldexp(answer, exponent).clamp(0.0, 1.0)
    }

    /// The non-zero stretch of Pomeranz's row i (`_pomeranz_compute_j1j2`).
    struct PomeranzBounds {
        n: i64,
        /// ⌊n x⌋.
        whole: i64,
        ceil_fraction: i64,
        round_fraction: i64,
    }

    impl PomeranzBounds {
        fn at(&self, i: i64) -> (i64, i64) {
            let (n, ll, cf, rf) = (self.n, self.whole, self.ceil_fraction, self.round_fraction);
            let (j1, j2) = if i == 0 {
                (-ll - cf - 1, ll + cf - 1)
            } else {
                let half = (i + 1) / 2;
                if (i + 1) % 2 == 0 {
                    if half == n + 1 {
                        (n - ll - cf - 1, n + ll + cf - 1)
                    } else {
                        (half - 1 - ll - rf - 1, half + ll - 1 + cf - 1)
                    }
                } else {
                    (half - 1 - ll - 1, half + ll + rf - 1)
                }
            };
            ((j1 + 2).max(0), j2.min(n))
        }
    }

    /// Entry k of the full convolution of a and b (`np.convolve`).
    fn convolution_at(a: &[f64], b: &[f64], k: usize) -> f64 {
        (k.saturating_sub(b.len().saturating_sub(1))..=k)
            .map(|q| match (a.get(q), b.get(k - q)) {
                (Some(x), Some(y)) => x * y,
                _ => 0.0,
            })
            .sum()
    }

    /// Pelz and Good's series for P(D_n < x) (`_kolmogn_PelzGood`): the Li-Chien–Korolyuk
    /// expansion K0 + K1/√n + K2/n + K3/n^1.5, each K summed through Jacobi theta identities.
    fn pelz_good_cdf(n: u64, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        if x >= 1.0 {
            return 1.0;
        }
        let nf = n as f64;
        let z = nf.sqrt() * x;
        let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
        let q_log = -PI_SQUARED / 8.0 / z2;
        if q_log < MIN_LOG {
            return 0.0;
        }
        let q = q_log.exp();
        let k1a = -z2;
        let k1b = PI_SQUARED / 4.0;
        let k2a = 6.0 * z6 + 2.0 * z4;
        let k2b = (2.0 * z4 - 5.0 * z2) * PI_SQUARED / 4.0;
        let k2c = PI_FOUR * (1.0 - 2.0 * z2) / 16.0;
        let k3d = PI_SIX * (5.0 - 30.0 * z2) / 64.0;
        let k3c = PI_FOUR * (-60.0 * z2 + 212.0 * z4) / 16.0;
        let k3b = PI_SQUARED * (135.0 * z4 - 96.0 * z6) / 4.0;
        let k3a = -30.0 * z6 - 90.0 * z.powi(8);

        // Horner over the odd m = 2k − 1 of Σ c_m q^(m²).
        let max_k = (16.0 * z / PI).ceil() as i64;
        let mut terms = [0.0_f64; 4];
        for k in (1..=max_k).rev() {
            let m = (2 * k - 1) as f64;
            let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
            let q_power = q.powf((8 * k) as f64);
            let coefficients = [
                1.0,
                k1a + k1b * m2,
                k2a + k2b * m2 + k2c * m4,
                k3a + k3b * m2 + k3c * m4 + k3d * m6,
            ];
            for (term, c) in terms.iter_mut().zip(coefficients) {
                *term = *term * q_power + c;
            }
        }
        let denominators = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
        for (term, d) in terms.iter_mut().zip(denominators) {
            *term = *term * q * SQRT_2PI / d;
        }

        // The sums over all integers k in K2 and K3.
        let q = (-PI_SQUARED / 2.0 / z2).exp();
        let sqrt3_z = 3f64.sqrt() * z;
        let (mut k2_extra, mut k3_extra) = (0.0, 0.0);
        for k in (1..=max_k).rev() {
            let k_squared = (k * k) as f64;
            let q_power = q.powf(k_squared);
            let k_pi = PI * k as f64;
            k2_extra += k_squared * q_power;
            k3_extra += (sqrt3_z + k_pi) * (sqrt3_z - k_pi) * k_squared * q_power;
        }
        terms[2] += k2_extra * (PI_SQUARED * SQRT_2PI / (-36.0 * z3));
        terms[3] += k3_extra * (PI_SQUARED * SQRT_2PI / (216.0 * z6));
        terms
            .iter()
            .enumerate()
            .map(|(i, term)| term / nf.powf(i as f64 / 2.0))
            .sum()
    }

    /// Smirnov's one-sided tail P(D⁺_n ≥ x) (`scipy.special.smirnov`) by the Birnbaum–Tingey sum
    /// x Σ_{v=0}^{⌈n(1−x)⌉−1} C(n, v) (x + v/n)^(v−1) (1 − x − v/n)^(n−v), whose terms are positive
    /// and computed in logarithms, with cephes' special cases and early stop.
    fn smirnov_sf(n: u64, x: f64) -> f64 {
        if n == 1 {
            return 1.0 - x;
        }
        if x == 0.0 {
            return 1.0;
        }
        if x == 1.0 {
            return 0.0;
        }
        let nf = n as f64;
        let nx = nf * x;
        let whole = nx.floor();
        let alpha = nx - whole;
        let whole = whole as u64;
        if whole == 0 || (whole == 1 && alpha == 0.0) {
            return 1.0 - x * (1.0 + x).powf((n - 1) as f64);
        }
        if -2.0 * nf * x * x < SMIRNOV_MIN_LOG {
            return 0.0;
        }
        if whole >= n - 1 {
            return (1.0 - x).powf(nf);
        }
        if n > SMIRNOV_MAX_COMPUTE_N {
            let log_p = -(6.0 * nf * x + 1.0).powi(2) / 18.0 / nf;
            return if log_p < -std::f64::consts::LN_2 {
                log_p.exp()
            } else {
                1.0 + log_p.exp_m1()
            };
        }
        // v = 0 ..= n − ⌊nx⌋ − 1 are exactly the v with 1 − x − v/n > 0.
        let terms = n - whole;
        let ln_x = x.ln();
        let mut ln_binomial = 0.0;
        let mut sum = 0.0;
        for v in 0..terms {
            let vf = v as f64;
            let rest = ((n - v - whole) as f64 - alpha) / nf;
            let term =
                (ln_binomial + ln_x + (vf - 1.0) * (vf / nf + x).ln() + (nf - vf) * rest.ln())
                    .exp();
            sum += term;
            // cephes stops once the remaining terms cannot move the sum, or past the middle
            // once they underflow.
            let negligible = term != 0.0
                && v > 0
                && v + 1 != terms
                && 4.0 * (terms - v) as f64 * term < f64::EPSILON * sum;
            if negligible || (term == 0.0 && v > n / 2) {
                break;
            }
            ln_binomial += ((nf - vf) / (vf + 1.0)).ln();
        }
        sum.clamp(0.0, 1.0)
    }

    #[cfg(test)]
    mod tests {
        /// `scipy.stats.kstwo.sf(x, n)` (scipy 1.17.1), one (n, x) per branch.
        #[test]
        fn matches_scipy_kstwo_in_every_branch() {
            let cases: [(u64, f64, f64); 13] = [
                (293, 0.05, 0.4421809601000565),           // Pelz–Good
                (293, 0.02, 0.9996725299224284),           // Durbin, n > 140
                (1714, 0.048, 0.0007173048447545592),      // Smirnov, n > 140
                (119, 0.15, 0.008400715916946293),         // Pomeranz
                (60, 0.26, 0.00045702196066697734),        // Smirnov, n ≤ 140
                (99, 0.05, 0.955030756828997),             // Durbin, n ≤ 140
                (10, 0.08, 0.9999978058034054),            // Ruben–Gambino, t ≤ 1
                (50, 0.99, 2.0000000000000889e-100),       // Ruben–Gambino, t ≥ n − 1
                (10, 0.6, 0.0005681672000000003),          // exact Smirnov, x ≥ 1/2
                (3, 0.3, 0.8862222222222222),              // Ruben–Gambino, tiny n
                (150_000, 0.003, 0.1341018124495077),      // Pelz–Good, n > 100 000
                (2_000_000, 0.001, 0.03660662431970485),   // Pelz–Good, n > 10⁶
                (2_000_000, 0.0012, 0.006297183259583361), // Smirnov's approximation, n > 10⁶
            ];
            for (n, x, expected) in cases {
                let got = super::sf(n, x);
                assert!(
                    (got - expected).abs() <= 1e-10 * expected,
                    "kstwo.sf({x}, {n}) = {expected}, got {got}"
                );
            }
            assert_eq!(super::sf(100, 0.004), 1.0);
            assert_eq!(super::sf(100, 1.0), 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// notes §6.1: p = [0.25; 4], q = [0.10, 0.20, 0.30, 0.40].
    const P: [f64; 4] = [0.25, 0.25, 0.25, 0.25];
    const Q: [f64; 4] = [0.10, 0.20, 0.30, 0.40];

    fn close(got: f64, expected: f64, tolerance: f64) -> bool {
        (got - expected).abs() <= tolerance * expected.abs().max(1e-300)
    }

    fn test_numbers(method: Method, reference: &[f64], current: &[f64]) -> DriftResult {
        match test(
            method,
            Sample::Numbers(reference),
            Sample::Numbers(current),
            None,
        ) {
            Ok(result) => result,
            Err(error) => panic!("{}: {error}", method.name()),
        }
    }

    fn test_categories(method: Method, reference: &[&str], current: &[&str]) -> DriftResult {
        match test(
            method,
            Sample::Categories(reference),
            Sample::Categories(current),
            None,
        ) {
            Ok(result) => result,
            Err(error) => panic!("{}: {error}", method.name()),
        }
    }

    #[test]
    fn toy_vector_distances() {
        assert!(close(psi(&P, &Q), 0.22821740957, 1e-10));
        assert!(close(jensen_shannon_distance(&P, &Q), 0.16692996573, 1e-10));
        assert!(close(kl_divergence(&P, &Q), 0.12177727429, 1e-10));
        assert!(close(
            hellinger_from_coefficient(bhattacharyya(&P, &Q)),
            0.16789959640,
            1e-10
        ));
    }

    #[test]
    fn automatic_choice_follows_evidently() {
        let few: Vec<f64> = (0..100_i32).map(|i| f64::from(i % 3)).collect();
        let two: Vec<f64> = (0..100_i32).map(|i| f64::from(i % 2)).collect();
        let many: Vec<f64> = (0..100_i32).map(f64::from).collect();
        let large_many: Vec<f64> = (0..1001_i32).map(f64::from).collect();
        let large_few: Vec<f64> = (0..1001_i32).map(|i| f64::from(i % 5)).collect();
        let auto = |r: &[f64], c: &[f64]| auto_method(Sample::Numbers(r), Sample::Numbers(c));
        assert_eq!(auto(&few, &few), Method::Chisquare);
        assert_eq!(auto(&two, &two), Method::Z);
        assert_eq!(auto(&many, &many), Method::Ks);
        assert_eq!(auto(&large_many, &few), Method::Wasserstein);
        assert_eq!(
            auto(&large_few, &many),
            Method::Wasserstein,
            "values of both samples count"
        );
        assert_eq!(auto(&large_few, &few), Method::Jensenshannon);
        assert_eq!(
            auto(&few, &large_many),
            Method::Ks,
            "only reference rows decide the size"
        );
        // 1000 finite rows, NaN dropped before counting: still small.
        let mut thousand: Vec<f64> = (0..1000_i32).map(f64::from).collect();
        thousand.push(f64::NAN);
        assert_eq!(auto(&thousand, &many), Method::Ks);

        let abc = ["a", "b", "c"];
        let ab = ["a", "b"];
        let auto_text =
            |r: &[&str], c: &[&str]| auto_method(Sample::Categories(r), Sample::Categories(c));
        assert_eq!(auto_text(&abc, &abc), Method::Chisquare);
        assert_eq!(auto_text(&ab, &ab), Method::Z);
        assert_eq!(
            auto_text(&ab, &["c"]),
            Method::Chisquare,
            "values of both samples count"
        );
        let large_text = ["x"; 1001];
        assert_eq!(auto_text(&large_text, &ab), Method::Jensenshannon);
    }

    #[test]
    fn names_thresholds_and_comparisons() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.name()), Some(method));
        }
        assert_eq!(Method::parse("anderson"), None);
        assert_eq!(Method::Ks.default_threshold(), 0.05);
        assert_eq!(Method::Psi.default_threshold(), 0.1);
        assert!(Method::Ks.drifted(0.05, 0.05), "ks drifts at p = threshold");
        assert!(
            !Method::Chisquare.drifted(0.05, 0.05),
            "chisquare needs p < threshold"
        );
        assert!(!Method::Z.drifted(0.05, 0.05), "z needs p < threshold");
        assert!(
            Method::Psi.drifted(0.1, 0.1),
            "distances drift at value = threshold"
        );
        assert!(!Method::Wasserstein.drifted(0.099, 0.1));
    }

    #[test]
    fn constant_column_does_not_drift() {
        let reference = [3.5; 40];
        let current = [3.5; 30];
        for method in Method::ALL {
            let result = test_numbers(method, &reference, &current);
            assert_eq!(result.value, method.no_drift_value(), "{}", method.name());
            assert!(!result.drifted, "{}", method.name());
        }
        let text = ["x"; 10];
        for method in [Method::Chisquare, Method::Z, Method::Psi, Method::Hellinger] {
            assert_eq!(
                test_categories(method, &text, &text[..4]).value,
                method.no_drift_value()
            );
        }
    }

    #[test]
    fn exact_ks_p_values() {
        // scipy: ks_2samp([1, 2, 3], [4, 5, 6]) = 0.1, ks_2samp([1, 2], [3, 4, 5]) = 0.2,
        // and 0.5454545454545454 for the interleaved samples below.
        assert!(close(
            test_numbers(Method::Ks, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).value,
            0.1,
            1e-12
        ));
        assert!(close(
            test_numbers(Method::Ks, &[1.0, 2.0], &[3.0, 4.0, 5.0]).value,
            0.2,
            1e-12
        ));
        let result = test_numbers(
            Method::Ks,
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            &[1.5, 2.5, 3.5, 4.5, 5.5, 6.0, 7.0],
        );
        assert!(close(result.value, 0.5454545454545454, 1e-12));
    }

    #[test]
    fn label_shift_tests_match_evidently() {
        // notes §6.3, values from tests/fixtures/drift.json.
        let iris: Vec<&str> = ["setosa", "versicolor", "virginica"]
            .iter()
            .flat_map(|&label| [label; 50])
            .collect();
        let shifted: Vec<&str> = [("setosa", 50), ("versicolor", 25), ("virginica", 10)]
            .iter()
            .flat_map(|&(label, n)| std::iter::repeat_n(label, n))
            .collect();
        let chi = test_categories(Method::Chisquare, &iris, &shifted);
        assert!(close(chi.value, 5.508712584156687e-7, 1e-9) && chi.drifted);

        let reference: Vec<&str> = std::iter::repeat_n("1", 173)
            .chain(std::iter::repeat_n("0", 112))
            .collect();
        let current: Vec<&str> = std::iter::repeat_n("1", 60)
            .chain(std::iter::repeat_n("0", 100))
            .collect();
        let z = test_categories(Method::Z, &reference, &current);
        assert!(close(z.value, 2.5687858944412056e-6, 1e-9) && z.drifted);
    }

    #[test]
    fn unseen_category_gives_chisquare_zero() {
        let result = test_categories(Method::Chisquare, &["a", "b", "a"], &["a", "b", "c"]);
        assert_eq!(result.value, 0.0);
        assert!(result.drifted);
    }

    #[test]
    fn non_finite_numbers_are_dropped() {
        let dirty = [
            1.0,
            f64::NAN,
            2.0,
            f64::INFINITY,
            3.0,
            f64::NEG_INFINITY,
            -0.0,
        ];
        let clean = [1.0, 2.0, 3.0, 0.0];
        let current = [0.5, 1.5, 2.5, 7.0];
        for method in Method::ALL {
            assert_eq!(
                test_numbers(method, &dirty, &current),
                test_numbers(method, &clean, &current),
                "{}",
                method.name()
            );
        }
    }

    #[test]
    fn refuses_what_evidently_cannot_test() {
        let numeric = Sample::Numbers(&[1.0, 2.0]);
        let text = Sample::Categories(&["a", "b"]);
        let nothing = Sample::Numbers(&[f64::NAN]);
        assert_eq!(
            test(Method::Psi, numeric, text, None),
            Err(DriftError::KindMismatch {
                reference: "numerical",
                current: "categorical"
            })
        );
        assert_eq!(
            test(Method::Ks, nothing, numeric, None),
            Err(DriftError::EmptyReference)
        );
        assert_eq!(
            test(Method::Ks, numeric, nothing, None),
            Err(DriftError::EmptyCurrent)
        );
        assert_eq!(
            test(Method::Wasserstein, text, text, None),
            Err(DriftError::NeedsNumbers {
                method: "wasserstein"
            })
        );
    }

    #[test]
    fn sturges_bins_as_numpy() {
        // np.histogram_bin_edges([0, 1, 2, 3], bins="sturges") → 3 bins; 8 values → 4 bins, where
        // the bin count lands exactly on log2(8) + 1.
        assert_eq!(sturges_edges(0.0, 3.0, 4), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(sturges_edges(0.0, 8.0, 8), [0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(sturges_edges(2.0, 2.0, 5), [1.5, 2.5]);
        assert_eq!(
            histogram(&[0.0, 1.0, 1.0, 2.5, 3.0], &[0.0, 1.0, 2.0, 3.0]),
            [1, 2, 2]
        );
    }
}
