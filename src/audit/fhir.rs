//! `GET /fhir/AuditEvent/{id}` and `GET /fhir/AuditEvent?…`: the audit log
//! read as FHIR, for administrators — a patient's log extract is
//! `AuditEvent?patient=Patient/…` or `AuditEvent?patient:identifier=SYSTEM|VALUE`.

use std::sync::Arc;

use axum::http::StatusCode;

use crate::{
    app::AppState,
    error::ApiError,
    fhir::{
        bundle::BundleWriter,
        format::{Answer, Payload},
        interactions,
        search::{
            self,
            values::{Prefix, parse_date, parse_token},
        },
    },
    store::{AuditQuery, AuditRow, Filter, SearchPlan, Stored, plan::Atom},
};

fn as_stored(r: &AuditRow) -> Stored {
    Stored {
        rid: r.seq,
        ty: "AuditEvent".into(),
        id: r.event_id.clone(),
        version: 1,
        last_updated_ms: r.recorded_ms,
        deleted: false,
        method: "POST",
        body: Arc::from(r.body.as_str()),
        access: "".into(),
        patients: "".into(),
    }
}

/// `GET /fhir/AuditEvent/{id}`.
pub async fn read(st: &AppState, id: &str) -> Result<Answer, ApiError> {
    let q = AuditQuery { event_id: Some(id.to_owned()), count: 1, ..AuditQuery::default() };
    let Some(row) = st.store.audit_entries(&q).await?.into_iter().next() else {
        return Err(ApiError::NotFound(format!("AuditEvent/{id} does not exist")));
    };
    let mut a = Answer::new(StatusCode::OK, Payload::Text(Arc::from(row.body.as_str())));
    a.version = Some(1);
    a.last_modified_ms = Some(row.recorded_ms);
    Ok(a)
}

/// `GET /fhir/AuditEvent?patient=…&date=…&_count=…`, newest first.
pub async fn search(st: &AppState, query: &[(String, String)], base: &str) -> Result<Answer, ApiError> {
    let mut q = AuditQuery { count: st.config.fhir.default_count as usize, ..AuditQuery::default() };
    let mut applied = Vec::new();
    for (k, v) in query {
        match k.as_str() {
            "patient" | "entity" => {
                let reference = match v.split_once('/') {
                    Some(("Patient", id)) if crate::fhir::is_valid_id(id) => format!("Patient/{id}"),
                    None if crate::fhir::is_valid_id(v) => format!("Patient/{v}"),
                    _ => {
                        return Err(ApiError::invalid_at(
                            "invalid",
                            format!("`{v}` is not a Patient reference (Patient/id)"),
                            k.as_str(),
                        ));
                    }
                };
                add_patients(&mut q, vec![reference]);
                applied.push((k.clone(), v.clone()));
            }
            "patient:identifier" => {
                let token = parse_token(v).map_err(|m| ApiError::invalid_at("invalid", m, k.as_str()))?;
                let mut plan = SearchPlan::new("Patient");
                plan.filters.push(Filter::Any(vec![Atom::Token { param: "identifier", query: token }]));
                plan.count = 100;
                let ids = st.store.search(&plan).await?.rows.into_iter().map(|r| format!("Patient/{}", r.id)).collect();
                add_patients(&mut q, ids);
                applied.push((k.clone(), v.clone()));
            }
            "date" => {
                let (prefix, low, high) = parse_date(v).map_err(|m| ApiError::invalid_at("invalid", m, "date"))?;
                let (from, before) = match prefix {
                    Prefix::Eq | Prefix::Ap => (Some(low), Some(high + 1)),
                    Prefix::Ge => (Some(low), None),
                    Prefix::Gt | Prefix::Sa => (Some(high + 1), None),
                    Prefix::Le => (None, Some(high + 1)),
                    Prefix::Lt | Prefix::Eb => (None, Some(low)),
                    Prefix::Ne => {
                        return Err(ApiError::invalid_at(
                            "not-supported",
                            "`ne` is not supported on date here",
                            "date",
                        ));
                    }
                };
                if let Some(f) = from {
                    q.from_ms = Some(q.from_ms.map_or(f, |x| x.max(f)));
                }
                if let Some(b) = before {
                    q.before_ms = Some(q.before_ms.map_or(b, |x| x.min(b)));
                }
                applied.push((k.clone(), v.clone()));
            }
            "_count" => {
                q.count = interactions::page_size(v, st.config.fhir.max_count)?;
                applied.push((k.clone(), v.clone()));
            }
            "_cursor" => q.below_seq = Some(interactions::paging_position(v)?),
            "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::invalid_at(
                    "not-supported",
                    format!("`{other}` is not supported on AuditEvent (use patient, patient:identifier, date, _count)"),
                    other,
                ));
            }
        }
    }
    let page_size = q.count;
    q.count += 1;
    let mut rows = st.store.audit_entries(&q).await?;
    let more = rows.len() > page_size;
    rows.truncate(page_size);
    let link = |extra: Option<(String, String)>| {
        let mut pairs = applied.clone();
        pairs.extend(extra);
        let q = search::encode_query(&pairs);
        if q.is_empty() { format!("{base}/AuditEvent") } else { format!("{base}/AuditEvent?{q}") }
    };
    let mut links = vec![("self", link(None))];
    if more && let Some(last) = rows.last() {
        links.push(("next", link(Some(("_cursor".into(), last.seq.to_string())))));
    }
    let total = (!more && q.below_seq.is_none()).then_some(rows.len() as u64);
    let mut w = BundleWriter::new("searchset", total, &links);
    for r in &rows {
        w.resource_entry(base, &as_stored(r), Some("match"));
    }
    Ok(Answer::new(StatusCode::OK, Payload::Text(w.finish().into())))
}

/// Narrows the patient set: several patient parameters must all hold, so the sets intersect.
fn add_patients(q: &mut AuditQuery, refs: Vec<String>) {
    q.patients = Some(match q.patients.take() {
        None => refs,
        Some(prev) => prev.into_iter().filter(|p| refs.contains(p)).collect(),
    });
}
