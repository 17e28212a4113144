//! Bearer tokens with scopes, one check for REST and gRPC.
//!
//! Every request falls in one [`Access`] class, by its path alone (so the check runs before a
//! body is read). A class is either open (`--auth-open`: health and metrics by default, as
//! load balancers and Prometheus expect) or needs a token whose scopes include it; any valid
//! token may call health. Tokens are kept as SHA-256 digests and compared in constant time
//! against every token (no early exit on a match, no comparison of the secret's bytes), and
//! only their names appear in logs.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ServerError;

/// What a request does, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Liveness and readiness probes.
    Health,
    /// Prometheus `/metrics`.
    Metrics,
    /// The pages served beside the API (dashboard, edge page).
    Pages,
    /// Predictions and model metadata, and predictions reported by edge devices.
    Infer,
    /// Ground truth for logged predictions.
    Labels,
    /// Loading, unloading and listing the repository.
    Admin,
}

impl Access {
    const ALL: [Access; 6] = [
        Access::Health,
        Access::Metrics,
        Access::Pages,
        Access::Infer,
        Access::Labels,
        Access::Admin,
    ];

    /// The name used in token files and `--auth-open`.
    pub fn name(self) -> &'static str {
        match self {
            Access::Health => "health",
            Access::Metrics => "metrics",
            Access::Pages => "pages",
            Access::Infer => "infer",
            Access::Labels => "labels",
            Access::Admin => "admin",
        }
    }

    /// Parses a name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Access> {
        Access::ALL.into_iter().find(|a| a.name() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The class of a REST request.
    pub fn of_rest(path: &str) -> Access {
        // No allocation: this runs on every request when tokens are on.
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if path.starts_with("/v2/health/")
            || (path.starts_with("/v2/models/") && path.ends_with("/ready"))
        {
            Access::Health
        } else if path == "/metrics" {
            Access::Metrics
        } else if under("/v2/repository") {
            Access::Admin
        } else if path.starts_with("/v1/models/") && path.ends_with("/labels") {
            Access::Labels
        } else if under("/dashboard") || under("/edge") {
            Access::Pages
        } else {
            Access::Infer
        }
    }

    /// The class of a gRPC call, by its `/package.Service/Method` path.
    pub fn of_grpc(path: &str) -> Access {
        match path.rsplit('/').next().unwrap_or_default() {
            "ServerLive" | "ServerReady" | "ModelReady" => Access::Health,
            "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => Access::Admin,
            _ => Access::Infer,
        }
    }
}

/// A set of [`Access`] classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessSet(u8);

impl AccessSet {
    /// Whether `access` is in the set.
    pub fn contains(self, access: Access) -> bool {
        self.0 & access.bit() != 0
    }

    /// Parses `a,b,c` (or `none`), naming what `what` is in errors.
    pub fn parse(list: &str, what: &str) -> Result<AccessSet, String> {
        let mut set = AccessSet::default();
        if list.trim() == "none" {
            return Ok(set);
        }
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let access = Access::parse(name).ok_or_else(|| {
                let known: Vec<_> = Access::ALL.iter().map(|a| a.name()).collect();
                format!("unknown {what} '{name}' (known: {})", known.join(", "))
            })?;
            set.0 |= access.bit();
        }
        Ok(set)
    }
}

/// Shortest token accepted: 128 bits of hex, so a token cannot be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("--auth-tokens {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is malformed (the message never quotes the token).
    #[error("--auth-tokens, line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no token.
    #[error("--auth-tokens {0}: no token in the file")]
    Empty(PathBuf),
}

struct Token {
    digest: [u8; 32],
    name: String,
    scopes: AccessSet,
}

/// The tokens a server accepts and the classes open without one.
pub struct AuthTokens {
    tokens: Vec<Token>,
    open: AccessSet,
}

impl std::fmt::Debug for AuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.tokens.iter().map(|t| &t.name).collect();
        f.debug_struct("AuthTokens")
            .field("tokens", &names)
            .field("open", &self.open)
            .finish()
    }
}

impl AuthTokens {
    /// Reads a token file: one token per line, `<token> <scope>[,<scope>...] [<name>]`, with
    /// blank lines and `#` comments; a token without a name is called `line-<n>`.
    pub fn from_file(path: &Path, open: AccessSet) -> Result<AuthTokens, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let tokens = AuthTokens::parse(&text, open)?;
        if tokens.tokens.is_empty() {
            return Err(AuthError::Empty(path.to_owned()));
        }
        Ok(tokens)
    }

    /// Parses a token file's text.
    pub fn parse(text: &str, open: AccessSet) -> Result<AuthTokens, AuthError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_number = i + 1;
            let bad = |reason: String| AuthError::Line {
                line: line_number,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let secret = fields.next().unwrap_or_default();
            let scopes = fields
                .next()
                .ok_or_else(|| bad("expected `<token> <scope>[,<scope>...] [<name>]`".into()))?;
            let name = fields
                .next()
                .map_or_else(|| format!("line-{line_number}"), str::to_owned);
            if fields.next().is_some() {
                return Err(bad(
                    "more than three fields (`<token> <scopes> [<name>]`)".into()
                ));
            }
            if secret.chars().count() < MIN_TOKEN_CHARS {
                return Err(bad(format!(
                    "the token is shorter than {MIN_TOKEN_CHARS} characters, too easy to guess"
                )));
            }
            let scopes = AccessSet::parse(scopes, "scope").map_err(bad)?;
            if tokens.iter().any(|t: &Token| t.name == name) {
                return Err(bad(format!("the name '{name}' is given to two tokens")));
            }
            tokens.push(Token {
                digest: Sha256::digest(secret.as_bytes()).into(),
                name,
                scopes,
            });
        }
        Ok(AuthTokens { tokens, open })
    }

    /// Checks an `Authorization` header value against what `access` needs, and returns the
    /// name of the token that allows it (`None` when the class is open).
    pub fn authorize(
        &self,
        access: Access,
        authorization: Option<&[u8]>,
    ) -> Result<Option<&str>, ServerError> {
        if self.open.contains(access) {
            return Ok(None);
        }
        let Some(value) = authorization else {
            return Err(ServerError::Unauthenticated(format!(
                "this endpoint ({} scope) needs a token: send `Authorization: Bearer <token>`",
                access.name()
            )));
        };
        let secret = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or_else(|| {
                ServerError::Unauthenticated(
                    "the Authorization header is not `Bearer <token>`".into(),
                )
            })?;
        let digest: [u8; 32] = Sha256::digest(secret.trim_ascii()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        let token = found.ok_or_else(|| {
            ServerError::Unauthenticated("the token is not one this server accepts".into())
        })?;
        if access != Access::Health && !token.scopes.contains(access) {
            return Err(ServerError::Forbidden(format!(
                "token '{}' lacks the '{}' scope this endpoint needs",
                token.name,
                access.name()
            )));
        }
        Ok(Some(&token.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = "health,metrics";

    fn tokens(text: &str) -> AuthTokens {
        AuthTokens::parse(text, AccessSet::parse(OPEN, "class").unwrap()).unwrap()
    }

    #[test]
    fn classes_follow_the_paths() {
        for (path, access) in [
            ("/v2/health/ready", Access::Health),
            ("/v2/models/m/ready", Access::Health),
            ("/v2/models/m/versions/2/ready", Access::Health),
            ("/metrics", Access::Metrics),
            ("/v2/repository/index", Access::Admin),
            ("/v2/repository/models/m/unload", Access::Admin),
            ("/v1/models/m/labels", Access::Labels),
            ("/v1/models/m:predict", Access::Infer),
            ("/v2/models/m/infer", Access::Infer),
            ("/v2/models/m/log", Access::Infer),
            ("/v2/repositoryx", Access::Infer),
            ("/dashboard", Access::Pages),
            ("/edge/api/models", Access::Pages),
        ] {
            assert_eq!(Access::of_rest(path), access, "{path}");
        }
        assert_eq!(
            Access::of_grpc("/inference.GRPCInferenceService/ServerLive"),
            Access::Health
        );
        assert_eq!(
            Access::of_grpc("/inference.GRPCInferenceService/RepositoryModelUnload"),
            Access::Admin
        );
        assert_eq!(
            Access::of_grpc("/inference.GRPCInferenceService/ModelInfer"),
            Access::Infer
        );
    }

    #[test]
    fn a_token_allows_its_scopes_only() {
        let t = tokens("# comment\n\n0123456789abcdef0123 infer,labels client\n");
        let bearer = Some(&b"Bearer 0123456789abcdef0123"[..]);
        assert_eq!(t.authorize(Access::Infer, bearer).unwrap(), Some("client"));
        assert_eq!(t.authorize(Access::Metrics, None).unwrap(), None);
        let closed = AuthTokens::parse("0123456789abcdef0123 infer client", AccessSet::default());
        let closed = closed.unwrap();
        assert_eq!(
            closed.authorize(Access::Health, bearer).unwrap(),
            Some("client")
        );
        assert!(closed.authorize(Access::Health, None).is_err());
        let refused = t.authorize(Access::Admin, bearer).unwrap_err();
        assert!(matches!(refused, ServerError::Forbidden(_)), "{refused}");
        assert!(refused.to_string().contains("'admin' scope"), "{refused}");
        for header in [
            None,
            Some(&b"Bearer 0123456789abcdef0124"[..]),
            Some(&b"Basic x"[..]),
        ] {
            let refused = t.authorize(Access::Infer, header).unwrap_err();
            assert!(
                matches!(refused, ServerError::Unauthenticated(_)),
                "{refused}"
            );
            assert!(!refused.to_string().contains("0123456789"), "{refused}");
        }
    }

    #[test]
    fn malformed_files_name_the_line_never_the_token() {
        let open = AccessSet::default();
        for (text, line, says) in [
            ("short infer", 1, "shorter than 16"),
            (
                "\n0123456789abcdef0123 infer,root",
                2,
                "unknown scope 'root'",
            ),
            ("0123456789abcdef0123", 1, "expected `<token>"),
            (
                "0123456789abcdef0123 infer a\n0123456789abcdef0124 infer a",
                2,
                "two tokens",
            ),
        ] {
            let err = AuthTokens::parse(text, open).err().unwrap();
            let message = err.to_string();
            assert!(message.contains(&format!("line {line}")), "{message}");
            assert!(message.contains(says), "{message}");
            assert!(!message.contains("0123456789abcdef"), "{message}");
            assert!(!message.contains("short infer"), "{message}");
        }
    }
}
