//! HTTP handlers of the FHIR API: each reads the request, calls the matching
//! interaction and writes its answer in the negotiated format.

use axum::{
    Router,
    extract::{FromRequestParts, Path, RawQuery, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use std::sync::Arc;

use crate::{
    access::Actor,
    app::AppState,
    audit::{self, Event},
    error::ApiError,
    fhir::{
        bundle, capability,
        format::{self, Answer, Format, JsonBody},
        interactions::{self, ReadConditions},
        search::parse_query_string,
    },
};

/// The FHIR routes, mounted at `/fhir`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/fhir", post(base_post))
        .route("/fhir/", post(base_post))
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/_history", get(system_history))
        .route("/fhir/{ty}", get(search_get).post(create).put(conditional_update).delete(conditional_delete))
        .route("/fhir/{ty}/_search", post(search_post))
        .route("/fhir/{ty}/_history", get(type_history))
        .route("/fhir/{ty}/{id}", get(read).put(update).delete(delete))
        .route("/fhir/{ty}/{id}/_history", get(instance_history))
        .route("/fhir/{ty}/{id}/_history/{vid}", get(vread))
}

/// What every FHIR handler needs from the request: query pairs, headers, negotiated format and base URL.
pub struct Ctx {
    pub query: Vec<(String, String)>,
    /// The raw query string, for conditional operations' criteria.
    pub raw_query: String,
    pub headers: HeaderMap,
    pub format: Format,
    pub base: String,
    /// Who is asking (set by the authentication layer).
    pub actor: Arc<Actor>,
    /// `METHOD /path?query`, for the audit trail.
    pub request: String,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state).await.unwrap_or(RawQuery(None));
        let raw_query = raw.unwrap_or_default();
        let query = parse_query_string(&raw_query);
        let format = format::negotiate(&parts.headers, &query)?;
        let base = state.fhir_base(&parts.headers);
        let actor = parts
            .extensions
            .get::<Arc<Actor>>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("no credentials were presented".into()))?;
        let request = format!("{} {}", parts.method, parts.uri);
        Ok(Ctx { query, raw_query, headers: parts.headers.clone(), format, base, actor, request })
    }
}

/// The negotiated format and base of a request that needs no credentials.
struct MetaCtx {
    format: Format,
    base: String,
}

impl Ctx {
    fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Audits the outcome (unless the interaction already did, with its
    /// change) and only then writes the answer: nothing leaves unaudited.
    async fn reply(&self, st: &AppState, event: Event, result: Result<Answer, ApiError>) -> Response {
        let (status, seen, audited, reason) = match &result {
            Ok(a) => (a.status, a.seen.as_slice(), a.audited, None),
            Err(e) => (e.status(), &[][..], false, Some(e.to_string())),
        };
        if !audited {
            let entry = audit::Entry {
                actor: &self.actor,
                event,
                status,
                seen,
                request: Some(&self.request),
                reason: reason.as_deref(),
            };
            if let Err(e) = audit::append(st.store.as_ref(), &entry).await {
                tracing::error!(error = %e, "the audit entry could not be written; the answer is withheld");
                return ApiError::Unavailable("the access could not be audited; try again".into()).into_response();
            }
        }
        match result {
            Ok(a) => a.into_http(self.format, &self.base),
            Err(e) => e.into_response(),
        }
    }

    /// The conditional criteria: the query without `_format`/`_pretty`.
    fn criteria(&self) -> String {
        let kept: Vec<(String, String)> =
            self.query.iter().filter(|(k, _)| k != "_format" && k != "_pretty").cloned().collect();
        crate::fhir::search::encode_query(&kept)
    }
}

/// `GET /fhir/metadata` needs no token, so it has no [`Ctx`] actor.
async fn metadata(State(st): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let query = parse_query_string(raw.as_deref().unwrap_or(""));
    let ctx = match format::negotiate(&headers, &query) {
        Ok(format) => MetaCtx { format, base: st.fhir_base(&headers) },
        Err(e) => return e.into_response(),
    };
    let cs = capability::statement(&ctx.base, &st.started);
    Answer::new(StatusCode::OK, format::Payload::Json(cs)).into_http(ctx.format, &ctx.base)
}

async fn base_post(State(st): State<AppState>, ctx: Ctx, JsonBody(body): JsonBody) -> Response {
    let ret = format::prefer(&ctx.headers).ret;
    ctx.reply(&st, Event::Bundle, bundle::process(&st, &ctx.actor, body, ret, &ctx.base).await).await
}

async fn read(State(st): State<AppState>, ctx: Ctx, Path((ty, id)): Path<(String, String)>) -> Response {
    let cond = ReadConditions {
        if_none_match: ctx.header(header::IF_NONE_MATCH).map(str::to_owned),
        if_modified_since_ms: ctx
            .header(header::IF_MODIFIED_SINCE)
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.timestamp_millis()),
    };
    ctx.reply(&st, Event::Read, interactions::read(&st, &ctx.actor, &ty, &id, &cond).await).await
}

async fn vread(State(st): State<AppState>, ctx: Ctx, Path((ty, id, vid)): Path<(String, String, String)>) -> Response {
    ctx.reply(&st, Event::Vread, interactions::vread(&st, &ctx.actor, &ty, &id, &vid).await).await
}

async fn create(State(st): State<AppState>, ctx: Ctx, Path(ty): Path<String>, JsonBody(body): JsonBody) -> Response {
    let prefer = format::prefer(&ctx.headers);
    let if_none_exist = ctx.header("if-none-exist").map(str::to_owned);
    let result = interactions::create(&st, &ctx.actor, &ty, body, if_none_exist.as_deref(), &ctx.base).await;
    ctx.reply(&st, Event::Create, result.map(|a| a.with_return(prefer.ret))).await
}

async fn update(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((ty, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    let prefer = format::prefer(&ctx.headers);
    let result = interactions::update(&st, &ctx.actor, &ty, &id, body, ctx.header(header::IF_MATCH)).await;
    ctx.reply(&st, Event::Update, result.map(|a| a.with_return(prefer.ret))).await
}

async fn conditional_update(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(ty): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let prefer = format::prefer(&ctx.headers);
    let result = interactions::conditional_update(&st, &ctx.actor, &ty, &ctx.criteria(), body, &ctx.base).await;
    ctx.reply(&st, Event::Update, result.map(|a| a.with_return(prefer.ret))).await
}

async fn delete(State(st): State<AppState>, ctx: Ctx, Path((ty, id)): Path<(String, String)>) -> Response {
    ctx.reply(&st, Event::Delete, interactions::delete(&st, &ctx.actor, &ty, &id, ctx.header(header::IF_MATCH)).await)
        .await
}

async fn conditional_delete(State(st): State<AppState>, ctx: Ctx, Path(ty): Path<String>) -> Response {
    let result = interactions::conditional_delete(&st, &ctx.actor, &ty, &ctx.criteria(), &ctx.base).await;
    ctx.reply(&st, Event::Delete, result).await
}

async fn search_get(State(st): State<AppState>, ctx: Ctx, Path(ty): Path<String>) -> Response {
    let strict = format::prefer(&ctx.headers).strict;
    let result = interactions::search(&st, &ctx.actor, &ty, &ctx.query, strict, &ctx.base).await;
    ctx.reply(&st, Event::Search, result).await
}

/// `POST /Type/_search`: parameters from the form body and the query string together.
async fn search_post(
    State(st): State<AppState>,
    mut ctx: Ctx,
    Path(ty): Path<String>,
    body: axum::body::Body,
) -> Response {
    let ct = ctx.header(header::CONTENT_TYPE).unwrap_or("").to_owned();
    if !ct.is_empty() && !ct.starts_with("application/x-www-form-urlencoded") {
        return ApiError::UnsupportedMediaType(format!("_search takes application/x-www-form-urlencoded, not `{ct}`"))
            .into_response();
    }
    let bytes = match format::read_body(body, st.config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let form = String::from_utf8_lossy(&bytes);
    ctx.query.extend(parse_query_string(&form));
    let strict = format::prefer(&ctx.headers).strict;
    let result = interactions::search(&st, &ctx.actor, &ty, &ctx.query, strict, &ctx.base).await;
    ctx.reply(&st, Event::Search, result).await
}

async fn system_history(State(st): State<AppState>, ctx: Ctx) -> Response {
    ctx.reply(&st, Event::History, interactions::history(&st, &ctx.actor, None, None, &ctx.query, &ctx.base).await)
        .await
}

async fn type_history(State(st): State<AppState>, ctx: Ctx, Path(ty): Path<String>) -> Response {
    let result = interactions::history(&st, &ctx.actor, Some(&ty), None, &ctx.query, &ctx.base).await;
    ctx.reply(&st, Event::History, result).await
}

async fn instance_history(State(st): State<AppState>, ctx: Ctx, Path((ty, id)): Path<(String, String)>) -> Response {
    let result = interactions::history(&st, &ctx.actor, Some(&ty), Some(&id), &ctx.query, &ctx.base).await;
    ctx.reply(&st, Event::History, result).await
}
