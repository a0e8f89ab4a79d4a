//! The FHIR interactions themselves — read, vread, create, update, delete,
//! history, search — independent of whether they arrive as HTTP requests or
//! as Bundle entries. Writes run inside a [`StoreTx`]; the single-request
//! forms open and commit their own.

use std::sync::Arc;

use axum::http::StatusCode;

use crate::{
    access::Actor,
    app::AppState,
    audit,
    auth::Action,
    error::{ApiError, Issue, operation_outcome},
    fhir::{
        bundle::BundleWriter,
        format::{Answer, Payload, Seen},
        resource,
        search::{self, TotalMode, extract},
    },
    json::Value,
    store::{HistoryQuery, StoreTx, Stored},
};

/// A version just written.
#[derive(Clone, Debug)]
pub struct Written {
    pub ty: String,
    pub id: String,
    pub version: i64,
    pub at_ms: i64,
    /// `None` for a deletion.
    pub body: Option<Arc<str>>,
    pub status: StatusCode,
    /// The patients it is about, for the audit trail.
    pub patients: Arc<str>,
}

impl Written {
    pub fn answer(&self) -> Answer {
        Answer {
            status: self.status,
            location: Some(format!("{}/{}/_history/{}", self.ty, self.id, self.version)),
            version: Some(self.version),
            last_modified_ms: Some(self.at_ms),
            payload: self.body.clone().map_or(Payload::None, Payload::Text),
            seen: vec![self.seen()],
            audited: false,
        }
    }

    pub fn seen(&self) -> Seen {
        Seen { reference: format!("{}/{}", self.ty, self.id), patients: self.patients.clone() }
    }
}

/// The current time in ms, strictly increasing within this process so that
/// versions written one after the other never share a `lastUpdated`.
pub fn now_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp_millis();
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

fn check_type(ty: &str) -> Result<(), ApiError> {
    if super::is_supported_type(ty) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("resource type `{ty}` is not supported by this server")))
    }
}

/// Writable types: all supported ones but the audit log, which only the gateway writes.
fn check_writable_type(ty: &str) -> Result<(), ApiError> {
    check_type(ty)?;
    if ty == "AuditEvent" {
        return Err(ApiError::MethodNotAllowed(
            "AuditEvent is written by the gateway itself; the audit log cannot be changed over the API".into(),
        ));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if super::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid("value", format!("`{id}` is not a valid resource id (1–64 of A–Z a–z 0–9 - .)")))
    }
}

/// Parses an entity tag `W/"3"` or `"3"` into a version.
pub fn parse_etag(tag: &str) -> Option<i64> {
    tag.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

/// Conditions of a conditional read.
#[derive(Clone, Debug, Default)]
pub struct ReadConditions {
    pub if_none_match: Option<String>,
    pub if_modified_since_ms: Option<i64>,
}

fn stored_answer(s: &Stored) -> Answer {
    Answer {
        status: StatusCode::OK,
        location: None,
        version: Some(s.version),
        last_modified_ms: Some(s.last_updated_ms),
        payload: Payload::Text(s.body.clone()),
        seen: vec![Seen::of(s)],
        audited: false,
    }
}

/// The current version of `ty/id` if the actor may see it; another
/// organisation's resource answers as if it did not exist.
async fn visible(st: &AppState, actor: &Actor, ty: &str, id: &str) -> Result<Stored, ApiError> {
    match st.store.read(ty, id).await? {
        Some(s) if actor.may_see(ty, &s.access) => Ok(s),
        _ => Err(ApiError::NotFound(format!("{ty}/{id} does not exist"))),
    }
}

pub async fn read(st: &AppState, actor: &Actor, ty: &str, id: &str, cond: &ReadConditions) -> Result<Answer, ApiError> {
    check_type(ty)?;
    check_id(id)?;
    actor.require(ty, Action::Read)?;
    if ty == "AuditEvent" {
        return crate::audit::fhir::read(st, id).await;
    }
    let s = visible(st, actor, ty, id).await?;
    if s.deleted {
        return Err(ApiError::Gone(format!("{ty}/{id} was deleted (version {})", s.version)));
    }
    let not_modified = cond.if_none_match.as_deref().and_then(parse_etag) == Some(s.version)
        || cond.if_modified_since_ms.is_some_and(|since| s.last_updated_ms / 1000 <= since / 1000);
    if ty == "Binary" {
        // The recipient's first fetch of a transfer's content marks the transfer received.
        if let Err(e) = crate::transfer::mark_received(st, actor, id).await {
            tracing::warn!(error = %e, "could not mark a transfer received; the next fetch tries again");
        }
    }
    if not_modified {
        let mut a = stored_answer(&s);
        a.status = StatusCode::NOT_MODIFIED;
        a.payload = Payload::None;
        return Ok(a);
    }
    Ok(stored_answer(&s))
}

pub async fn vread(st: &AppState, actor: &Actor, ty: &str, id: &str, version: &str) -> Result<Answer, ApiError> {
    check_type(ty)?;
    check_id(id)?;
    actor.require(ty, Action::Read)?;
    let current = visible(st, actor, ty, id).await?;
    let v: i64 = version.parse().map_err(|_| ApiError::NotFound(format!("version `{version}` does not exist")))?;
    let Some(s) = st.store.vread(ty, id, v).await? else {
        return Err(ApiError::NotFound(format!("{ty}/{id} has no version {version}")));
    };
    if s.deleted {
        return Err(ApiError::Gone(format!("version {version} of {ty}/{id} is a deletion")));
    }
    let mut a = stored_answer(&s);
    a.seen = vec![Seen::of(&current)];
    Ok(a)
}

/// The patients a resource is about (`Patient/id`, space-separated), from its search index.
pub fn patients_of(ty: &str, id: &str, index: &[(&'static str, extract::IndexValue)]) -> String {
    if ty == "Patient" {
        return format!("Patient/{id}");
    }
    let mut out: Vec<String> = Vec::new();
    for (param, v) in index {
        if let extract::IndexValue::Reference { target_type: Some(t), target_id: Some(pid), .. } = v
            && t == "Patient"
            && matches!(*param, "patient" | "subject" | "for" | "beneficiary")
        {
            let r = format!("Patient/{pid}");
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out.join(" ")
}

/// Writes `body` as version `version` of `ty/id`: sets `id`/`meta`, indexes it, stores it.
#[expect(clippy::too_many_arguments, reason = "the parts of one version")]
async fn put_version(
    tx: &mut dyn StoreTx,
    actor: &Actor,
    ty: &str,
    id: &str,
    version: i64,
    method: &'static str,
    body: Value,
    status: StatusCode,
    previous_access: &str,
) -> Result<Written, ApiError> {
    let access = actor.access_after_write(previous_access);
    put_with_access(tx, ty, id, version, method, body, status, &access).await
}

/// Writes `body` as version `version` of `ty/id` visible to the organisations in `access`.
#[expect(clippy::too_many_arguments, reason = "the parts of one version")]
pub async fn put_with_access(
    tx: &mut dyn StoreTx,
    ty: &str,
    id: &str,
    version: i64,
    method: &'static str,
    mut body: Value,
    status: StatusCode,
    access: &str,
) -> Result<Written, ApiError> {
    let at_ms = now_ms();
    // A transfer Task keeps its transfer row in step and may be flagged as a duplicate.
    let transfer =
        if ty == "Task" { crate::transfer::before_task_write(tx, id, &mut body, at_ms).await? } else { None };
    let access = match &transfer {
        Some(row) => {
            crate::transfer::parties(row).iter().fold(access.to_owned(), |a, k| crate::store::access_with(&a, k))
        }
        None => access.to_owned(),
    };
    let written = write_ready(tx, ready_version(ty, id, version, at_ms, body, status, &access), method).await?;
    if let Some(row) = &transfer {
        crate::transfer::after_task_write(tx, row, version == 1).await?;
    }
    if ty == "Task" {
        crate::subscriptions::on_task_written(tx, id, version, &access).await?;
    }
    Ok(written)
}

/// A version made ready to write: its text with `id` and `meta` set, its
/// search index and the patients it is about. This is the costly part of a
/// write (serialising, extracting the index), and it needs no transaction:
/// done before one begins, it keeps the single SQLite writer free meanwhile.
pub struct ReadyVersion {
    pub ty: String,
    pub id: String,
    pub version: i64,
    pub at_ms: i64,
    text: String,
    index: Vec<(&'static str, extract::IndexValue)>,
    patients: String,
    access: String,
    status: StatusCode,
}

/// Makes `body` ready as version `version` of `ty/id`, last updated at
/// `at_ms`, visible to the organisations in `access`. Not for transfer
/// Tasks, whose writes keep their transfer row in step ([`put_with_access`]).
pub fn ready_version(
    ty: &str,
    id: &str,
    version: i64,
    at_ms: i64,
    mut body: Value,
    status: StatusCode,
    access: &str,
) -> ReadyVersion {
    let text = resource::finalize(&mut body, id, version, at_ms);
    let index: Vec<_> = extract::extract(&body).into_iter().map(|(def, v)| (def.code, v)).collect();
    let patients = patients_of(ty, id, &index);
    ReadyVersion {
        ty: ty.to_owned(),
        id: id.to_owned(),
        version,
        at_ms,
        text,
        index,
        patients,
        access: access.to_owned(),
        status,
    }
}

/// Writes a version made ready by [`ready_version`].
pub async fn write_ready(tx: &mut dyn StoreTx, v: ReadyVersion, method: &'static str) -> Result<Written, ApiError> {
    tx.put(crate::store::NewVersion {
        ty: &v.ty,
        id: &v.id,
        version: v.version,
        last_updated_ms: v.at_ms,
        method,
        body: &v.text,
        index: v.index,
        access: &v.access,
        patients: &v.patients,
    })
    .await?;
    Ok(Written {
        ty: v.ty,
        id: v.id,
        version: v.version,
        at_ms: v.at_ms,
        body: Some(v.text.into()),
        status: v.status,
        patients: v.patients.into(),
    })
}

/// Creates `ty` with a new id (the body's `id`, if any, is replaced, as FHIR prescribes for create).
pub async fn create_in(
    tx: &mut dyn StoreTx,
    cfg: &crate::config::Config,
    actor: &Actor,
    ty: &str,
    id: &str,
    mut body: Value,
) -> Result<Written, ApiError> {
    check_writable_type(ty)?;
    actor.require(ty, Action::Create)?;
    if ty == "Task" {
        crate::transfer::check_write(tx, actor, None, &body).await?;
    }
    if ty == "Subscription" {
        crate::subscriptions::prepare(&mut body, &cfg.subscriptions, &cfg.fhir)?;
    }
    let written = put_version(tx, actor, ty, id, 1, "POST", body.clone(), StatusCode::CREATED, "").await?;
    if ty == "Subscription" {
        crate::subscriptions::register(tx, actor, id, &body).await?;
    }
    Ok(written)
}

/// Refuses a bound actor's change of another organisation's resource.
fn check_may_change(actor: &Actor, ty: &str, id: &str, access: &str) -> Result<(), ApiError> {
    if actor.may_change(access) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{ty}/{id} belongs to another organisation; it cannot be changed by this client"
        )))
    }
}

/// Updates (or creates, with the client's id) `ty/id`. `if_match` is the expected current version.
pub async fn update_in(
    tx: &mut dyn StoreTx,
    cfg: &crate::config::Config,
    actor: &Actor,
    ty: &str,
    id: &str,
    mut body: Value,
    if_match: Option<i64>,
) -> Result<Written, ApiError> {
    check_writable_type(ty)?;
    actor.require(ty, Action::Update)?;
    let current = tx.current(ty, id).await?;
    if let Some(c) = &current {
        check_may_change(actor, ty, id, &c.access)?;
    }
    if let Some(expected) = if_match {
        match &current {
            Some(c) if !c.deleted && c.version == expected => {}
            Some(c) if !c.deleted => {
                return Err(ApiError::PreconditionFailed(format!(
                    "{ty}/{id} is at version {}, not {expected} (If-Match)",
                    c.version
                )));
            }
            _ => {
                return Err(ApiError::PreconditionFailed(format!("{ty}/{id} does not exist (If-Match)")));
            }
        }
    }
    if ty == "Task" {
        let stored = match &current {
            Some(c) if !c.deleted => tx.current_body(ty, id).await?,
            _ => None,
        };
        let stored =
            stored.map(|t| crate::json::parse(t.as_bytes())).transpose().map_err(|e| ApiError::Internal(e.message))?;
        crate::transfer::check_write(tx, actor, stored.as_ref(), &body).await?;
    }
    if ty == "Subscription" {
        crate::subscriptions::prepare(&mut body, &cfg.subscriptions, &cfg.fhir)?;
    }
    let (version, status, previous) = match current {
        Some(c) if !c.deleted => (c.version + 1, StatusCode::OK, c.access),
        Some(c) => (c.version + 1, StatusCode::CREATED, c.access),
        None => (1, StatusCode::CREATED, String::new()),
    };
    let written = put_version(tx, actor, ty, id, version, "PUT", body.clone(), status, &previous).await?;
    if ty == "Subscription" {
        crate::subscriptions::register(tx, actor, id, &body).await?;
    }
    Ok(written)
}

/// Deletes `ty/id`; `Ok(None)` when it was already deleted.
pub async fn delete_in(
    tx: &mut dyn StoreTx,
    actor: &Actor,
    ty: &str,
    id: &str,
    if_match: Option<i64>,
) -> Result<Option<Written>, ApiError> {
    check_writable_type(ty)?;
    actor.require(ty, Action::Delete)?;
    let current = match tx.current(ty, id).await? {
        Some(c) if actor.may_see(ty, &c.access) => c,
        _ => return Err(ApiError::NotFound(format!("{ty}/{id} does not exist"))),
    };
    check_may_change(actor, ty, id, &current.access)?;
    if current.deleted {
        return Ok(None);
    }
    if ty == "Task"
        && actor.scopes.is_some()
        && let Some(text) = tx.current_body(ty, id).await?
        && crate::json::parse(text.as_bytes()).is_ok_and(|t| crate::transfer::is_transfer(&t))
    {
        return Err(ApiError::Conflict(
            "a transfer is not deleted: its sender cancels it (status `cancelled`) or its recipient rejects it".into(),
        ));
    }
    if let Some(expected) = if_match
        && expected != current.version
    {
        return Err(ApiError::PreconditionFailed(format!(
            "{ty}/{id} is at version {}, not {expected} (If-Match)",
            current.version
        )));
    }
    let at_ms = now_ms();
    let version = current.version + 1;
    tx.delete(ty, id, version, at_ms).await?;
    if ty == "Subscription" {
        tx.remove_subscription(id).await?;
    }
    Ok(Some(Written {
        ty: ty.to_owned(),
        id: id.to_owned(),
        version,
        at_ms,
        body: None,
        status: StatusCode::NO_CONTENT,
        patients: "".into(),
    }))
}

/// Result of resolving conditional criteria inside a transaction.
pub enum Matched {
    None,
    One(String),
}

/// Runs conditional criteria: none or one match; several is 412.
pub async fn match_criteria(
    st: &AppState,
    actor: &Actor,
    tx: &mut dyn StoreTx,
    ty: &str,
    criteria: &str,
    base: &str,
) -> Result<Matched, ApiError> {
    let mut plan = search::parse_conditional(ty, criteria, &st.config.fhir, base)?;
    plan.filters.extend(actor.search_filter(ty));
    let ids = tx.find_ids(&plan).await?;
    match ids.as_slice() {
        [] => Ok(Matched::None),
        [one] => Ok(Matched::One(one.clone())),
        _ => Err(ApiError::PreconditionFailed(format!(
            "the criteria `{criteria}` match more than one {ty}; make them more selective"
        ))),
    }
}

/// `POST /Type`, optionally conditional (`If-None-Exist`).
pub async fn create(
    st: &AppState,
    actor: &Actor,
    ty: &str,
    body: Value,
    if_none_exist: Option<&str>,
    base: &str,
) -> Result<Answer, ApiError> {
    check_writable_type(ty)?;
    resource::check(&body, ty, None)?;
    let mut tx = st.store.begin().await?;
    if let Some(criteria) = if_none_exist
        && let Matched::One(id) = match_criteria(st, actor, tx.as_mut(), ty, criteria, base).await?
    {
        drop(tx);
        let mut a = read(st, actor, ty, &id, &ReadConditions::default()).await?;
        a.location = a.version.map(|v| format!("{ty}/{id}/_history/{v}"));
        return Ok(a);
    }
    let id = resource::new_id();
    let written = create_in(tx.as_mut(), &st.config, actor, ty, &id, body).await?;
    commit_audited(tx, actor, audit::Event::Create, written.answer()).await
}

/// Writes the change's audit entry into its transaction and commits both.
async fn commit_audited(
    mut tx: Box<dyn StoreTx>,
    actor: &Actor,
    event: audit::Event,
    mut answer: Answer,
) -> Result<Answer, ApiError> {
    let entry = audit::Entry { actor, event, status: answer.status, seen: &answer.seen, request: None, reason: None };
    tx.audit(entry.record()).await?;
    tx.commit().await?;
    answer.audited = true;
    Ok(answer)
}

/// `PUT /Type/id`.
pub async fn update(
    st: &AppState,
    actor: &Actor,
    ty: &str,
    id: &str,
    body: Value,
    if_match: Option<&str>,
) -> Result<Answer, ApiError> {
    check_writable_type(ty)?;
    check_id(id)?;
    resource::check(&body, ty, None)?;
    check_body_id(&body, Some(id), ty)?;
    let if_match = parse_if_match(if_match)?;
    let mut tx = st.store.begin().await?;
    let written = update_in(tx.as_mut(), &st.config, actor, ty, id, body, if_match).await?;
    commit_audited(tx, actor, audit::Event::Update, written.answer()).await
}

/// The body's `id` must be present and equal the URL's (FHIR update rules).
pub fn check_body_id(body: &Value, url_id: Option<&str>, ty: &str) -> Result<(), ApiError> {
    match (resource::id_of(body), url_id) {
        (None, Some(_)) => {
            Err(ApiError::invalid_at("required", "the resource has no id; an update needs one", format!("{ty}.id")))
        }
        (Some(b), Some(u)) if b != u => Err(ApiError::invalid_at(
            "invalid",
            format!("the resource id `{b}` differs from the id `{u}` in the URL"),
            format!("{ty}.id"),
        )),
        _ => Ok(()),
    }
}

pub fn parse_if_match(h: Option<&str>) -> Result<Option<i64>, ApiError> {
    h.map(|v| {
        parse_etag(v)
            .ok_or_else(|| ApiError::invalid("value", format!("If-Match `{v}` is not a version tag like W/\"3\"")))
    })
    .transpose()
}

/// `PUT /Type?criteria`.
pub async fn conditional_update(
    st: &AppState,
    actor: &Actor,
    ty: &str,
    criteria: &str,
    body: Value,
    base: &str,
) -> Result<Answer, ApiError> {
    check_writable_type(ty)?;
    resource::check(&body, ty, None)?;
    let mut tx = st.store.begin().await?;
    let id = match match_criteria(st, actor, tx.as_mut(), ty, criteria, base).await? {
        Matched::One(id) => {
            check_body_id(&body, None, ty)?;
            if let Some(b) = resource::id_of(&body)
                && b != id
            {
                return Err(ApiError::invalid_at(
                    "invalid",
                    format!("the criteria match {ty}/{id} but the resource's id is `{b}`"),
                    format!("{ty}.id"),
                ));
            }
            id
        }
        Matched::None => resource::id_of(&body).map_or_else(resource::new_id, str::to_owned),
    };
    let written = update_in(tx.as_mut(), &st.config, actor, ty, &id, body, None).await?;
    commit_audited(tx, actor, audit::Event::Update, written.answer()).await
}

/// `DELETE /Type/id`.
pub async fn delete(
    st: &AppState,
    actor: &Actor,
    ty: &str,
    id: &str,
    if_match: Option<&str>,
) -> Result<Answer, ApiError> {
    check_writable_type(ty)?;
    check_id(id)?;
    let if_match = parse_if_match(if_match)?;
    let mut tx = st.store.begin().await?;
    let written = delete_in(tx.as_mut(), actor, ty, id, if_match).await?;
    commit_audited(tx, actor, audit::Event::Delete, deleted_answer(written)).await
}

fn deleted_answer(w: Option<Written>) -> Answer {
    let mut a = Answer::new(StatusCode::NO_CONTENT, Payload::None);
    if let Some(w) = w {
        a.version = Some(w.version);
        a.seen = vec![w.seen()];
    }
    a
}

/// `DELETE /Type?criteria`: deletes the single match (none: nothing to do; several: 412).
pub async fn conditional_delete(
    st: &AppState,
    actor: &Actor,
    ty: &str,
    criteria: &str,
    base: &str,
) -> Result<Answer, ApiError> {
    check_writable_type(ty)?;
    let mut tx = st.store.begin().await?;
    let written = match match_criteria(st, actor, tx.as_mut(), ty, criteria, base).await? {
        Matched::None => None,
        Matched::One(id) => delete_in(tx.as_mut(), actor, ty, &id, None).await?,
    };
    commit_audited(tx, actor, audit::Event::Delete, deleted_answer(written)).await
}

/// `GET /Type?…` and `POST /Type/_search`.
pub async fn search(
    st: &AppState,
    actor: &Actor,
    ty: &str,
    query: &[(String, String)],
    strict: bool,
    base: &str,
) -> Result<Answer, ApiError> {
    check_type(ty)?;
    actor.require(ty, Action::Search)?;
    if ty == "AuditEvent" {
        return crate::audit::fhir::search(st, query, base).await;
    }
    let mut parsed = search::parse(ty, query, &st.config.fhir, strict, base)?;
    parsed.plan.filters.extend(actor.search_filter(ty));
    let page = st.store.search(&parsed.plan).await?;
    let total = match (page.total, parsed.total) {
        (Some(t), _) => Some(t),
        (None, TotalMode::Default) if parsed.plan.after.is_none() && page.next.is_none() => {
            Some(page.rows.len() as u64)
        }
        _ => None,
    };
    let mut budget = st.config.fhir.max_include as usize;
    // Only searches with includes need to know which resources are already in the page.
    let mut seen: std::collections::HashSet<(String, String)> =
        if parsed.includes.is_empty() && parsed.revincludes.is_empty() {
            Default::default()
        } else {
            page.rows.iter().map(|r| (r.ty.clone(), r.id.clone())).collect()
        };
    let mut included = Vec::new();
    for inc in &parsed.includes {
        for r in st.store.include(&page.rows, inc.param, inc.target.as_deref(), budget).await? {
            if actor.may_see(&r.ty, &r.access) && seen.insert((r.ty.clone(), r.id.clone())) {
                budget = budget.saturating_sub(1);
                included.push(r);
            }
        }
    }
    for rev in &parsed.revincludes {
        for r in st.store.revinclude(&page.rows, &rev.source, rev.param, budget).await? {
            if actor.may_see(&r.ty, &r.access) && seen.insert((r.ty.clone(), r.id.clone())) {
                budget = budget.saturating_sub(1);
                included.push(r);
            }
        }
    }
    let link = |extra: Option<(String, String)>| {
        let mut pairs = parsed.applied.clone();
        pairs.extend(extra);
        let q = search::encode_query(&pairs);
        if q.is_empty() { format!("{base}/{ty}") } else { format!("{base}/{ty}?{q}") }
    };
    let mut links = vec![("self", link(None))];
    if let Some(next) = &page.next {
        links.push(("next", link(Some(("_cursor".into(), next.encode())))));
    }
    let mut w = BundleWriter::new("searchset", total, &links);
    for r in &page.rows {
        w.resource_entry(base, r, Some("match"));
    }
    for r in &included {
        w.resource_entry(base, r, Some("include"));
    }
    if !parsed.warnings.is_empty() {
        w.outcome_entry(&operation_outcome(&parsed.warnings));
    }
    let mut a = Answer::new(StatusCode::OK, Payload::Text(w.finish().into()));
    a.seen = page.rows.iter().chain(&included).map(Seen::of).collect();
    Ok(a)
}

/// Instance, type or system history.
pub async fn history(
    st: &AppState,
    actor: &Actor,
    ty: Option<&str>,
    id: Option<&str>,
    query: &[(String, String)],
    base: &str,
) -> Result<Answer, ApiError> {
    if let Some(ty) = ty {
        check_type(ty)?;
        actor.require(ty, Action::Read)?;
    }
    if let Some(id) = id {
        check_id(id)?;
    }
    let mut q = HistoryQuery {
        ty: ty.map(str::to_owned),
        id: id.map(str::to_owned),
        count: st.config.fhir.default_count as usize,
        ..HistoryQuery::default()
    };
    let mut applied = Vec::new();
    for (k, v) in query {
        match k.as_str() {
            "_count" => {
                q.count = page_size(v, st.config.fhir.max_count)?;
                applied.push((k.clone(), v.clone()));
            }
            "_since" => {
                let (_, low, _) =
                    search::values::parse_date(v).map_err(|m| ApiError::invalid_at("invalid", m, "_since"))?;
                q.since_ms = Some(low);
                applied.push((k.clone(), v.clone()));
            }
            "_at" => {
                let (_, _, high) =
                    search::values::parse_date(v).map_err(|m| ApiError::invalid_at("invalid", m, "_at"))?;
                q.before_ms = Some(high.saturating_add(1));
                applied.push((k.clone(), v.clone()));
            }
            "_cursor" => q.after_seq = Some(paging_position(v)?),
            "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::invalid_at(
                    "not-supported",
                    format!("`{other}` is not supported for history (use _count, _since, _at)"),
                    other,
                ));
            }
        }
    }
    let mut seen = Vec::new();
    match (ty, id) {
        (Some(ty), Some(id)) => seen.push(Seen::of(&visible(st, actor, ty, id).await?)),
        _ if actor.bound_to().is_some() => {
            return Err(ApiError::Forbidden(
                "type and system history are available to region and administrator clients only; \
                 use instance history"
                    .into(),
            ));
        }
        _ => {}
    }
    let page = st.store.history(&q).await?;
    let path = match (ty, id) {
        (Some(t), Some(i)) => format!("{base}/{t}/{i}/_history"),
        (Some(t), None) => format!("{base}/{t}/_history"),
        _ => format!("{base}/_history"),
    };
    let link = |extra: Option<(String, String)>| {
        let mut pairs = applied.clone();
        pairs.extend(extra);
        let q = search::encode_query(&pairs);
        if q.is_empty() { path.clone() } else { format!("{path}?{q}") }
    };
    let mut links = vec![("self", link(None))];
    if let Some(next) = page.next_seq {
        links.push(("next", link(Some(("_cursor".into(), next.to_string())))));
    }
    let mut w = BundleWriter::new("history", None, &links);
    for r in &page.rows {
        w.history_entry(base, r);
        if id.is_none() {
            seen.push(Seen { reference: format!("{}/{}", r.ty, r.id), patients: "".into() });
        }
    }
    let mut a = Answer::new(StatusCode::OK, Payload::Text(w.finish().into()));
    a.seen = seen;
    Ok(a)
}

/// A `_count` of a history or audit page: a whole number, kept between 1 and `max`.
pub fn page_size(v: &str, max: u32) -> Result<usize, ApiError> {
    let n: u32 =
        v.parse().map_err(|_| ApiError::invalid_at("invalid", format!("`{v}` is not a whole number"), "_count"))?;
    Ok(n.clamp(1, max) as usize)
}

/// The `_cursor` of a history or audit `next` link: a sequence number.
pub fn paging_position(v: &str) -> Result<i64, ApiError> {
    v.parse().map_err(|_| {
        ApiError::invalid_at("invalid", "the paging position is not valid; follow the next link", "_cursor")
    })
}

/// Where an issue found in a Bundle entry's request or resource is, seen from the Bundle.
pub fn locate_in_entry(index: usize, expression: Option<String>) -> String {
    let entry = format!("Bundle.entry[{index}]");
    match expression {
        Some(e) if e.starts_with("Bundle.") => e,
        // `Patient.gender` → `Bundle.entry[3].resource.gender`
        Some(e) if e.starts_with(|c: char| c.is_ascii_uppercase()) => match e.split_once('.') {
            Some((_, rest)) => format!("{entry}.resource.{rest}"),
            None => format!("{entry}.resource"),
        },
        Some(e) if e.is_empty() => entry,
        Some(e) => format!("{entry}.{e}"),
        None => entry,
    }
}

/// The same error, with every issue located inside entry `index` of a Bundle.
pub fn entry_error(index: usize, err: ApiError) -> ApiError {
    let locate = |mut issues: Vec<Issue>| {
        for i in &mut issues {
            i.expression = Some(locate_in_entry(index, i.expression.take()));
        }
        issues
    };
    match err {
        ApiError::Invalid(i) => ApiError::Invalid(locate(i)),
        ApiError::Unprocessable(i) => ApiError::Unprocessable(locate(i)),
        other => other,
    }
}
