//! Storage: the `Store` trait every backend implements, the versioned
//! resource model, and the backend-neutral search plan.
//!
//! The stored JSON text *is* the record: it is written once, with the
//! server's `id` and `meta` already in it, and read back byte for byte.
//! Search index rows live beside it and are written in the same transaction.

mod audit_body;
mod audit_journal;
mod audit_queue;
pub mod cache;
#[cfg(test)]
mod conformance;
pub mod plan;
pub mod postgres;
mod rows;
pub mod sql;
pub mod sqlite;
mod sqlite_readers;

use std::sync::Arc;

use async_trait::async_trait;

pub use plan::{Cursor, Filter, SearchPlan};

use crate::fhir::search::extract::{IndexValue, TEXT_SEPARATOR};

/// One stored version of a resource.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The backend's row id of the resource (0 for history rows).
    pub rid: i64,
    pub ty: String,
    pub id: String,
    pub version: i64,
    /// Milliseconds since the Unix epoch, UTC.
    pub last_updated_ms: i64,
    pub deleted: bool,
    /// The HTTP verb that made this version: `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The resource's JSON text with `id` and `meta`; empty for deletions.
    pub body: Arc<str>,
    /// Organisations (organisationsnummer, space-separated) that may see the
    /// resource besides region and admin clients; empty on history rows.
    pub access: Arc<str>,
    /// The patients the resource is about (`Patient/id`, space-separated); empty on history rows.
    pub patients: Arc<str>,
}

/// What the current version of a resource is, as seen inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub version: i64,
    pub deleted: bool,
    /// Organisations that may see it (see [`Stored::access`]).
    pub access: String,
}

/// A current resource found by one of its identifiers ([`Store::find_by_identifier`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifierHit {
    pub ty: String,
    pub id: String,
    /// Organisations that may see it (see [`Stored::access`]).
    pub access: String,
    /// The identifier's system and value.
    pub system: Option<String>,
    pub value: String,
}

/// The internal token search parameter holding the organisations that may see a resource.
pub const ACCESS_PARAM: &str = "_access";

/// Whether `org` is in an access set (organisationsnummer separated by spaces).
pub fn access_contains(access: &str, org: &str) -> bool {
    access.split(' ').any(|o| o == org)
}

/// `access` with `org` added (unchanged when already there or `org` is empty).
pub fn access_with(access: &str, org: &str) -> String {
    if org.is_empty() || access_contains(access, org) {
        access.to_owned()
    } else if access.is_empty() {
        org.to_owned()
    } else {
        format!("{access} {org}")
    }
}

/// A new version to write.
#[derive(Debug)]
pub struct NewVersion<'a> {
    pub ty: &'a str,
    pub id: &'a str,
    pub version: i64,
    pub last_updated_ms: i64,
    /// `POST` or `PUT`.
    pub method: &'static str,
    pub body: &'a str,
    /// Search index entries: parameter code and value.
    pub index: Vec<(&'static str, IndexValue)>,
    /// Organisations that may see the resource (see [`Stored::access`]).
    pub access: &'a str,
    /// The patients it is about (see [`Stored::patients`]).
    pub patients: &'a str,
}

#[cfg(test)]
impl<'a> NewVersion<'a> {
    /// Version 1 of a Patient, put, with no index rows, access keys or patients (for store tests).
    pub(crate) fn test_patient(id: &'a str, body: &'a str) -> Self {
        NewVersion {
            ty: "Patient",
            id,
            version: 1,
            last_updated_ms: 1,
            method: "PUT",
            body,
            index: vec![],
            access: "",
            patients: "",
        }
    }
}

/// One entry of the PDL audit log, ready to append: the AuditEvent's JSON
/// text and the patients it concerns (`Patient/id` references).
#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub event_id: String,
    pub recorded_ms: i64,
    pub body: String,
    pub patients: Vec<String>,
}

/// A stored audit log entry with its place in the hash chain.
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub seq: i64,
    pub event_id: String,
    pub recorded_ms: i64,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Which audit entries to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only entries concerning one of these patients (`Patient/id`); `None`: all.
    pub patients: Option<Vec<String>>,
    pub event_id: Option<String>,
    /// `recorded` bounds in ms: at or after, before.
    pub from_ms: Option<i64>,
    pub before_ms: Option<i64>,
    /// Continue below this sequence number (exclusive).
    pub below_seq: Option<i64>,
    pub count: usize,
}

/// The chain hash of an audit entry: SHA-256 over the previous hash, the
/// sequence number, the time and the AuditEvent text, as lowercase hex.
pub fn audit_hash(prev_hash: &str, seq: i64, recorded_ms: i64, body: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(recorded_ms.to_string().as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// The hash before the first audit entry.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the gateway remembers of an ingested record, for idempotency and
/// for the NPÖ observed-production figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestRecord {
    pub source_system: String,
    pub record_id: String,
    pub mapping: String,
    /// SHA-256 (hex) of the record as received (canonical JSON).
    pub content_hash: String,
    /// The references written for it (`Observation/…`), space-separated.
    pub resources: String,
    pub municipality: Option<String>,
    pub info_type: Option<String>,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// A document transfer (a Task with code `transfer`) as the store keeps it beside the Task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRow {
    pub task_id: String,
    pub document_id: String,
    pub binary_id: Option<String>,
    /// Organisationsnummer of the sender (requester) and the recipient (owner).
    pub sender_key: String,
    pub recipient_key: String,
    /// `Patient/id`.
    pub patient: String,
    /// `system|code` of the document type, or empty.
    pub doc_type: String,
    /// SHA-256 (hex) of the content's data, or empty.
    pub content_hash: String,
    pub status: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The earlier transfer with the same patient, type, content and parties.
    pub duplicate_of: Option<String>,
}

/// An organisation of the NPÖ registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpoOrganization {
    /// Kommunkod, or the region's länskod.
    pub code: String,
    pub name: String,
    pub delregion: Option<String>,
    pub hsa_id: Option<String>,
    pub organisationsnummer: Option<String>,
    pub is_region: bool,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// One declared NPÖ status, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpoStatement {
    /// Order of recording (0 before it is stored).
    pub seq: i64,
    pub code: String,
    pub info_type: String,
    pub producer: Option<bool>,
    pub consumer: Option<bool>,
    /// `YYYY-MM-DD`.
    pub declared_at: String,
    pub source: String,
    pub recorded_by: String,
    pub recorded_ms: i64,
}

/// An active (or failing, or switched off) rest-hook Subscription, as matching needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub sub_id: String,
    /// Organisationsnummer of the creator; empty for cross-organisation clients.
    pub owner_key: String,
    pub criteria: String,
    pub endpoint: String,
    /// The payload MIME type; `None`: empty notifications.
    pub payload: Option<String>,
    /// `Name: value` headers to send.
    pub headers: Vec<String>,
    pub status: String,
    pub failing_since: Option<i64>,
}

/// A notification in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub event_id: String,
    pub sub_id: String,
    /// `Task/id`.
    pub resource: String,
    pub version: i64,
    pub created_ms: i64,
    pub attempts: i64,
}

/// Observed production of one municipality and information type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub municipality: String,
    pub info_type: String,
    pub records: u64,
    pub last_ms: i64,
}

/// A page of search results.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub rows: Vec<Stored>,
    /// Total matches, when the plan asked for it.
    pub total: Option<u64>,
    /// Where the next page starts, when there is one.
    pub next: Option<Cursor>,
}

/// Which versions a history request wants.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub ty: Option<String>,
    pub id: Option<String>,
    /// Only versions written at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only versions written before this time (ms), for `_at`-style bounds.
    pub before_ms: Option<i64>,
    /// Continue after this position (exclusive), from a previous page.
    pub after_seq: Option<i64>,
    pub count: usize,
}

/// A page of history, newest first.
#[derive(Debug, Default)]
pub struct HistoryPage {
    pub rows: Vec<Stored>,
    pub next_seq: Option<i64>,
}

/// Storage failures, kept coarse: callers only decide how to answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another write got there first (unique key, lost race); retrying may succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is busy beyond its timeout.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a damaged database.
    #[error("storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A storage backend. Reads run concurrently; writes go through [`StoreTx`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current version of a resource (deleted ones included, with `deleted`).
    async fn read(&self, ty: &str, id: &str) -> StoreResult<Option<Stored>>;
    /// One specific version.
    async fn vread(&self, ty: &str, id: &str, version: i64) -> StoreResult<Option<Stored>>;
    /// Versions newest first, for instance, type or system history.
    async fn history(&self, q: &HistoryQuery) -> StoreResult<HistoryPage>;
    /// One page of current, non-deleted resources matching the plan.
    async fn search(&self, plan: &SearchPlan) -> StoreResult<SearchPage>;
    /// Current resources that `rows` reference through `param` (an `_include`).
    async fn include(
        &self,
        rows: &[Stored],
        param: &str,
        target_type: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Stored>>;
    /// Current resources of `source_type` referencing `rows` through `param` (a `_revinclude`).
    async fn revinclude(
        &self,
        rows: &[Stored],
        source_type: &str,
        param: &str,
        limit: usize,
    ) -> StoreResult<Vec<Stored>>;
    /// Current resources carrying an identifier whose value is one of
    /// `values`, under any system, oldest first for each value: the shared
    /// resources of a whole ingest batch found in one query, not one search each.
    async fn find_by_identifier(&self, values: &[&str]) -> StoreResult<Vec<IdentifierHit>>;
    /// Starts a write transaction. Dropping it without `commit` rolls back.
    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>>;
    /// Appends audit entries durably (group-committed with concurrent appends).
    async fn append_audit(&self, records: Vec<AuditRecord>) -> StoreResult<()>;
    /// Audit entries matching `q`, newest first (at most `q.count`).
    async fn audit_entries(&self, q: &AuditQuery) -> StoreResult<Vec<AuditRow>>;
    /// Audit entries in chain order after `after_seq`, for verification.
    async fn audit_chain(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<AuditRow>>;
    /// The last entry's sequence number and hash, as recorded beside the chain.
    async fn audit_head(&self) -> StoreResult<(i64, String)>;
    /// The organisations of the NPÖ registry, by code.
    async fn npo_organizations(&self) -> StoreResult<Vec<NpoOrganization>>;
    /// Declared NPÖ statements in recording order, of one organisation or all.
    async fn npo_statements(&self, code: Option<&str>) -> StoreResult<Vec<NpoStatement>>;
    /// Transfers whose document content is the Binary `binary_id`.
    async fn transfers_for_binary(&self, binary_id: &str) -> StoreResult<Vec<TransferRow>>;
    /// Open transfers (requested or received) created before `before_ms`, oldest first,
    /// optionally only those `party` (an organisationsnummer) sends or receives.
    async fn open_transfers(&self, before_ms: i64, party: Option<&str>, limit: usize) -> StoreResult<Vec<TransferRow>>;
    /// Records ingested per municipality and information type since `since_ms`.
    async fn observed(&self, since_ms: i64) -> StoreResult<Vec<Observed>>;
    /// Records a client assertion (`client id` and `jti`) until `expires_ms`;
    /// `false` when it was recorded before and has not expired (a replay).
    async fn claim_assertion(&self, key: &str, expires_ms: i64, now_ms: i64) -> StoreResult<bool>;
    /// Cheap check that the database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// Why this process cannot append audit entries, if it cannot (on SQLite:
    /// another process holds the database's audit journal). A server must not start so.
    fn audit_unavailable(&self) -> Option<StoreError> {
        None
    }
}

/// A write transaction: everything in it becomes visible at once or not at all.
#[async_trait]
pub trait StoreTx: Send {
    /// The current version of a resource, if it ever existed.
    async fn current(&mut self, ty: &str, id: &str) -> StoreResult<Option<Current>>;
    /// The current version's JSON text, unless deleted (for checks that compare old and new).
    async fn current_body(&mut self, ty: &str, id: &str) -> StoreResult<Option<String>>;
    /// Ids of current resources matching `plan` (up to `plan.count`), for conditional operations.
    async fn find_ids(&mut self, plan: &SearchPlan) -> StoreResult<Vec<String>>;
    /// Writes a new version and replaces the resource's search index.
    async fn put(&mut self, v: NewVersion<'_>) -> StoreResult<()>;
    /// Writes a deletion as a new version and drops the search index.
    async fn delete(&mut self, ty: &str, id: &str, version: i64, at_ms: i64) -> StoreResult<()>;
    /// Replaces the organisations that may see an existing resource (no new
    /// version); callers pass the whole new set (see [`access_with`]).
    async fn grant(&mut self, ty: &str, id: &str, access: &str) -> StoreResult<()>;
    /// Appends an audit entry in this transaction: it is stored if and only if the transaction is.
    async fn audit(&mut self, record: AuditRecord) -> StoreResult<()>;
    /// Inserts or replaces an organisation of the NPÖ registry.
    async fn npo_put_organization(&mut self, org: &NpoOrganization) -> StoreResult<()>;
    /// Records a declared NPÖ status (its `seq` is assigned).
    async fn npo_add_statement(&mut self, statement: &NpoStatement) -> StoreResult<()>;
    /// Inserts or replaces a Subscription's matching row.
    async fn put_subscription(&mut self, row: &SubscriptionRow) -> StoreResult<()>;
    /// Removes a Subscription's matching row and its undelivered notifications.
    async fn remove_subscription(&mut self, sub_id: &str) -> StoreResult<()>;
    /// The Subscriptions that receive notifications (status active or error).
    async fn live_subscriptions(&mut self) -> StoreResult<Vec<SubscriptionRow>>;
    /// Adds a notification to the outbox.
    async fn add_notification(&mut self, n: &Notification, due_ms: i64) -> StoreResult<()>;
    /// Leases up to `limit` due notifications until `lease_until_ms`.
    async fn claim_notifications(
        &mut self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Notification>>;
    /// Marks a notification delivered.
    async fn delivered(&mut self, event_id: &str, at_ms: i64) -> StoreResult<()>;
    /// Schedules another attempt of a notification.
    async fn retry_notification(&mut self, event_id: &str, next_ms: i64, error: &str) -> StoreResult<()>;
    /// The transfer row of a Task.
    async fn transfer(&mut self, task_id: &str) -> StoreResult<Option<TransferRow>>;
    /// Inserts or replaces a transfer row.
    async fn put_transfer(&mut self, row: &TransferRow) -> StoreResult<()>;
    /// The earliest other transfer with the same patient, type, content and parties.
    async fn same_transfer(&mut self, row: &TransferRow) -> StoreResult<Option<String>>;
    /// The remembered ingested record `(source_system, record_id)`.
    async fn ingest_record(&mut self, source_system: &str, record_id: &str) -> StoreResult<Option<IngestRecord>>;
    /// Records a push. A record's first push inserts its row; a later one
    /// (same `first_ms`) updates it. A row with another `first_ms` means
    /// that another transaction pushed the record first: `Conflict`.
    async fn put_ingest_record(&mut self, record: &IngestRecord) -> StoreResult<()>;
    /// Waits until no other transaction (of any process) holds `key`, then
    /// holds it until this one ends. A single-writer backend holds every key already.
    async fn lock(&mut self, key: &str) -> StoreResult<()>;
    /// Makes the transaction durable.
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// The index table of a value and its columns after `rid` and `param`, in
/// the order of the table definitions in `migrations/`.
pub(crate) fn index_columns(v: &IndexValue) -> (plan::IndexTable, Vec<sql::Arg>) {
    use plan::IndexTable;
    use sql::Arg;
    let text = |s: &Option<String>| s.as_ref().map_or(Arg::Null, |s| Arg::Text(s.clone()));
    match v {
        IndexValue::Token { system, code, text: t } => (
            IndexTable::Token,
            vec![text(system), text(code), t.as_deref().map_or(Arg::Null, |t| Arg::Text(normalize_texts(t)))],
        ),
        IndexValue::String { exact, normalized } => {
            (IndexTable::String, vec![Arg::Text(normalized.clone()), Arg::Text(exact.clone())])
        }
        IndexValue::Date { low, high } => (IndexTable::Date, vec![Arg::Int(*low), Arg::Int(*high)]),
        IndexValue::Reference { reference, target_type, target_id, identifier } => (
            IndexTable::Reference,
            vec![
                text(reference),
                text(target_type),
                text(target_id),
                identifier.as_ref().map_or(Arg::Null, |(s, _)| text(s)),
                identifier.as_ref().map_or(Arg::Null, |(_, v)| Arg::Text(v.clone())),
            ],
        ),
        IndexValue::Number { text: t, value } => (IndexTable::Number, vec![Arg::Real(*value), Arg::Text(t.clone())]),
        IndexValue::Quantity { value, system, code, unit, .. } => {
            (IndexTable::Quantity, vec![Arg::Real(*value), text(system), text(code), text(unit)])
        }
        IndexValue::Uri(u) => (IndexTable::Uri, vec![Arg::Text(u.clone())]),
    }
}

/// A token value's texts, each normalised, still apart (see [`TEXT_SEPARATOR`]).
fn normalize_texts(texts: &str) -> String {
    use crate::fhir::search::values::normalize_string;
    let mut parts = texts.split(TEXT_SEPARATOR).map(normalize_string);
    let mut out = parts.next().unwrap_or_default();
    for part in parts {
        out.push(TEXT_SEPARATOR);
        out.push_str(&part);
    }
    out
}

/// The refusal of a first push whose record another transaction pushed first.
pub(crate) fn first_push_conflict(r: &IngestRecord) -> StoreError {
    StoreError::Conflict(format!(
        "record {} of {} was pushed by another request meanwhile",
        r.record_id, r.source_system
    ))
}

/// How long a cached version may be served when other processes share the
/// database and a change notification was lost (see [`postgres::listen_for_changes`]).
pub const SHARED_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the backend the URL names and brings its schema up to date.
pub async fn open(config: &crate::config::DatabaseConfig) -> anyhow::Result<Arc<dyn Store>> {
    if config.url.starts_with("sqlite:") {
        let store: Arc<dyn Store> = Arc::new(sqlite::SqliteStore::open(config).await?);
        Ok(match config.cache_mb {
            0 => store,
            mb => Arc::new(cache::CachedStore::new(store, mb * 1024 * 1024)),
        })
    } else {
        let pg = postgres::PgStore::open(config).await?;
        let pool = pg.pool().clone();
        let store: Arc<dyn Store> = Arc::new(pg);
        Ok(match config.cache_mb {
            0 => store,
            mb => {
                let cached = cache::CachedStore::shared(store, mb * 1024 * 1024, SHARED_CACHE_TTL);
                tokio::spawn(postgres::listen_for_changes(pool, cached.invalidator()));
                Arc::new(cached)
            }
        })
    }
}
