//! `serval inspect`: every signature of every served version, the engine and why.

use clap::Args;
use serde_json::json;
use serval_core::{Model, TensorSpec};

use crate::RepositoryArgs;

/// Arguments of `serval inspect`.
#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Only this model (default: every model in the repository).
    model: Option<String>,
    /// Only this version (default: the versions the version policy serves).
    #[arg(long, requires = "model")]
    version: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let repository = args.repository.open()?;
    let names = match &args.model {
        Some(model) => vec![model.clone()],
        None => repository.model_names()?,
    };
    anyhow::ensure!(
        !names.is_empty(),
        "{} holds no model directories (expected <repository>/<model>/<version>/model.onnx)",
        repository.root().display()
    );
    // Every model is reported, loaded or not; a failure only decides the exit code at the end.
    let mut described = Vec::new();
    let mut failed = Vec::new();
    for name in &names {
        let loaded = match args.version {
            Some(v) => repository.load(name, Some(v)).map(|m| vec![m]),
            None => repository.load_served(name),
        };
        match loaded {
            Ok(models) => {
                for model in &models {
                    if args.json {
                        described.push(describe(model));
                    } else {
                        emit(&describe_text(model)?)?;
                    }
                }
            }
            Err(e) => {
                if args.json {
                    described.push(json!({"model": name, "error": e.to_string()}));
                } else {
                    emit(&format!("model '{name}': cannot load: {e}\n"))?;
                }
                failed.push(format!("'{name}' ({e})"));
            }
        }
    }
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&described)?))?;
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} models cannot load: {}",
        failed.len(),
        names.len(),
        failed.join("; ")
    );
    Ok(())
}

/// The machine-readable description of one model version (`--json`).
pub fn describe(model: &Model) -> serde_json::Value {
    let cfg = model.config();
    json!({
        "model": model.name(),
        "version": model.version(),
        "path": model.path(),
        "backend": model.backend_choice().kind,
        "backend_reason": model.backend_choice().reason,
        "cascade": model.cascade().map(|c| {
            let phase = |m: &Model| json!({"model": m.name(), "version": m.version()});
            json!({"phase1": phase(c.phase1()), "phase2": phase(c.phase2()), "policy": c.policy()})
        }),
        "key": cfg.key,
        "class_labels": cfg.class_labels,
        "version_labels": cfg.versions.labels,
        "batched": model.is_batchable(),
        "notes": model.graph().notes,
        "operators": model.graph().operators,
        "signatures": model.signatures().iter().map(|s| json!({
            "name": s.name,
            "inputs": s.inputs.iter().map(spec_json).collect::<Vec<_>>(),
            "outputs": s.outputs.iter().map(spec_json).collect::<Vec<_>>(),
            "postprocess": s.postprocess,
            "class_maps": s.class_maps,
        })).collect::<Vec<_>>(),
    })
}

fn spec_json(spec: &TensorSpec) -> serde_json::Value {
    json!({"name": spec.name, "datatype": spec.data_type, "shape": spec.shape_i64()})
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        res => Ok(res?),
    }
}

fn describe_text(model: &Model) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    let cfg = model.config();
    let choice = model.backend_choice();
    let _ = writeln!(
        out,
        "model '{}' version {} ({})",
        model.name(),
        model.version(),
        model
            .path()
            .or(model.version_dir())
            .map_or_else(|| "in memory".into(), |p| p.display().to_string())
    );
    let _ = writeln!(
        out,
        "  backend: {} ({})",
        choice.kind.as_str(),
        choice.reason
    );
    let _ = writeln!(out, "  key field: {}", cfg.key);
    let batching = if model.is_batchable() {
        "instances stack on axis 0"
    } else {
        "does not batch: each request carries whole tensors"
    };
    let _ = writeln!(out, "  batching: {batching}");
    for note in &model.graph().notes {
        let _ = writeln!(out, "  note: {note}");
    }
    if !cfg.class_labels.is_empty() {
        let _ = writeln!(out, "  class labels: {}", cfg.class_labels.join(", "));
    }
    if !cfg.versions.labels.is_empty() {
        let labels: Vec<String> = cfg
            .versions
            .labels
            .iter()
            .map(|(l, v)| format!("{l}={v}"))
            .collect();
        let _ = writeln!(out, "  version labels: {}", labels.join(", "));
    }
    for signature in model.signatures() {
        let _ = writeln!(out, "  signature_def['{}']:", signature.name);
        let _ = writeln!(out, "    inputs:");
        for spec in &signature.inputs {
            let _ = writeln!(
                out,
                "      {}: {} {:?}",
                spec.name,
                spec.data_type.tf_name(),
                spec.shape_i64()
            );
        }
        let _ = writeln!(out, "    outputs:");
        for spec in &signature.outputs {
            let _ = writeln!(
                out,
                "      {}: {} {:?}",
                spec.name,
                spec.data_type.tf_name(),
                spec.shape_i64()
            );
        }
        for step in &signature.postprocess {
            let _ = writeln!(out, "    postprocess: {}", serde_json::to_string(step)?);
        }
    }
    Ok(out)
}
