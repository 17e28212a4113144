//! Alerting rules (`[[monitor.rules]]`) over each version's (and slice's) run of windows.

use serde::Serialize;
use serval_core::config::{MonitorRule, Severity};

use crate::EvalError;
use crate::evaluate::WindowReport;

/// One rule firing in one window: what a webhook receives and the `alerts` table holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The model.
    pub model: String,
    /// The version whose window fired.
    pub version: u64,
    /// The slice, when windows are sliced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// The window (RFC 3339, UTC).
    pub window_start: String,
    /// The window's end.
    pub window_end: String,
    /// The rule's name.
    pub rule: String,
    /// The window value the rule reads.
    pub metric: String,
    /// Its value in this window.
    pub value: f64,
    /// `below`, `above` or `falling`.
    pub condition: &'static str,
    /// The threshold (for `falling`, the number of falls).
    pub threshold: f64,
    /// Consecutive windows the condition held.
    pub windows: usize,
    /// How urgent.
    pub severity: Severity,
    /// The window's predictions.
    pub rows: u64,
    /// The window's label coverage.
    pub label_coverage: f64,
}

/// A rule, checked.
struct Rule<'a> {
    config: &'a MonitorRule,
    name: String,
    condition: Condition,
    windows: usize,
}

#[derive(Clone, Copy)]
enum Condition {
    Below(f64),
    Above(f64),
    Falling(usize),
}

impl<'a> Rule<'a> {
    fn new(config: &'a MonitorRule, index: usize) -> Result<Rule<'a>, EvalError> {
        let invalid = |why: &str| {
            EvalError::Invalid(format!(
                "[[monitor.rules]] #{} ({}): {why}",
                index + 1,
                config.metric
            ))
        };
        let condition = match (config.below, config.above, config.falling) {
            (Some(t), None, None) if t.is_finite() => Condition::Below(t),
            (None, Some(t), None) if t.is_finite() => Condition::Above(t),
            (None, None, Some(n)) if n > 0 => Condition::Falling(n),
            _ => {
                return Err(invalid(
                    "needs exactly one of below = X, above = X (finite) or falling = N (N > 0)",
                ));
            }
        };
        let windows = config.windows.unwrap_or(1);
        if windows == 0 {
            return Err(invalid("windows must be at least 1"));
        }
        let name = config.name.clone().unwrap_or_else(|| match condition {
            Condition::Below(t) => format!("{} < {t}", config.metric),
            Condition::Above(t) => format!("{} > {t}", config.metric),
            Condition::Falling(n) => format!("{} falling {n}x", config.metric),
        });
        Ok(Rule {
            config,
            name,
            condition,
            windows,
        })
    }
}

/// Checks every rule (a malformed one is an error naming it) before any window is read.
pub(crate) fn validate(rules: &[MonitorRule]) -> Result<(), EvalError> {
    rules
        .iter()
        .enumerate()
        .try_for_each(|(i, r)| Rule::new(r, i).map(|_| ()))
}

/// Adds to each window the alerts its rules fire. `reports` are in window order; each version
/// and slice is its own run. A window where a rule's value is unknown (too few labels, no
/// reference) neither fires it nor interrupts its run.
pub(crate) fn apply(
    model: &str,
    rules: &[MonitorRule],
    reports: &mut [WindowReport],
) -> Result<(), EvalError> {
    let rules: Vec<Rule> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| Rule::new(r, i))
        .collect::<Result<_, _>>()?;
    let mut runs: Vec<(u64, Option<String>)> = reports
        .iter()
        .map(|r| (r.version, r.slice.clone()))
        .collect();
    runs.sort();
    runs.dedup();
    for run in runs {
        let members: Vec<usize> = (0..reports.len())
            .filter(|&i| (reports[i].version, &reports[i].slice) == (run.0, &run.1))
            .collect();
        for rule in &rules {
            let mut state = RunState::default();
            for &i in &members {
                let Some(value) = value_of(&reports[i], &rule.config.metric) else {
                    continue;
                };
                if state.step(rule, value) {
                    let report = &reports[i];
                    let alert = Alert {
                        model: model.to_owned(),
                        version: report.version,
                        slice: report.slice.clone(),
                        window_start: report.window_start.clone(),
                        window_end: report.window_end.clone(),
                        rule: rule.name.clone(),
                        metric: rule.config.metric.clone(),
                        value,
                        condition: match rule.condition {
                            Condition::Below(_) => "below",
                            Condition::Above(_) => "above",
                            Condition::Falling(_) => "falling",
                        },
                        threshold: match rule.condition {
                            Condition::Below(t) | Condition::Above(t) => t,
                            Condition::Falling(n) => n as f64,
                        },
                        windows: state.streak,
                        severity: rule.config.severity,
                        rows: report.rows,
                        label_coverage: report.label_coverage,
                    };
                    reports[i].alerts.push(alert);
                }
            }
        }
    }
    Ok(())
}

/// Where a rule stands in one run of windows.
#[derive(Default)]
struct RunState {
    previous: Option<f64>,
    falls: usize,
    streak: usize,
    firing: bool,
}

impl RunState {
    /// Takes the next known value; true when the rule fires here.
    fn step(&mut self, rule: &Rule, value: f64) -> bool {
        let holds = match rule.condition {
            Condition::Below(t) => value < t,
            Condition::Above(t) => value > t,
            Condition::Falling(n) => {
                self.falls = match self.previous {
                    Some(previous) if value < previous => self.falls + 1,
                    _ => 0,
                };
                self.falls >= n
            }
        };
        self.previous = Some(value);
        if !holds {
            self.streak = 0;
            self.firing = false;
            return false;
        }
        self.streak += 1;
        if self.firing || self.streak < rule.windows {
            return false;
        }
        self.firing = true;
        true
    }
}

/// A window's value by the name a rule gives it.
fn value_of(report: &WindowReport, metric: &str) -> Option<f64> {
    match metric {
        "label_coverage" => return Some(report.label_coverage),
        "rows" => return Some(report.rows as f64),
        "labelled" => return Some(report.labelled as f64),
        "drift_share" => return report.drift_share,
        "data_quality" => return Some(report.data_quality.len() as f64),
        _ => {}
    }
    if let Some(name) = metric.strip_prefix("estimated.") {
        return report.estimated.get(name).copied();
    }
    if let Some(column) = metric.strip_prefix("drift.") {
        return report.drift.get(column).map(|d| d.value);
    }
    // A metric, possibly per class (`f1.benign`): looked up in the serialized metrics, so every
    // name the JSON shows is a name a rule can use.
    let metrics = serde_json::to_value(&report.metrics).ok()?;
    metric
        .split('.')
        .try_fold(&metrics, |value, key| value.get(key))?
        .as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(below: Option<f64>, falling: Option<usize>, windows: Option<usize>) -> MonitorRule {
        MonitorRule {
            name: None,
            metric: "accuracy".into(),
            below,
            above: None,
            falling,
            windows,
            severity: Severity::Warning,
        }
    }

    /// The windows (by index) where the rule fires over `values`.
    fn fired(config: &MonitorRule, values: &[f64]) -> Vec<usize> {
        let rule = Rule::new(config, 0).expect("a valid rule");
        let mut state = RunState::default();
        (0..values.len())
            .filter(|&i| state.step(&rule, values[i]))
            .collect()
    }

    #[test]
    fn fires_where_the_condition_starts_and_again_only_after_it_cleared() {
        let below = rule(Some(0.9), None, None);
        assert_eq!(fired(&below, &[0.95, 0.8, 0.7, 0.95, 0.85]), vec![1, 4]);
        let twice = rule(Some(0.9), None, Some(2));
        assert_eq!(fired(&twice, &[0.8, 0.95, 0.8, 0.8, 0.8]), vec![3]);
        let falling = rule(None, Some(2), None);
        assert_eq!(fired(&falling, &[0.9, 0.8, 0.7, 0.6, 0.9, 0.8]), vec![2]);
    }

    #[test]
    fn a_rule_needs_exactly_one_condition() {
        for bad in [
            rule(None, None, None),
            rule(Some(0.9), Some(2), None),
            rule(Some(f64::NAN), None, None),
            rule(Some(0.9), None, Some(0)),
        ] {
            assert!(validate(&[bad]).is_err());
        }
        assert_eq!(
            Rule::new(&rule(Some(0.9), None, None), 0)
                .map(|r| r.name)
                .ok(),
            Some("accuracy < 0.9".to_owned())
        );
    }
}
