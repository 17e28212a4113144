//! `serval models`: the repository control API of a running server, from the command line.

use clap::{Args, Subcommand};
use serde::Deserialize;

/// Subcommands of `serval models`.
#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Every version the server knows, with its state (READY, UNAVAILABLE, UNLOADED) and why.
    List(ServerArgs),
    /// Load or reload a model now; fails with the reason if no version can serve.
    Load(ModelArgs),
    /// Stop serving a model until it is loaded again (in-flight requests finish).
    Unload(ModelArgs),
}

/// Which server.
#[derive(Args)]
pub struct ServerArgs {
    /// Base URL of the server's HTTP port.
    #[arg(long, env = "SERVAL_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
}

/// Which server and model.
#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Model name.
    model: String,
}

#[derive(Deserialize)]
struct IndexEntry {
    name: String,
    version: String,
    state: String,
    reason: String,
}

pub fn run(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List(server) => {
            let entries: Vec<IndexEntry> =
                post(&server.url, "/v2/repository/index")?.read_json()?;
            println!("{:<28} {:>7}  {:<11} REASON", "MODEL", "VERSION", "STATE");
            for e in entries {
                println!(
                    "{:<28} {:>7}  {:<11} {}",
                    e.name, e.version, e.state, e.reason
                );
            }
        }
        ModelsCommand::Load(args) => {
            post(
                &args.server.url,
                &format!("/v2/repository/models/{}/load", args.model),
            )?;
            println!("model '{}' loaded", args.model);
        }
        ModelsCommand::Unload(args) => {
            post(
                &args.server.url,
                &format!("/v2/repository/models/{}/unload", args.model),
            )?;
            println!("model '{}' unloaded", args.model);
        }
    }
    Ok(())
}

/// POSTs an empty JSON body; a non-2xx answer becomes an error carrying the server's message.
fn post(base: &str, path: &str) -> anyhow::Result<ureq::Body> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .post(&url)
        .header("content-type", "application/json")
        .send("{}")
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if status.is_success() {
        return Ok(body);
    }
    let text = body.read_to_string().map_err(|e| {
        anyhow::anyhow!(
            "{url}: {} and the error body is unreadable: {e}",
            status.as_u16()
        )
    })?;
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or(text);
    anyhow::bail!("{url}: {} {message}", status.as_u16())
}
