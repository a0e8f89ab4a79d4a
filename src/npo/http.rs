//! `/api/npo/coverage`, `/api/npo/organizations/{code}` and the page `/npo`.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    access::Actor,
    app::AppState,
    error::{ApiError, Issue},
    identity::HsaId,
    json::{Object, Value},
    reference::NPO_INFO_TYPES,
    store::{NpoOrganization, NpoStatement},
};

use super::{DEFAULT_WINDOW_DAYS, render};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/npo/coverage", get(coverage))
        .route("/api/npo/organizations/{code}", get(organization).put(declare))
        .route("/npo", get(page))
}

fn bad(at: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(vec![Issue::error("invalid", message).at(at.to_owned())])
}

struct Params {
    delregion: Option<String>,
    window: u32,
    format: String,
}

fn params(st: &AppState, query: &[(String, String)], formats: &[&str]) -> Result<Params, ApiError> {
    let mut p = Params { delregion: None, window: DEFAULT_WINDOW_DAYS, format: formats[0].to_owned() };
    let reference = st.mappings().reference.clone();
    for (k, v) in query {
        match k.as_str() {
            "delregion" => {
                if v != "unknown" && !reference.delregions.contains_key(v) {
                    let known: Vec<&str> = reference.delregions.keys().map(String::as_str).collect();
                    return Err(bad(
                        "delregion",
                        format!("unknown delregion `{v}`; known: {}, unknown", known.join(", ")),
                    ));
                }
                p.delregion = Some(v.clone());
            }
            "window" => {
                p.window = v
                    .parse()
                    .ok()
                    .filter(|d| (1..=3650).contains(d))
                    .ok_or_else(|| bad("window", "window is a number of days, 1 to 3650"))?;
            }
            "format" if formats.len() > 1 => {
                if !formats.contains(&v.as_str()) {
                    return Err(bad("format", format!("format is one of {}", formats.join(", "))));
                }
                p.format = v.clone();
            }
            _ => return Err(bad(k, format!("unknown parameter `{k}`"))),
        }
    }
    Ok(p)
}

/// `GET /api/npo/coverage?delregion=…&window=…&format=json|csv` (public).
async fn coverage(State(st): State<AppState>, Query(query): Query<Vec<(String, String)>>) -> Response {
    let result = async {
        let p = params(&st, &query, &["json", "csv"])?;
        let report = super::report(&st.store, p.delregion.as_deref(), p.window).await?;
        Ok::<_, ApiError>(if p.format == "csv" {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], report.to_csv()).into_response()
        } else {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], report.to_json().to_json()).into_response()
        })
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /npo[?delregion=…]`: the HTML page (public).
async fn page(State(st): State<AppState>, Query(query): Query<Vec<(String, String)>>) -> Response {
    let result = async {
        let p = params(&st, &query, &["html"])?;
        let reference = st.mappings().reference.clone();
        let report = super::report(&st.store, p.delregion.as_deref(), p.window).await?;
        let mut per = Vec::new();
        let all = super::report(&st.store, None, p.window).await?;
        per.push(("all".to_owned(), "Hela Skåne".to_owned(), all.totals));
        for (id, d) in &reference.delregions {
            let r = super::report(&st.store, Some(id), p.window).await?;
            per.push((id.clone(), d.name.clone(), r.totals));
        }
        let html = render::page(&report, &per, &reference);
        Ok::<_, ApiError>((StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn organization_json(o: &NpoOrganization, statements: &[NpoStatement]) -> Value {
    let mut v = Object::new();
    v.insert(if o.is_region { "lanskod" } else { "kommunkod" }, o.code.as_str().into());
    v.insert("name", o.name.as_str().into());
    v.insert("delregion", o.delregion.as_deref().map_or(Value::Null, Value::from));
    v.insert("hsaId", o.hsa_id.as_deref().map_or(Value::Null, Value::from));
    v.insert("organisationsnummer", o.organisationsnummer.as_deref().map_or(Value::Null, Value::from));
    let current = super::current(statements);
    let mut now = Object::new();
    for it in NPO_INFO_TYPES {
        let d = current.get(&(o.code.clone(), (*it).to_owned())).cloned().unwrap_or_default();
        let mut x = Object::new();
        x.insert("declaredProducer", d.producer.map_or(Value::Null, Value::Bool));
        x.insert("declaredConsumer", d.consumer.map_or(Value::Null, Value::Bool));
        x.insert("declaredAt", d.declared_at.as_deref().map_or(Value::Null, Value::from));
        x.insert("source", d.source.as_deref().map_or(Value::Null, Value::from));
        now.insert(*it, Value::Object(x));
    }
    v.insert("infoTypes", Value::Object(now));
    let history = statements
        .iter()
        .map(|s| {
            let mut x = Object::new();
            x.insert("infoType", s.info_type.as_str().into());
            x.insert("declaredProducer", s.producer.map_or(Value::Null, Value::Bool));
            x.insert("declaredConsumer", s.consumer.map_or(Value::Null, Value::Bool));
            x.insert("declaredAt", s.declared_at.as_str().into());
            x.insert("source", s.source.as_str().into());
            x.insert("recordedBy", s.recorded_by.as_str().into());
            x.insert("recorded", crate::fhir::format::instant(s.recorded_ms).into());
            Value::Object(x)
        })
        .collect();
    v.insert("history", Value::Array(history));
    Value::Object(v)
}

async fn find(st: &AppState, code: &str) -> Result<NpoOrganization, ApiError> {
    st.store.npo_organizations().await?.into_iter().find(|o| o.code == code).ok_or_else(|| {
        ApiError::NotFound(format!("no organisation with kommunkod/länskod `{code}` in the NPÖ registry"))
    })
}

/// `GET /api/npo/organizations/{code}`: current status and history (admin).
async fn organization(State(st): State<AppState>, Path(code): Path<String>) -> Response {
    let result = async {
        let o = find(&st, &code).await?;
        let statements = st.store.npo_statements(Some(&code)).await?;
        Ok::<_, ApiError>(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                organization_json(&o, &statements).to_json(),
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `PUT /api/npo/organizations/{code}` (admin): a new declared status, and/or
/// the organisation's delregion, HSA-id and organisationsnummer.
async fn declare(
    State(st): State<AppState>,
    Path(code): Path<String>,
    actor: Option<axum::Extension<Arc<Actor>>>,
    body: Body,
) -> Response {
    let result = async {
        let Some(axum::Extension(actor)) = actor else {
            return Err(ApiError::Unauthorized("no credentials were presented".into()));
        };
        let mut org = find(&st, &code).await?;
        let bytes = crate::fhir::format::read_body(body, 64 * 1024).await?;
        let v = crate::json::parse(&bytes).map_err(|e| bad(&e.path, format!("not valid JSON: {}", e.message)))?;
        let Some(fields) = v.as_object() else { return Err(bad("$", "the body is a JSON object")) };
        let reference = st.mappings().reference.clone();
        let now = crate::fhir::interactions::now_ms();
        let string = |k: &str| -> Result<Option<String>, ApiError> {
            match fields.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 500 => Ok(Some(s.clone())),
                Some(_) => Err(bad(k, format!("`{k}` is a non-empty string of at most 500 characters"))),
            }
        };
        let flag = |k: &str| -> Result<Option<bool>, ApiError> {
            match fields.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(bad(k, format!("`{k}` is true or false"))),
            }
        };
        const KNOWN: &[&str] = &[
            "infoType",
            "declaredProducer",
            "declaredConsumer",
            "declaredAt",
            "source",
            "delregion",
            "hsaId",
            "organisationsnummer",
        ];
        if let Some(k) = fields.keys().find(|k| !KNOWN.contains(k)) {
            return Err(bad(k, format!("unknown field `{k}`; known: {}", KNOWN.join(", "))));
        }
        let mut changed_org = false;
        if fields.contains_key("delregion") {
            let d = string("delregion")?;
            if let Some(d) = &d
                && !reference.delregions.contains_key(d)
            {
                return Err(bad("delregion", format!("unknown delregion `{d}`")));
            }
            org.delregion = d;
            changed_org = true;
        }
        if fields.contains_key("hsaId") {
            let h = string("hsaId")?;
            if let Some(h) = &h {
                HsaId::parse(h).map_err(|e| bad("hsaId", e.0))?;
            }
            org.hsa_id = h;
            changed_org = true;
        }
        if fields.contains_key("organisationsnummer") {
            let n = string("organisationsnummer")?;
            if let Some(n) = &n
                && !(n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(bad("organisationsnummer", "an organisationsnummer has 10 digits"));
            }
            org.organisationsnummer = n;
            changed_org = true;
        }
        let statement = if fields.contains_key("infoType")
            || fields.contains_key("declaredProducer")
            || fields.contains_key("declaredConsumer")
        {
            let info_type =
                string("infoType")?.ok_or_else(|| bad("infoType", "infoType is required with a declared status"))?;
            if !NPO_INFO_TYPES.contains(&info_type.as_str()) {
                return Err(bad("infoType", format!("infoType is one of {}", NPO_INFO_TYPES.join(", "))));
            }
            let producer = flag("declaredProducer")?;
            let consumer = flag("declaredConsumer")?;
            if producer.is_none() && consumer.is_none() {
                return Err(bad("declaredProducer", "a statement declares declaredProducer, declaredConsumer or both"));
            }
            let declared_at =
                string("declaredAt")?.ok_or_else(|| bad("declaredAt", "declaredAt (YYYY-MM-DD) is required"))?;
            if chrono::NaiveDate::parse_from_str(&declared_at, "%Y-%m-%d").is_err() || declared_at.len() != 10 {
                return Err(bad("declaredAt", "declaredAt is a date, YYYY-MM-DD"));
            }
            let source =
                string("source")?.ok_or_else(|| bad("source", "source is required: where the status comes from"))?;
            Some(NpoStatement {
                seq: 0,
                code: code.clone(),
                info_type,
                producer,
                consumer,
                declared_at,
                source,
                recorded_by: actor.client_id.clone(),
                recorded_ms: now,
            })
        } else {
            None
        };
        if statement.is_none() && !changed_org {
            return Err(bad(
                "$",
                "nothing to record: send a declared status and/or delregion, hsaId, organisationsnummer",
            ));
        }
        let mut tx = st.store.begin().await?;
        if changed_org {
            org.updated_ms = now;
            org.updated_by = actor.client_id.clone();
            tx.npo_put_organization(&org).await?;
        }
        if let Some(s) = &statement {
            tx.npo_add_statement(s).await?;
        }
        let request = format!("PUT /api/npo/organizations/{code}");
        let entry = crate::audit::Entry {
            actor: &actor,
            event: crate::audit::Event::Update,
            status: StatusCode::OK,
            seen: &[],
            request: Some(&request),
            reason: None,
        };
        tx.audit(entry.record()).await?;
        tx.commit().await?;
        let statements = st.store.npo_statements(Some(&code)).await?;
        let org = find(&st, &code).await?;
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            organization_json(&org, &statements).to_json(),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
