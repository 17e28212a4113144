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
    let mut models = Vec::new();
    for name in &names {
        match args.version {
            Some(v) => models.push(repository.load(name, Some(v))?),
            None => models.extend(repository.load_served(name)?),
        }
    }
    if args.json {
        let described: Vec<_> = models.iter().map(describe).collect();
        emit(&format!("{}\n", serde_json::to_string_pretty(&described)?))?;
    } else {
        for model in &models {
            emit(&describe_text(model)?)?;
        }
    }
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
        "key": cfg.key,
        "class_labels": cfg.class_labels,
        "version_labels": cfg.versions.labels,
        "operators": model.graph().operators,
        "signatures": model.signatures().iter().map(|s| json!({
            "name": s.name,
            "inputs": s.inputs.iter().map(spec_json).collect::<Vec<_>>(),
            "outputs": s.outputs.iter().map(spec_json).collect::<Vec<_>>(),
            "postprocess": s.postprocess,
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
        model.path().display()
    );
    let _ = writeln!(
        out,
        "  backend: {} ({})",
        choice.kind.as_str(),
        choice.reason
    );
    let _ = writeln!(out, "  key field: {}", cfg.key);
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
