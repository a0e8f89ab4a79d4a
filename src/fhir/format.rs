//! Content negotiation and the HTTP shape of FHIR answers: request body
//! extraction (content type, size limit, strict JSON parse), `_format`,
//! `Accept`, `_pretty`, `Prefer`, and turning an [`Answer`] into a response.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{FromRequest, Request},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};

use crate::{
    app::AppState,
    error::{ApiError, Issue, operation_outcome},
    json::{self, Value},
};

/// How the client wants the answer written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Format {
    /// Reply as `application/json` instead of `application/fhir+json`.
    pub plain_json: bool,
    pub pretty: bool,
}

/// Reads `_format`, `_pretty` and `Accept`; refuses formats other than JSON (406).
pub fn negotiate(headers: &HeaderMap, query: &[(String, String)]) -> Result<Format, ApiError> {
    let mut f = Format::default();
    let mut explicit = None;
    for (k, v) in query {
        match k.as_str() {
            "_format" => explicit = Some(v.clone()),
            "_pretty" => f.pretty = v == "true",
            _ => {}
        }
    }
    if let Some(fmt) = explicit {
        // An unencoded `+` in a query string arrives as a space: `application/fhir json`.
        match fmt.split(';').next().unwrap_or("").trim().replace(' ', "+").as_str() {
            "json" | "application/fhir+json" | "application/json+fhir" => {}
            "application/json" => f.plain_json = true,
            other => {
                return Err(ApiError::NotAcceptable(format!(
                    "_format `{other}` is not supported; this server speaks JSON (json, application/fhir+json)"
                )));
            }
        }
        return Ok(f);
    }
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let types: Vec<&str> = accept.split(',').map(|t| t.split(';').next().unwrap_or("").trim()).collect();
        let fhir = types.iter().any(|t| matches!(*t, "application/fhir+json" | "application/json+fhir"));
        let any = types.iter().any(|t| matches!(*t, "*/*" | "application/*" | ""));
        let plain = types.contains(&"application/json");
        if !(fhir || any || plain) {
            return Err(ApiError::NotAcceptable(format!(
                "cannot answer in `{accept}`; this server speaks application/fhir+json and application/json"
            )));
        }
        f.plain_json = plain && !fhir;
    }
    Ok(f)
}

/// What `Prefer: return=…` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Return {
    #[default]
    Representation,
    Minimal,
    OperationOutcome,
}

/// `Prefer` header values that matter here.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prefer {
    pub ret: Return,
    /// `handling=strict`: unknown search parameters are an error.
    pub strict: bool,
}

pub fn prefer(headers: &HeaderMap) -> Prefer {
    let mut p = Prefer::default();
    for v in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
        for part in v.split([',', ';']).map(str::trim) {
            match part {
                "return=minimal" => p.ret = Return::Minimal,
                "return=representation" => p.ret = Return::Representation,
                "return=OperationOutcome" => p.ret = Return::OperationOutcome,
                "handling=strict" => p.strict = true,
                "handling=lenient" => p.strict = false,
                _ => {}
            }
        }
    }
    p
}

/// A body of an answer.
#[derive(Clone, Debug)]
pub enum Payload {
    None,
    /// Stored JSON text, sent as is.
    Text(Arc<str>),
    Json(Value),
}

/// The result of one FHIR interaction, before it is written as HTTP or as a Bundle entry.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// `Type/id/_history/v`, relative to the base.
    pub location: Option<String>,
    pub version: Option<i64>,
    pub last_modified_ms: Option<i64>,
    pub payload: Payload,
    /// The resources this answer shows or changed, for the audit trail.
    pub seen: Vec<Seen>,
    /// Whether the audit entry was already written (with the change, in its transaction).
    pub audited: bool,
}

/// A resource an interaction showed or changed: its reference and the patients it is about.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `Type/id`.
    pub reference: String,
    /// `Patient/id` references, space-separated.
    pub patients: std::sync::Arc<str>,
}

impl Seen {
    pub fn of(s: &crate::store::Stored) -> Seen {
        Seen { reference: format!("{}/{}", s.ty, s.id), patients: s.patients.clone() }
    }
}

impl Answer {
    pub fn new(status: StatusCode, payload: Payload) -> Self {
        Answer {
            status,
            location: None,
            version: None,
            last_modified_ms: None,
            payload,
            seen: Vec::new(),
            audited: false,
        }
    }

    /// Applies `Prefer: return=…` to a write's answer.
    pub fn with_return(mut self, ret: Return) -> Self {
        match ret {
            Return::Representation => {}
            Return::Minimal => self.payload = Payload::None,
            Return::OperationOutcome => {
                let msg = match self.status {
                    StatusCode::CREATED => "created",
                    _ => "done",
                };
                self.payload = Payload::Json(operation_outcome(&[Issue::information("informational", msg)]));
            }
        }
        self
    }

    /// Writes the answer as an HTTP response for the client's format; `base` makes `Location` absolute.
    pub fn into_http(self, format: Format, base: &str) -> Response {
        let body = match self.payload {
            Payload::None => None,
            Payload::Text(t) if !format.pretty => Some(t.to_string()),
            Payload::Text(t) => Some(json::parse(t.as_bytes()).map(|v| v.to_json_pretty()).unwrap_or(t.to_string())),
            Payload::Json(v) if format.pretty => Some(v.to_json_pretty()),
            Payload::Json(v) => Some(v.to_json()),
        };
        let mut resp = match body {
            Some(b) => {
                let mut r = Response::new(Body::from(b));
                r.headers_mut().insert(header::CONTENT_TYPE, content_type(format));
                r
            }
            None => Response::new(Body::empty()),
        };
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if let Some(v) = self.version
            && let Ok(v) = HeaderValue::from_str(&format!("W/\"{v}\""))
        {
            h.insert(header::ETAG, v);
        }
        if let Some(ms) = self.last_modified_ms
            && let Ok(v) = HeaderValue::from_str(&http_date(ms))
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        if let Some(loc) = self.location
            && let Ok(v) = HeaderValue::from_str(&format!("{base}/{loc}"))
        {
            h.insert(header::LOCATION, v.clone());
            h.insert(header::CONTENT_LOCATION, v);
        }
        resp
    }
}

pub fn content_type(format: Format) -> HeaderValue {
    HeaderValue::from_static(if format.plain_json { "application/json; charset=utf-8" } else { super::FHIR_JSON })
}

/// RFC 7231 date for `Last-Modified`.
pub fn http_date(ms: i64) -> String {
    use chrono::{Datelike, Timelike};
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().num_days_from_monday() as usize],
        t.day(),
        MONTHS[t.month0() as usize],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// FHIR instant text (`2026-11-23T17:45:00.123Z`) for `meta.lastUpdated`
/// (written out directly: on every audit entry, chrono's format strings were
/// parsed anew each time).
pub fn instant(ms: i64) -> String {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_millis().min(999)
    )
}

/// A JSON request body: content type checked (415), size limited (413), parsed strictly (400 with line, column and path).
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        check_json_content_type(ct)?;
        let bytes = read_body(req.into_body(), state.config.server.max_body_bytes).await?;
        parse_body(&bytes).map(JsonBody)
    }
}

/// Accepts `application/fhir+json`, `application/json` (and the DSTU2-era `application/json+fhir`).
pub fn check_json_content_type(ct: &str) -> Result<(), ApiError> {
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/fhir+json" | "application/json" | "application/json+fhir" => Ok(()),
        "" => Err(ApiError::UnsupportedMediaType(
            "missing Content-Type; send application/fhir+json or application/json".into(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type `{other}` is not supported; send application/fhir+json or application/json"
        ))),
    }
}

/// Reads a body up to `limit` bytes; 413 beyond it.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::PayloadTooLarge(format!("request body exceeds the limit of {limit} bytes"))
        } else {
            ApiError::invalid("structure", "could not read the request body")
        }
    })
}

/// Parses JSON, reporting the position and path of the first problem.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("structure", "the request body is empty; a JSON resource is expected"));
    }
    json::parse(bytes).map_err(|e| {
        ApiError::invalid_at(
            "structure",
            format!("body is not valid JSON: {} at line {}, column {}", e.message, e.line, e.column),
            e.path,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_http_dates_match_their_formats() {
        for ms in [0, 1, 999, 1_700_000_000_123, 1_709_164_800_000, 4_102_444_799_999, 951_782_400_000] {
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            assert_eq!(instant(ms), t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), "{ms}");
            assert_eq!(http_date(ms), t.format("%a, %d %b %Y %H:%M:%S GMT").to_string(), "{ms}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn format_param_wins_over_accept_and_xml_is_refused() {
        let q = vec![("_format".to_string(), "xml".to_string())];
        assert!(matches!(negotiate(&HeaderMap::new(), &q), Err(ApiError::NotAcceptable(_))));
        let q = vec![("_format".to_string(), "application/fhir json".to_string())];
        assert!(!negotiate(&HeaderMap::new(), &q).unwrap().plain_json, "unencoded + in the query");
        let q = vec![("_format".to_string(), "application/json".to_string())];
        assert!(negotiate(&headers(&[("accept", "application/fhir+xml")]), &q).unwrap().plain_json);
        assert!(negotiate(&headers(&[("accept", "application/fhir+xml")]), &[]).is_err());
        assert!(!negotiate(&headers(&[("accept", "*/*")]), &[]).unwrap().plain_json);
    }

    #[test]
    fn prefer_header_is_read() {
        let p = prefer(&headers(&[("prefer", "return=minimal, handling=strict")]));
        assert_eq!(p.ret, Return::Minimal);
        assert!(p.strict);
    }

    #[test]
    fn content_types() {
        assert!(check_json_content_type("application/fhir+json; charset=utf-8").is_ok());
        assert!(check_json_content_type("application/json").is_ok());
        assert!(check_json_content_type("text/plain").is_err());
        assert!(check_json_content_type("").is_err());
    }

    #[test]
    fn bad_json_is_located() {
        let Err(ApiError::Invalid(issues)) = parse_body(b"{\"a\": [1, }") else { panic!("accepted") };
        assert!(issues[0].diagnostics.contains("line 1"), "{:?}", issues[0]);
        assert_eq!(issues[0].expression.as_deref(), Some("$.a[1]"));
    }

    #[test]
    fn instants_and_http_dates() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
