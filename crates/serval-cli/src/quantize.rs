//! `serval quantize`: post-training quantization of an ONNX file (`serval-quantize`), with the
//! size before and after, what stayed float and why, and with `--eval` the accuracy (or RMSE)
//! of both files and their agreement on the same data.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use serval_core::instances::predict_instances;
use serval_core::{Model, ModelConfig, Tensor, TensorData};
use serval_quantize::{Mode, QuantizeOptions, Report, Scales};

use crate::predict::{InputFormat, read_lines};

/// `serval quantize` arguments.
#[derive(Args)]
pub struct QuantizeArgs {
    /// The float ONNX file.
    input: PathBuf,
    /// Where the quantized file goes.
    output: PathBuf,
    /// weights-int8: int8 weights per channel behind DequantizeLinear (about 4× smaller; tract,
    /// the edge engine, folds them back into float weights at load and runs at float speed,
    /// while ONNX Runtime dequantizes on every call and is 2-3× slower); dynamic-int8:
    /// MatMulInteger over activations quantized per call (ONNX Runtime's quantize_dynamic, fast
    /// on ONNX Runtime); fp16: float16 weights (2× smaller).
    #[arg(long, value_enum, default_value = "weights-int8")]
    mode: ModeArg,
    /// Weights with fewer elements stay float.
    #[arg(long, default_value_t = 16)]
    min_elements: usize,
    /// One scale per output channel for every weight (default: TF Lite's scheme, per channel
    /// for Conv, one scale per weight for MatMul and Gemm): 4 bytes a column, closest to float.
    #[arg(long, conflicts_with = "per_tensor")]
    per_channel: bool,
    /// One scale per weight for every weight, Conv too (ONNX Runtime's quantize_dynamic default).
    #[arg(long)]
    per_tensor: bool,
    /// Labelled data (JSON Lines or CSV: the model's inputs plus `--label`) to measure both
    /// files on.
    #[arg(long, requires = "label")]
    eval: Option<PathBuf>,
    /// The label column of `--eval`: a class (its name in class_labels, or its index) or a number
    /// (regression).
    #[arg(long)]
    label: Option<String>,
    /// The model's config.toml (class labels; default: beside the input file, or in the model
    /// folder above a version folder).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    WeightsInt8,
    DynamicInt8,
    Fp16,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let options = QuantizeOptions {
        mode: match args.mode {
            ModeArg::WeightsInt8 => Mode::WeightsInt8,
            ModeArg::DynamicInt8 => Mode::DynamicInt8,
            ModeArg::Fp16 => Mode::Fp16,
        },
        min_elements: args.min_elements,
        scales: match (args.per_channel, args.per_tensor) {
            (true, _) => Scales::PerChannel,
            (_, true) => Scales::PerTensor,
            _ => Scales::ByOperator,
        },
    };
    let (quantized, report) = serval_quantize::quantize(&bytes, &options)
        .with_context(|| format!("cannot quantize {}", args.input.display()))?;
    let evaluation = match (&args.eval, &args.label) {
        (Some(data), Some(label)) => Some(evaluate(&args, &bytes, &quantized, data, label)?),
        _ => None,
    };
    std::fs::write(&args.output, &quantized)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["output"] = json!(args.output);
        if let Some(evaluation) = &evaluation {
            value["eval"] = evaluation.clone();
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_report(&report, evaluation.as_ref());
    }
    if report.quantized() == 0 {
        bail!(
            "nothing in {} could be quantized ({} mode): see the reasons above",
            args.input.display(),
            report.mode.as_str()
        );
    }
    Ok(())
}

fn print_report(report: &Report, evaluation: Option<&Value>) {
    println!(
        "{}: {} → {} bytes ({:.2}× smaller), {} of {} weighted nodes quantized",
        report.mode.as_str(),
        report.bytes_before,
        report.bytes_after,
        report.ratio(),
        report.quantized(),
        report.nodes.len()
    );
    for node in report.nodes.iter().filter(|n| !n.quantized) {
        println!(
            "  left float: {} ({}, {} elements): {}",
            node.node,
            node.op_type,
            node.elements,
            node.reason.as_deref().unwrap_or("")
        );
    }
    if let Some(e) = evaluation {
        let metric = e["metric"].as_str().unwrap_or("");
        println!(
            "  {metric} on {} rows: float {}, quantized {}; agreement {}",
            e["rows"], e["float"], e["quantized"], e["agreement"]
        );
    }
}

/// The model's config: `--config`, else `config.toml` beside the file or one folder up.
fn model_config(args: &QuantizeArgs) -> anyhow::Result<ModelConfig> {
    let candidates = [
        args.config.clone(),
        Some(args.input.with_file_name("config.toml")),
        args.input
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("config.toml")),
    ];
    match candidates.into_iter().flatten().find(|p| p.is_file()) {
        Some(path) => Ok(ModelConfig::load_file("model", &path)?),
        None => Ok(ModelConfig::default()),
    }
}

/// Runs both files over the labelled data: accuracy and label agreement for a classifier,
/// RMSE and the largest difference for a regressor.
fn evaluate(
    args: &QuantizeArgs,
    float_bytes: &[u8],
    quantized_bytes: &[u8],
    data: &std::path::Path,
    label: &str,
) -> anyhow::Result<Value> {
    let config = model_config(args)?;
    let float = Model::from_bytes("float", 1, float_bytes, config.clone())?;
    let quantized = Model::from_bytes("quantized", 1, quantized_bytes, config)
        .context("the quantized file does not load")?;
    let signature = float.signature(None)?;
    let key = float.config().key.clone();
    let lines = read_lines(data, None::<InputFormat>, signature, &[label, key.as_str()])?;
    let mut truth: Vec<Value> = Vec::new();
    let mut float_out: Vec<Prediction> = Vec::new();
    let mut quantized_out: Vec<Prediction> = Vec::new();
    let mut chunk: Vec<Value> = Vec::new();
    let mut flush = |chunk: &mut Vec<Value>| -> anyhow::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        float_out.extend(predictions(&float, chunk)?);
        quantized_out.extend(predictions(&quantized, chunk)?);
        chunk.clear();
        Ok(())
    };
    for line in lines {
        let mut line = line?;
        let Some(object) = line.instance.as_object_mut() else {
            bail!("{} line {}: not an object", data.display(), line.number);
        };
        let Some(value) = object.remove(label) else {
            bail!(
                "{} line {}: no '{label}' field",
                data.display(),
                line.number
            );
        };
        truth.push(value);
        chunk.push(line.instance);
        if chunk.len() == 256 {
            flush(&mut chunk)?;
        }
    }
    flush(&mut chunk)?;
    if truth.is_empty() {
        bail!("--eval {}: no rows", data.display());
    }
    let labels = &float.config().class_labels;
    let rows = truth.len();
    match (&float_out[0], &quantized_out[0]) {
        (Prediction::Class(..), Prediction::Class(..)) => {
            let class = |p: &Prediction| match p {
                Prediction::Class(i, _) => labels.get(*i).cloned().unwrap_or_else(|| i.to_string()),
                Prediction::Value(_) => String::new(),
            };
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let correct = |out: &[Prediction]| {
                out.iter()
                    .zip(&truth)
                    .filter(|(p, t)| class(p) == text(t))
                    .count() as f64
                    / rows as f64
            };
            let agree = float_out
                .iter()
                .zip(&quantized_out)
                .filter(|(a, b)| class(a) == class(b))
                .count() as f64
                / rows as f64;
            let max_dp = float_out
                .iter()
                .zip(&quantized_out)
                .map(|(a, b)| match (a, b) {
                    (Prediction::Class(_, pa), Prediction::Class(_, pb)) => pa
                        .iter()
                        .zip(pb)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max),
                    _ => 0.0,
                })
                .fold(0f32, f32::max);
            Ok(json!({
                "metric": "accuracy", "rows": rows,
                "float": correct(&float_out), "quantized": correct(&quantized_out),
                "agreement": agree, "max_probability_difference": max_dp,
                "engine": float.backend_choice().kind,
            }))
        }
        _ => {
            let value = |p: &Prediction| match p {
                Prediction::Value(v) => *v,
                Prediction::Class(..) => f64::NAN,
            };
            let target = |t: &Value| {
                t.as_f64()
                    .or_else(|| t.as_str()?.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let rmse = |out: &[Prediction]| {
                (out.iter()
                    .zip(&truth)
                    .map(|(p, t)| (value(p) - target(t)).powi(2))
                    .sum::<f64>()
                    / rows as f64)
                    .sqrt()
            };
            let max_diff = float_out
                .iter()
                .zip(&quantized_out)
                .map(|(a, b)| (value(a) - value(b)).abs())
                .fold(0f64, f64::max);
            Ok(json!({
                "metric": "rmse", "rows": rows,
                "float": rmse(&float_out), "quantized": rmse(&quantized_out),
                "agreement": max_diff, "engine": float.backend_choice().kind,
            }))
        }
    }
}

/// One row's prediction: the top class and the probabilities, or a regressor's value.
enum Prediction {
    Class(usize, Vec<f32>),
    Value(f64),
}

/// The classifier's probabilities (the first float `[N, C]` output with C > 1), else the
/// first float output's value per row.
fn predictions(model: &Model, instances: &[Value]) -> anyhow::Result<Vec<Prediction>> {
    let predicted = predict_instances(model, None, instances)?;
    let float_rows = |t: &Tensor| match t.data() {
        TensorData::Fp32(v) => Some(v.clone()),
        _ => None,
    };
    let n = predicted.len();
    let scores = predicted
        .outputs
        .iter()
        .find(|(_, t)| matches!(t.shape(), [_, c] if *c > 1) && float_rows(t).is_some());
    if let Some((_, t)) = scores {
        let values = float_rows(t).unwrap_or_default();
        let c = t.shape()[1];
        return Ok(values
            .chunks(c)
            .map(|row| {
                let top = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, p)| if *p > row[best] { i } else { best });
                Prediction::Class(top, row.to_vec())
            })
            .collect());
    }
    let Some(values) = predicted.outputs.iter().find_map(|(_, t)| float_rows(t)) else {
        bail!("the model has no float output to evaluate");
    };
    let per_row = values.len() / n.max(1);
    Ok(values
        .chunks(per_row.max(1))
        .map(|row| Prediction::Value(f64::from(row[0])))
        .collect())
}
