//! Runs a signature's post-processing steps (sigmoid, softmax, argmax, threshold, top-k).
//!
//! Steps see tensors by name and append new ones; shapes and types were checked when the
//! signature was built, so failures here mean the engine returned something undeclared.

use crate::config::PostprocessStep;
use crate::signature::op_name;
use crate::tensor::{Tensor, TensorData};

/// Applies `steps` in order, adding (or replacing) tensors in `tensors`.
pub(crate) fn apply(
    steps: &[PostprocessStep],
    tensors: &mut Vec<(String, Tensor)>,
    labels: &[String],
) -> Result<(), String> {
    for step in steps {
        let (_, from) = tensors
            .iter()
            .find(|(name, _)| name == step.from())
            .ok_or_else(|| format!("{}: no tensor named '{}'", op_name(step), step.from()))?;
        let scores = Scores::of(from).map_err(|e| format!("{}: {e}", op_name(step)))?;
        for (name, tensor) in run_step(step, &scores, labels)? {
            tensors.retain(|(n, _)| n != &name);
            tensors.push((name, tensor));
        }
    }
    Ok(())
}

/// A score tensor viewed as `rows x cols` f32 (a `[N]` tensor has one column).
struct Scores {
    values: Vec<f32>,
    shape: Vec<usize>,
    rows: usize,
    cols: usize,
}

impl Scores {
    fn of(tensor: &Tensor) -> Result<Scores, String> {
        let values = tensor
            .data()
            .to_f32_vec()
            .ok_or_else(|| format!("needs numeric scores, got {}", tensor.data_type()))?;
        let shape = tensor.shape().to_vec();
        let rows = tensor.rows();
        let cols = if shape.len() > 1 { tensor.row_len() } else { 1 };
        Ok(Scores {
            values,
            shape,
            rows,
            cols,
        })
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }
}

fn run_step(
    step: &PostprocessStep,
    scores: &Scores,
    labels: &[String],
) -> Result<Vec<(String, Tensor)>, String> {
    let tensor = |shape: Vec<usize>, data: TensorData| {
        Tensor::new(shape, data).map_err(|e| format!("{}: {e}. This is a bug.", op_name(step)))
    };
    let classes = |ids: Vec<usize>| -> Result<TensorData, String> {
        if labels.is_empty() {
            return Ok(TensorData::Int64(
                ids.into_iter().map(|i| i as i64).collect(),
            ));
        }
        ids.into_iter()
            .map(|i| {
                labels.get(i).cloned().ok_or_else(|| {
                    format!(
                        "{}: class {i} has no entry in class_labels ({} names)",
                        op_name(step),
                        labels.len()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TensorData::Bytes)
    };
    Ok(match step {
        PostprocessStep::Sigmoid { to, .. } => {
            let values = scores
                .values
                .iter()
                .map(|&x| 1.0 / (1.0 + (-x).exp()))
                .collect();
            vec![(
                to.clone(),
                tensor(scores.shape.clone(), TensorData::Fp32(values))?,
            )]
        }
        PostprocessStep::Softmax { to, .. } => {
            let mut values = Vec::with_capacity(scores.values.len());
            for r in 0..scores.rows {
                let row = scores.row(r);
                // Subtracting the max keeps exp() finite for large logits.
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                values.extend(exps.iter().map(|e| e / sum));
            }
            vec![(
                to.clone(),
                tensor(scores.shape.clone(), TensorData::Fp32(values))?,
            )]
        }
        PostprocessStep::Argmax { to, .. } => {
            let ids = (0..scores.rows).map(|r| argmax(scores.row(r))).collect();
            vec![(to.clone(), tensor(vec![scores.rows], classes(ids)?)?)]
        }
        PostprocessStep::Threshold {
            to,
            threshold,
            column,
            ..
        } => {
            let col = if scores.cols == 1 {
                0
            } else {
                column.unwrap_or(1)
            };
            if col >= scores.cols {
                return Err(format!(
                    "threshold: column {col} is out of range for {} columns",
                    scores.cols
                ));
            }
            let ids = (0..scores.rows)
                .map(|r| usize::from(scores.row(r)[col] >= *threshold))
                .collect();
            vec![(to.clone(), tensor(vec![scores.rows], classes(ids)?)?)]
        }
        PostprocessStep::TopK { to, k, .. } => {
            let k = (*k).min(scores.cols);
            let mut ids = Vec::with_capacity(scores.rows * k);
            let mut top_scores = Vec::with_capacity(scores.rows * k);
            for r in 0..scores.rows {
                let row = scores.row(r);
                let mut order: Vec<usize> = (0..row.len()).collect();
                // Stable sort: ties keep the lower class id first, like argmax.
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                for &i in &order[..k] {
                    ids.push(i);
                    top_scores.push(row[i]);
                }
            }
            vec![
                (to.clone(), tensor(vec![scores.rows, k], classes(ids)?)?),
                (
                    format!("{to}_scores"),
                    tensor(vec![scores.rows, k], TensorData::Fp32(top_scores))?,
                ),
            ]
        }
    })
}

/// Index of the first maximum, as numpy's argmax.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(step: PostprocessStep, input: Tensor, labels: &[&str]) -> Vec<(String, Tensor)> {
        let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let mut tensors = vec![("x".to_owned(), input)];
        apply(&[step], &mut tensors, &labels).unwrap();
        tensors.remove(0);
        tensors
    }

    fn scores(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor::new(shape, TensorData::Fp32(v)).unwrap()
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let out = run(
            PostprocessStep::Softmax {
                from: "x".into(),
                to: "p".into(),
            },
            scores(vec![1, 3], vec![1000.0, 1001.0, 999.0]),
            &[],
        );
        let TensorData::Fp32(p) = out[0].1.data() else {
            panic!()
        };
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }

    #[test]
    fn argmax_maps_to_labels() {
        let out = run(
            PostprocessStep::Argmax {
                from: "x".into(),
                to: "c".into(),
            },
            scores(vec![2, 2], vec![0.9, 0.1, 0.2, 0.8]),
            &["no", "yes"],
        );
        assert_eq!(
            out[0].1.data(),
            &TensorData::Bytes(vec!["no".into(), "yes".into()])
        );
    }

    #[test]
    fn threshold_uses_positive_column() {
        let out = run(
            PostprocessStep::Threshold {
                from: "x".into(),
                to: "d".into(),
                threshold: 0.3,
                column: None,
            },
            scores(vec![2, 2], vec![0.75, 0.25, 0.65, 0.35]),
            &[],
        );
        assert_eq!(out[0].1.data(), &TensorData::Int64(vec![0, 1]));
    }

    #[test]
    fn top_k_returns_classes_and_scores() {
        let out = run(
            PostprocessStep::TopK {
                from: "x".into(),
                to: "t".into(),
                k: 2,
            },
            scores(vec![1, 3], vec![0.1, 0.7, 0.2]),
            &["a", "b", "c"],
        );
        assert_eq!(
            out[0].1.data(),
            &TensorData::Bytes(vec!["b".into(), "c".into()])
        );
        assert_eq!(out[1].0, "t_scores");
        assert_eq!(out[1].1.data(), &TensorData::Fp32(vec![0.7, 0.2]));
    }

    #[test]
    fn sigmoid_of_zero_is_half() {
        let out = run(
            PostprocessStep::Sigmoid {
                from: "x".into(),
                to: "p".into(),
            },
            scores(vec![1], vec![0.0]),
            &[],
        );
        assert_eq!(out[0].1.data(), &TensorData::Fp32(vec![0.5]));
    }
}
