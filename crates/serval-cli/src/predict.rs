//! `serval predict`: JSON Lines or CSV instances in, keyed JSON Lines predictions out, in-process.
//!
//! Input is streamed in chunks of `--batch-size` instances, so memory stays bounded whatever
//! the file size. Errors name the input line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use serval_core::instances::predict_instances;
use serval_core::{Model, Signature};

use crate::RepositoryArgs;

/// Arguments of `serval predict`.
#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Model name.
    model: String,
    /// Version (default: the model's default, else the highest served).
    #[arg(long)]
    version: Option<u64>,
    /// Signature (default: serving_default).
    #[arg(long)]
    signature: Option<String>,
    /// Input file, or `-` for standard input.
    #[arg(long, short)]
    input: PathBuf,
    /// Input format (default: from the file extension; JSON Lines for `-`).
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// Output file (default: standard output).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Instances per engine call.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
}

/// Input formats of `serval predict`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object per line: input names as fields, plus an optional key.
    Jsonl,
    /// CSV with a header: input names as columns (or, for one 2-D input, one column per feature), plus an optional key column.
    Csv,
}

/// One instance and the input line it came from.
pub(crate) struct Line {
    pub(crate) number: u64,
    pub(crate) instance: Value,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let repository = args.repository.open()?;
    let model = repository.load(&args.model, args.version)?;
    let signature = model.signature(args.signature.as_deref())?;
    let mut writer: Box<dyn Write> = match &args.output {
        Some(path) => {
            Box::new(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create output {}", path.display())
            })?))
        }
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let lines = read_lines(
        &args.input,
        args.format,
        signature,
        &[model.config().key.as_str()],
    )?;
    // A model that does not batch takes each line as one request of whole tensors.
    let batch_size = if model.is_batchable() {
        args.batch_size
    } else {
        1
    };
    let mut chunk = Vec::with_capacity(batch_size as usize);
    let mut n_instances = 0u64;
    for line in lines {
        chunk.push(line?);
        if chunk.len() as u64 == batch_size {
            n_instances += predict_chunk(&model, signature, &mut chunk, &mut writer)?;
        }
    }
    if !chunk.is_empty() {
        n_instances += predict_chunk(&model, signature, &mut chunk, &mut writer)?;
    }
    writer.flush().context("cannot write output")?;
    if n_instances == 0 {
        bail!("empty input: no instances in {}", args.input.display());
    }
    Ok(())
}

fn predict_chunk(
    model: &Model,
    signature: &Signature,
    chunk: &mut Vec<Line>,
    writer: &mut dyn Write,
) -> anyhow::Result<u64> {
    let instances: Vec<Value> = chunk.iter_mut().map(|l| l.instance.take()).collect();
    let results = match predict_instances(model, Some(&signature.name), &instances) {
        Ok(p) => vec![(chunk[0].number, chunk[chunk.len() - 1].number, p)],
        // Lines that cannot stack into one batch (images of several sizes, say) run one by one;
        // the first that fails on its own names its line.
        Err(serval_core::Error::InvalidInput(_)) => chunk
            .iter()
            .zip(&instances)
            .map(|(line, instance)| {
                predict_instances(model, Some(&signature.name), std::slice::from_ref(instance))
                    .map(|p| (line.number, line.number, p))
                    .map_err(|e| {
                        let message = e.to_string();
                        let message = message.strip_prefix("instance 0: ").unwrap_or(&message);
                        anyhow::anyhow!("line {}: {message}", line.number)
                    })
            })
            .collect::<anyhow::Result<_>>()?,
        Err(err) => return Err(err.into()),
    };
    for (first, last, predictions) in &results {
        for warning in &predictions.warnings {
            eprintln!("warning: lines {first}..{last}: {warning}");
        }
        for row in 0..predictions.len() {
            serde_json::to_writer(&mut *writer, &predictions.row(row))
                .context("cannot write output")?;
            writer.write_all(b"\n").context("cannot write output")?;
        }
    }
    let n = chunk.len() as u64;
    chunk.clear();
    Ok(n)
}

/// The instances of `input` (a file or `-` for stdin), JSON Lines or CSV (`format`, else by
/// extension). CSV columns named in `kept` (the key, a label) stay fields of their own; the
/// others are the model's inputs.
pub(crate) fn read_lines(
    input: &Path,
    format: Option<InputFormat>,
    signature: &Signature,
    kept: &[&str],
) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Line>>>> {
    let format = format.unwrap_or_else(|| match input.extension().and_then(|e| e.to_str()) {
        Some("csv") => InputFormat::Csv,
        _ => InputFormat::Jsonl,
    });
    let reader: Box<dyn Read> = if input.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(input).with_context(|| format!("cannot open input {}", input.display()))?,
        )
    };
    Ok(match format {
        InputFormat::Jsonl => Box::new(jsonl_lines(BufReader::new(reader))),
        InputFormat::Csv => Box::new(csv_lines(reader, signature, kept)?),
    })
}

fn jsonl_lines(reader: impl BufRead) -> impl Iterator<Item = anyhow::Result<Line>> {
    reader.lines().enumerate().filter_map(|(ix, line)| {
        let number = ix as u64 + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                return Some(Err(anyhow::anyhow!(
                    "line {number}: cannot read input: {e}"
                )));
            }
        };
        if line.trim().is_empty() {
            return None;
        }
        Some(
            serde_json::from_str(&line)
                .map(|instance| Line { number, instance })
                .map_err(|e| anyhow::anyhow!("line {number}: invalid JSON: {e}")),
        )
    })
}

/// How CSV columns map onto signature inputs.
enum CsvLayout {
    /// Every non-key column is an input of the same name, one scalar per row.
    Named,
    /// The model has one `[N, F]` input; the F non-key columns, in order, are its features.
    Features(String),
}

fn csv_lines<R: Read>(
    reader: R,
    signature: &Signature,
    kept: &[&str],
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Line>> + use<R>> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let header: Vec<String> = csv
        .headers()
        .context("line 1: cannot read CSV header")?
        .iter()
        .map(str::to_owned)
        .collect();
    let kept_columns: Vec<usize> = (0..header.len())
        .filter(|&i| kept.contains(&header[i].as_str()))
        .collect();
    let value_columns: Vec<usize> = (0..header.len())
        .filter(|i| !kept_columns.contains(i))
        .collect();
    let layout = if value_columns
        .iter()
        .all(|&i| signature.inputs.iter().any(|s| s.name == header[i]))
    {
        CsvLayout::Named
    } else if let [input] = signature.inputs.as_slice()
        && input.shape.len() == 2
        && input.shape[1].is_none_or(|f| f == value_columns.len())
    {
        CsvLayout::Features(input.name.clone())
    } else {
        bail!(
            "CSV header {header:?} does not match the model: name the columns after its inputs ({}) \
             or, for a single [N, F] input, give exactly F feature columns",
            signature.input_names()
        );
    };
    Ok(csv.into_records().map(move |record| {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow::anyhow!("line {line}: malformed CSV: {e}")
        })?;
        let number = record.position().map_or(0, |p| p.line());
        let mut instance = Map::new();
        for &k in &kept_columns {
            instance.insert(header[k].clone(), Value::String(record[k].to_owned()));
        }
        match &layout {
            CsvLayout::Named => {
                for &i in &value_columns {
                    instance.insert(header[i].clone(), csv_value(&record[i]));
                }
            }
            CsvLayout::Features(input) => {
                let features = value_columns
                    .iter()
                    .map(|&i| csv_value(&record[i]))
                    .collect();
                instance.insert(input.clone(), Value::Array(features));
            }
        }
        Ok(Line {
            number,
            instance: Value::Object(instance),
        })
    }))
}

/// A CSV cell as JSON: a number when it parses as one (NaN/inf as their JSON-safe strings), else a string.
fn csv_value(cell: &str) -> Value {
    let cell = cell.trim();
    match cell.parse::<f64>() {
        Ok(x) if x.is_nan() => Value::String("NaN".into()),
        Ok(x) if x.is_infinite() => {
            Value::String(if x > 0.0 { "Infinity" } else { "-Infinity" }.into())
        }
        Ok(x) => cell
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        Err(_) => Value::String(cell.to_owned()),
    }
}
