//! Authentication and authorisation: SMART Backend Services tokens for
//! machine clients.
//!
//! - **Token endpoint** ([`Auth::exchange`]): `client_credentials` with a
//!   JWT client assertion (RS384 or ES384) signed by a key from the client's
//!   registered JWKS; `iss` = `sub` = client id, `aud` = the token
//!   endpoint's URL, `exp` at most five minutes ahead, `jti` never reused.
//!   Errors are RFC 6749 ([`OAuthError`]).
//! - **Access tokens** are JWTs signed ES384 by the gateway (`typ` `at+jwt`,
//!   `kid` = RFC 7638 thumbprint of its key) with the claims `iss` (the
//!   issuer), `aud` (the issuer too: the gateway is its own resource
//!   server), `sub` and `client_id` (the client), `exp`, `iat`, `jti`,
//!   `scope` (narrowed to the registration), `org` (HSA-id) and, for
//!   municipal clients, `kommunkod`.
//! - **Verification** ([`Auth::verify_bearer`]): the gateway's own tokens, or
//!   — with `auth.jwks_url` — tokens of an external identity provider (its
//!   `iss`/`aud` must be `auth.jwks_issuer`/`auth.jwks_audience`; scopes from
//!   `scope` or `scp`, unknown scopes left out; organisation from the claim
//!   `org`, kommunkod from `kommunkod`, client from `client_id`, `azp` or
//!   `sub`). Verified tokens are cached by SHA-256 until they expire, so the
//!   hot path is one hash and one map lookup.
//! - **Scopes** ([`scope`]), the **configuration** ([`config`]), **keys**
//!   ([`keys`]) and the HTTP handlers ([`layer`]).
//!
//! Clocks are passed in (`now`, Unix seconds) and allowed [`CLOCK_SKEW_SECS`]
//! of skew. Tokens and assertions are never logged nor echoed in errors.

pub mod config;
mod error;
pub mod keys;
pub mod layer;
pub mod scope;
mod token;
mod verify;

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::{Context, anyhow};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Serialize;
use serde_json::{Value, json};

pub use config::{AuthConfig, ClientConfig};
pub use error::{AuthError, OAuthError, OAuthErrorCode};
pub use keys::{ClientSigner, GeneratedKeys, KeyAlg, generate_client_keys};
pub use scope::{Action, ScopeError, ScopeSet, narrow};
pub use verify::{BoxFuture, HttpJwksFetcher, JwksFetcher};

use keys::{SigningKey, VerifyKey};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// How far ahead a client assertion's `exp` may lie (SMART Backend Services: five minutes).
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// The authenticated client of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The client id (`sub`/`client_id` of the token).
    pub client_id: String,
    /// HSA-id of the client's organisation.
    pub organization: String,
    /// Kommunkod, for municipal clients.
    pub municipality: Option<String>,
    /// What the token allows.
    pub scopes: ScopeSet,
    /// The token's `jti`, for the audit trail.
    pub token_id: String,
}

impl Caller {
    /// Region clients (no kommunkod) read across municipalities.
    pub fn is_region(&self) -> bool {
        self.municipality.is_none()
    }
}

/// The token endpoint's successful answer (RFC 6749 section 5.1).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    /// The access token (a JWT).
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The granted scopes, space-separated.
    pub scope: String,
}

impl std::fmt::Debug for TokenResponse {
    /// Leaves the token out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A granted token request: the answer and whom it was granted to (for the audit trail).
#[derive(Clone, Debug)]
pub struct Grant {
    /// The client the token was issued to.
    pub client_id: String,
    /// HSA-id of its organisation.
    pub organization: String,
    /// Kommunkod, for municipal clients.
    pub municipality: Option<String>,
    /// What goes back to the client.
    pub response: TokenResponse,
    /// `client id` and `jti` of the assertion, to record beyond this process
    /// (see [`crate::store::Store::claim_assertion`]), and until when (ms).
    pub assertion_key: String,
    pub assertion_expires_ms: i64,
}

/// A registered client with its keys loaded.
struct Client {
    id: String,
    organization: String,
    municipality: Option<String>,
    scopes: ScopeSet,
    keys: Vec<VerifyKey>,
}

/// Token issuing and verification, built once at start from [`AuthConfig`].
pub struct Auth {
    issuer: String,
    token_endpoint: String,
    lifetime_secs: u64,
    signing: SigningKey,
    clients: HashMap<String, Client>,
    /// `(client id, jti)` of accepted assertions, each kept until its `exp` + skew.
    replay: moka::sync::Cache<(String, String), Duration>,
    /// Verified access tokens by SHA-256, each kept until its `exp`.
    verified: moka::sync::Cache<[u8; 32], Arc<verify::Verified>>,
    external: Option<Arc<verify::External>>,
}

/// moka expiry for caches whose values carry their own time to live.
struct OwnTtl;

impl<K> moka::Expiry<K, Duration> for OwnTtl {
    fn expire_after_create(&self, _: &K, ttl: &Duration, _: std::time::Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

impl<K> moka::Expiry<K, Arc<verify::Verified>> for OwnTtl {
    fn expire_after_create(&self, _: &K, v: &Arc<verify::Verified>, _: std::time::Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

impl Auth {
    /// Loads the signing key and every client's JWKS. `token_endpoint_url` is the absolute URL
    /// of `POST /auth/token`, the `aud` assertions must carry; without `auth.issuer`, the issuer
    /// is that URL without `/auth/token`. Errors name the configuration key at fault.
    pub fn from_config(config: &AuthConfig, token_endpoint_url: String) -> anyhow::Result<Auth> {
        config.validate().map_err(|e| anyhow!(e))?;
        let path = &config.signing_key;
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("auth.signing_key: cannot read `{}`", path.display()))?;
        let signing = SigningKey::from_pem(&pem).with_context(|| format!("auth.signing_key: `{}`", path.display()))?;
        let mut clients = HashMap::with_capacity(config.clients.len());
        for (i, c) in config.clients.iter().enumerate() {
            let keys = keys::load_client_jwks(&c.jwks).with_context(|| format!("auth.clients[{i}].jwks"))?;
            let scopes =
                ScopeSet::from_list(&c.scopes).map_err(|(j, e)| anyhow!("auth.clients[{i}].scopes[{j}]: {e}"))?;
            let client = Client {
                id: c.id.clone(),
                organization: c.organization.clone(),
                municipality: c.municipality.clone(),
                scopes,
                keys,
            };
            clients.insert(c.id.clone(), client);
        }
        let issuer = if config.issuer.is_empty() {
            token_endpoint_url.strip_suffix("/auth/token").unwrap_or(&token_endpoint_url).to_owned()
        } else {
            config.issuer.clone()
        };
        let external = match (&config.jwks_url, &config.jwks_issuer, &config.jwks_audience) {
            (Some(url), Some(iss), Some(aud)) => Some(Arc::new(verify::External::new(
                url.clone(),
                iss.clone(),
                aud.clone(),
                Arc::new(HttpJwksFetcher::new().context("auth.jwks_url")?),
            ))),
            _ => None,
        };
        tracing::info!(clients = clients.len(), kid = signing.kid(), issuer = %issuer, "token issuing ready");
        Ok(Auth {
            issuer,
            token_endpoint: token_endpoint_url,
            lifetime_secs: config.token_lifetime_secs.min(config::MAX_TOKEN_LIFETIME_SECS),
            signing,
            clients,
            replay: moka::sync::Cache::builder().expire_after(OwnTtl).build(),
            verified: moka::sync::Cache::builder().max_capacity(100_000).expire_after(OwnTtl).build(),
            external,
        })
    }

    /// Replaces how the external identity provider's JWKS is fetched (tests, proxies).
    pub fn with_jwks_fetcher(mut self, fetcher: Arc<dyn JwksFetcher>) -> Auth {
        if let Some(ext) = &self.external {
            self.external = Some(Arc::new(ext.with_fetcher(fetcher)));
        }
        self
    }

    /// The `iss` of the gateway's tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint URL assertions must name as `aud`.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The gateway's public signing keys, for `GET /.well-known/jwks.json`.
    pub fn public_jwks(&self) -> Value {
        json!({ "keys": [self.signing.public_jwk()] })
    }

    /// An access token for a registered client without an assertion, for
    /// `nara-gateway token issue` on the gateway's own host. `scope` is narrowed
    /// to the registration like a token request's (`None`: all registered scopes).
    pub fn issue_for(&self, client_id: &str, scope: Option<&str>, now: u64) -> Result<TokenResponse, OAuthError> {
        let client = self
            .clients
            .get(client_id)
            .ok_or_else(|| OAuthError::invalid_client(format!("`{client_id}` is not a registered client")))?;
        let granted = self.grant_scopes(client, scope.unwrap_or(""))?;
        self.issue(client, &granted, now)
    }

    /// Narrows the requested scopes to the client's registration; nothing left is `invalid_scope`.
    fn grant_scopes(&self, client: &Client, requested: &str) -> Result<ScopeSet, OAuthError> {
        let granted = narrow(requested, &client.scopes)
            .map_err(|e| OAuthError::invalid_scope(e.to_string()).for_client(&client.id))?;
        if granted.is_empty() {
            return Err(OAuthError::invalid_scope("none of the requested scopes is registered for this client")
                .for_client(&client.id));
        }
        Ok(granted)
    }

    /// Signs an access token.
    fn issue(&self, client: &Client, scopes: &ScopeSet, now: u64) -> Result<TokenResponse, OAuthError> {
        let scope = scopes.to_string();
        let claims = verify::AccessClaims {
            iss: self.issuer.clone(),
            sub: client.id.clone(),
            aud: self.issuer.clone(),
            exp: now + self.lifetime_secs,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: scope.clone(),
            org: client.organization.clone(),
            kommunkod: client.municipality.clone(),
            client_id: client.id.clone(),
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.signing.kid().to_owned());
        let access_token = jsonwebtoken::encode(&header, &claims, self.signing.encoding()).map_err(|e| {
            tracing::error!(error = %e, "signing an access token failed");
            OAuthError::invalid_request("the token could not be signed").for_client(&client.id)
        })?;
        Ok(TokenResponse { access_token, token_type: "bearer", expires_in: self.lifetime_secs, scope })
    }
}

/// `GET /.well-known/smart-configuration` (SMART App Launch 2.x, Backend Services).
/// The JWKS URI is the token endpoint's sibling `/.well-known/jwks.json`.
pub fn smart_configuration(token_endpoint: &str, issuer: &str) -> Value {
    let root = token_endpoint.strip_suffix("/auth/token").unwrap_or(issuer);
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{root}/.well-known/jwks.json"),
        "token_endpoint": token_endpoint,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": [
            "system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "system/*.*",
            "nara/ingest", "nara/admin"
        ],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    })
}

/// What a check may look at before any key is used: the JOSE header of a compact JWS.
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: bool,
}

/// Splits a compact JWS and reads its header; the payload comes back still encoded.
fn peek(token: &str) -> Result<(JoseHeader, &str), &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three dot-separated parts)");
    };
    let b64 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if header.is_empty() || payload.is_empty() || !b64(header) || !b64(payload) || !b64(signature) {
        return Err("not a JWT (base64url parts)");
    }
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| "the JWT header is not base64url")?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err("the JWT header is not a JSON object");
    };
    let text = |name: &str| match map.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err("a JWT header member is not a string"),
    };
    let alg = text("alg")?.ok_or("the JWT header has no alg")?;
    Ok((JoseHeader { alg, kid: text("kid")?, typ: text("typ")?, crit: map.contains_key("crit") }, payload))
}

/// The decoded, unverified payload of a JWT: only to find which key to verify with.
fn peek_claims(payload: &str) -> Option<serde_json::Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// An RFC 7519 NumericDate as whole seconds (fractions dropped; negative or huge refused).
fn numeric_date(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15).map(|f| f as u64))
        }
        _ => None,
    }
}

/// jsonwebtoken validation that only checks the signature with `alg`: every claim is
/// checked by this module against the `now` it was given.
fn signature_only(alg: jsonwebtoken::Algorithm) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

#[cfg(test)]
mod tests;
