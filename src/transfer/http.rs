//! `GET /api/transfers/overdue`: transfers not completed in time.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    access::Actor,
    app::AppState,
    error::{ApiError, Issue},
    fhir::format::{Seen, instant},
    identity::{HsaId, organisation_key},
    json::{Object, Value},
};

/// Most transfers one answer lists.
pub const MAX_LISTED: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/transfers/overdue", get(overdue))
}

async fn overdue(
    State(st): State<AppState>,
    actor: Option<axum::Extension<Arc<Actor>>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let Some(axum::Extension(actor)) = actor else {
        return ApiError::Unauthorized("no credentials were presented".into()).into_response();
    };
    match overdue_inner(&st, &actor, &params).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn bad(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(vec![Issue::error("invalid", message).at(name.to_owned())])
}

async fn overdue_inner(st: &AppState, actor: &Actor, params: &[(String, String)]) -> Result<Response, ApiError> {
    let mut hours: Option<u32> = None;
    let mut owner: Option<String> = None;
    for (k, v) in params {
        match k.as_str() {
            "hours" => {
                hours = Some(
                    v.parse()
                        .ok()
                        .filter(|h| (1..=24 * 366).contains(h))
                        .ok_or_else(|| bad("hours", "hours is a whole number of hours, 1 to 8784"))?,
                );
            }
            "owner" => owner = Some(recipient_key(st, v).await?),
            _ => return Err(bad(k, format!("unknown parameter `{k}`; this list takes hours and owner"))),
        }
    }
    let hours = hours.ok_or_else(|| bad("hours", "hours is required, e.g. ?hours=24"))?;
    let admin = actor.scopes.as_ref().is_none_or(|s| s.has_admin());
    let party = (!admin).then(|| actor.access_key().to_owned());
    let now = crate::fhir::interactions::now_ms();
    let before = now - i64::from(hours) * 3_600_000;
    let rows = st.store.open_transfers(before, party.as_deref(), MAX_LISTED + 1).await?;
    let rows: Vec<_> = rows.into_iter().filter(|r| owner.as_ref().is_none_or(|o| &r.recipient_key == o)).collect();
    let truncated = rows.len() > MAX_LISTED;
    let rows = &rows[..rows.len().min(MAX_LISTED)];
    let mut list = Vec::with_capacity(rows.len());
    let mut seen = Vec::with_capacity(rows.len());
    for r in rows {
        let mut o = Object::new();
        o.insert("task", format!("Task/{}", r.task_id).into());
        o.insert("document", format!("DocumentReference/{}", r.document_id).into());
        o.insert("patient", r.patient.as_str().into());
        o.insert("status", r.status.as_str().into());
        o.insert("sender", r.sender_key.as_str().into());
        o.insert("recipient", r.recipient_key.as_str().into());
        o.insert("created", instant(r.created_ms).into());
        o.insert("ageHours", Value::from((now - r.created_ms) / 3_600_000));
        o.insert("duplicateOf", r.duplicate_of.as_ref().map_or(Value::Null, |d| format!("Task/{d}").into()));
        list.push(Value::Object(o));
        seen.push(Seen { reference: format!("Task/{}", r.task_id), patients: r.patient.as_str().into() });
    }
    let duplicates = rows.iter().filter(|r| r.duplicate_of.is_some()).count();
    let mut body = Object::new();
    body.insert("hours", Value::from(i64::from(hours)));
    body.insert("asOf", instant(now).into());
    body.insert("count", Value::from(rows.len() as i64));
    body.insert("duplicates", Value::from(duplicates as i64));
    body.insert("truncated", Value::Bool(truncated));
    body.insert("transfers", Value::Array(list));
    // Patient references leave the gateway: audited first.
    let request = format!("GET /api/transfers/overdue?hours={hours}");
    let entry = crate::audit::Entry {
        actor,
        event: crate::audit::Event::Search,
        status: StatusCode::OK,
        seen: &seen,
        request: Some(&request),
        reason: None,
    };
    st.store.append_audit(vec![entry.record()]).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Value::Object(body).to_json()).into_response())
}

/// `owner=Organization/ID`, an HSA-id or an organisationsnummer → organisationsnummer.
async fn recipient_key(st: &AppState, v: &str) -> Result<String, ApiError> {
    if let Some(id) = v.strip_prefix("Organization/") {
        let org = st.store.read("Organization", id).await?.filter(|s| !s.deleted);
        let org = org.ok_or_else(|| bad("owner", format!("Organization/{id} does not exist")))?;
        let body = crate::json::parse(org.body.as_bytes()).map_err(|e| ApiError::Internal(e.message))?;
        for ident in body.get("identifier").and_then(Value::as_array).unwrap_or_default() {
            let value = ident.get("value").and_then(Value::as_str).unwrap_or("");
            if HsaId::parse(value).is_ok() {
                return Ok(organisation_key(value).to_owned());
            }
        }
        return Err(bad("owner", format!("Organization/{id} has no HSA-id")));
    }
    if HsaId::parse(v).is_ok() {
        return Ok(organisation_key(v).to_owned());
    }
    if v.len() == 10 && v.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(v.to_owned());
    }
    Err(bad("owner", "owner is Organization/ID, an HSA-id or an organisationsnummer"))
}
