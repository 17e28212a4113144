//! Serval's outgoing HTTP: one JSON POST, retried with exponential backoff and ±50 % jitter,
//! each attempt under a timeout. Alert webhooks (`serval-eval`) and the edge runtime's phase-2
//! client (`serval-edge`) both send through [`Retry::post`], so they agree on what is worth a
//! retry: a transport failure, a 5xx or a 429 is; any other 4xx will not change and is final.
#![deny(missing_docs)]

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How a request is retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts in all (at least one is made).
    pub attempts: u32,
    /// The wait before the first retry; doubled each time, with ±50 % jitter.
    pub backoff: Duration,
    /// The limit on each attempt, connection to last byte.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 3,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct Answered {
    /// Its status.
    pub status: u16,
    /// Its body.
    pub body: Vec<u8>,
    /// Attempts it took.
    pub attempts: u32,
}

/// Why a request got no successful answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostError {
    /// The server answered a client error other than 429: retrying will not help.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// The request's address.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body (servers say what is wrong there).
        body: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Every attempt failed to connect, timed out, or got a 5xx or 429.
    #[error("{url} unreachable after {attempts} attempt(s): {last}")]
    Unreachable {
        /// The request's address.
        url: String,
        /// The last attempt's failure.
        last: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl PostError {
    /// Attempts made before giving up.
    pub fn attempts(&self) -> u32 {
        match self {
            PostError::Refused { attempts, .. } | PostError::Unreachable { attempts, .. } => {
                *attempts
            }
        }
    }
}

/// The part of an error body worth repeating.
const BODY_EXCERPT: usize = 512;

/// The largest answer read; a larger one is a failed attempt, not an allocation.
const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

impl Retry {
    /// An agent whose every request is limited by [`Retry::timeout`] and reports HTTP errors as
    /// statuses (so [`Retry::post`] can tell a 4xx from a 5xx).
    pub fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .build()
            .into()
    }

    /// POSTs `body` as JSON with `headers` until a 2xx, a final 4xx or the last attempt.
    pub fn post(
        &self,
        agent: &ureq::Agent,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answered, PostError> {
        let mut rng = SmallRng::seed_from_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        let attempts = self.attempts.max(1);
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let mut request = agent.post(url).header("content-type", "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            match request.send(body) {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let answer = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_ANSWER_BYTES)
                        .read_to_vec();
                    let excerpt = |body: &[u8]| {
                        let text = String::from_utf8_lossy(body);
                        text.chars().take(BODY_EXCERPT).collect::<String>()
                    };
                    match answer {
                        Err(e) => last = format!("reading the answer failed: {e}"),
                        Ok(body) if (200..300).contains(&status) => {
                            return Ok(Answered {
                                status,
                                body,
                                attempts: attempt,
                            });
                        }
                        Ok(body) if (400..500).contains(&status) && status != 429 => {
                            return Err(PostError::Refused {
                                url: url.to_owned(),
                                status,
                                body: excerpt(&body),
                                attempts: attempt,
                            });
                        }
                        Ok(body) => last = format!("answered {status}: {}", excerpt(&body)),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < attempts {
                std::thread::sleep(delay.mul_f64(rng.random_range(0.5..1.5)));
                delay = delay.saturating_mul(2);
            }
        }
        Err(PostError::Unreachable {
            url: url.to_owned(),
            last,
            attempts,
        })
    }
}
