//! Bearer-token verification: the gateway's own ES384 access tokens and,
//! when configured, an external identity provider's tokens, whose JWKS is
//! fetched through a [`JwksFetcher`] (reqwest in production), cached in
//! moka and fetched again when a token names an unknown `kid` — at most
//! once per [`REFETCH_INTERVAL_SECS`].
//!
//! Every verified token is cached by the SHA-256 of its text until its
//! `exp`, so a repeated token costs one hash and one lookup.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Auth, AuthError, CLOCK_SKEW_SECS, Caller, ScopeSet,
    keys::{EXTERNAL_ALGORITHMS, VerifyKey, alg_name, parse_external_jwks},
    numeric_date, peek, signature_only,
};

/// Shortest interval between two fetches of the external JWKS, in seconds.
pub const REFETCH_INTERVAL_SECS: u64 = 30;

/// Longest accepted access token.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Largest accepted external JWKS document.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A boxed, sendable future (what [`JwksFetcher`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches a JWKS document: the seam between verification and the network.
pub trait JwksFetcher: Send + Sync {
    /// The body of `GET url`.
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, anyhow::Result<String>>;
}

/// [`JwksFetcher`] over HTTPS with reqwest: 5 s to connect, 10 s in all, at most 1 MiB.
pub struct HttpJwksFetcher {
    client: reqwest::Client,
}

impl HttpJwksFetcher {
    /// A fetcher with the gateway's timeouts.
    pub fn new() -> anyhow::Result<HttpJwksFetcher> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("nara-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client for the JWKS")?;
        Ok(HttpJwksFetcher { client })
    }
}

impl JwksFetcher for HttpJwksFetcher {
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, anyhow::Result<String>> {
        Box::pin(async move {
            let mut response = self.client.get(url).header("accept", "application/json").send().await?;
            if !response.status().is_success() {
                bail!("the JWKS URL answered {}", response.status());
            }
            if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                bail!("the JWKS is larger than {MAX_JWKS_BYTES} bytes");
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    bail!("the JWKS is larger than {MAX_JWKS_BYTES} bytes");
                }
                body.extend_from_slice(&chunk);
            }
            String::from_utf8(body).context("the JWKS is not UTF-8")
        })
    }
}

/// The claims of the gateway's access tokens.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub scope: String,
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kommunkod: Option<String>,
    pub client_id: String,
}

/// A verified token as cached.
pub(super) struct Verified {
    caller: Caller,
    exp: u64,
    /// How long the cache keeps it (until `exp`, as seen when it was verified).
    pub ttl: Duration,
}

/// The external identity provider: where its keys are and what its tokens must say.
pub(super) struct External {
    url: String,
    issuer: String,
    audience: String,
    fetcher: Arc<dyn JwksFetcher>,
    keys: moka::sync::Cache<String, Arc<VerifyKey>>,
    /// Unix seconds of the last fetch attempt (successful or not).
    last_fetch: Mutex<Option<u64>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl External {
    pub(super) fn new(url: String, issuer: String, audience: String, fetcher: Arc<dyn JwksFetcher>) -> External {
        External {
            url,
            issuer,
            audience,
            fetcher,
            keys: moka::sync::Cache::builder().max_capacity(1024).build(),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn with_fetcher(&self, fetcher: Arc<dyn JwksFetcher>) -> External {
        External::new(self.url.clone(), self.issuer.clone(), self.audience.clone(), fetcher)
    }

    /// Takes the fetch slot when the last attempt is at least [`REFETCH_INTERVAL_SECS`] old.
    fn claim_fetch_slot(&self, now: u64) -> bool {
        let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if now < t.saturating_add(REFETCH_INTERVAL_SECS) => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Fetches the JWKS and makes it the key set: new keys are added before vanished ones
    /// are dropped, so a verification running meanwhile never sees an empty set.
    async fn fetch_and_store(&self) -> anyhow::Result<usize> {
        let body = self.fetcher.fetch(&self.url).await?;
        let keys = parse_external_jwks(&body).map_err(anyhow::Error::msg)?;
        let fresh: Vec<String> = keys.iter().map(|k| k.kid.clone()).collect();
        for key in keys {
            self.keys.insert(key.kid.clone(), Arc::new(key));
        }
        let stale: Vec<Arc<String>> = self.keys.iter().map(|(kid, _)| kid).filter(|kid| !fresh.contains(kid)).collect();
        for kid in stale {
            self.keys.invalidate(kid.as_str());
        }
        tracing::info!(url = %self.url, keys = fresh.len(), "identity provider keys fetched");
        Ok(fresh.len())
    }

    /// Waits for a fetch (rate-limited) and tells whether `kid` is known afterwards.
    async fn refresh_for(&self, kid: &str, now: u64) -> bool {
        let _one_at_a_time = self.fetching.lock().await;
        if self.keys.contains_key(kid) {
            return true; // fetched by someone else meanwhile
        }
        if !self.claim_fetch_slot(now) {
            return false;
        }
        if let Err(e) = self.fetch_and_store().await {
            tracing::warn!(url = %self.url, error = %e, "identity provider keys could not be fetched");
        }
        self.keys.contains_key(kid)
    }

    /// Starts a rate-limited fetch in the background (when running inside tokio).
    fn schedule_refresh(self: &Arc<Self>, now: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if !self.claim_fetch_slot(now) {
            return;
        }
        let me = Arc::clone(self);
        runtime.spawn(async move {
            let _one_at_a_time = me.fetching.lock().await;
            if let Err(e) = me.fetch_and_store().await {
                tracing::warn!(url = %me.url, error = %e, "identity provider keys could not be fetched");
            }
        });
    }
}

impl Auth {
    /// Verifies an `Authorization` header value (`Bearer <token>`) at `now` (Unix seconds).
    ///
    /// Never waits: a token of the external identity provider signed with a key not yet
    /// known fails with [`AuthError::UnknownKey`] and starts a (rate-limited) refetch in
    /// the background; [`Auth::verify_bearer_async`] waits for that refetch instead.
    pub fn verify_bearer(&self, authorization_header_value: &str, now: u64) -> Result<Caller, AuthError> {
        self.verify(authorization_header_value, now, true)
    }

    /// Like [`Auth::verify_bearer`], but when the external identity provider's token names
    /// an unknown `kid`, fetches its JWKS again (at most once per 30 s) and retries once.
    pub async fn verify_bearer_async(&self, authorization_header_value: &str, now: u64) -> Result<Caller, AuthError> {
        match self.verify(authorization_header_value, now, false) {
            Err(AuthError::UnknownKey) => {
                let (Some(ext), Ok(token)) = (&self.external, bearer_token(authorization_header_value)) else {
                    return Err(AuthError::UnknownKey);
                };
                let kid = peek(token).ok().and_then(|(h, _)| h.kid).unwrap_or_default();
                if ext.refresh_for(&kid, now).await {
                    self.verify(authorization_header_value, now, false)
                } else {
                    Err(AuthError::UnknownKey)
                }
            }
            other => other,
        }
    }

    /// Fetches the external identity provider's JWKS now (at start-up, say), whatever the
    /// rate limit. Returns how many usable keys it holds; without `auth.jwks_url`, 0.
    pub async fn refresh_external_keys(&self) -> anyhow::Result<usize> {
        let Some(ext) = &self.external else { return Ok(0) };
        let _one_at_a_time = ext.fetching.lock().await;
        ext.fetch_and_store().await
    }

    fn verify(&self, header_value: &str, now: u64, schedule_refresh: bool) -> Result<Caller, AuthError> {
        let token = bearer_token(header_value)?;
        let hash: [u8; 32] = sha256(token.as_bytes());
        if let Some(hit) = self.verified.get(&hash) {
            if now > hit.exp.saturating_add(CLOCK_SKEW_SECS) {
                self.verified.invalidate(&hash);
                return Err(AuthError::Expired);
            }
            return Ok(hit.caller.clone());
        }
        let (caller, exp) = self.verify_uncached(token, &hash, now, schedule_refresh)?;
        let ttl = Duration::from_secs(exp.saturating_add(CLOCK_SKEW_SECS).saturating_sub(now).max(1));
        self.verified.insert(hash, Arc::new(Verified { caller: caller.clone(), exp, ttl }));
        Ok(caller)
    }

    fn verify_uncached(
        &self,
        token: &str,
        hash: &[u8; 32],
        now: u64,
        schedule_refresh: bool,
    ) -> Result<(Caller, u64), AuthError> {
        let (header, _) = peek(token).map_err(|_| AuthError::Malformed("not a JWT"))?;
        let alg = match header.alg.as_str() {
            "none" => return Err(AuthError::BadSignature("unsigned tokens (alg none) are not accepted")),
            name if name.starts_with("HS") => {
                return Err(AuthError::BadSignature("HMAC-signed tokens are not accepted"));
            }
            name => EXTERNAL_ALGORITHMS
                .into_iter()
                .find(|a| alg_name(*a) == name)
                .ok_or(AuthError::BadSignature("the signature algorithm is not accepted"))?,
        };
        if header.crit {
            return Err(AuthError::Malformed("critical header extensions (crit) are not supported"));
        }
        if header.kid.as_deref() == Some(self.signing.kid()) {
            if alg != Algorithm::ES384 {
                return Err(AuthError::BadSignature("the gateway's tokens are ES384"));
            }
            if !header
                .typ
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt"))
            {
                return Err(AuthError::Malformed("not an access token (typ)"));
            }
            return self.verify_own(token, now);
        }
        let Some(ext) = &self.external else {
            return Err(AuthError::BadSignature("the token is not signed by this gateway"));
        };
        let kid = header.kid.ok_or(AuthError::BadSignature("the token names no key (kid)"))?;
        let Some(key) = ext.keys.get(&kid) else {
            if schedule_refresh {
                ext.schedule_refresh(now);
            }
            return Err(AuthError::UnknownKey);
        };
        if !key.algs.contains(&alg) {
            return Err(AuthError::BadSignature("the algorithm does not match the key"));
        }
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &signature_only(alg))
            .map_err(|e| jwt_error(&e))?
            .claims;
        verify_external_claims(ext, &claims, hash, now)
    }

    /// The gateway's own token: signature, issuer, audience, times, and a still-registered client.
    fn verify_own(&self, token: &str, now: u64) -> Result<(Caller, u64), AuthError> {
        let claims: AccessClaims =
            jsonwebtoken::decode(token, self.signing.decoding(), &signature_only(Algorithm::ES384))
                .map_err(|e| jwt_error(&e))?
                .claims;
        if claims.iss != self.issuer {
            return Err(AuthError::WrongIssuerOrAudience("issuer"));
        }
        if claims.aud != self.issuer {
            return Err(AuthError::WrongIssuerOrAudience("audience"));
        }
        if now > claims.exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(AuthError::Expired);
        }
        if claims.iat > now + CLOCK_SKEW_SECS {
            return Err(AuthError::NotYetValid);
        }
        let client = self.clients.get(&claims.sub).ok_or(AuthError::UnknownClient)?;
        if claims.client_id != claims.sub {
            return Err(AuthError::Malformed("client_id and sub differ"));
        }
        if claims.org != client.organization || claims.kommunkod != client.municipality {
            // The registration changed since the token was issued.
            return Err(AuthError::UnknownClient);
        }
        let granted = ScopeSet::parse(&claims.scope).map_err(|_| AuthError::Malformed("scope"))?;
        Ok((
            Caller {
                client_id: client.id.clone(),
                organization: client.organization.clone(),
                municipality: client.municipality.clone(),
                // Never more than the client is registered for now.
                scopes: granted.intersection(&client.scopes),
                token_id: claims.jti,
            },
            claims.exp,
        ))
    }
}

/// The external identity provider's claims → a caller.
fn verify_external_claims(
    ext: &External,
    claims: &serde_json::Map<String, Value>,
    hash: &[u8; 32],
    now: u64,
) -> Result<(Caller, u64), AuthError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(ext.issuer.as_str()) {
        return Err(AuthError::WrongIssuerOrAudience("issuer"));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == ext.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(ext.audience.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(AuthError::WrongIssuerOrAudience("audience"));
    }
    let exp = claims.get("exp").and_then(numeric_date).ok_or(AuthError::Malformed("no valid exp"))?;
    if now > exp.saturating_add(CLOCK_SKEW_SECS) {
        return Err(AuthError::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(v) = claims.get(name) {
            let t = numeric_date(v).ok_or(AuthError::Malformed("nbf or iat is not a NumericDate"))?;
            if t > now + CLOCK_SKEW_SECS {
                return Err(AuthError::NotYetValid);
            }
        }
    }
    let client_id = text("client_id")
        .or_else(|| text("azp"))
        .or_else(|| text("sub"))
        .ok_or(AuthError::Malformed("no client_id, azp or sub"))?;
    let organization = text("org").filter(|o| !o.is_empty()).ok_or(AuthError::Malformed("no org (HSA-id) claim"))?;
    let municipality = match claims.get("kommunkod") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if k.len() == 4 && k.bytes().all(|b| b.is_ascii_digit()) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed("kommunkod is not four digits")),
    };
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => ScopeSet::parse_lenient(s.split_ascii_whitespace()),
        (None, Some(Value::String(s))) => ScopeSet::parse_lenient(s.split_ascii_whitespace()),
        (None, Some(Value::Array(list))) => ScopeSet::parse_lenient(list.iter().filter_map(Value::as_str)),
        _ => ScopeSet::default(),
    };
    let token_id = match text("jti") {
        Some(j) => j.to_owned(),
        None => format!("sha256:{}", hex_prefix(hash)),
    };
    Ok((
        Caller {
            client_id: client_id.to_owned(),
            organization: organization.to_owned(),
            municipality,
            scopes,
            token_id,
        },
        exp,
    ))
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer_token(value: &str) -> Result<&str, AuthError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed("expected `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("expected `Bearer <token>`"));
    }
    let token = token.trim_start();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("the token is empty or too long"));
    }
    Ok(token)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex_prefix(hash: &[u8; 32]) -> String {
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// jsonwebtoken's error → ours, without any detail from the token.
fn jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature("it does not verify with the signer's key"),
        _ => AuthError::Malformed("the claims are not what an access token needs"),
    }
}
