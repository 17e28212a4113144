//! Where an alert goes when it fires: webhooks (signed, retried with backoff) and a command.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use serval_client::PostError;
pub use serval_client::Retry;
use sha2::Sha256;

/// The header carrying `sha256=<hex HMAC of the body>`, as GitHub signs its webhooks.
pub const SIGNATURE_HEADER: &str = "x-serval-signature-256";

/// How alerts are delivered.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// POSTed every alert (a model's own `webhooks` are added to these).
    pub webhooks: Vec<String>,
    /// The HMAC key of the signature header; unsigned without one.
    pub secret: Option<Vec<u8>>,
    /// Attempts per webhook (the first included), backoff and each attempt's time limit.
    pub retry: Retry,
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery {
            webhooks: Vec::new(),
            secret: None,
            retry: Retry {
                attempts: 5,
                backoff: Duration::from_millis(500),
                timeout: Duration::from_secs(10),
            },
        }
    }
}

/// What became of one alert's deliveries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delivered {
    /// Per webhook: `delivered` (with the attempts it took), or why it was given up.
    pub webhooks: Vec<WebhookOutcome>,
    /// The `on_alert` command's exit status (`None`: no command, or it could not start or was
    /// killed by a signal; then `command_error` says which).
    pub command_status: Option<i32>,
    /// Why the command has no exit status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_error: Option<String>,
}

/// One webhook's delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookOutcome {
    /// The URL.
    pub url: String,
    /// Whether it answered 2xx.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, when not delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Delivery {
    /// Sends `body` (an alert as JSON) to every webhook and runs `command`, waiting for each.
    pub fn deliver(&self, body: &[u8], model_webhooks: &[String], command: &[String]) -> Delivered {
        let agent = self.retry.agent();
        let webhooks = self
            .webhooks
            .iter()
            .chain(model_webhooks)
            .map(|url| self.post(&agent, url, body))
            .collect();
        let (command_status, command_error) = match run_command(command, body) {
            Ok(status) => (status, None),
            Err(e) => (None, Some(e)),
        };
        Delivered {
            webhooks,
            command_status,
            command_error,
        }
    }

    fn post(&self, agent: &ureq::Agent, url: &str, body: &[u8]) -> WebhookOutcome {
        let signature = self.secret.as_ref().and_then(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
            mac.update(body);
            Some(format!(
                "sha256={}",
                hex::encode(mac.finalize().into_bytes())
            ))
        });
        let headers: Vec<(&str, &str)> = signature
            .as_deref()
            .map(|signature| (SIGNATURE_HEADER, signature))
            .into_iter()
            .collect();
        match self.retry.post(agent, url, &headers, body) {
            Ok(answered) => WebhookOutcome {
                url: url.to_owned(),
                delivered: true,
                attempts: answered.attempts,
                error: None,
            },
            Err(e) => {
                let error = match &e {
                    PostError::Refused { status, .. } => format!("answered {status}"),
                    PostError::Unreachable { last, .. } => last.clone(),
                };
                tracing::warn!(url, error = %error, "webhook not delivered");
                WebhookOutcome {
                    url: url.to_owned(),
                    delivered: false,
                    attempts: e.attempts(),
                    error: Some(error),
                }
            }
        }
    }
}

/// Runs `command` with `body` on stdin; its exit status (`None` when a signal ended it).
fn run_command(command: &[String], body: &[u8]) -> Result<Option<i32>, String> {
    let Some((program, args)) = command.split_first() else {
        return Ok(None);
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is not an error.
        let _ = stdin.write_all(body);
    }
    let status = child
        .wait()
        .map_err(|e| format!("{program} could not be waited for: {e}"))?;
    match status.code() {
        Some(code) => Ok(Some(code)),
        None => Err(format!("{program} was ended by a signal")),
    }
}
