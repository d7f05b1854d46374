//! Who may do what, as pure functions: bearer tokens (minted, hashed, checked), the four roles and
//! what each allows, function-name scopes, and the rules that keep a browser from being turned
//! against a gpufn on the user's own machine (`Host` on loopback, write content types).
//!
//! No I/O and no clock: the server keeps the token records (in the store, hashed) and passes `now`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

#[cfg(test)]
mod tests;

/// What a token may do. Each role includes what the ones before it in this list allow, except
/// that `viewer` cannot call functions and `invoker` cannot read the platform (see [`allows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: functions, instances, logs, cold starts, usage, billing, tasks, metrics.
    Viewer,
    /// Calls functions (sync and async) and reads its own async tasks.
    Invoker,
    /// Deploys, updates, deletes and reads container functions; their logs and tasks; pulls images.
    Developer,
    /// Everything: quota, tokens, secrets, audit, `runtime: process` functions.
    Admin,
}

impl Role {
    /// All roles, least first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Invoker, Role::Developer, Role::Admin];

    /// The role's name as written in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Invoker => "invoker",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("must be one of viewer, invoker, developer, admin (got {s:?})"))
    }
}

/// Something a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read function specs and status, instances, logs, cold starts, usage, billing, GPUs, the
    /// quota, images, metrics, and every caller's tasks.
    Read,
    /// Call a function through its trigger, submit async tasks, read and cancel one's own tasks.
    Invoke,
    /// Create, update or delete a function; `process` when its runtime is (or becomes) `process`.
    Deploy {
        /// A `runtime: process` function: it runs a host command line.
        process: bool,
    },
    /// Cancel any caller's task.
    ManageTasks,
    /// Pull an image into the cache.
    PullImage,
    /// Quota, tokens, secrets and the audit log.
    Administer,
}

impl Action {
    /// The least role that may do this.
    pub fn min_role(self) -> Role {
        match self {
            Action::Read => Role::Viewer,
            Action::Invoke => Role::Invoker,
            Action::Deploy { process: false } | Action::ManageTasks | Action::PullImage => {
                Role::Developer
            }
            Action::Deploy { process: true } | Action::Administer => Role::Admin,
        }
    }
}

/// Whether `role` may do `action` (scopes aside).
pub fn allows(role: Role, action: Action) -> bool {
    match (role, action) {
        // An invoker calls functions; reading the platform is not part of that.
        (Role::Invoker, Action::Read) => false,
        // A viewer reads; calling a function has effects (and costs).
        (Role::Viewer, Action::Invoke) => false,
        _ => role >= action.min_role(),
    }
}

/// Why a caller is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The role does not allow the action.
    #[error("a {role} token may not do this (it needs {needed})")]
    Role {
        /// The caller's role.
        role: Role,
        /// The least role that would do.
        needed: Role,
    },
    /// The token is limited to functions whose names start with `prefix`.
    #[error("this token is limited to functions named {prefix}*")]
    Scope {
        /// The token's prefix.
        prefix: String,
    },
}

/// The caller of one request: a token's id, role and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's id (public: it names the token in lists and the audit log).
    pub token_id: String,
    /// Its role.
    pub role: Role,
    /// Only functions whose names start with this, when set.
    pub prefix: Option<String>,
}

impl Grant {
    /// Whether the token reaches `function` at all.
    pub fn covers(&self, function: &str) -> bool {
        self.prefix
            .as_deref()
            .is_none_or(|p| function.starts_with(p))
    }

    /// Checks `action`, on `function` when it concerns one. Actions on no function in particular
    /// (quota, tokens, the whole metrics page) need a token with no prefix when they are
    /// administrative; reads of platform-wide views are filtered by the caller instead.
    pub fn check(&self, action: Action, function: Option<&str>) -> Result<(), Denied> {
        if !allows(self.role, action) {
            return Err(Denied::Role {
                role: self.role,
                needed: action.min_role(),
            });
        }
        match (&self.prefix, function) {
            (Some(prefix), Some(f)) if !f.starts_with(prefix.as_str()) => Err(Denied::Scope {
                prefix: prefix.clone(),
            }),
            (Some(prefix), None) if action == Action::Administer => Err(Denied::Scope {
                prefix: prefix.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// What every token starts with: tells a leaked token apart in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "gpufn_";
/// Hex characters of a token's id.
const ID_LEN: usize = 12;
/// Random bytes of a token's secret part (256 bits: a plain SHA-256 of the token is then a safe
/// thing to store; a slow password hash protects low-entropy secrets, which these are not).
const SECRET_BYTES: usize = 32;

/// A new token: the text shown once to its owner, its public id and the hash the store keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct Minted {
    /// `gpufn_<id>_<secret>`: the bearer token.
    pub token: String,
    /// The public id.
    pub id: String,
    /// SHA-256 of `token`, hex.
    pub hash: String,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token itself.
        f.debug_struct("Minted").field("id", &self.id).finish()
    }
}

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no random bytes from the operating system: {0}")]
pub struct RandomError(String);

/// Mints a token from the operating system's random source.
pub fn mint() -> Result<Minted, RandomError> {
    let mut id = [0u8; ID_LEN / 2];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id).map_err(|e| RandomError(e.to_string()))?;
    getrandom::fill(&mut secret).map_err(|e| RandomError(e.to_string()))?;
    Ok(mint_from(&id, &secret))
}

/// A token from given bytes (tests; [`mint`] uses random ones).
pub fn mint_from(id: &[u8; ID_LEN / 2], secret: &[u8; SECRET_BYTES]) -> Minted {
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let hash = hash(&token);
    Minted { token, id, hash }
}

/// The id inside a well-formed token, or `None` for anything that is not one.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok_id = id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let ok_secret = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok_id && ok_secret).then_some(id)
}

/// SHA-256 of a token, hex: what the store keeps.
pub fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `stored` (compared in constant time).
pub fn matches(stored: &str, token: &str) -> bool {
    hash(token).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// A stored token, as the server keeps it in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 of the token, hex.
    #[serde(skip_serializing)]
    pub hash: String,
    /// Its role.
    pub role: Role,
    /// Function-name prefix it is limited to.
    pub functions: Option<String>,
    /// A label for people.
    pub name: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Not valid from this time on, if set.
    pub expires_ms: Option<i64>,
    /// Revoked at this time, if it was.
    pub revoked_ms: Option<i64>,
    /// The id of the token that created it (`bootstrap` for the first admin token).
    pub created_by: String,
}

/// Why a presented token is not accepted (all answered 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// No `Authorization: Bearer` header.
    #[error(
        "this call needs a token: send Authorization: Bearer <token> (gpufn token create, or <data-dir>/admin.token)"
    )]
    Missing,
    /// Not a gpufn token, unknown, or wrong.
    #[error("the token is not valid")]
    Invalid,
    /// Revoked.
    #[error("the token was revoked")]
    Revoked,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
}

impl TokenRecord {
    /// Whether `token` is this record's, valid (not revoked, not expired at the time `now_ms`
    /// gives, read only for a token that expires) and may invoke `function`. The gateway's
    /// per-request check: no allocation, no clock read for tokens without expiry.
    pub fn may_invoke(&self, token: &str, function: &str, now_ms: impl FnOnce() -> i64) -> bool {
        matches(&self.hash, token)
            && self.revoked_ms.is_none()
            && self.expires_ms.is_none_or(|e| now_ms() < e)
            && allows(self.role, Action::Invoke)
            && self
                .functions
                .as_deref()
                .is_none_or(|p| function.starts_with(p))
    }

    /// Checks `token` against this record at `now_ms`.
    pub fn admit(&self, token: &str, now_ms: i64) -> Result<Grant, Rejected> {
        if !matches(&self.hash, token) {
            return Err(Rejected::Invalid);
        }
        if self.revoked_ms.is_some() {
            return Err(Rejected::Revoked);
        }
        if self.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(Rejected::Expired);
        }
        Ok(Grant {
            token_id: self.id.clone(),
            role: self.role,
            prefix: self.functions.clone(),
        })
    }
}

/// A token's lifetime as written on the command line: `30d`, `12h`, `90m`, `1y`...
pub fn parse_lifetime(v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| format!("must be a duration like 30d, 12h or 90m (got {v:?}: {e})"))?;
    if d < Duration::from_secs(60) {
        return Err(format!("must be at least one minute (got {v:?})"));
    }
    if d > Duration::from_secs(10 * 366 * 86_400) {
        return Err(format!("must be at most ten years (got {v:?})"));
    }
    Ok(d)
}

/// A function-name prefix a token may be limited to: what a function name may contain, 1..63.
pub fn check_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 63 {
        return Err(format!(
            "must be 1..63 characters (got {} characters)",
            p.len()
        ));
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("may hold only a-z, 0-9 and - (got {p:?})"));
    }
    Ok(())
}

/// The name of a host in a `Host` header value: `localhost:8080` → `localhost`, `[::1]:80` →
/// `[::1]`. Lowercased by the caller's comparison.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether a request to a gpufn bound to loopback may be served, judging by its `Host` header.
///
/// A DNS-rebinding page (`evil.example` resolving to 127.0.0.1) reaches a loopback server with its
/// own name in `Host`; a browser cannot forge `Host`. So only the loopback names (and names the
/// owner lists with `--public-host`) are served. A request with no `Host` (HTTP/1.0 tools) is
/// not from a browser and is served.
pub fn loopback_host_allowed(host: Option<&[u8]>, public_hosts: &[String]) -> bool {
    let Some(host) = host else { return true };
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = host_name(host.trim());
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        || public_hosts.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a write call's `Content-Type` is one gpufn reads (JSON or YAML). Anything else —
/// `text/plain`, forms — is what a cross-origin page can send without a CORS preflight.
pub fn write_content_type_ok(ct: Option<&[u8]>) -> bool {
    let Some(ct) = ct.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    ["application/json", "application/yaml", "application/x-yaml"]
        .iter()
        .any(|t| essence.eq_ignore_ascii_case(t))
}
