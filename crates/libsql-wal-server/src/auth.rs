//! Who may do what: nobody checked (loopback default), one shared token, or JWTs signed with
//! Ed25519 as libSQL's server and its clients use them. Either way the credential comes as
//! `Authorization: Bearer <token>`.
//!
//! A JWT is checked against the public key (signature, `exp` and `nbf` when present), then
//! its claims say what it grants:
//! - `p` (libSQL's permissions claim), when present, grants namespaces by name:
//!   `{"rw": {"ns": ["a"]}, "ro": {"ns": ["b"]}}` is read-write on `a`, read-only on `b`,
//!   nothing elsewhere;
//! - otherwise `a`: `"rw"` (also when absent) or `"ro"`, limited to the namespace `id` names
//!   if it names one.
//!
//! Tokens and keys never go into logs, errors or metrics: an error says what was wrong
//! with a token, never what it was.

use std::collections::BTreeSet;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// What a request may do on one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

pub enum Auth {
    /// Every request is allowed.
    Open,
    /// The one token every client presents.
    SharedToken(String),
    /// JWTs signed by the key's private half.
    Jwt(Box<DecodingKey>),
}

/// Why a request was refused: 401 (`Unauthorized`) or 403 (`Forbidden`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized(&'static str),
    Forbidden(String),
}

impl Auth {
    /// The shared token in `path` (surrounding whitespace ignored; empty is refused).
    pub fn shared_token_file(path: &Path) -> Result<Auth, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("the token file {} is empty", path.display()));
        }
        Ok(Auth::SharedToken(token.to_string()))
    }

    /// The Ed25519 public key in `path`: PEM (`-----BEGIN PUBLIC KEY-----`, SPKI) or the
    /// key's 32 bytes in URL-safe base64, the two forms libSQL's server reads.
    pub fn jwt_key_file(path: &Path) -> Result<Auth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWT key file {}: {e}", path.display()))?;
        let text = text.trim();
        let key = if text.starts_with("-----BEGIN") {
            if !text.contains("BEGIN PUBLIC KEY") {
                return Err(format!(
                    "{} holds no Ed25519 public key (a private key must not be given)",
                    path.display()
                ));
            }
            DecodingKey::from_ed_pem(text.as_bytes())
                .map_err(|e| format!("{}: not an Ed25519 public key: {e}", path.display()))?
        } else {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| format!("{}: neither PEM nor URL-safe base64", path.display()))?;
            if raw.len() != 32 {
                return Err(format!("{}: an Ed25519 public key is 32 bytes, this is {}", path.display(), raw.len()));
            }
            DecodingKey::from_ed_der(&raw)
        };
        Ok(Auth::Jwt(Box::new(key)))
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Auth::Open)
    }

    /// What the `Authorization` header (if any) grants on `namespace`.
    pub fn check(&self, authorization: Option<&[u8]>, namespace: &str) -> Result<Access, Refusal> {
        let token = match self {
            Auth::Open => return Ok(Access::ReadWrite),
            _ => bearer(authorization)?,
        };
        match self {
            Auth::Open => Ok(Access::ReadWrite),
            Auth::SharedToken(expected) => {
                if constant_time_eq(token.as_bytes(), expected.as_bytes()) {
                    Ok(Access::ReadWrite)
                } else {
                    Err(Refusal::Unauthorized("the token is not valid"))
                }
            }
            Auth::Jwt(key) => jwt_access(key, token, namespace),
        }
    }

    /// The token that tells one client from another, for `--max-batons-per-client`: a JWT
    /// (each client may be given its own). Not a shared token, the same for every client,
    /// and nothing without auth: those clients are told apart by address.
    pub fn client_token<'a>(&self, authorization: Option<&'a [u8]>) -> Option<&'a str> {
        match self {
            Auth::Jwt(_) => bearer(authorization).ok(),
            Auth::Open | Auth::SharedToken(_) => None,
        }
    }
}

fn bearer(header: Option<&[u8]>) -> Result<&str, Refusal> {
    let header = header.ok_or(Refusal::Unauthorized("the Authorization header is required"))?;
    let header =
        std::str::from_utf8(header).map_err(|_| Refusal::Unauthorized("the Authorization header is not text"))?;
    let (scheme, token) =
        header.split_once(' ').ok_or(Refusal::Unauthorized("the Authorization header is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Unauthorized("only the Bearer scheme is accepted"));
    }
    Ok(token.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    a: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    p: Option<Permissions>,
}

#[derive(Deserialize)]
struct Permissions {
    #[serde(default)]
    rw: Option<Scope>,
    #[serde(default)]
    ro: Option<Scope>,
}

#[derive(Deserialize)]
struct Scope {
    #[serde(default)]
    ns: BTreeSet<String>,
}

fn jwt_access(key: &DecodingKey, token: &str, namespace: &str) -> Result<Access, Refusal> {
    let mut validation = Validation::new(Algorithm::EdDSA);
    // libSQL's tokens may live forever: `exp` is checked when present, not required.
    validation.required_spec_claims.clear();
    validation.validate_nbf = true;
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refusal::Unauthorized("the JWT has expired"),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => Refusal::Unauthorized("the JWT is not valid yet"),
            _ => Refusal::Unauthorized("the JWT is invalid"),
        })?
        .claims;
    let forbidden = || Refusal::Forbidden(format!("the token grants no access to namespace {namespace}"));
    if let Some(p) = &claims.p {
        let has = |scope: &Option<Scope>| scope.as_ref().is_some_and(|s| s.ns.contains(namespace));
        return if has(&p.rw) {
            Ok(Access::ReadWrite)
        } else if has(&p.ro) {
            Ok(Access::ReadOnly)
        } else {
            Err(forbidden())
        };
    }
    if claims.id.as_deref().is_some_and(|id| id != namespace) {
        return Err(forbidden());
    }
    match claims.a.as_deref() {
        None | Some("rw") => Ok(Access::ReadWrite),
        Some("ro") => Ok(Access::ReadOnly),
        Some(_) => Err(Refusal::Unauthorized("the JWT's `a` claim is neither \"rw\" nor \"ro\"")),
    }
}
