//! The HTTP side of authentication: the middleware that turns a bearer token
//! (and, with mutual TLS, the client certificate) into the request's
//! [`Actor`], the token endpoint, and the SMART discovery document.
//!
//! Public without a token: health, metrics, `/fhir/metadata`, `.well-known`,
//! the token endpoint itself, and the NPÖ coverage reads. Everything else
//! needs a valid token; refusals are audited like every other access.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json,
    body::Bytes,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::Caller;
use crate::{
    access::Actor,
    app::AppState,
    audit::{self, Event},
    error::ApiError,
    tls::PeerIdentity,
};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Paths anyone may call.
fn is_public(method: &Method, path: &str) -> bool {
    matches!(path, "/health/live" | "/health/ready" | "/metrics" | "/fhir/metadata" | "/auth/token")
        || path.starts_with("/.well-known/")
        || (method == Method::GET && (path == "/npo" || path.starts_with("/api/npo/coverage")))
}

/// What a route needs beyond a valid token (per-resource scopes are checked by the interactions).
/// A route's extra need: the scope's name and the check.
type Requirement = (&'static str, fn(&Caller) -> bool);

fn route_requirement(method: &Method, path: &str) -> Option<Requirement> {
    if path == "/ingest" && method == Method::GET {
        return None;
    }
    if path.starts_with("/ingest") {
        return Some(("nara/ingest", |c: &Caller| c.scopes.has_ingest()));
    }
    if path.starts_with("/api/") && !(method == Method::GET && path.starts_with("/api/transfers/")) {
        return Some(("nara/admin", |c: &Caller| c.scopes.has_admin()));
    }
    if path == "/fhir/AuditEvent" || path.starts_with("/fhir/AuditEvent/") {
        return Some(("nara/admin", |c: &Caller| c.scopes.has_admin()));
    }
    None
}

/// A client's actor: bound to its organisation unless it is a region client or an administrator.
pub fn actor_for(caller: &Caller, address: Option<String>) -> Actor {
    Actor {
        client_id: caller.client_id.clone(),
        organization: caller.organization.clone(),
        municipality: caller.municipality.clone(),
        cross_org: caller.is_region() || caller.scopes.has_admin(),
        address,
        scopes: Some(Arc::new(caller.scopes.clone())),
    }
}

/// An unidentified caller, for auditing refusals.
fn anonymous(address: Option<String>) -> Actor {
    Actor {
        client_id: "anonymous".into(),
        organization: String::new(),
        municipality: None,
        cross_org: false,
        address,
        scopes: Some(Arc::new(super::ScopeSet::default())),
    }
}

/// Audits a refusal; when even that fails, the refusal becomes a 503.
async fn refuse(st: &AppState, actor: &Actor, request: &str, err: ApiError, www: Option<String>) -> Response {
    let reason = err.to_string();
    let entry = audit::Entry {
        actor,
        event: Event::Refused,
        status: err.status(),
        seen: &[],
        request: Some(request),
        reason: Some(&reason),
    };
    if let Err(e) = audit::append(st.store.as_ref(), &entry).await {
        tracing::error!(error = %e, "the audit entry of a refusal could not be written");
        return ApiError::Unavailable("the request could not be audited; try again".into()).into_response();
    }
    let mut response = err.into_response();
    if let Some(value) = www.and_then(|w| HeaderValue::from_str(&w).ok()) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The authentication middleware: verifies the token, checks it against the
/// client certificate and the route, and attaches the [`Actor`].
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if is_public(req.method(), &path) {
        return next.run(req).await;
    }
    let address = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let request_line = format!("{} {}", req.method(), req.uri());
    let Some(auth) = st.auth.as_ref() else {
        // Authentication switched off (development only; logged loudly at start).
        req.extensions_mut().insert(Arc::new(Actor::gateway_at(address)));
        return next.run(req).await;
    };
    let header_value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let caller = match auth.verify_bearer_async(header_value, unix_now()).await {
        Ok(c) => c,
        Err(e) => {
            let www = e.www_authenticate();
            return refuse(&st, &anonymous(address), &request_line, ApiError::Unauthorized(e.to_string()), Some(www))
                .await;
        }
    };
    let actor = actor_for(&caller, address);
    // With mutual TLS, the certificate's organisation must be the token's.
    let peer = req.extensions().get::<Option<PeerIdentity>>().cloned().flatten();
    if let Some(cert_org) = peer.as_ref().and_then(|p| p.organization_hsa_id.as_deref())
        && cert_org != caller.organization
    {
        let err =
            ApiError::Forbidden("the client certificate belongs to another organisation than the access token".into());
        return refuse(&st, &actor, &request_line, err, None).await;
    }
    if let Some((scope, has)) = route_requirement(req.method(), &path)
        && !has(&caller)
    {
        let err = ApiError::Forbidden(format!("this endpoint needs the scope `{scope}`"));
        let www = format!("Bearer realm=\"nara-gateway\", error=\"insufficient_scope\", scope=\"{scope}\"");
        return refuse(&st, &actor, &request_line, err, Some(www)).await;
    }
    req.extensions_mut().insert(Arc::new(actor));
    req.extensions_mut().insert(Arc::new(caller));
    next.run(req).await
}

/// `POST /auth/token`: SMART Backend Services client credentials.
pub async fn token(State(st): State<AppState>, req: Request) -> Response {
    let address = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let body: Bytes = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return ApiError::PayloadTooLarge("a token request is at most 64 KiB".into()).into_response(),
    };
    let Some(auth) = st.auth.as_ref() else {
        return ApiError::NotFound("authentication is switched off on this gateway".into()).into_response();
    };
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut result = if ct.split(';').next().unwrap_or("").trim() == "application/x-www-form-urlencoded" {
        auth.exchange(&body, unix_now())
    } else {
        Err(super::OAuthError::invalid_request("the token request must be application/x-www-form-urlencoded"))
    };
    // The in-memory replay check covers this process since it started; the
    // store covers restarts and the other replicas on the same database.
    if let Ok(grant) = &result {
        let now_ms = i64::try_from(unix_now().saturating_mul(1000)).unwrap_or(i64::MAX);
        match st.store.claim_assertion(&grant.assertion_key, grant.assertion_expires_ms, now_ms).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(client.id = %grant.client_id, "a client assertion was replayed");
                let id = grant.client_id.clone();
                result =
                    Err(super::OAuthError::invalid_client("the client assertion's jti was already used")
                        .for_client(&id));
            }
            Err(e) => {
                tracing::error!(error = %e, "a token request's assertion could not be recorded");
                return ApiError::Unavailable("the token request could not be completed; try again".into())
                    .into_response();
            }
        }
    }
    let (status, client, reason) = match &result {
        Ok(_) => (StatusCode::OK, None, None),
        Err(e) => (e.status(), e.client_id().map(str::to_owned), Some(e.to_string())),
    };
    let actor = match &result {
        Ok(t) => Actor {
            client_id: t.client_id.clone(),
            organization: t.organization.clone(),
            municipality: None,
            cross_org: false,
            address: address.clone(),
            scopes: None,
        },
        Err(_) => Actor { client_id: client.unwrap_or_else(|| "unknown".into()), ..anonymous(address) },
    };
    let entry = audit::Entry {
        actor: &actor,
        event: Event::Token,
        status,
        seen: &[],
        request: Some("POST /auth/token"),
        reason: reason.as_deref(),
    };
    if let Err(e) = audit::append(st.store.as_ref(), &entry).await {
        tracing::error!(error = %e, "the audit entry of a token request could not be written");
        return ApiError::Unavailable("the token request could not be audited; try again".into()).into_response();
    }
    let mut response = match result {
        Ok(t) => (StatusCode::OK, Json(t.response)).into_response(),
        Err(e) => (e.status(), Json(e.body())).into_response(),
    };
    // RFC 6749 5.1: token responses are never cached.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /.well-known/smart-configuration`.
pub async fn smart_configuration(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let base = st.public_root(&headers);
    let issuer = st.auth.as_ref().map_or_else(|| base.clone(), |a| a.issuer().to_owned());
    Json(super::smart_configuration(&format!("{base}/auth/token"), &issuer)).into_response()
}

/// `GET /.well-known/jwks.json`: the gateway's public signing keys.
pub async fn jwks(State(st): State<AppState>) -> Response {
    match st.auth.as_ref() {
        Some(a) => Json(a.public_jwks()).into_response(),
        None => ApiError::NotFound("authentication is switched off on this gateway".into()).into_response(),
    }
}
