//! The two ways authentication says no: [`OAuthError`] from the token
//! endpoint (RFC 6749 section 5.2) and [`AuthError`] for a bearer token on
//! any other request (RFC 6750 section 3). Descriptions never contain the
//! token or the assertion, nor anything copied out of them.

use axum::http::StatusCode;
use serde_json::{Value, json};

/// The RFC 6749 error codes the token endpoint answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OAuthErrorCode {
    /// A parameter is missing, repeated or malformed (400).
    InvalidRequest,
    /// Client authentication failed: unknown client, bad assertion, replay (401).
    InvalidClient,
    /// The grant is invalid (400). Assertion failures are `invalid_client` (RFC 7523 section 3.2).
    InvalidGrant,
    /// The requested scope is malformed or covers nothing the client is registered for (400).
    InvalidScope,
    /// `grant_type` is not `client_credentials` (400).
    UnsupportedGrantType,
}

impl OAuthErrorCode {
    /// The code as it appears in the `error` member.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
        }
    }
}

/// A refused token request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    code: OAuthErrorCode,
    description: String,
    client_id: Option<String>,
}

impl OAuthError {
    /// An error with `code` and a description for the client. Characters RFC 6749 does not
    /// allow in `error_description` (quotes, backslashes, non-ASCII) become `?`.
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> OAuthError {
        let description = description
            .into()
            .chars()
            .map(|c| if (' '..='~').contains(&c) && c != '"' && c != '\\' { c } else { '?' })
            .take(500)
            .collect();
        OAuthError { code, description, client_id: None }
    }

    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthErrorCode::InvalidRequest, description)
    }

    /// `invalid_client`.
    pub fn invalid_client(description: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthErrorCode::InvalidClient, description)
    }

    /// `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthErrorCode::InvalidGrant, description)
    }

    /// `invalid_scope`.
    pub fn invalid_scope(description: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthErrorCode::InvalidScope, description)
    }

    /// `unsupported_grant_type`.
    pub fn unsupported_grant_type(description: impl Into<String>) -> OAuthError {
        OAuthError::new(OAuthErrorCode::UnsupportedGrantType, description)
    }

    /// Attaches the registered client the request was made for (for the audit trail).
    pub fn for_client(mut self, client_id: &str) -> OAuthError {
        self.client_id = Some(client_id.to_owned());
        self
    }

    /// The error code.
    pub fn code(&self) -> OAuthErrorCode {
        self.code
    }

    /// The human-readable description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The registered client the request named, when the assertion named one
    /// (whether or not its signature held): for auditing failed attempts.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// 401 for `invalid_client` (RFC 6749 section 5.2), 400 otherwise.
    pub fn status(&self) -> StatusCode {
        match self.code {
            OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON body: `{"error": …, "error_description": …}`.
    pub fn body(&self) -> Value {
        json!({ "error": self.code.as_str(), "error_description": self.description })
    }
}

/// Why a bearer token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (or an empty one).
    #[error("an access token is required (Authorization: Bearer …)")]
    Missing,
    /// Not a `Bearer` JWT, or its header or claims are not what a token needs.
    #[error("the access token is malformed: {0}")]
    Malformed(&'static str),
    /// Not signed by the gateway or the trusted identity provider, or with an algorithm not accepted.
    #[error("the access token's signature is not valid: {0}")]
    BadSignature(&'static str),
    /// Signed by a key (`kid`) of the identity provider that is not (yet) known.
    #[error("the access token is signed by an unknown key; try again shortly")]
    UnknownKey,
    /// Past its `exp` (beyond the clock-skew allowance).
    #[error("the access token has expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the clock-skew allowance).
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// Issued by someone else, or for someone else.
    #[error("the access token has the wrong {0}")]
    WrongIssuerOrAudience(&'static str),
    /// Issued to a client that is no longer registered.
    #[error("the access token's client is not registered")]
    UnknownClient,
}

impl AuthError {
    /// The `WWW-Authenticate` header value (RFC 6750 section 3): without an `error`
    /// attribute when no token was sent, `error="invalid_token"` otherwise.
    pub fn www_authenticate(&self) -> String {
        match self {
            AuthError::Missing => r#"Bearer realm="nara-gateway""#.to_owned(),
            other => {
                // Descriptions are fixed texts; strip anything a quoted-string cannot hold anyway.
                let description: String =
                    other.to_string().chars().filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c)).collect();
                format!(r#"Bearer realm="nara-gateway", error="invalid_token", error_description="{description}""#)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_errors_have_rfc_6749_codes_and_statuses() {
        let e = OAuthError::invalid_client("unknown client").for_client("lund-ehr");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.client_id(), Some("lund-ehr"));
        assert_eq!(e.body(), json!({"error": "invalid_client", "error_description": "unknown client"}));
        assert_eq!(e.to_string(), "invalid_client: unknown client");
        assert_eq!(OAuthError::invalid_scope("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(OAuthError::unsupported_grant_type("x").body()["error"], "unsupported_grant_type");
        assert_eq!(OAuthError::invalid_scope("`Malmö` \"x\"").description(), "`Malm?` ?x?");
    }

    #[test]
    fn www_authenticate_has_no_error_when_the_token_is_missing() {
        assert_eq!(AuthError::Missing.www_authenticate(), r#"Bearer realm="nara-gateway""#);
        assert_eq!(
            AuthError::Expired.www_authenticate(),
            r#"Bearer realm="nara-gateway", error="invalid_token", error_description="the access token has expired""#
        );
        // The description of a non-ASCII message is still a valid header value.
        let www = AuthError::WrongIssuerOrAudience("issuer").www_authenticate();
        assert!(www.is_ascii() && axum::http::HeaderValue::from_str(&www).is_ok());
    }
}
