//! `/ingest`: the mappings on offer, and the single and batch push.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use crate::{
    app::AppState,
    error::{ApiError, Issue},
    fhir::{format::read_body, rest::Ctx},
    json::{Object, Value},
    mapping::{Mapping, MappingSet},
};

use super::{MAX_BATCH_RECORDS, Prepared, Receipt, audit_rejections, prepare, write_all};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ingest", get(list))
        .route("/ingest/{mapping}", post(push_one))
        .route("/ingest/{mapping}/batch", post(push_batch))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_json()).into_response()
}

/// `GET /ingest`: each loaded mapping with its version and input schema.
async fn list(State(st): State<AppState>, _ctx: Ctx) -> Response {
    let set = st.mappings();
    let list = set
        .iter()
        .map(|m| {
            let mut o = Object::new();
            o.insert("name", m.name.as_str().into());
            o.insert("version", m.version.as_str().into());
            o.insert("description", m.description.as_str().into());
            if let Some(t) = &m.info_type {
                o.insert("infoType", t.as_str().into());
            }
            o.insert("push", format!("/ingest/{}", m.name).into());
            o.insert("batch", format!("/ingest/{}/batch", m.name).into());
            o.insert("inputSchema", m.input_schema.clone());
            Value::Object(o)
        })
        .collect();
    let mut body = Object::new();
    body.insert("mappings", Value::Array(list));
    json_response(StatusCode::OK, &Value::Object(body))
}

fn find_mapping(set: &MappingSet, name: &str) -> Result<Arc<Mapping>, ApiError> {
    set.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = set.iter().map(|m| m.name.as_str()).collect();
        ApiError::NotFound(format!("no mapping named `{name}`; loaded: {}", known.join(", ")))
    })
}

fn parse_record(bytes: &[u8], at: Option<usize>) -> Result<Value, Issue> {
    crate::json::parse(bytes).map_err(|e| {
        let place = match at {
            Some(line) => format!("line {line}"),
            None => format!("line {}, column {}", e.line, e.column),
        };
        let issue = Issue::error("structure", format!("not valid JSON ({place}): {}", e.message));
        if e.path.is_empty() || e.path == "$" { issue } else { issue.at(e.path) }
    })
}

/// `POST /ingest/{mapping}`: one record, one receipt.
async fn push_one(State(st): State<AppState>, Path(name): Path<String>, ctx: Ctx, body: Body) -> Response {
    match push_one_inner(&st, &name, &ctx, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn push_one_inner(st: &AppState, name: &str, ctx: &Ctx, body: Body) -> Result<Response, ApiError> {
    let set = st.mappings();
    let mapping = find_mapping(&set, name)?;
    let bytes = read_body(body, st.config.server.max_body_bytes).await?;
    let record = parse_record(&bytes, None).map_err(|i| ApiError::Invalid(vec![i]))?;
    let receipt = match prepare(&set, &mapping, &ctx.actor, &record) {
        Err(rejected) => {
            audit_rejections(&st.store, &ctx.actor, &[&rejected], &ctx.request).await?;
            rejected
        }
        Ok(p) => {
            let mut out = write_all(&st.store, &ctx.actor, vec![(0, p)], 1, &ctx.request).await;
            let (_, receipt) = out.pop().ok_or_else(|| ApiError::Internal("no receipt".into()))?;
            if receipt.rejection.is_some() {
                audit_rejections(&st.store, &ctx.actor, &[&receipt], &ctx.request).await?;
            }
            receipt
        }
    };
    Ok(json_response(receipt.http_status(), &receipt.to_json()))
}

/// `POST /ingest/{mapping}/batch`: a JSON array or NDJSON of up to 10,000 records; receipts in input order.
async fn push_batch(State(st): State<AppState>, Path(name): Path<String>, ctx: Ctx, body: Body) -> Response {
    match push_batch_inner(&st, &name, &ctx, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The records of a batch body: parsed records, or the issue of a line that is not JSON.
pub fn split_batch(bytes: &[u8]) -> Result<Vec<Result<Value, Issue>>, ApiError> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let too_many = || ApiError::PayloadTooLarge(format!("a batch carries at most {MAX_BATCH_RECORDS} records"));
    if bytes.get(start) == Some(&b'[') {
        let Value::Array(items) = parse_record(bytes, None).map_err(|i| ApiError::Invalid(vec![i]))? else {
            return Err(ApiError::invalid("structure", "a batch is a JSON array or NDJSON"));
        };
        if items.len() > MAX_BATCH_RECORDS {
            return Err(too_many());
        }
        return Ok(items.into_iter().map(Ok).collect());
    }
    let lines: Vec<(usize, &[u8])> =
        bytes.split(|b| *b == b'\n').enumerate().filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace())).collect();
    if lines.len() > MAX_BATCH_RECORDS {
        return Err(too_many());
    }
    if lines.is_empty() {
        return Err(ApiError::invalid("required", "the batch is empty"));
    }
    Ok(lines.into_iter().map(|(n, l)| parse_record(l, Some(n + 1))).collect())
}

/// Batch bodies up to this size are parsed on the task that received them.
const INLINE_PARSE_BYTES: usize = 1024 * 1024;

/// Records mapped between two yields to the scheduler.
const RECORDS_BETWEEN_YIELDS: usize = 16;

async fn push_batch_inner(st: &AppState, name: &str, ctx: &Ctx, body: Body) -> Result<Response, ApiError> {
    let set = st.mappings();
    let mapping = find_mapping(&set, name)?;
    let bytes = read_body(body, st.config.ingest.max_batch_bytes).await?;
    // Parsed, mapped and written in turns: bounds the memory of concurrent batches.
    let _turn = st.batch_turns.acquire().await.map_err(|_| ApiError::Unavailable("the gateway is stopping".into()))?;
    // Parsed here when small; a large body is parsed on a blocking thread.
    let records = if bytes.len() <= INLINE_PARSE_BYTES {
        split_batch(&bytes)?
    } else {
        tokio::task::spawn_blocking(move || split_batch(&bytes))
            .await
            .map_err(|e| ApiError::Internal(format!("batch parsing stopped: {e}")))??
    };
    let total = records.len();
    let actor = ctx.actor.clone();
    // Mapped on this task a few records at a time, letting other requests
    // run in between: on a blocking thread, the records' memory was freed
    // by other threads and came back to that thread's heap only when it ran
    // again (peak RSS of the batch test 86 → 78 MB mapping here).
    let mut prepared: Vec<Result<Prepared, Receipt>> = Vec::with_capacity(total);
    for (n, r) in records.into_iter().enumerate() {
        if n > 0 && n % RECORDS_BETWEEN_YIELDS == 0 {
            tokio::task::yield_now().await;
        }
        prepared.push(match r {
            Ok(record) => prepare(&set, &mapping, &actor, &record),
            Err(issue) => Err(Receipt::rejected(None, StatusCode::BAD_REQUEST, vec![issue])),
        });
    }

    let mut receipts: Vec<Option<Receipt>> = vec![None; total];
    let mut to_write = Vec::new();
    for (i, p) in prepared.into_iter().enumerate() {
        match p {
            Ok(p) => to_write.push((i, p)),
            Err(r) => receipts[i] = Some(r),
        }
    }
    for (i, r) in write_all(&st.store, &ctx.actor, to_write, st.config.ingest.batch_chunk, &ctx.request).await {
        receipts[i] = Some(r);
    }
    let receipts: Vec<Receipt> = receipts.into_iter().flatten().collect();
    let rejected: Vec<&Receipt> = receipts.iter().filter(|r| r.rejection.is_some()).collect();
    audit_rejections(&st.store, &ctx.actor, &rejected, &ctx.request).await?;
    let mut body = Object::new();
    body.insert("receipts", Value::Array(receipts.iter().map(Receipt::to_json).collect()));
    Ok(json_response(StatusCode::OK, &Value::Object(body)))
}
