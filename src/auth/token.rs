//! The token endpoint's logic (`POST /auth/token`): SMART Backend Services
//! `client_credentials` with a `private_key_jwt` client assertion (RFC 7523).
//!
//! The order of checks matters: the assertion's algorithm is checked before
//! any key is touched, the client is found from the (still unverified)
//! `iss`, the signature is verified with the one key its `kid` names in that
//! client's JWKS — and only then are the claims trusted. The `jti` is
//! recorded last, so a refused assertion does not use it up.

use std::{collections::HashMap, time::Duration};

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::{
    Auth, CLOCK_SKEW_SECS, Grant, MAX_ASSERTION_LIFETIME_SECS, OAuthError, keys::alg_name, numeric_date, peek,
    peek_claims, signature_only,
};

/// Largest accepted form body.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Largest accepted client assertion.
const MAX_ASSERTION_BYTES: usize = 16 * 1024;
/// Longest accepted `jti`.
const MAX_JTI_CHARS: usize = 256;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The form fields this endpoint reads; others are ignored (RFC 6749 section 3.2).
const FIELDS: [&str; 5] = ["grant_type", "client_assertion_type", "client_assertion", "scope", "client_id"];

impl Auth {
    /// Handles a token request: `form_body` is the `application/x-www-form-urlencoded`
    /// body, `now` the time in Unix seconds. On success the [`Grant`] holds the
    /// response and the client it was issued to.
    pub fn exchange(&self, form_body: &[u8], now: u64) -> Result<Grant, OAuthError> {
        let form = parse_form(form_body)?;
        let field = |name: &str| form.get(name).map(String::as_str);
        match field("grant_type") {
            None => return Err(OAuthError::invalid_request("`grant_type` is missing")),
            Some("client_credentials") => {}
            Some(_) => {
                return Err(OAuthError::unsupported_grant_type("only `client_credentials` is supported"));
            }
        }
        match field("client_assertion_type") {
            None => return Err(OAuthError::invalid_request("`client_assertion_type` is missing")),
            Some(JWT_BEARER) => {}
            Some(_) => {
                return Err(OAuthError::invalid_client(format!(
                    "unsupported client authentication: `client_assertion_type` must be `{JWT_BEARER}`"
                )));
            }
        }
        let assertion = field("client_assertion")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| OAuthError::invalid_request("`client_assertion` is missing"))?;
        if assertion.len() > MAX_ASSERTION_BYTES {
            return Err(OAuthError::invalid_request("`client_assertion` is too large"));
        }
        let (client, assertion_key, assertion_expires) =
            self.authenticate_client(assertion, field("client_id"), now)?;
        let scopes = self.grant_scopes(client, field("scope").unwrap_or(""))?;
        let response = self.issue(client, &scopes, now)?;
        tracing::info!(client.id = %client.id, scope = %response.scope, "access token issued");
        Ok(Grant {
            client_id: client.id.clone(),
            organization: client.organization.clone(),
            municipality: client.municipality.clone(),
            response,
            assertion_key,
            assertion_expires_ms: i64::try_from(assertion_expires.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// Verifies the client assertion and returns the client it authenticates,
    /// with the assertion's replay key (SHA-256 of client id and `jti`, hex)
    /// and the time (s) until which it must be remembered.
    fn authenticate_client(
        &self,
        assertion: &str,
        form_client_id: Option<&str>,
        now: u64,
    ) -> Result<(&super::Client, String, u64), OAuthError> {
        fn bad(msg: impl Into<String>) -> OAuthError {
            OAuthError::invalid_client(msg)
        }
        let (header, payload) = peek(assertion).map_err(|e| bad(format!("the client assertion is malformed: {e}")))?;
        let alg = match header.alg.as_str() {
            "RS384" => Algorithm::RS384,
            "ES384" => Algorithm::ES384,
            "none" => return Err(bad("unsigned client assertions (alg none) are not accepted")),
            _ => return Err(bad("the client assertion must be signed with RS384 or ES384")),
        };
        if header.crit {
            return Err(bad("the client assertion's header has critical extensions (crit), which are not supported"));
        }
        let kid = header.kid.ok_or_else(|| bad("the client assertion's header has no kid"))?;
        let unverified = peek_claims(payload).ok_or_else(|| bad("the client assertion's claims are not JSON"))?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the client assertion has no iss (the client id)"))?;
        let client =
            self.clients.get(iss).ok_or_else(|| bad("the client assertion's iss is not a registered client"))?;
        let bad = |msg: &str| bad(msg).for_client(&client.id);
        if form_client_id.is_some_and(|id| id != client.id) {
            return Err(bad("`client_id` does not match the client assertion's iss"));
        }
        let key = client
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| bad("the client assertion's kid is not a key registered for this client"))?;
        if !key.algs.contains(&alg) {
            return Err(bad(&format!("the key named by kid is not registered for {}", alg_name(alg))));
        }
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(assertion, &key.key, &signature_only(alg))
            .map_err(|_| bad("the client assertion's signature does not verify with the registered key"))?
            .claims;

        // From here on the claims are the client's own.
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(client.id.as_str()) || text("sub") != Some(client.id.as_str()) {
            return Err(bad("the client assertion's iss and sub must both be the client id"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.token_endpoint,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(self.token_endpoint.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(bad(&format!(
                "the client assertion's aud must be the token endpoint `{}`",
                self.token_endpoint
            )));
        }
        let exp =
            claims.get("exp").and_then(numeric_date).ok_or_else(|| bad("the client assertion has no valid exp"))?;
        if now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(bad("the client assertion has expired"));
        }
        if exp > now + MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS {
            return Err(bad("the client assertion's exp is more than five minutes ahead"));
        }
        for name in ["iat", "nbf"] {
            match claims.get(name) {
                None => {}
                Some(v) => match numeric_date(v) {
                    Some(t) if t <= now + CLOCK_SKEW_SECS => {}
                    Some(_) => return Err(bad(&format!("the client assertion's {name} lies in the future"))),
                    None => return Err(bad(&format!("the client assertion's {name} is not a NumericDate"))),
                },
            }
        }
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.chars().count() <= MAX_JTI_CHARS)
            .ok_or_else(|| bad("the client assertion needs a jti (1 to 256 characters)"))?;
        // Atomically: the first use of (client, jti) records it until the assertion can no longer be valid.
        let ttl = Duration::from_secs(exp.saturating_add(CLOCK_SKEW_SECS).saturating_sub(now).max(1));
        let entry = self.replay.entry((client.id.clone(), jti.to_owned())).or_insert_with(|| ttl);
        if !entry.is_fresh() {
            tracing::warn!(client.id = %client.id, "a client assertion was replayed");
            return Err(bad("the client assertion's jti was already used"));
        }
        let key = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::new().chain_update(client.id.as_bytes()).chain_update([0]).chain_update(jti).finalize())
        };
        Ok((client, key, exp.saturating_add(CLOCK_SKEW_SECS)))
    }
}

/// Parses an `application/x-www-form-urlencoded` body: `+` is a space, `%XX` a byte, values
/// must be UTF-8, and none of the fields this endpoint reads may appear twice.
fn parse_form(body: &[u8]) -> Result<HashMap<&'static str, String>, OAuthError> {
    if body.len() > MAX_FORM_BYTES {
        return Err(OAuthError::invalid_request("the token request is too large"));
    }
    let mut form = HashMap::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name = decode_component(name)?;
        let Some(&known) = FIELDS.iter().find(|f| **f == name) else { continue };
        let value = decode_component(value)?;
        if form.insert(known, value).is_some() {
            return Err(OAuthError::invalid_request(format!("`{known}` is given more than once")));
        }
    }
    Ok(form)
}

fn decode_component(raw: &[u8]) -> Result<String, OAuthError> {
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    percent_encoding::percent_decode(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| OAuthError::invalid_request("the form body is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_plus_percent_and_duplicates() {
        let form = parse_form(b"grant_type=client_credentials&scope=system%2F*.rs+nara%2Fingest&other=1&other=2")
            .expect("parses");
        assert_eq!(form["scope"], "system/*.rs nara/ingest");
        assert_eq!(form["grant_type"], "client_credentials");
        assert!(!form.contains_key("other"));
        let err = parse_form(b"scope=a&grant_type=x&scope=b").expect_err("duplicate");
        assert_eq!(err.code(), super::super::OAuthErrorCode::InvalidRequest);
        assert!(err.description().contains("`scope`"));
        assert!(parse_form(b"scope=%FF").is_err(), "not UTF-8");
        assert!(parse_form(&vec![b'a'; MAX_FORM_BYTES + 1]).is_err());
        assert_eq!(parse_form(b"&&grant_type&").expect("parses")["grant_type"], "");
    }
}
