//! A read-through cache of current resource versions in front of any
//! backend, so a read by id costs no database round trip when the resource
//! is hot. Updates and deletions go through to the cache after commit; a
//! new resource enters it when first read.
//!
//! Correctness under concurrency: a reader that fetched from the database
//! may only fill the cache if no write committed since it started reading
//! (a generation counter), and never replaces a newer version with an older
//! one (a per-key compare in moka's serialised `and_compute_with`). So a
//! cached entry is never older than the last committed write of this process.
//! The SQLite backend has a single writer process; backends shared by several
//! processes must invalidate across them (see the PostgreSQL issue).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use async_trait::async_trait;
use moka::{ops::compute::Op, sync::Cache};

use super::{
    AuditQuery, AuditRecord, AuditRow, Current, HistoryPage, HistoryQuery, IdentifierHit, IngestRecord, NewVersion,
    Notification, NpoOrganization, NpoStatement, Observed, SearchPage, SearchPlan, Store, StoreResult, StoreTx, Stored,
    SubscriptionRow, TransferRow,
};

/// Key of a current version: resource type and logical id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CurrentKey {
    ty: Box<str>,
    id: Box<str>,
}

impl CurrentKey {
    pub fn new(ty: &str, id: &str) -> Self {
        CurrentKey { ty: ty.into(), id: id.into() }
    }
}

struct Shared {
    current: Cache<CurrentKey, Stored>,
    /// Bumped after every commit that changed something.
    generation: AtomicU64,
}

impl Shared {
    /// Puts `s` unless a newer version is cached; `since` (when given) must still be the generation.
    fn offer(&self, s: Stored, since: Option<u64>) {
        let key = CurrentKey::new(&s.ty, &s.id);
        self.current.entry(key).and_compute_with(|existing| {
            if since.is_some_and(|g| g != self.generation.load(Ordering::Acquire)) {
                return Op::Nop;
            }
            match existing {
                Some(e) if e.value().version >= s.version => Op::Nop,
                _ => Op::Put(s),
            }
        });
    }
}

/// The cache wrapper; implements [`Store`] by delegating to `inner`.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
}

impl CachedStore {
    /// Wraps `inner` with a cache of at most `max_bytes` of resource text.
    pub fn new(inner: Arc<dyn Store>, max_bytes: u64) -> Self {
        Self::build(inner, max_bytes, None)
    }

    /// Like [`CachedStore::new`], for a database other processes write too:
    /// entries also expire `ttl` after they were cached, a bound that holds
    /// even when a change notification from another process is lost.
    pub fn shared(inner: Arc<dyn Store>, max_bytes: u64, ttl: std::time::Duration) -> Self {
        Self::build(inner, max_bytes, Some(ttl))
    }

    fn build(inner: Arc<dyn Store>, max_bytes: u64, ttl: Option<std::time::Duration>) -> Self {
        let mut builder = Cache::builder().max_capacity(max_bytes).weigher(|k: &CurrentKey, v: &Stored| {
            (v.body.len() + k.ty.len() + k.id.len() + 96).try_into().unwrap_or(u32::MAX)
        });
        if let Some(ttl) = ttl {
            builder = builder.time_to_live(ttl);
        }
        CachedStore { inner, shared: Arc::new(Shared { current: builder.build(), generation: AtomicU64::new(0) }) }
    }

    /// A handle that drops entries another process changed.
    pub fn invalidator(&self) -> Invalidator {
        Invalidator(self.shared.clone())
    }
}

/// Drops cached versions that another process replaced (see the PostgreSQL
/// backend's change notifications). Bumping the generation first keeps a
/// read that started before the change from putting the old version back.
#[derive(Clone)]
pub struct Invalidator(Arc<Shared>);

impl Invalidator {
    pub fn forget(&self, ty: &str, id: &str) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.current.invalidate(&CurrentKey::new(ty, id));
    }

    /// Drops everything: notifications may have been missed.
    pub fn forget_all(&self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.current.invalidate_all();
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn read(&self, ty: &str, id: &str) -> StoreResult<Option<Stored>> {
        if let Some(hit) = self.shared.current.get(&CurrentKey::new(ty, id)) {
            return Ok(Some(hit));
        }
        let since = self.shared.generation.load(Ordering::Acquire);
        let found = self.inner.read(ty, id).await?;
        if let Some(s) = &found {
            self.shared.offer(s.clone(), Some(since));
        }
        Ok(found)
    }

    async fn vread(&self, ty: &str, id: &str, version: i64) -> StoreResult<Option<Stored>> {
        if let Some(hit) = self.shared.current.get(&CurrentKey::new(ty, id))
            && hit.version == version
        {
            return Ok(Some(hit));
        }
        self.inner.vread(ty, id, version).await
    }

    async fn history(&self, q: &HistoryQuery) -> StoreResult<HistoryPage> {
        self.inner.history(q).await
    }

    async fn search(&self, plan: &SearchPlan) -> StoreResult<SearchPage> {
        self.inner.search(plan).await
    }

    async fn include(
        &self,
        rows: &[Stored],
        param: &str,
        target_type: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Stored>> {
        self.inner.include(rows, param, target_type, limit).await
    }

    async fn revinclude(
        &self,
        rows: &[Stored],
        source_type: &str,
        param: &str,
        limit: usize,
    ) -> StoreResult<Vec<Stored>> {
        self.inner.revinclude(rows, source_type, param, limit).await
    }

    async fn find_by_identifier(&self, values: &[&str]) -> StoreResult<Vec<IdentifierHit>> {
        self.inner.find_by_identifier(values).await
    }

    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>> {
        Ok(Box::new(CachedTx {
            inner: self.inner.begin().await?,
            shared: self.shared.clone(),
            written: Vec::new(),
            granted: Vec::new(),
        }))
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> StoreResult<()> {
        self.inner.append_audit(records).await
    }

    async fn audit_entries(&self, q: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        self.inner.audit_entries(q).await
    }

    async fn audit_chain(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<AuditRow>> {
        self.inner.audit_chain(after_seq, limit).await
    }

    async fn audit_head(&self) -> StoreResult<(i64, String)> {
        self.inner.audit_head().await
    }

    async fn observed(&self, since_ms: i64) -> StoreResult<Vec<Observed>> {
        self.inner.observed(since_ms).await
    }

    async fn transfers_for_binary(&self, binary_id: &str) -> StoreResult<Vec<TransferRow>> {
        self.inner.transfers_for_binary(binary_id).await
    }

    async fn npo_organizations(&self) -> StoreResult<Vec<NpoOrganization>> {
        self.inner.npo_organizations().await
    }

    async fn npo_statements(&self, code: Option<&str>) -> StoreResult<Vec<NpoStatement>> {
        self.inner.npo_statements(code).await
    }

    async fn open_transfers(&self, before_ms: i64, party: Option<&str>, limit: usize) -> StoreResult<Vec<TransferRow>> {
        self.inner.open_transfers(before_ms, party, limit).await
    }

    async fn claim_assertion(&self, key: &str, expires_ms: i64, now_ms: i64) -> StoreResult<bool> {
        self.inner.claim_assertion(key, expires_ms, now_ms).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    fn audit_unavailable(&self) -> Option<super::StoreError> {
        self.inner.audit_unavailable()
    }
}

struct CachedTx {
    inner: Box<dyn StoreTx>,
    shared: Arc<Shared>,
    /// Versions this transaction wrote, to publish after commit.
    written: Vec<Stored>,
    /// Resources whose access changed without a new version: dropped from the cache at commit.
    granted: Vec<CurrentKey>,
}

#[async_trait]
impl StoreTx for CachedTx {
    async fn current(&mut self, ty: &str, id: &str) -> StoreResult<Option<Current>> {
        self.inner.current(ty, id).await
    }

    async fn current_body(&mut self, ty: &str, id: &str) -> StoreResult<Option<String>> {
        self.inner.current_body(ty, id).await
    }

    async fn transfer(&mut self, task_id: &str) -> StoreResult<Option<TransferRow>> {
        self.inner.transfer(task_id).await
    }

    async fn put_subscription(&mut self, row: &SubscriptionRow) -> StoreResult<()> {
        self.inner.put_subscription(row).await
    }

    async fn remove_subscription(&mut self, sub_id: &str) -> StoreResult<()> {
        self.inner.remove_subscription(sub_id).await
    }

    async fn live_subscriptions(&mut self) -> StoreResult<Vec<SubscriptionRow>> {
        self.inner.live_subscriptions().await
    }

    async fn add_notification(&mut self, n: &Notification, due_ms: i64) -> StoreResult<()> {
        self.inner.add_notification(n, due_ms).await
    }

    async fn claim_notifications(
        &mut self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        self.inner.claim_notifications(now_ms, lease_until_ms, limit).await
    }

    async fn delivered(&mut self, event_id: &str, at_ms: i64) -> StoreResult<()> {
        self.inner.delivered(event_id, at_ms).await
    }

    async fn retry_notification(&mut self, event_id: &str, next_ms: i64, error: &str) -> StoreResult<()> {
        self.inner.retry_notification(event_id, next_ms, error).await
    }

    async fn npo_put_organization(&mut self, org: &NpoOrganization) -> StoreResult<()> {
        self.inner.npo_put_organization(org).await
    }

    async fn npo_add_statement(&mut self, statement: &NpoStatement) -> StoreResult<()> {
        self.inner.npo_add_statement(statement).await
    }

    async fn put_transfer(&mut self, row: &TransferRow) -> StoreResult<()> {
        self.inner.put_transfer(row).await
    }

    async fn same_transfer(&mut self, row: &TransferRow) -> StoreResult<Option<String>> {
        self.inner.same_transfer(row).await
    }

    async fn find_ids(&mut self, plan: &SearchPlan) -> StoreResult<Vec<String>> {
        self.inner.find_ids(plan).await
    }

    /// A new resource (version 1) enters the cache when it is first read,
    /// not when written: a batch import would otherwise push out what is
    /// read often (and offering its thousands of records cost 4 % of the
    /// import's processor time). No reader can have cached it before, so
    /// its commit needs no generation bump either.
    async fn put(&mut self, v: NewVersion<'_>) -> StoreResult<()> {
        let stored = (v.version > 1).then(|| Stored {
            rid: 0,
            ty: v.ty.to_owned(),
            id: v.id.to_owned(),
            version: v.version,
            last_updated_ms: v.last_updated_ms,
            deleted: false,
            method: v.method,
            body: v.body.into(),
            access: v.access.into(),
            patients: v.patients.into(),
        });
        self.inner.put(v).await?;
        self.written.extend(stored);
        Ok(())
    }

    async fn delete(&mut self, ty: &str, id: &str, version: i64, at_ms: i64) -> StoreResult<()> {
        self.inner.delete(ty, id, version, at_ms).await?;
        self.written.push(Stored {
            rid: 0,
            ty: ty.to_owned(),
            id: id.to_owned(),
            version,
            last_updated_ms: at_ms,
            deleted: true,
            method: "DELETE",
            body: "".into(),
            access: "".into(),
            patients: "".into(),
        });
        Ok(())
    }

    async fn grant(&mut self, ty: &str, id: &str, access: &str) -> StoreResult<()> {
        self.inner.grant(ty, id, access).await?;
        self.granted.push(CurrentKey::new(ty, id));
        Ok(())
    }

    async fn audit(&mut self, record: AuditRecord) -> StoreResult<()> {
        self.inner.audit(record).await
    }

    async fn ingest_record(&mut self, source_system: &str, record_id: &str) -> StoreResult<Option<IngestRecord>> {
        self.inner.ingest_record(source_system, record_id).await
    }

    async fn put_ingest_record(&mut self, record: &IngestRecord) -> StoreResult<()> {
        self.inner.put_ingest_record(record).await
    }

    async fn lock(&mut self, key: &str) -> StoreResult<()> {
        self.inner.lock(key).await
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let CachedTx { inner, shared, written, granted } = *self;
        let result = inner.commit().await;
        // Bump even when commit failed: its outcome is unknown, so readers must not fill from before it.
        if !written.is_empty() || !granted.is_empty() {
            shared.generation.fetch_add(1, Ordering::AcqRel);
        }
        result?;
        for s in written {
            shared.offer(s, None);
        }
        for key in &granted {
            shared.current.invalidate(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared { current: Cache::new(100), generation: AtomicU64::new(0) }
    }

    fn version(v: i64) -> Stored {
        Stored {
            rid: 1,
            ty: "Patient".into(),
            id: "p".into(),
            version: v,
            last_updated_ms: v,
            deleted: false,
            method: "PUT",
            access: "".into(),
            patients: "".into(),
            body: format!("{{\"v\":{v}}}").into(),
        }
    }

    #[tokio::test]
    async fn a_new_resource_is_cached_when_read_and_an_update_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::DatabaseConfig {
            url: format!("sqlite://{}/t.db", dir.path().display()),
            cache_mb: 0,
            ..Default::default()
        };
        let store = CachedStore::new(super::super::open(&config).await.unwrap(), 1 << 20);
        let cached =
            |store: &CachedStore| store.shared.current.get(&CurrentKey::new("Patient", "p")).map(|s| s.version);
        let write = |version: i64, body: &'static str| {
            let store = &store;
            async move {
                let mut tx = store.begin().await.unwrap();
                tx.put(NewVersion { version, ..NewVersion::test_patient("p", body) }).await.unwrap();
                tx.commit().await.unwrap();
            }
        };
        let generation = store.shared.generation.load(Ordering::Acquire);
        write(1, r#"{"resourceType":"Patient","id":"p"}"#).await;
        assert_eq!(cached(&store), None, "not cached when created");
        assert_eq!(store.shared.generation.load(Ordering::Acquire), generation, "no reader to hold off");
        assert_eq!(store.read("Patient", "p").await.unwrap().map(|s| s.version), Some(1));
        assert_eq!(cached(&store), Some(1), "cached when read");
        write(2, r#"{"resourceType":"Patient","id":"p","active":true}"#).await;
        assert_eq!(cached(&store), Some(2), "the update replaced it");
        assert_eq!(
            &*store.read("Patient", "p").await.unwrap().unwrap().body,
            r#"{"resourceType":"Patient","id":"p","active":true}"#
        );
    }

    #[test]
    fn a_fill_read_before_a_commit_is_discarded() {
        let s = shared();
        let since = s.generation.load(Ordering::Acquire);
        s.generation.fetch_add(1, Ordering::AcqRel); // a write committed meanwhile
        s.offer(version(1), Some(since));
        assert!(s.current.get(&CurrentKey::new("Patient", "p")).is_none());
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let s = shared();
        s.offer(version(2), None);
        s.offer(version(1), Some(s.generation.load(Ordering::Acquire)));
        assert_eq!(s.current.get(&CurrentKey::new("Patient", "p")).map(|x| x.version), Some(2));
        s.offer(version(3), None);
        assert_eq!(s.current.get(&CurrentKey::new("Patient", "p")).map(|x| x.version), Some(3));
    }
}
