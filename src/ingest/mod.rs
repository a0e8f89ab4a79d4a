//! The municipal push: records in a mapping's input format are checked,
//! mapped to FHIR, bound to the pushing organisation and written — each
//! record atomically (all its resources or none), idempotently on
//! `(sourceSystem, recordId)`, with a Provenance and an audit entry in the
//! same transaction.
//!
//! Ids are derived, not random: a record's own resources get
//! `sha256(sourceSystem, recordId, key)`, so a repeated push finds them again;
//! shared resources (Patient, Organization, Practitioner, PractitionerRole)
//! are found by identifier, or created with `sha256(type, system, value)`,
//! so concurrent pushes of one patient meet on one id instead of creating two.

pub mod http;

use std::{collections::HashMap, sync::Arc};

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use crate::{
    access::Actor,
    audit,
    error::{ApiError, Issue},
    fhir::{format::Seen, interactions},
    identity::HsaId,
    json::{Object, Value},
    mapping::{Identity, KEY_REFERENCE_PREFIX, MappedRecord, Mapping, MappingSet, Rejected},
    store::{self, Filter, IngestRecord, SearchPlan, Store, StoreTx, plan::Atom},
};

pub use http::split_batch as split_records;

/// The most records one batch may carry (SPEC).
pub const MAX_BATCH_RECORDS: usize = 10_000;

/// What happened to one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Updated,
    Unchanged,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Updated => "updated",
            Status::Unchanged => "unchanged",
            Status::Rejected => "rejected",
        }
    }
}

/// The answer for one record.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub record_id: Option<String>,
    pub status: Status,
    /// `Type/id` of every resource the record maps to.
    pub resources: Vec<String>,
    /// For rejected records: the HTTP status a single push answers and the issues.
    pub rejection: Option<(StatusCode, Vec<Issue>)>,
}

impl Receipt {
    fn rejected(record_id: Option<String>, status: StatusCode, issues: Vec<Issue>) -> Receipt {
        Receipt { record_id, status: Status::Rejected, resources: Vec::new(), rejection: Some((status, issues)) }
    }

    /// A record that could not even be read (not JSON).
    pub fn rejected_with(issue: Issue) -> Receipt {
        Receipt::rejected(None, StatusCode::BAD_REQUEST, vec![issue])
    }

    fn from_error(record_id: Option<String>, e: &ApiError) -> Receipt {
        Receipt::rejected(record_id, e.status(), e.issues())
    }

    /// The status a single push answers with.
    pub fn http_status(&self) -> StatusCode {
        match (&self.rejection, self.status) {
            (Some((s, _)), _) => *s,
            (None, Status::Created) => StatusCode::CREATED,
            (None, _) => StatusCode::OK,
        }
    }

    /// `{"recordId", "status", "resources", "outcome"}` as SPEC defines it.
    pub fn to_json(&self) -> Value {
        let mut o = Object::new();
        o.insert("recordId", self.record_id.as_deref().map_or(Value::Null, Value::from));
        o.insert("status", self.status.as_str().into());
        o.insert("resources", Value::Array(self.resources.iter().map(|r| Value::from(r.as_str())).collect()));
        if let Some((_, issues)) = &self.rejection {
            o.insert("outcome", crate::error::operation_outcome(issues));
        }
        Value::Object(o)
    }
}

/// A record that passed its checks, ready to write.
pub struct Prepared {
    pub mapping: Arc<Mapping>,
    pub mapped: MappedRecord,
    /// SHA-256 over the mapping's name and version and everything the record maps to.
    pub content_hash: String,
}

/// Checks and maps one record and binds it to the actor's organisation.
pub fn prepare(set: &MappingSet, mapping: &Arc<Mapping>, actor: &Actor, record: &Value) -> Result<Prepared, Receipt> {
    let record_id = record.get("recordId").and_then(Value::as_str).map(str::to_owned);
    let mapped = match mapping.apply(record, &set.reference) {
        Ok(m) => m,
        Err(Rejected::Input(issues)) => {
            let issues = issues
                .into_iter()
                .map(|i| {
                    let issue = Issue::error("invalid", i.message);
                    if i.path.is_empty() { issue } else { issue.at(i.path) }
                })
                .collect();
            return Err(Receipt::rejected(record_id, StatusCode::BAD_REQUEST, issues));
        }
        Err(Rejected::Mapping(issues)) => {
            tracing::error!(mapping = %mapping.name, first = %issues[0], "a mapping produced invalid FHIR");
            let issues = issues.into_iter().map(|i| Issue::error("processing", i.message).at(i.path)).collect();
            return Err(Receipt::rejected(record_id, StatusCode::UNPROCESSABLE_ENTITY, issues));
        }
    };
    // Every client pushes for its own organisation only, region clients too;
    // only the gateway itself (`nara-gateway import`) acts for any.
    if actor.scopes.is_some() {
        let org = actor.access_key();
        if mapped.organization.organisationsnummer() != org {
            let issue = Issue::error(
                "forbidden",
                format!(
                    "the record belongs to organisation {} (organisationsnummer {}); this client acts for organisationsnummer {org}",
                    mapped.organization,
                    mapped.organization.organisationsnummer()
                ),
            )
            .at(mapping.organization_path());
            return Err(Receipt::rejected(record_id, StatusCode::FORBIDDEN, vec![issue]));
        }
        if let (Some(own), Some(theirs)) = (&actor.municipality, &mapped.municipality)
            && own != theirs
        {
            let issue =
                Issue::error("forbidden", format!("the record is for kommun {theirs}; this client pushes for {own}"))
                    .at(mapping.municipality_path().unwrap_or("municipality"));
            return Err(Receipt::rejected(record_id, StatusCode::FORBIDDEN, vec![issue]));
        }
    }
    let content_hash = content_hash(mapping, &mapped);
    Ok(Prepared { mapping: mapping.clone(), mapped, content_hash })
}

fn content_hash(mapping: &Mapping, mapped: &MappedRecord) -> String {
    let mut h = Sha256::new();
    h.update(mapping.name.as_bytes());
    h.update(b"\n");
    h.update(mapping.version.as_bytes());
    // One buffer for every resource's JSON text.
    let mut json = String::with_capacity(4096);
    for r in &mapped.resources {
        h.update(b"\n");
        h.update(r.key.as_bytes());
        h.update(b"\n");
        if let Identity::Shared { system, value } = &r.identity {
            h.update(system.as_bytes());
            h.update(b"|");
            h.update(value.as_bytes());
        }
        h.update(b"\n");
        json.clear();
        r.body.write_compact(&mut json);
        h.update(json.as_bytes());
    }
    for r in &mapped.recipients {
        h.update(b"\nrecipient ");
        h.update(r.as_str().as_bytes());
    }
    hex::encode(h.finalize())
}

/// A derived resource id: 32 hex characters of SHA-256 over the parts.
pub fn derived_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// How the ids of the resources a record owns are made.
///
/// An id is the time of the record's first push (ms, 12 hex digits) and 20
/// hex digits of SHA-256 over the record's identity and the resource's key
/// in the mapping. Records pushed one after another get ids that sort
/// together, so writing them touches a few pages of the id indexes instead
/// of a random page per resource (a batch of 200 records dirtied 320 pages
/// of those two indexes alone); a repeated push finds the same ids again
/// through the first push's time, which the record's ingest row keeps.
/// Records first pushed before ids carried the time keep the ids they got
/// then: the hash alone.
enum OwnedIds {
    Timed(i64),
    Untimed,
}

/// The key of a record's Provenance among its ids.
const PROVENANCE_KEY: &str = "provenance";

impl OwnedIds {
    fn of(m: &MappedRecord, previous: Option<&IngestRecord>, first_ms: i64) -> OwnedIds {
        let untimed = previous.is_some_and(|prev| {
            m.resources.iter().filter(|r| matches!(r.identity, Identity::Owned)).any(|r| {
                let old = format!("{}/{}", r.resource_type, OwnedIds::Untimed.id(m, &r.key));
                prev.resources.split(' ').any(|have| have == old)
            })
        });
        if untimed { OwnedIds::Untimed } else { OwnedIds::Timed(first_ms) }
    }

    fn id(&self, m: &MappedRecord, key: &str) -> String {
        let hash = derived_id(&[m.source_system.as_str(), &m.record_id, key]);
        match self {
            OwnedIds::Timed(ms) => format!("{:012x}{}", (*ms).clamp(0, 0xffff_ffff_ffff), &hash[..20]),
            OwnedIds::Untimed => hash,
        }
    }
}

/// Why writing a record failed: before anything was written (the record
/// alone is refused; the transaction goes on) or after (the transaction must be abandoned).
enum WriteError {
    Refused(ApiError),
    Aborted(ApiError),
}

impl From<store::StoreError> for WriteError {
    fn from(e: store::StoreError) -> Self {
        WriteError::Aborted(e.into())
    }
}

/// The canonical URI of a mapping version, in Provenance.policy.
pub fn mapping_uri(mapping: &Mapping) -> String {
    format!("https://nara-gateway.se/mappings/{}/{}", mapping.name, mapping.version)
}

/// Writes one record inside `tx`: resolves ids, writes the resources, the
/// Provenance, the ingest bookkeeping and the audit entry.
/// Shared resources already resolved in the current transaction: `(type, system|value)` → id.
type Resolved = HashMap<(String, String), String>;

/// The key of a shared resource in [`Resolved`] and [`Known`].
fn shared_key(ty: &str, system: &str, value: &str) -> (String, String) {
    (ty.to_owned(), format!("{system}|{value}"))
}

/// Shared resources found before the transaction began: `(type, system|value)`
/// → id and the organisations that could see it then.
type Known = HashMap<(String, String), (String, String)>;

/// Looks up the shared resources of `group` outside the write transaction
/// (on the read connections, in parallel with other writers), so that the
/// transaction — which holds the single writer on SQLite — only looks up
/// what was not found. Resources are never removed, and a resource's
/// organisations only grow, so what is found stays true. One query finds
/// them all by identifier value (one search per resource cost a fifth of a
/// batch's processor time); a resource matches as the search by
/// `identifier=system|value` of [`find_shared`] would match it, the oldest
/// first. A failed lookup is left to the transaction.
async fn look_up_shared(store: &Arc<dyn Store>, group: &[(usize, Prepared)]) -> Known {
    let mut wanted: HashMap<&str, Vec<Wanted<'_>>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (_, p) in group {
        for r in &p.mapped.resources {
            let Identity::Shared { system, value } = &r.identity else { continue };
            let key = shared_key(&r.resource_type, system, value);
            if seen.insert(key.clone()) {
                let systems = identifier_systems(system);
                wanted.entry(value.as_str()).or_default().push(Wanted { key, ty: &r.resource_type, systems });
            }
        }
    }
    let mut known = Known::new();
    if wanted.is_empty() {
        return known;
    }
    let values: Vec<&str> = wanted.keys().copied().collect();
    let Ok(hits) = store.find_by_identifier(&values).await else { return known };
    for hit in hits {
        let Some(keys) = wanted.get(hit.value.as_str()) else { continue };
        for w in keys {
            let matches = w.ty == hit.ty && hit.system.as_deref().is_some_and(|s| w.systems.contains(&s));
            if matches && !known.contains_key(&w.key) {
                known.insert(w.key.clone(), (hit.id.clone(), hit.access.clone()));
            }
        }
    }
    known
}

/// A shared resource [`look_up_shared`] looks for, by its identifier's value.
struct Wanted<'a> {
    key: (String, String),
    ty: &'a str,
    /// The systems its identifier may be under.
    systems: Vec<&'a str>,
}

async fn write_record(
    tx: &mut dyn StoreTx,
    actor: &Actor,
    p: &Prepared,
    request: &str,
    resolved: &mut Resolved,
    known: &Known,
    ready: Option<Ready>,
) -> Result<(Status, Vec<String>), WriteError> {
    let m = &p.mapped;
    let source = m.source_system.as_str();
    let previous = tx.ingest_record(source, &m.record_id).await?;
    if let Some(prev) = &previous {
        if prev.mapping != p.mapping.name {
            return Err(WriteError::Refused(ApiError::Conflict(format!(
                "recordId {} of {source} was pushed with the mapping `{}`; it cannot change to `{}`",
                m.record_id, prev.mapping, p.mapping.name
            ))));
        }
        if prev.content_hash == p.content_hash {
            let refs: Vec<String> = prev.resources.split(' ').filter(|r| !r.is_empty()).map(str::to_owned).collect();
            tx.audit(ingest_audit(actor, StatusCode::OK, &refs, request)).await?;
            return Ok((Status::Unchanged, refs));
        }
    }

    if previous.is_none()
        && let Some(ready) = ready
    {
        return write_ready_record(tx, p, ready, resolved, known).await;
    }

    // Who may see what the record writes: its organisation and its recipients.
    let access = record_access(m);
    let at_ms = interactions::now_ms();
    let first_ms = previous.as_ref().map_or(at_ms, |r| r.first_ms);
    let owned = OwnedIds::of(m, previous.as_ref(), first_ms);

    // Resolve every resource's id before writing anything.
    let mut targets: Vec<(String, bool)> = Vec::with_capacity(m.resources.len());
    let mut by_key: HashMap<String, String> = HashMap::new();
    for r in &m.resources {
        let (id, exists) = match &r.identity {
            Identity::Owned => (owned.id(m, &r.key), false),
            Identity::Shared { system, value } => {
                let key = shared_key(&r.resource_type, system, value);
                let (id, exists) = match (resolved.get(&key), known.get(&key)) {
                    // Seen earlier in this transaction: it exists now (written or found then).
                    (Some(id), _) => (id.clone(), true),
                    (None, Some((id, _))) => (id.clone(), true),
                    (None, None) => find_shared(tx, &r.resource_type, system, value).await?,
                };
                // The same shared resource twice in one record (a care unit that is also a participant).
                let earlier = m
                    .resources
                    .iter()
                    .zip(&targets)
                    .any(|(o, (oid, _))| o.resource_type == r.resource_type && *oid == id);
                (id, exists || earlier)
            }
        };
        by_key.insert(format!("{KEY_REFERENCE_PREFIX}{}", r.key), format!("{}/{id}", r.resource_type));
        targets.push((id, exists));
    }
    let mut bodies = Vec::with_capacity(m.resources.len());
    for r in &m.resources {
        let mut body = r.body.clone();
        resolve_keys(&mut body, &by_key);
        if let Some(dangling) = dangling_key_reference(&body) {
            let message = format!(
                "mapping {}: `{}` refers to `{dangling}`, which this record does not produce",
                p.mapping.name, r.key
            );
            let issue = Issue::error("processing", message).at(p.mapping.file.clone());
            return Err(WriteError::Refused(ApiError::Unprocessable(vec![issue])));
        }
        bodies.push(body);
    }

    // Write.
    let mut written: Vec<interactions::Written> = Vec::new();
    let mut refs: Vec<String> = Vec::with_capacity(m.resources.len());
    let mut any_updated = false;
    for ((r, (id, exists)), body) in m.resources.iter().zip(&targets).zip(bodies) {
        let ty = r.resource_type.as_str();
        refs.push(format!("{ty}/{id}"));
        match (&r.identity, exists) {
            (Identity::Shared { system, value }, true) => share(tx, ty, id, system, value, &access, known).await?,
            (Identity::Shared { .. }, false) => {
                written.push(
                    interactions::put_with_access(tx, ty, id, 1, "PUT", body, StatusCode::CREATED, &access)
                        .await
                        .map_err(WriteError::Aborted)?,
                );
            }
            (Identity::Owned, _) => {
                // A record never pushed before has no resources yet: its ids derive from it.
                let current = if previous.is_some() { tx.current(ty, id).await? } else { None };
                let mut body = body;
                if ty == "Task"
                    && current.as_ref().is_some_and(|c| !c.deleted)
                    && let Some(text) = tx.current_body(ty, id).await?
                    && let Ok(stored) = crate::json::parse(text.as_bytes())
                {
                    // A transfer pushed again keeps the state its parties gave it.
                    crate::transfer::keep_state(&stored, &mut body);
                }
                let (version, status, previous_access) = match current {
                    Some(c) => {
                        any_updated |= !c.deleted;
                        (c.version + 1, StatusCode::OK, c.access)
                    }
                    None => (1, StatusCode::CREATED, String::new()),
                };
                let mut merged = previous_access;
                for key in access.split(' ') {
                    merged = store::access_with(&merged, key);
                }
                written.push(
                    interactions::put_with_access(tx, ty, id, version, "PUT", body, status, &merged)
                        .await
                        .map_err(WriteError::Aborted)?,
                );
            }
        }
    }

    // Resources an earlier version of the record had and this one does not (fewer goals, say).
    if let Some(prev) = &previous {
        let now = interactions::now_ms();
        for old in prev.resources.split(' ').filter(|r| !r.is_empty() && !refs.contains(&(*r).to_owned())) {
            let Some((ty, id)) = old.split_once('/') else { continue };
            let owned = m.resources.iter().all(|r| r.resource_type != ty || matches!(r.identity, Identity::Owned));
            if !owned || crate::access::is_directory_type(ty) || ty == "Patient" {
                continue;
            }
            if let Some(c) = tx.current(ty, id).await?
                && !c.deleted
            {
                tx.delete(ty, id, c.version + 1, now).await?;
            }
        }
    }

    for (r, (id, _)) in m.resources.iter().zip(&targets) {
        if let Identity::Shared { system, value } = &r.identity {
            resolved.insert(shared_key(&r.resource_type, system, value), id.clone());
        }
    }
    let status = if previous.is_some() || any_updated { Status::Updated } else { Status::Created };
    if !written.is_empty() {
        let targets: Vec<_> = written.iter().map(|w| (w.ty.as_str(), w.id.as_str(), w.version)).collect();
        let provenance = provenance(p, &targets, at_ms, status);
        let id = owned.id(m, PROVENANCE_KEY);
        let version = match &previous {
            Some(_) => tx.current("Provenance", &id).await?.map_or(1, |c| c.version + 1),
            None => 1,
        };
        interactions::put_with_access(tx, "Provenance", &id, version, "PUT", provenance, StatusCode::OK, &access)
            .await
            .map_err(WriteError::Aborted)?;
    }
    tx.put_ingest_record(&ingest_row(p, &refs, first_ms, at_ms)).await?;
    let http = if status == Status::Created { StatusCode::CREATED } else { StatusCode::OK };
    tx.audit(ingest_audit(actor, http, &refs, request)).await?;
    Ok((status, refs))
}

/// Who may see what a record writes: its organisation and its recipients.
fn record_access(m: &MappedRecord) -> String {
    let mut access = m.organization.organisationsnummer().to_owned();
    for r in &m.recipients {
        access = store::access_with(&access, r.organisationsnummer());
    }
    access
}

/// Lets the organisations in `access` see an existing shared resource,
/// unless they could already when it was looked up (or it is a directory
/// resource, which every client sees).
async fn share(
    tx: &mut dyn StoreTx,
    ty: &str,
    id: &str,
    system: &str,
    value: &str,
    access: &str,
    known: &Known,
) -> Result<(), store::StoreError> {
    let seen_by_all = known
        .get(&shared_key(ty, system, value))
        .is_some_and(|(kid, ka)| kid == id && access.split(' ').all(|k| ka.split(' ').any(|have| have == k)));
    if crate::access::is_directory_type(ty) || seen_by_all {
        return Ok(());
    }
    let current = tx.current(ty, id).await?.map(|c| c.access).unwrap_or_default();
    let merged = access.split(' ').fold(current.clone(), |a, key| store::access_with(&a, key));
    if merged != current {
        tx.grant(ty, id, &merged).await?;
    }
    Ok(())
}

/// The bookkeeping row of a push: the record's source identity, content and resources.
fn ingest_row(p: &Prepared, refs: &[String], first_ms: i64, last_ms: i64) -> IngestRecord {
    let m = &p.mapped;
    IngestRecord {
        source_system: m.source_system.as_str().to_owned(),
        record_id: m.record_id.clone(),
        mapping: p.mapping.name.clone(),
        content_hash: p.content_hash.clone(),
        resources: refs.join(" "),
        municipality: m.municipality.clone(),
        info_type: p.mapping.info_type.clone(),
        first_ms,
        last_ms,
    }
}

/// A record's writes made ready before its transaction begins (see
/// [`interactions::ready_version`]), for the common case: a record whose
/// shared resources were all found beforehand and that writes no transfer
/// Task. It is used only if the transaction finds the record new;
/// otherwise, and for every other record, [`write_record`] works it out
/// inside the transaction.
struct Ready {
    /// Every resource's id, in the mapping's order.
    ids: Vec<String>,
    /// `Type/id` of every resource.
    refs: Vec<String>,
    /// Who may see what the record writes.
    access: String,
    /// Version 1 of each of the record's own resources, then its Provenance.
    versions: Vec<interactions::ReadyVersion>,
    at_ms: i64,
    audit: store::AuditRecord,
}

fn ready(p: &Prepared, actor: &Actor, known: &Known, request: &str) -> Option<Ready> {
    let m = &p.mapped;
    if m.resources.iter().any(|r| r.resource_type == "Task") {
        return None;
    }
    let at_ms = interactions::now_ms();
    let owned = OwnedIds::Timed(at_ms);
    let mut ids = Vec::with_capacity(m.resources.len());
    let mut by_key = HashMap::new();
    for r in &m.resources {
        let id = match &r.identity {
            Identity::Owned => owned.id(m, &r.key),
            Identity::Shared { system, value } => known.get(&shared_key(&r.resource_type, system, value))?.0.clone(),
        };
        by_key.insert(format!("{KEY_REFERENCE_PREFIX}{}", r.key), format!("{}/{id}", r.resource_type));
        ids.push(id);
    }
    let access = record_access(m);
    let mut versions = Vec::new();
    for (r, id) in m.resources.iter().zip(&ids) {
        if !matches!(r.identity, Identity::Owned) {
            continue;
        }
        let mut body = r.body.clone();
        resolve_keys(&mut body, &by_key);
        if dangling_key_reference(&body).is_some() {
            return None; // refused inside the transaction, with its reason
        }
        let ty = r.resource_type.as_str();
        versions.push(interactions::ready_version(ty, id, 1, at_ms, body, StatusCode::CREATED, &access));
    }
    if !versions.is_empty() {
        let targets: Vec<_> = versions.iter().map(|v| (v.ty.as_str(), v.id.as_str(), v.version)).collect();
        let body = provenance(p, &targets, at_ms, Status::Created);
        let id = owned.id(m, PROVENANCE_KEY);
        versions.push(interactions::ready_version("Provenance", &id, 1, at_ms, body, StatusCode::OK, &access));
    }
    let refs: Vec<String> = m.resources.iter().zip(&ids).map(|(r, id)| format!("{}/{id}", r.resource_type)).collect();
    let audit = ingest_audit(actor, StatusCode::CREATED, &refs, request);
    Some(Ready { ids, refs, access, versions, at_ms, audit })
}

/// Writes a record made [`Ready`]: only the statements are left.
async fn write_ready_record(
    tx: &mut dyn StoreTx,
    p: &Prepared,
    ready: Ready,
    resolved: &mut Resolved,
    known: &Known,
) -> Result<(Status, Vec<String>), WriteError> {
    for (r, id) in p.mapped.resources.iter().zip(&ready.ids) {
        if let Identity::Shared { system, value } = &r.identity {
            share(tx, &r.resource_type, id, system, value, &ready.access, known).await?;
            resolved.insert(shared_key(&r.resource_type, system, value), id.clone());
        }
    }
    for v in ready.versions {
        interactions::write_ready(tx, v, "PUT").await.map_err(WriteError::Aborted)?;
    }
    tx.put_ingest_record(&ingest_row(p, &ready.refs, ready.at_ms, ready.at_ms)).await?;
    tx.audit(ready.audit).await?;
    Ok((Status::Created, ready.refs))
}

/// The audit entry of a push that wrote or found `refs`.
fn ingest_audit(actor: &Actor, status: StatusCode, refs: &[String], request: &str) -> store::AuditRecord {
    let patients: Arc<str> =
        refs.iter().filter(|r| r.starts_with("Patient/")).cloned().collect::<Vec<_>>().join(" ").into();
    let seen: Vec<Seen> = refs.iter().map(|r| Seen { reference: r.clone(), patients: patients.clone() }).collect();
    let entry =
        audit::Entry { actor, event: audit::Event::Ingest, status, seen: &seen, request: Some(request), reason: None };
    entry.record()
}

/// The id of a shared resource: the derived one if it exists, else one found
/// by identifier (HSA-ids under any of their systems), else the derived one, new.
async fn find_shared(
    tx: &mut dyn StoreTx,
    ty: &str,
    system: &str,
    value: &str,
) -> Result<(String, bool), store::StoreError> {
    let (plan, derived) = identifier_plan(ty, system, value);
    if let Some(found) = tx.find_ids(&plan).await?.into_iter().next() {
        return Ok((found, true));
    }
    // Not found by identifier: the derived id, unless a resource already holds it
    // (one whose identifier was changed since).
    match tx.current(ty, &derived).await? {
        Some(c) => Ok((derived, !c.deleted)),
        None => Ok((derived, false)),
    }
}

/// The search for a shared resource by identifier (HSA-ids under any of
/// their systems), and the id it gets when it is new.
fn identifier_plan(ty: &str, system: &str, value: &str) -> (SearchPlan, String) {
    let systems = identifier_systems(system);
    let derived = derived_id(&[ty, systems[0], value]);
    let mut plan = SearchPlan::new(ty);
    plan.count = 1;
    plan.filters.push(Filter::Any(
        systems
            .into_iter()
            .map(|s| Atom::Token {
                param: "identifier",
                query: crate::fhir::search::values::TokenQuery::SystemCode(s.to_owned(), value.to_owned()),
            })
            .collect(),
    ));
    (plan, derived)
}

/// The systems under which an identifier of `system` is the same
/// identifier, the canonical one first: an HSA-id's three URIs, or `system` alone.
fn identifier_systems(system: &str) -> Vec<&str> {
    if HsaId::is_hsa_system(system) {
        std::iter::once(crate::identity::HSA_ID_SYSTEM)
            .chain(crate::identity::HSA_ID_SYSTEM_ALIASES.iter().copied())
            .collect()
    } else {
        vec![system]
    }
}

/// Replaces every `urn:nara:key:…` string (references, attachment URLs) with `Type/id`.
fn resolve_keys(v: &mut Value, by_key: &HashMap<String, String>) {
    match v {
        Value::String(s) if s.starts_with(KEY_REFERENCE_PREFIX) => {
            if let Some(r) = by_key.get(s.as_str()) {
                *s = r.clone();
            }
        }
        Value::Object(o) => o.iter_mut().for_each(|(_, v)| resolve_keys(v, by_key)),
        Value::Array(a) => a.iter_mut().for_each(|v| resolve_keys(v, by_key)),
        _ => {}
    }
}

fn dangling_key_reference(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.starts_with(KEY_REFERENCE_PREFIX) => Some(s.clone()),
        Value::Object(o) => o.iter().find_map(|(_, v)| dangling_key_reference(v)),
        Value::Array(a) => a.iter().find_map(dangling_key_reference),
        _ => None,
    }
}

/// The Provenance of one push of a record: what was written, from which
/// source system and record, by which mapping version, when.
fn provenance(p: &Prepared, written: &[(&str, &str, i64)], at_ms: i64, status: Status) -> Value {
    let m = &p.mapped;
    let json = |text: String| crate::json::parse(text.as_bytes()).unwrap_or(Value::Null);
    let targets: Vec<Value> = written
        .iter()
        .map(|(ty, id, version)| {
            let mut r = Object::new();
            r.insert("reference", format!("{ty}/{id}/_history/{version}").into());
            Value::Object(r)
        })
        .collect();
    let (op, op_display) = if status == Status::Created { ("CREATE", "create") } else { ("UPDATE", "revise") };
    let mut o = Object::new();
    o.insert("resourceType", "Provenance".into());
    o.insert("target", Value::Array(targets));
    o.insert("recorded", crate::fhir::format::instant(at_ms).into());
    o.insert("policy", Value::Array(vec![mapping_uri(&p.mapping).into()]));
    o.insert(
        "activity",
        json(format!(
            r#"{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v3-DataOperation","code":"{op}","display":"{op_display}"}}]}}"#
        )),
    );
    let source = serde_json::json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author", "display": "Author"}]},
        "who": {"identifier": {"system": crate::identity::HSA_ID_SYSTEM, "value": m.source_system.as_str()}, "display": "source system"},
        "onBehalfOf": {"identifier": {"system": crate::identity::HSA_ID_SYSTEM, "value": m.organization.as_str()}}
    });
    let gateway = serde_json::json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler", "display": "Assembler"}]},
        "who": {"display": format!("nara-gateway mapping {} {}", p.mapping.name, p.mapping.version)}
    });
    o.insert("agent", Value::Array(vec![source.into(), gateway.into()]));
    let entity = serde_json::json!({
        "role": "source",
        "what": {
            "identifier": {
                "system": format!("https://nara-gateway.se/fhir/NamingSystem/record-id/{}", m.source_system),
                "value": m.record_id
            },
            "display": format!("record {} of {}", m.record_id, m.source_system)
        }
    });
    o.insert("entity", Value::Array(vec![entity.into()]));
    Value::Object(o)
}

/// Writes prepared records, `chunk` records per transaction. A chunk whose
/// transaction fails is retried record by record, so one record's failure
/// never takes another's with it.
pub async fn write_all(
    store: &Arc<dyn Store>,
    actor: &Actor,
    records: Vec<(usize, Prepared)>,
    chunk: usize,
    request: &str,
) -> Vec<(usize, Receipt)> {
    let mut out = Vec::with_capacity(records.len());
    for group in records.chunks(chunk.max(1)) {
        match write_group(store, actor, group, request).await {
            Ok(receipts) => out.extend(receipts),
            Err(_) if group.len() > 1 => {
                for one in group {
                    let receipts = match write_group(store, actor, std::slice::from_ref(one), request).await {
                        Ok(r) => r,
                        Err(e) => vec![(one.0, Receipt::from_error(Some(one.1.mapped.record_id.clone()), &e))],
                    };
                    out.extend(receipts);
                }
            }
            Err(e) => out.push((group[0].0, Receipt::from_error(Some(group[0].1.mapped.record_id.clone()), &e))),
        }
    }
    out
}

async fn write_group(
    store: &Arc<dyn Store>,
    actor: &Actor,
    group: &[(usize, Prepared)],
    request: &str,
) -> Result<Vec<(usize, Receipt)>, ApiError> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_group(store, actor, group, request).await {
            Err(ApiError::Conflict(_)) if attempt < ATTEMPTS => continue,
            other => return other,
        }
    }
}

async fn try_group(
    store: &Arc<dyn Store>,
    actor: &Actor,
    group: &[(usize, Prepared)],
    request: &str,
) -> Result<Vec<(usize, Receipt)>, ApiError> {
    let known = look_up_shared(store, group).await;
    let readies: Vec<Option<Ready>> = group.iter().map(|(_, p)| ready(p, actor, &known, request)).collect();
    let mut tx = store.begin().await?;
    let mut receipts = Vec::with_capacity(group.len());
    let mut resolved = Resolved::new();
    for ((index, p), ready) in group.iter().zip(readies) {
        let record_id = Some(p.mapped.record_id.clone());
        match write_record(tx.as_mut(), actor, p, request, &mut resolved, &known, ready).await {
            Ok((status, resources)) => {
                receipts.push((*index, Receipt { record_id, status, resources, rejection: None }));
            }
            Err(WriteError::Refused(e)) => receipts.push((*index, Receipt::from_error(record_id, &e))),
            Err(WriteError::Aborted(e)) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok(receipts)
}

/// Records the refusal of records that never reached the store, before the answer leaves.
pub async fn audit_rejections(
    store: &Arc<dyn Store>,
    actor: &Actor,
    receipts: &[&Receipt],
    request: &str,
) -> Result<(), ApiError> {
    let records: Vec<_> = receipts
        .iter()
        .filter_map(|r| {
            let (status, issues) = r.rejection.as_ref()?;
            let reason = issues.first().map(|i| i.code);
            let entry = audit::Entry {
                actor,
                event: audit::Event::Ingest,
                status: *status,
                seen: &[],
                request: Some(request),
                reason,
            };
            Some(entry.record())
        })
        .collect();
    if records.is_empty() {
        return Ok(());
    }
    store.append_audit(records).await.map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappedResource;

    fn record(record_id: &str) -> MappedRecord {
        let owned = |key: &str, ty: &str| MappedResource {
            key: key.into(),
            resource_type: ty.into(),
            identity: Identity::Owned,
            body: Value::Null,
        };
        MappedRecord {
            record_id: record_id.into(),
            source_system: HsaId::parse("SE2120001231-EHR1").unwrap(),
            organization: HsaId::parse("SE2120001231-0001").unwrap(),
            municipality: Some("1281".into()),
            recipients: vec![],
            resources: vec![owned("observation", "Observation"), owned("goal[1]", "Goal")],
        }
    }

    fn ingest_row_listing(m: &MappedRecord, ids: &OwnedIds) -> IngestRecord {
        let resources: Vec<String> =
            m.resources.iter().map(|r| format!("{}/{}", r.resource_type, ids.id(m, &r.key))).collect();
        IngestRecord {
            source_system: m.source_system.as_str().into(),
            record_id: m.record_id.clone(),
            mapping: "funktionsstatus".into(),
            content_hash: String::new(),
            resources: resources.join(" "),
            municipality: None,
            info_type: None,
            first_ms: 1_700_000_000_000,
            last_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn owned_ids_sort_by_first_push_and_are_found_again_by_it() {
        let (a, b) = (record("r1"), record("r2"));
        let first = OwnedIds::of(&a, None, 1_700_000_000_000).id(&a, "observation");
        let later = OwnedIds::of(&b, None, 1_700_000_000_001).id(&b, "observation");
        assert!(first < later, "{first} then {later}");
        assert_eq!(first.len(), 32);
        assert!(first.starts_with(&format!("{:012x}", 1_700_000_000_000_i64)));
        // A repeated push: the ingest row's first time gives the same ids.
        let previous = ingest_row_listing(&a, &OwnedIds::Timed(1_700_000_000_000));
        let again = OwnedIds::of(&a, Some(&previous), previous.first_ms);
        assert_eq!(again.id(&a, "observation"), first);
        assert_ne!(again.id(&a, "goal[1]"), first, "each resource of a record has its own id");
    }

    #[test]
    fn records_first_pushed_with_untimed_ids_keep_them() {
        let m = record("r1");
        let previous = ingest_row_listing(&m, &OwnedIds::Untimed);
        let ids = OwnedIds::of(&m, Some(&previous), previous.first_ms);
        assert_eq!(ids.id(&m, "observation"), derived_id(&["SE2120001231-EHR1", "r1", "observation"]));
        assert_eq!(ids.id(&m, PROVENANCE_KEY), derived_id(&["SE2120001231-EHR1", "r1", "provenance"]));
    }
}
