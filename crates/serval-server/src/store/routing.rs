//! Which loaded version answers a request: version numbers, labels, the default and the canary
//! split.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{ServedModel, ServedVersion};
use crate::error::{Result, ServerError};

/// How a request names a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// The model's default version (or its canary, by the configured split).
    Default,
    /// A version number.
    Number(u64),
    /// A version label such as `stable`.
    Label(String),
}

impl VersionSelector {
    /// Parses a protocol's version string: empty means default, digits a number, a word a label.
    pub fn parse(version: Option<&str>) -> Result<VersionSelector> {
        match version {
            None | Some("") => Ok(VersionSelector::Default),
            Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse::<u64>()
                .ok()
                .filter(|&v| v > 0)
                .map(VersionSelector::Number)
                .ok_or_else(|| {
                    ServerError::BadRequest(format!("version '{v}' is not a positive integer"))
                }),
            Some(label)
                if label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Ok(VersionSelector::Label(label.to_owned()))
            }
            Some(v) => Err(ServerError::BadRequest(format!(
                "version '{v}' is neither a number nor a label"
            ))),
        }
    }
}

impl ServedModel {
    /// Resolves a selector to a loaded version; `Default` is the configured default (no canary).
    pub fn resolve(&self, selector: &VersionSelector) -> Result<Arc<ServedVersion>> {
        let number = match selector {
            VersionSelector::Default => self.default_version()?,
            VersionSelector::Number(v) => *v,
            VersionSelector::Label(label) => {
                *self.config.versions.labels.get(label).ok_or_else(|| {
                    ServerError::NotFound(format!(
                        "model '{}' has no version label '{label}'",
                        self.name
                    ))
                })?
            }
        };
        self.versions.get(&number).cloned().ok_or_else(|| {
            ServerError::Core(serval_core::Error::VersionNotFound {
                model: self.name.clone(),
                version: number.to_string(),
                available: self
                    .versions
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
    }

    /// The sticky canary `selector` may route to by key, when there is one: a sticky canary
    /// splits unversioned requests by key, so their version is known only once a key is decoded.
    pub fn sticky_canary(&self, selector: &VersionSelector) -> Option<Arc<ServedVersion>> {
        let canary = self.config.versions.canary.as_ref()?;
        if *selector != VersionSelector::Default || !canary.sticky {
            return None;
        }
        self.versions.get(&canary.version).cloned()
    }

    /// Resolves the version for an inference: like [`ServedModel::resolve`], but requests naming no
    /// version are split between the default and the canary. With `sticky`, the split hashes
    /// `routing_key` so the same key always reaches the same version.
    pub fn route(
        &self,
        selector: &VersionSelector,
        routing_key: Option<&str>,
    ) -> Result<Arc<ServedVersion>> {
        if *selector == VersionSelector::Default
            && let Some(canary) = &self.config.versions.canary
            && let Some(canary_version) = self.versions.get(&canary.version)
        {
            // Basis points, so fractional percentages split exactly.
            let bucket = match (canary.sticky, routing_key) {
                (true, Some(key)) => {
                    let mut hasher = std::hash::DefaultHasher::new();
                    key.hash(&mut hasher);
                    hasher.finish() % 10_000
                }
                // A fixed stride through 0..10000 (coprime with it) spreads consecutive requests evenly.
                _ => {
                    self.unkeyed_requests
                        .fetch_add(1, Ordering::Relaxed)
                        .wrapping_mul(7_919)
                        % 10_000
                }
            };
            if (bucket as f64) < canary.percent * 100.0 {
                return Ok(canary_version.clone());
            }
        }
        self.resolve(selector)
    }

    /// Whether every version `selector` could route to has a full queue, so a request for it
    /// would be refused whatever its body holds.
    pub fn saturated(&self, selector: &VersionSelector) -> bool {
        let canary = match selector {
            VersionSelector::Default => self
                .config
                .versions
                .canary
                .as_ref()
                .and_then(|c| self.versions.get(&c.version)),
            _ => None,
        };
        self.resolve(selector)
            .is_ok_and(|v| v.batcher.is_full() && canary.is_none_or(|c| c.batcher.is_full()))
    }

    fn default_version(&self) -> Result<u64> {
        let canary = self.config.versions.canary.as_ref().map(|c| c.version);
        self.config
            .versions
            .default
            .filter(|v| self.versions.contains_key(v))
            // The canary only gets its configured share, never the whole default traffic.
            .or_else(|| {
                self.versions
                    .keys()
                    .rev()
                    .find(|&&v| Some(v) != canary || self.versions.len() == 1)
                    .copied()
            })
            .ok_or_else(|| {
                ServerError::Unavailable(format!("model '{}' has no loaded version", self.name))
            })
    }
}
