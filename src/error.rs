//! One error type for the HTTP surface: every failure becomes a FHIR
//! `OperationOutcome` with an issue code, a message and, where known, the
//! location of the problem (FHIRPath expression or JSON path).

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::json::{Object, Value};

/// One issue of an OperationOutcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    /// `fatal`, `error`, `warning` or `information`.
    pub severity: &'static str,
    /// A code of http://hl7.org/fhir/issue-type (`invalid`, `structure`, `not-found`, …).
    pub code: &'static str,
    /// What is wrong, for people.
    pub diagnostics: String,
    /// Where: a FHIRPath expression such as `Observation.status`, or a JSON path.
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue { severity: "error", code, diagnostics: diagnostics.into(), expression: None }
    }
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }
    pub fn warning(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue { severity: "warning", code, diagnostics: diagnostics.into(), expression: None }
    }
    pub fn information(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue { severity: "information", code, diagnostics: diagnostics.into(), expression: None }
    }
}

/// Builds an OperationOutcome resource from issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let mut oo = Object::new();
    oo.insert("resourceType", "OperationOutcome".into());
    let list = issues
        .iter()
        .map(|i| {
            let mut o = Object::new();
            o.insert("severity", i.severity.into());
            o.insert("code", i.code.into());
            o.insert("diagnostics", i.diagnostics.as_str().into());
            if let Some(expr) = &i.expression {
                o.insert("expression", Value::Array(vec![expr.as_str().into()]));
            }
            Value::Object(o)
        })
        .collect();
    oo.insert("issue", Value::Array(list));
    Value::Object(oo)
}

/// Everything a request can fail with. Each variant names its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 — the request or its body is malformed or not valid FHIR.
    #[error("invalid request")]
    Invalid(Vec<Issue>),
    /// 401 — no valid credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403 — credentials valid but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404 — no such resource, type or route.
    #[error("not found: {0}")]
    NotFound(String),
    /// 405 — the route exists but not with this method.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// 406 — the requested `_format`/`Accept` cannot be produced.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// 409 — conflicts with the current state (e.g. concurrent change).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 410 — the resource was deleted.
    #[error("gone: {0}")]
    Gone(String),
    /// 412 — `If-Match` or a conditional operation's precondition failed.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// 413 — the body is larger than `server.max_body_bytes`.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// 415 — the body's content type is not JSON.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// 422 — well-formed but breaks a business rule.
    #[error("unprocessable")]
    Unprocessable(Vec<Issue>),
    /// 500 — a bug or an unexpected storage failure; logged, details not sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// 503 — storage or another dependency is unavailable; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// 400 with a single located issue.
    pub fn invalid_at(code: &'static str, diagnostics: impl Into<String>, expression: impl Into<String>) -> Self {
        ApiError::Invalid(vec![Issue::error(code, diagnostics).at(expression)])
    }
    /// 400 with a single unlocated issue.
    pub fn invalid(code: &'static str, diagnostics: impl Into<String>) -> Self {
        ApiError::Invalid(vec![Issue::error(code, diagnostics)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The issues this error is reported with.
    pub fn issues(&self) -> Vec<Issue> {
        let one = |code, msg: &str| vec![Issue::error(code, msg)];
        match self {
            ApiError::Invalid(issues) | ApiError::Unprocessable(issues) => issues.clone(),
            ApiError::Unauthorized(m) => one("login", m),
            ApiError::Forbidden(m) => one("forbidden", m),
            ApiError::NotFound(m) => one("not-found", m),
            ApiError::MethodNotAllowed(m) => one("not-supported", m),
            ApiError::NotAcceptable(m) => one("not-supported", m),
            ApiError::Conflict(m) => one("conflict", m),
            ApiError::Gone(m) => one("deleted", m),
            ApiError::PreconditionFailed(m) => one("conflict", m),
            ApiError::PayloadTooLarge(m) => one("too-costly", m),
            ApiError::UnsupportedMediaType(m) => one("not-supported", m),
            ApiError::Internal(_) => one("exception", "internal server error; the incident was logged"),
            ApiError::Unavailable(m) => one("transient", m),
        }
    }

    /// The OperationOutcome for this error.
    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed with an internal error");
        }
        let body = self.outcome().to_json();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::fhir::FHIR_JSON));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_location() {
        let e = ApiError::invalid_at("value", "bad date", "Patient.birthDate");
        let oo = e.outcome().to_json();
        assert_eq!(
            oo,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"value","diagnostics":"bad date","expression":["Patient.birthDate"]}]}"#
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn internal_error_hides_details() {
        let e = ApiError::Internal("db file corrupt at /secret/path".into());
        assert!(!e.outcome().to_json().contains("secret"));
    }
}
