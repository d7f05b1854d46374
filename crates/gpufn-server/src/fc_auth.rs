//! Alibaba Cloud's ACS3-HMAC-SHA256 request signatures, verified the way the official SDKs
//! compute them (`alibabacloud_tea_openapi`'s `get_authorization`):
//!
//! ```text
//! canonical request = METHOD \n PATH \n sorted query (key=percent-encoded value, &-joined) \n
//!                     signed headers as "name:value\n" (lowercase, trimmed, sorted), then an
//!                     empty line \n signed header names ;-joined \n hex sha256 of the body
//! string to sign    = "ACS3-HMAC-SHA256\n" + hex sha256(canonical request)
//! signature         = hex HMAC-SHA256(secret, string to sign)
//! Authorization: ACS3-HMAC-SHA256 Credential=ID,SignedHeaders=a;b,Signature=HEX
//! ```
//!
//! Beyond the signature: the body must match `x-acs-content-sha256`, `x-acs-date` must be within
//! [`MAX_SKEW`] of now, and an `x-acs-signature-nonce` is accepted once. Those three headers (and
//! `host`) must be among the signed ones, or a captured request could be replayed with new ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How far `x-acs-date` may be from the server's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No or malformed Authorization header.
    #[error("missing or malformed Authorization header (ACS3-HMAC-SHA256 expected)")]
    Malformed,
    /// Unknown access key id.
    #[error("the access key id {0:?} does not exist")]
    UnknownKey(String),
    /// A header that must be signed is missing or unsigned.
    #[error("header {0} must be present and signed")]
    Unsigned(&'static str),
    /// The body does not match its hash.
    #[error("the body does not match x-acs-content-sha256")]
    BodyHash,
    /// The date is too old or in the future.
    #[error("x-acs-date {0:?} is not within 15 minutes of the server's time")]
    Stale(String),
    /// The nonce was seen before.
    #[error("x-acs-signature-nonce {0:?} was already used")]
    Replayed(String),
    /// The signature is wrong.
    #[error("the request signature does not match (wrong secret or a changed request)")]
    Signature,
}

impl AuthError {
    /// FC's error code for it.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::UnknownKey(_) => "InvalidAccessKeyId",
            AuthError::Malformed | AuthError::Unsigned(_) => "MissingAuthorization",
            AuthError::Stale(_) => "RequestTimeTooSkewed",
            AuthError::Replayed(_) => "SignatureNonceUsed",
            AuthError::BodyHash | AuthError::Signature => "SignatureNotMatch",
        }
    }
}

/// The `x-acs-content-sha256` of `body` (lowercase hex SHA-256).
pub fn content_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Whether `body` is what the signed `x-acs-content-sha256` says.
pub fn body_matches(content_sha256: &str, body: &[u8]) -> bool {
    hex::encode(Sha256::digest(body)).eq_ignore_ascii_case(content_sha256.trim())
}

/// The parts of a request a signature covers.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Decoded path.
    pub path: &'a str,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Headers (any case).
    pub headers: Vec<(String, String)>,
    /// Body, when it has been read: the server verifies the signed head first and reads a body
    /// only for a request that passed, then checks it with [`body_matches`].
    pub body: Option<&'a [u8]>,
}

/// Told of every nonce the verifier accepts, with when (the server writes them to its store).
pub type NonceSink = Box<dyn Fn(&str, SystemTime) + Send + Sync>;

/// Access keys and the nonces seen recently.
#[derive(Default)]
pub struct Verifier {
    keys: HashMap<String, String>,
    nonces: Mutex<HashMap<String, SystemTime>>,
    sink: Option<NonceSink>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for these `id → secret` keys.
    pub fn new(keys: HashMap<String, String>) -> Self {
        Verifier {
            keys,
            nonces: Mutex::new(HashMap::new()),
            sink: None,
        }
    }

    /// Remembers nonces accepted before (by an earlier run: a restart must not make a captured
    /// request valid again), and tells `sink` of each one accepted from now on.
    pub fn remembering(
        mut self,
        seen: impl IntoIterator<Item = (String, SystemTime)>,
        sink: NonceSink,
    ) -> Self {
        self.nonces
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .extend(seen);
        self.sink = Some(sink);
        self
    }

    /// True when no key is configured (the FC API is then refused as a whole).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `req` at time `now`; returns the access key id.
    pub fn verify(&self, req: &SignedRequest<'_>, now: SystemTime) -> Result<String, AuthError> {
        let header = |name: &str| {
            req.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
                .collect::<Vec<_>>()
        };
        let auth = header("authorization")
            .into_iter()
            .next()
            .ok_or(AuthError::Malformed)?;
        let rest = auth
            .strip_prefix("ACS3-HMAC-SHA256 ")
            .ok_or(AuthError::Malformed)?;
        let mut credential = None;
        let mut signed = None;
        let mut signature = None;
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=').ok_or(AuthError::Malformed)?;
            match k {
                "Credential" => credential = Some(v.to_string()),
                "SignedHeaders" => signed = Some(v.to_string()),
                "Signature" => signature = Some(v.to_string()),
                _ => {}
            }
        }
        let (Some(id), Some(signed), Some(signature)) = (credential, signed, signature) else {
            return Err(AuthError::Malformed);
        };
        let secret = self
            .keys
            .get(&id)
            .ok_or_else(|| AuthError::UnknownKey(id.clone()))?;
        let signed_names: Vec<&str> = signed.split(';').collect();
        for must in [
            "host",
            "x-acs-date",
            "x-acs-signature-nonce",
            "x-acs-content-sha256",
        ] {
            if !signed_names.contains(&must) || header(must).is_empty() {
                return Err(AuthError::Unsigned(must));
            }
        }
        let content_hash = header("x-acs-content-sha256").remove(0);
        if req
            .body
            .is_some_and(|body| !body_matches(&content_hash, body))
        {
            return Err(AuthError::BodyHash);
        }
        let to_sign = string_to_sign(req, &signed_names, &content_hash);
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| AuthError::Signature)?;
        mac.update(to_sign.as_bytes());
        let given = hex::decode(&signature).map_err(|_| AuthError::Signature)?;
        // verify_slice compares in constant time.
        mac.verify_slice(&given).map_err(|_| AuthError::Signature)?;
        // Only a correctly signed request may use up a nonce or be judged on its date.
        let date = header("x-acs-date").remove(0);
        let at =
            humantime::parse_rfc3339_weak(&date).map_err(|_| AuthError::Stale(date.clone()))?;
        let skew = now.duration_since(at).unwrap_or_else(|e| e.duration());
        if skew > MAX_SKEW {
            return Err(AuthError::Stale(date));
        }
        let nonce = header("x-acs-signature-nonce").remove(0);
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        // A nonce older than the skew window cannot come back with a fresh date: forget it.
        nonces.retain(|_, seen| now.duration_since(*seen).unwrap_or_default() <= MAX_SKEW * 2);
        if nonces.contains_key(&nonce) {
            return Err(AuthError::Replayed(nonce));
        }
        nonces.insert(nonce.clone(), now);
        drop(nonces);
        if let Some(sink) = &self.sink {
            sink(&nonce, now);
        }
        Ok(id)
    }
}

/// The string an ACS3 signature signs: the canonical request's hash (see the module doc).
fn string_to_sign(req: &SignedRequest<'_>, signed_names: &[&str], content_hash: &str) -> String {
    let header = |name: &str| {
        let mut values: Vec<&str> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        values.sort();
        values.join(",")
    };
    let mut canonical = format!(
        "{}\n{}\n{}\n",
        req.method,
        if req.path.is_empty() { "/" } else { req.path },
        canonical_query(&req.query)
    );
    for name in signed_names {
        canonical.push_str(&format!("{name}:{}\n", header(name)));
    }
    // The SDK puts a newline after the header block's own last newline: an empty line.
    canonical.push('\n');
    canonical.push_str(&signed_names.join(";"));
    canonical.push('\n');
    canonical.push_str(content_hash);
    format!(
        "ACS3-HMAC-SHA256\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

/// The `Authorization` header the SDKs send for `req` with key `id`/`secret`, signing every header
/// in `req.headers` (lowercase names; `host`, `x-acs-date`, `x-acs-signature-nonce` and
/// `x-acs-content-sha256` among them). For tools and tests that call the FC API without an SDK.
pub fn authorization(id: &str, secret: &str, req: &SignedRequest<'_>) -> String {
    let mut names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let content_hash = req
        .headers
        .iter()
        .find(|(k, _)| k == "x-acs-content-sha256")
        .map(|(_, v)| v.trim())
        .unwrap_or_default();
    let to_sign = string_to_sign(req, &names, content_hash);
    let signature = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(to_sign.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes a key of any length.
        Err(_) => String::new(),
    };
    format!(
        "ACS3-HMAC-SHA256 Credential={id},SignedHeaders={},Signature={signature}",
        names.join(";")
    )
}

/// Percent-encodes like Python's `quote(v, safe='~')`: unreserved characters stay.
pub fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_query(query: &[(String, String)]) -> String {
    let sorted: BTreeMap<&str, &str> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Seconds since the epoch, for tests.
pub fn epoch(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// MiB of large FC bodies read whole at once (two 64 MiB function documents, or eight 16 MiB
/// async payloads); more callers wait with their bodies on disk.
const FC_MEMORY_MIB: u32 = 128;

/// FC settings: access keys, the GPU type table, the memory budget for large bodies.
#[derive(Debug)]
pub struct FcState {
    pub(crate) verifier: Verifier,
    /// The role each access key acts with (`--access-key ID:SECRET:ROLE`; admin by default).
    pub(crate) roles: HashMap<String, gpufn_auth::Role>,
    pub(crate) gpu_types: BTreeMap<String, String>,
    /// What large FC bodies may take in memory at once.
    pub(crate) memory: crate::spool::MemoryBudget,
}

impl FcState {
    /// From `id:secret` keys and `fc-type=local-type` overrides of [`gpufn_fc::mapping::DEFAULT_GPU_TYPES`].
    pub fn new(
        keys: &[(String, String, gpufn_auth::Role)],
        gpu_types: &[(String, String)],
        verifier: impl FnOnce(Verifier) -> Verifier,
    ) -> Self {
        let mut table: BTreeMap<String, String> = gpufn_fc::mapping::DEFAULT_GPU_TYPES
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        table.extend(gpu_types.iter().cloned());
        FcState {
            verifier: verifier(Verifier::new(
                keys.iter()
                    .map(|(id, secret, _)| (id.clone(), secret.clone()))
                    .collect::<HashMap<_, _>>(),
            )),
            roles: keys
                .iter()
                .map(|(id, _, role)| (id.clone(), *role))
                .collect(),
            gpu_types: table,
            memory: crate::spool::MemoryBudget::new(FC_MEMORY_MIB),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed with the official SDK's own code (alibabacloud_tea_openapi 0.4.6,
    // Utils.get_authorization) for this exact request.
    const SDK_AUTH: &str = "ACS3-HMAC-SHA256 Credential=AKID,SignedHeaders=content-type;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=f15ed67c27cf1deaa8c339f4c1aa60b79786091b28ef244ab7a5c0e949588ef4";
    const BODY: &[u8] = br#"{"hello": "world"}"#;
    const HASH: &str = "5f8f04f6a3a892aaabbddb6cf273894493773960d4a325b105fee46eef4304f1";
    // 2026-11-28T03:30:00Z
    const AT: u64 = 1_795_836_600;

    fn request<'a>(auth: &str, body: &'a [u8], nonce: &str) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            path: "/2023-03-30/functions/my-fn/invocations",
            query: vec![
                ("qualifier".into(), "LATEST".into()),
                ("a b".into(), "x y/z".into()),
            ],
            headers: [
                ("Authorization", auth),
                ("host", "127.0.0.1:8080"),
                ("x-acs-version", "2023-03-30"),
                ("x-acs-action", "InvokeFunction"),
                ("x-acs-date", "2026-11-28T03:30:00Z"),
                ("x-acs-signature-nonce", nonce),
                ("content-type", "application/octet-stream"),
                ("x-acs-content-sha256", HASH),
                ("user-agent", "AlibabaCloud (Linux) Python/3.11"),
                ("accept", "application/json"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            body: Some(body),
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(HashMap::from([("AKID".to_string(), "s3cret".to_string())]))
    }

    #[test]
    fn nonces_accepted_by_an_earlier_run_stay_used() {
        let now = epoch(AT + 60);
        let told = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = told.clone();
        let first = verifier().remembering(
            Vec::new(),
            Box::new(move |n, at| log.lock().unwrap().push((n.to_string(), at))),
        );
        assert_eq!(
            first.verify(&request(SDK_AUTH, BODY, "abc123"), now),
            Ok("AKID".into())
        );
        let seen = told.lock().unwrap().clone();
        assert_eq!(seen, [("abc123".to_string(), now)]);
        // The next run starts from what the first one recorded.
        let second = verifier().remembering(seen, Box::new(|_, _| {}));
        assert_eq!(
            second.verify(&request(SDK_AUTH, BODY, "abc123"), now),
            Err(AuthError::Replayed("abc123".into()))
        );
    }

    #[test]
    fn authorization_signs_as_the_sdk_does() {
        // The SDK's own header for this request, rebuilt from the same headers minus `accept`
        // (the SDK does not sign it) and `Authorization` itself.
        let mut req = request("", BODY, "abc123");
        req.headers
            .retain(|(k, _)| k != "Authorization" && k != "accept");
        assert_eq!(authorization("AKID", "s3cret", &req), SDK_AUTH);
    }

    #[test]
    fn the_sdks_signature_verifies_once() {
        let v = verifier();
        let now = epoch(AT + 60);
        assert_eq!(
            v.verify(&request(SDK_AUTH, BODY, "abc123"), now),
            Ok("AKID".into())
        );
        assert_eq!(
            v.verify(&request(SDK_AUTH, BODY, "abc123"), now),
            Err(AuthError::Replayed("abc123".into()))
        );
    }

    #[test]
    fn every_tampering_is_refused() {
        let now = epoch(AT);
        let wrong_secret = Verifier::new(HashMap::from([("AKID".to_string(), "nope".to_string())]));
        assert_eq!(
            wrong_secret.verify(&request(SDK_AUTH, BODY, "abc123"), now),
            Err(AuthError::Signature)
        );
        let unknown = SDK_AUTH.replace("Credential=AKID", "Credential=OTHER");
        assert_eq!(
            verifier().verify(&request(&unknown, BODY, "abc123"), now),
            Err(AuthError::UnknownKey("OTHER".into()))
        );
        assert_eq!(
            verifier().verify(&request(SDK_AUTH, b"{\"hello\": \"w0rld\"}", "abc123"), now),
            Err(AuthError::BodyHash)
        );
        // A different nonce is a changed request: the signature covers it.
        assert_eq!(
            verifier().verify(&request(SDK_AUTH, BODY, "other"), now),
            Err(AuthError::Signature)
        );
        assert!(matches!(
            verifier().verify(&request(SDK_AUTH, BODY, "abc123"), epoch(AT + 16 * 60)),
            Err(AuthError::Stale(_))
        ));
        assert!(matches!(
            verifier().verify(&request(SDK_AUTH, BODY, "abc123"), epoch(AT - 16 * 60)),
            Err(AuthError::Stale(_))
        ));
        let unsigned = SDK_AUTH.replace("x-acs-signature-nonce;", "");
        assert_eq!(
            verifier().verify(&request(&unsigned, BODY, "abc123"), now),
            Err(AuthError::Unsigned("x-acs-signature-nonce"))
        );
        assert_eq!(
            verifier().verify(&request("Bearer x", BODY, "abc123"), now),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn query_values_are_encoded_like_python_quote() {
        assert_eq!(encode("x y/z~a-b_c.d"), "x%20y%2Fz~a-b_c.d");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
