//! The PostgreSQL backend, for several gateway replicas on one database.
//!
//! Each logical transaction is a database transaction on a pooled
//! connection (READ COMMITTED). What keeps replicas behaving as one:
//!
//! - **Optimistic locking**: `current` locks the resource row
//!   (`FOR UPDATE`), so concurrent updates of one resource queue up and the
//!   second sees the first's version; `UNIQUE (res_type, res_id, version)`
//!   turns any remaining race into a [`StoreError::Conflict`].
//! - **Conditional operations and ingest idempotency**: `find_ids` and
//!   `ingest_record` first take a transaction-scoped advisory lock keyed by
//!   the query (or the source record), so two replicas asking "does it
//!   exist?" for the same thing take turns and the second sees the first's
//!   commit.
//! - **One audit chain**: a transaction writes its audit entries to
//!   `audit_pending` (durable at its commit, no lock shared with other
//!   writers). A sealer moves them into the hash chain under the lock of the
//!   `audit_head` row, so the chain is extended by one sealer at a time across
//!   all replicas; reads of the audit log seal what is pending first.
//!   Concurrent read audits of one process are batched into one transaction.
//! - **The outbox**: notifications are claimed with `FOR UPDATE SKIP LOCKED`.
//! - **Caches**: every commit that changed resources sends
//!   `NOTIFY nara_changes` with their `Type/id`; each replica listens and
//!   drops those entries from its cache (see [`listen_for_changes`]).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{
    Executor, PgConnection, Postgres, Row, Transaction,
    postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions},
};

use super::{
    ACCESS_PARAM, AuditQuery, AuditRecord, AuditRow, Current, HistoryPage, HistoryQuery, IdentifierHit, IngestRecord,
    NewVersion, Notification, NpoOrganization, NpoStatement, Observed, SearchPage, SearchPlan, Store, StoreError,
    StoreResult, StoreTx, Stored, SubscriptionRow, TransferRow,
    audit_queue::{self, AuditQueue, AuditRequests},
    cache::Invalidator,
    plan::IndexTable,
    rows::{
        self, AUDIT_COLUMNS, NPO_ORGANIZATION_QUERY, OBSERVED_QUERY, SUBSCRIPTION_QUERY, TRANSFER_COLUMNS, audit_row,
        bind_all, stored, transfer_row,
    },
    sql::{self, Arg, Dialect, ROW_COLUMNS, Sql},
};
use crate::config::DatabaseConfig;

/// Schema migrations, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "schema", include_str!("../../migrations/postgres/0001_schema.sql")),
    (2, "audit_pending", include_str!("../../migrations/postgres/0002_audit_pending.sql")),
    (3, "union_params", include_str!("../../migrations/postgres/0003_union_params.sql")),
];

/// The channel on which commits announce changed resources.
pub const CHANGES_CHANNEL: &str = "nara_changes";

/// Advisory lock held while migrations run, so replicas starting together take turns.
const MIGRATION_LOCK: i64 = 0x6e61_7261_6d69_6772; // "naramigr"

/// NOTIFY payloads must stay below 8000 bytes.
const NOTIFY_PAYLOAD_MAX: usize = 7_000;

pub struct PgStore {
    pool: PgPool,
    /// Audit appends for the audit writer task (see [`audit_writer`]).
    audit: AuditQueue,
}

/// Appends audit entries in batches (see [`audit_queue`]), one transaction
/// per batch, to `audit_pending` for the sealer.
async fn audit_writer(pool: PgPool, mut requests: AuditRequests) {
    while let Some(mut batch) = requests.next_batch().await {
        let records: Vec<AuditRecord> = batch.iter_mut().flat_map(|(r, _)| std::mem::take(r)).collect();
        let result = async {
            let mut tx = pool.begin().await?;
            write_pending(&mut tx, &records).await?;
            tx.commit().await
        }
        .await
        .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = records.len(), "audit append failed");
        }
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

impl PgStore {
    /// Connects to `postgres://…` and applies pending migrations.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<PgStore> {
        let options: PgConnectOptions =
            config.url.parse().map_err(|e| anyhow::anyhow!("database.url: not a PostgreSQL connection URL: {e}"))?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.application_name("nara-gateway"))
            .await
            .map_err(|e| anyhow::anyhow!("database.url: cannot connect to PostgreSQL: {e}"))?;
        migrate(&pool).await?;
        let (audit, requests) = audit_queue::audit_queue();
        tokio::spawn(audit_writer(pool.clone(), requests));
        tokio::spawn(sealer(pool.clone()));
        tokio::spawn(statistics_keeper(pool.clone()));
        Ok(PgStore { pool, audit })
    }

    /// The connection pool, for the change listener.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_tx(&self) -> StoreResult<PgTx> {
        let tx = self.pool.begin().await.map_err(err)?;
        Ok(PgTx { tx, audits: Vec::new(), changed: Vec::new() })
    }

    async fn fetch_rows(&self, sql: &Sql) -> StoreResult<Vec<Stored>> {
        let text = sql.render(Dialect::Postgres);
        let rows = bind_all(sqlx::query(&text), &sql.args).fetch_all(&self.pool).await.map_err(err)?;
        rows.iter().map(stored).collect::<Result<_, _>>().map_err(err)
    }
}

/// Applies the migrations this database has not seen yet, one replica at a time.
async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await?;
    let result = apply_migrations(&mut conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
    result?;
    unlocked?;
    Ok(())
}

async fn apply_migrations(conn: &mut PgConnection) -> anyhow::Result<()> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
    )
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(&mut *conn).await?;
    for (version, name, script) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(script).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(name)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(migration.version = version, migration.name = name, "applied database migration");
    }
    Ok(())
}

fn err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
        // serialization_failure, deadlock_detected: another transaction won; a retry may succeed.
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")) => {
            StoreError::Conflict(db.message().to_owned())
        }
        // Connection exceptions, shutdown, too many connections.
        sqlx::Error::Database(db)
            if db.code().as_deref().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300") =>
        {
            StoreError::Unavailable(db.message().to_owned())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// A stable 64-bit advisory lock key for `parts`.
fn lock_key(parts: &[&str]) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    let d = h.finalize();
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Writes audit entries for the sealer (see [`seal`]).
async fn write_pending(tx: &mut PgConnection, records: &[AuditRecord]) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    let times: Vec<i64> = records.iter().map(|r| r.recorded_ms).collect();
    let bodies: Vec<&str> = records.iter().map(|r| r.body.as_str()).collect();
    let patients: Vec<String> = records.iter().map(|r| r.patients.join(" ")).collect();
    sqlx::query(
        "INSERT INTO audit_pending (event_id, recorded_ms, body, patients) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[])",
    )
    .bind(&ids)
    .bind(&times)
    .bind(&bodies)
    .bind(&patients)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Most pending audit entries one seal moves into the chain.
const SEAL_BATCH: i64 = 1_000;

/// Moves committed pending audit entries into the hash chain, in the order
/// they were written; returns how many. Sealers of all replicas take turns
/// on the chain head's row lock, which is taken before the pending entries
/// are read, so no two sealers move the same entry.
async fn seal(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT seq FROM audit_head WHERE one = 1 FOR UPDATE").execute(&mut *tx).await?;
    let rows = sqlx::query(
        "SELECT pending_id, event_id, recorded_ms, body, patients FROM audit_pending ORDER BY pending_id LIMIT $1",
    )
    .bind(SEAL_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut pending_ids = Vec::with_capacity(rows.len());
    let mut records = Vec::with_capacity(rows.len());
    for r in &rows {
        pending_ids.push(r.try_get::<i64, _>(0)?);
        let patients: String = r.try_get(4)?;
        records.push(AuditRecord {
            event_id: r.try_get(1)?,
            recorded_ms: r.try_get(2)?,
            body: r.try_get(3)?,
            patients: patients.split(' ').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        });
    }
    append_chain(&mut tx, &records).await?;
    sqlx::query("DELETE FROM audit_pending WHERE pending_id = ANY($1)").bind(&pending_ids).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(records.len())
}

/// Seals until nothing committed is pending (without taking the chain's lock
/// when nothing is).
async fn seal_all(pool: &PgPool) -> Result<(), sqlx::Error> {
    while sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM audit_pending)").fetch_one(pool).await? {
        if (seal(pool).await? as i64) < SEAL_BATCH {
            break;
        }
    }
    Ok(())
}

/// How often the sealer looks for pending audit entries.
const SEAL_INTERVAL: Duration = Duration::from_millis(50);

/// Seals pending audit entries in the background; ends when the pool is closed.
async fn sealer(pool: PgPool) {
    loop {
        tokio::time::sleep(SEAL_INTERVAL).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = seal_all(&pool).await {
            tracing::warn!(error = %e, "could not seal audit entries into the chain; retrying");
        }
    }
}

/// How often the gateway looks for tables whose planner statistics are stale.
const STATISTICS_INTERVAL: Duration = Duration::from_secs(10);

/// Held (for a transaction) by the replica that refreshes statistics, so
/// that replicas take turns instead of analysing the same tables at once.
const STATISTICS_LOCK: i64 = 0x6e61_7261_7374_6174; // "narastat"

/// This database's tables changed by more rows since they were last
/// analysed (by anyone: autovacuum, an operator or this gateway) than
/// PostgreSQL's own threshold for an automatic ANALYZE: 50 rows and 10 % of
/// the table (`autovacuum_analyze_threshold`, `autovacuum_analyze_scale_factor`).
const STALE_TABLES: &str = "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables \
     WHERE schemaname = current_schema() AND n_mod_since_analyze > 50 + 0.1 * n_live_tup ORDER BY relname";

/// Analyses the tables whose statistics are stale (see [`STALE_TABLES`]);
/// their names, or nothing when another replica is at it.
///
/// Without statistics the planner guesses: on 100,000 Observations that had
/// never been analysed it read all 85,000 `category=survey` rows for each
/// search by subject and category (89 ms) instead of the subject's hundred
/// (0.9 ms). PostgreSQL's autovacuum analyses such tables too, but it may be
/// switched off, and it looks only once a minute: a bulk import is
/// searchable at full speed within seconds this way.
async fn refresh_statistics(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ours: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(STATISTICS_LOCK).fetch_one(&mut *tx).await?;
    if !ours {
        return Ok(Vec::new());
    }
    let stale: Vec<String> = sqlx::query_scalar(STALE_TABLES).fetch_all(&mut *tx).await?;
    for table in &stale {
        sqlx::query(&format!("ANALYZE {table}")).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(stale)
}

/// Keeps the planner statistics fresh in the background; ends when the pool is closed.
async fn statistics_keeper(pool: PgPool) {
    loop {
        if pool.is_closed() {
            return;
        }
        match refresh_statistics(&pool).await {
            Ok(tables) if !tables.is_empty() => tracing::info!(tables = ?tables, "refreshed planner statistics"),
            Ok(_) => {}
            Err(_) if pool.is_closed() => return,
            Err(e) => tracing::warn!(error = %e, "could not refresh planner statistics; retrying"),
        }
        tokio::time::sleep(STATISTICS_INTERVAL).await;
    }
}

/// Extends the audit chain with `records` inside `tx`, holding the lock on
/// the chain's head until the transaction ends.
async fn append_chain(tx: &mut PgConnection, records: &[AuditRecord]) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE one = 1 FOR UPDATE").fetch_one(&mut *tx).await?;
    let mut seq: i64 = head.try_get(0)?;
    let mut prev: String = head.try_get(1)?;
    let n = records.len();
    let (mut seqs, mut ids, mut times, mut bodies, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut patients, mut patient_seqs) = (Vec::new(), Vec::new());
    for r in records {
        seq += 1;
        let hash = super::audit_hash(&prev, seq, r.recorded_ms, &r.body);
        for p in &r.patients {
            patients.push(p.as_str());
            patient_seqs.push(seq);
        }
        seqs.push(seq);
        ids.push(r.event_id.as_str());
        times.push(r.recorded_ms);
        bodies.push(r.body.as_str());
        prevs.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
    }
    sqlx::query(
        "INSERT INTO audit_log (seq, event_id, recorded_ms, body, prev_hash, hash) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[])",
    )
    .bind(&seqs)
    .bind(&ids)
    .bind(&times)
    .bind(&bodies)
    .bind(&prevs)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    if !patients.is_empty() {
        sqlx::query(
            "INSERT INTO audit_patient (patient, seq) SELECT * FROM UNNEST($1::text[], $2::int8[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&patients)
        .bind(&patient_seqs)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE one = 1")
        .bind(seq)
        .bind(&prev)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn read(&self, ty: &str, id: &str) -> StoreResult<Option<Stored>> {
        let q = format!(
            "SELECT {ROW_COLUMNS} FROM resources r JOIN versions v ON v.vid = r.vid WHERE r.res_type = $1 AND r.res_id = $2"
        );
        let row = sqlx::query(&q).bind(ty).bind(id).fetch_optional(&self.pool).await.map_err(err)?;
        row.as_ref().map(stored).transpose().map_err(err)
    }

    async fn vread(&self, ty: &str, id: &str, version: i64) -> StoreResult<Option<Stored>> {
        let row = sqlx::query(
            "SELECT 0::int8, v.res_type, v.res_id, v.version, v.last_updated_ms, v.deleted, v.method, v.body, ''::text, ''::text \
             FROM versions v WHERE v.res_type = $1 AND v.res_id = $2 AND v.version = $3",
        )
        .bind(ty)
        .bind(id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        row.as_ref().map(stored).transpose().map_err(err)
    }

    async fn history(&self, q: &HistoryQuery) -> StoreResult<HistoryPage> {
        let sql = sql::history_query(q);
        let text = sql.render(Dialect::Postgres);
        let rows = bind_all(sqlx::query(&text), &sql.args).fetch_all(&self.pool).await.map_err(err)?;
        rows::history_page(&rows, q.count).map_err(err)
    }

    async fn search(&self, plan: &SearchPlan) -> StoreResult<SearchPage> {
        let mut page = SearchPage::default();
        if plan.count > 0 {
            let sql = sql::search_page(plan);
            let text = sql.render(Dialect::Postgres);
            let rows = bind_all(sqlx::query(&text), &sql.args).fetch_all(&self.pool).await.map_err(err)?;
            let (rows, next) = rows::page(&rows, plan).map_err(err)?;
            page.rows = rows;
            page.next = next;
        }
        if plan.with_total {
            let sql = sql::search_count(plan);
            let text = sql.render(Dialect::Postgres);
            let n: i64 = bind_all(sqlx::query(&text), &sql.args)
                .fetch_one(&self.pool)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(err)?;
            page.total = Some(n.max(0) as u64);
        }
        Ok(page)
    }

    async fn include(
        &self,
        rows: &[Stored],
        param: &str,
        target_type: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Stored>> {
        if rows.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.fetch_rows(&sql::include_query(rows, param, target_type, limit)).await
    }

    async fn revinclude(
        &self,
        rows: &[Stored],
        source_type: &str,
        param: &str,
        limit: usize,
    ) -> StoreResult<Vec<Stored>> {
        if rows.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.fetch_rows(&sql::revinclude_query(rows, source_type, param, limit)).await
    }

    async fn find_by_identifier(&self, values: &[&str]) -> StoreResult<Vec<IdentifierHit>> {
        let mut hits = Vec::new();
        for chunk in values.chunks(sql::IDENTIFIER_VALUES_PER_QUERY) {
            let sql = sql::identifier_lookup(chunk);
            let text = sql.render(Dialect::Postgres);
            let rows = bind_all(sqlx::query(&text), &sql.args).fetch_all(&self.pool).await.map_err(err)?;
            for row in &rows {
                hits.push(rows::identifier_hit(row).map_err(err)?);
            }
        }
        Ok(hits)
    }

    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>> {
        Ok(Box::new(self.begin_tx().await?))
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> StoreResult<()> {
        self.audit.append(records).await
    }

    async fn audit_entries(&self, q: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        seal_all(&self.pool).await.map_err(err)?;
        let Some(sql) = sql::audit_query(q, Dialect::Postgres) else { return Ok(Vec::new()) };
        let text = sql.render(Dialect::Postgres);
        let rows = bind_all(sqlx::query(&text), &sql.args).fetch_all(&self.pool).await.map_err(err)?;
        rows.iter().map(audit_row).collect::<Result<_, _>>().map_err(err)
    }

    async fn audit_chain(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<AuditRow>> {
        if after_seq == 0 {
            // A verification starts: everything committed so far is in the chain.
            seal_all(&self.pool).await.map_err(err)?;
        }
        let rows = sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(after_seq)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter().map(audit_row).collect::<Result<_, _>>().map_err(err)
    }

    async fn audit_head(&self) -> StoreResult<(i64, String)> {
        let row =
            sqlx::query("SELECT seq, hash FROM audit_head WHERE one = 1").fetch_one(&self.pool).await.map_err(err)?;
        Ok((row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?))
    }

    async fn observed(&self, since_ms: i64) -> StoreResult<Vec<Observed>> {
        let text = pg(OBSERVED_QUERY);
        let rows = sqlx::query(&text).bind(since_ms).fetch_all(&self.pool).await.map_err(err)?;
        rows.iter().map(rows::observed).collect::<Result<_, _>>().map_err(err)
    }

    async fn npo_organizations(&self) -> StoreResult<Vec<NpoOrganization>> {
        let rows = sqlx::query(NPO_ORGANIZATION_QUERY).fetch_all(&self.pool).await.map_err(err)?;
        rows.iter().map(rows::npo_organization).collect::<Result<_, _>>().map_err(err)
    }

    async fn npo_statements(&self, code: Option<&str>) -> StoreResult<Vec<NpoStatement>> {
        let text = pg(&rows::npo_statements_query(code.is_none()));
        let mut q = sqlx::query(&text);
        if let Some(c) = code {
            q = q.bind(c);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(err)?;
        rows.iter().map(rows::npo_statement).collect::<Result<_, _>>().map_err(err)
    }

    async fn transfers_for_binary(&self, binary_id: &str) -> StoreResult<Vec<TransferRow>> {
        let rows = sqlx::query(&format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE binary_id = $1"))
            .bind(binary_id)
            .fetch_all(&self.pool)
            .await
            .map_err(err)?;
        rows.iter().map(transfer_row).collect::<Result<_, _>>().map_err(err)
    }

    async fn open_transfers(&self, before_ms: i64, party: Option<&str>, limit: usize) -> StoreResult<Vec<TransferRow>> {
        let party_clause = if party.is_some() { " AND (sender_key = $3 OR recipient_key = $3)" } else { "" };
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE status IN ('requested', 'received') \
             AND created_ms < $1{party_clause} ORDER BY created_ms, task_id LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(before_ms).bind(i64::try_from(limit).unwrap_or(i64::MAX));
        if let Some(p) = party {
            q = q.bind(p);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(err)?;
        rows.iter().map(transfer_row).collect::<Result<_, _>>().map_err(err)
    }

    async fn claim_assertion(&self, key: &str, expires_ms: i64, now_ms: i64) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query("DELETE FROM token_assertions WHERE expires_ms < $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let claimed = sqlx::query(
            "INSERT INTO token_assertions (client_jti, expires_ms) VALUES ($1, $2) ON CONFLICT (client_jti) DO NOTHING",
        )
        .bind(key)
        .bind(expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected()
            == 1;
        tx.commit().await.map_err(err)?;
        Ok(claimed)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(err)?;
        Ok(())
    }
}

/// `?` placeholders renumbered to `$n`.
fn pg(text: &str) -> String {
    Sql { text: text.to_owned(), args: Vec::new() }.render(Dialect::Postgres)
}

/// A logical transaction: a database transaction on one pooled connection.
/// Dropped without `commit`, it is rolled back when the connection returns.
struct PgTx {
    tx: Transaction<'static, Postgres>,
    /// Audit entries to write at commit (sealed into the chain afterwards).
    audits: Vec<AuditRecord>,
    /// `Type/id` of resources written, announced to the other replicas at commit.
    changed: Vec<String>,
}

impl PgTx {
    /// The first column (an id) of every row `text` selects.
    async fn ids(&mut self, text: &str, args: &[Arg]) -> StoreResult<Vec<String>> {
        let rows = bind_all(sqlx::query(text), args).fetch_all(&mut *self.tx).await.map_err(err)?;
        rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(err)
    }

    async fn exec(&mut self, text: &str, args: &[Arg]) -> StoreResult<()> {
        bind_all(sqlx::query(text), args).execute(&mut *self.tx).await.map_err(err)?;
        Ok(())
    }

    /// Writes a version row and points the resource row at it; returns the resource's row id.
    #[expect(clippy::too_many_arguments, reason = "the columns of one version row")]
    async fn write_version(
        &mut self,
        ty: &str,
        id: &str,
        version: i64,
        at_ms: i64,
        method: &str,
        body: &str,
        deleted: bool,
        access: Option<(&str, &str)>,
    ) -> StoreResult<i64> {
        // Deletions keep the access set and patients of the last version.
        let (set_access, access_value, patients_value) = match access {
            Some((a, p)) => (", access = excluded.access, patients = excluded.patients", a, p),
            None => ("", "", ""),
        };
        let text = format!(
            "WITH nv AS (INSERT INTO versions (res_type, res_id, version, last_updated_ms, deleted, method, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING vid) \
             INSERT INTO resources (res_type, res_id, version, vid, last_updated_ms, deleted, access, patients) \
             SELECT $1, $2, $3, nv.vid, $4, $5, $8, $9 FROM nv \
             ON CONFLICT (res_type, res_id) DO UPDATE SET version = excluded.version, vid = excluded.vid, \
             last_updated_ms = excluded.last_updated_ms, deleted = excluded.deleted{set_access} RETURNING rid"
        );
        let rid: i64 = sqlx::query_scalar(&text)
            .bind(ty)
            .bind(id)
            .bind(version)
            .bind(at_ms)
            .bind(i64::from(deleted))
            .bind(method)
            .bind(body)
            .bind(access_value)
            .bind(patients_value)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(err)?;
        if version > 1 {
            sqlx::query(
                "WITH t AS (DELETE FROM idx_token WHERE rid = $1), s AS (DELETE FROM idx_string WHERE rid = $1), \
                 d AS (DELETE FROM idx_date WHERE rid = $1), r AS (DELETE FROM idx_reference WHERE rid = $1), \
                 n AS (DELETE FROM idx_number WHERE rid = $1), q AS (DELETE FROM idx_quantity WHERE rid = $1) \
                 DELETE FROM idx_uri WHERE rid = $1",
            )
            .bind(rid)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        }
        self.changed.push(format!("{ty}/{id}"));
        Ok(rid)
    }
}

/// Rows per index insert statement, well below PostgreSQL's 65,535 bound parameters.
const INDEX_ROWS_PER_STATEMENT: usize = 500;

/// One statement inserting rows of one index table for the resource `rid`.
fn index_insert(table: IndexTable, rid: i64, rows: &[(&str, Vec<Arg>)]) -> (String, Vec<Arg>) {
    let mut text = format!("INSERT INTO {} VALUES ", table.name());
    let mut args = Vec::new();
    for (i, (param, values)) in rows.iter().enumerate() {
        text.push_str(if i > 0 { ", (" } else { "(" });
        for k in 0..values.len() + 2 {
            if k > 0 {
                text.push_str(", ");
            }
            text.push('$');
            text.push_str(&(args.len() + k + 1).to_string());
        }
        text.push(')');
        args.push(Arg::Int(rid));
        args.push(Arg::Text((*param).to_owned()));
        args.extend(values.iter().cloned());
    }
    (text, args)
}

#[async_trait]
impl StoreTx for PgTx {
    async fn current(&mut self, ty: &str, id: &str) -> StoreResult<Option<Current>> {
        let row = sqlx::query(
            "SELECT version, deleted, access FROM resources WHERE res_type = $1 AND res_id = $2 FOR UPDATE",
        )
        .bind(ty)
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(err)?;
        row.map(|r| -> Result<Current, sqlx::Error> {
            Ok(Current { version: r.try_get(0)?, deleted: r.try_get::<i64, _>(1)? != 0, access: r.try_get(2)? })
        })
        .transpose()
        .map_err(err)
    }

    async fn current_body(&mut self, ty: &str, id: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar(
            "SELECT v.body FROM resources r JOIN versions v ON v.vid = r.vid \
             WHERE r.res_type = $1 AND r.res_id = $2 AND r.deleted = 0",
        )
        .bind(ty)
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(err)
    }

    async fn find_ids(&mut self, plan: &SearchPlan) -> StoreResult<Vec<String>> {
        let sql = sql::search_ids(plan);
        let text = sql.render(Dialect::Postgres);
        let found = self.ids(&text, &sql.args).await?;
        if !found.is_empty() {
            return Ok(found); // nothing will be created on this answer
        }
        // Nothing yet: the caller may create it. Replicas asking the same
        // question take turns from here; the second one's query runs after
        // the first committed, and sees what it created.
        let key = lock_key(&[&text, &format!("{:?}", sql.args)]);
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(&mut *self.tx).await.map_err(err)?;
        self.ids(&text, &sql.args).await
    }

    async fn put(&mut self, v: NewVersion<'_>) -> StoreResult<()> {
        let rid = self
            .write_version(
                v.ty,
                v.id,
                v.version,
                v.last_updated_ms,
                v.method,
                v.body,
                false,
                Some((v.access, v.patients)),
            )
            .await?;
        let access_rows: Vec<(&str, Vec<Arg>)> = v
            .access
            .split(' ')
            .filter(|o| !o.is_empty())
            .map(|o| (ACCESS_PARAM, vec![Arg::Null, Arg::Text(o.to_owned()), Arg::Null]))
            .collect();
        let mut by_table: Vec<(IndexTable, Vec<(&str, Vec<Arg>)>)> = Vec::new();
        if !access_rows.is_empty() {
            by_table.push((IndexTable::Token, access_rows));
        }
        for (param, value) in &v.index {
            let (table, columns) = super::index_columns(value);
            match by_table.iter_mut().find(|(t, _)| *t == table) {
                Some((_, rows)) => rows.push((param, columns)),
                None => by_table.push((table, vec![(param, columns)])),
            }
        }
        for (table, rows) in by_table {
            for chunk in rows.chunks(INDEX_ROWS_PER_STATEMENT) {
                let (text, args) = index_insert(table, rid, chunk);
                bind_all(sqlx::query(&text), &args)
                    .persistent(chunk.len() <= 16)
                    .execute(&mut *self.tx)
                    .await
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    async fn delete(&mut self, ty: &str, id: &str, version: i64, at_ms: i64) -> StoreResult<()> {
        self.write_version(ty, id, version, at_ms, "DELETE", "", true, None).await?;
        Ok(())
    }

    async fn grant(&mut self, ty: &str, id: &str, access: &str) -> StoreResult<()> {
        let rid: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE resources SET access = $1 WHERE res_type = $2 AND res_id = $3 RETURNING rid, deleted",
        )
        .bind(access)
        .bind(ty)
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(err)?;
        let Some((rid, deleted)) = rid else { return Ok(()) };
        sqlx::query("DELETE FROM idx_token WHERE rid = $1 AND param = $2")
            .bind(rid)
            .bind(ACCESS_PARAM)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        let orgs: Vec<&str> = access.split(' ').filter(|o| !o.is_empty()).collect();
        if deleted == 0 && !orgs.is_empty() {
            sqlx::query(
                "INSERT INTO idx_token (rid, param, system, code, text_norm) \
                 SELECT $1, $2, NULL, o, NULL FROM UNNEST($3::text[]) AS o",
            )
            .bind(rid)
            .bind(ACCESS_PARAM)
            .bind(&orgs)
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        }
        self.changed.push(format!("{ty}/{id}"));
        Ok(())
    }

    async fn audit(&mut self, record: AuditRecord) -> StoreResult<()> {
        self.audits.push(record);
        Ok(())
    }

    async fn npo_put_organization(&mut self, o: &NpoOrganization) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO npo_organizations (code, name, delregion, hsa_id, organisationsnummer, is_region, updated_ms, \
             updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (code) DO UPDATE SET name = excluded.name, \
             delregion = excluded.delregion, hsa_id = excluded.hsa_id, organisationsnummer = excluded.organisationsnummer, \
             is_region = excluded.is_region, updated_ms = excluded.updated_ms, updated_by = excluded.updated_by",
        )
        .bind(&o.code)
        .bind(&o.name)
        .bind(&o.delregion)
        .bind(&o.hsa_id)
        .bind(&o.organisationsnummer)
        .bind(i64::from(o.is_region))
        .bind(o.updated_ms)
        .bind(&o.updated_by)
        .execute(&mut *self.tx)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn npo_add_statement(&mut self, st: &NpoStatement) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO npo_statements (code, info_type, declared_producer, declared_consumer, declared_at, source, \
             recorded_by, recorded_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&st.code)
        .bind(&st.info_type)
        .bind(st.producer.map(i64::from))
        .bind(st.consumer.map(i64::from))
        .bind(&st.declared_at)
        .bind(&st.source)
        .bind(&st.recorded_by)
        .bind(st.recorded_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn put_subscription(&mut self, r: &SubscriptionRow) -> StoreResult<()> {
        let headers = serde_json::to_string(&r.headers).map_err(|e| StoreError::Internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO subscriptions (sub_id, owner_key, criteria, endpoint, payload, headers, status, failing_since) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sub_id) DO UPDATE SET owner_key = excluded.owner_key, \
             criteria = excluded.criteria, endpoint = excluded.endpoint, payload = excluded.payload, \
             headers = excluded.headers, status = excluded.status, failing_since = excluded.failing_since",
        )
        .bind(&r.sub_id)
        .bind(&r.owner_key)
        .bind(&r.criteria)
        .bind(&r.endpoint)
        .bind(&r.payload)
        .bind(headers)
        .bind(&r.status)
        .bind(r.failing_since)
        .execute(&mut *self.tx)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn remove_subscription(&mut self, sub_id: &str) -> StoreResult<()> {
        let id = [Arg::Text(sub_id.to_owned())];
        self.exec("DELETE FROM subscriptions WHERE sub_id = $1", &id).await?;
        self.exec("DELETE FROM outbox WHERE sub_id = $1 AND delivered_ms IS NULL", &id).await
    }

    async fn live_subscriptions(&mut self) -> StoreResult<Vec<SubscriptionRow>> {
        let rows = sqlx::query(SUBSCRIPTION_QUERY).fetch_all(&mut *self.tx).await.map_err(err)?;
        rows.iter().map(rows::subscription).collect::<Result<_, _>>().map_err(err)
    }

    async fn add_notification(&mut self, n: &Notification, due_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO outbox (event_id, sub_id, resource, version, created_ms, next_attempt_ms, attempts, \
             claimed_until) VALUES ($1, $2, $3, $4, $5, $6, 0, 0)",
        )
        .bind(&n.event_id)
        .bind(&n.sub_id)
        .bind(&n.resource)
        .bind(n.version)
        .bind(n.created_ms)
        .bind(due_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn claim_notifications(
        &mut self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        // Rows another replica is claiming right now are skipped, not waited for.
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_until = $1, attempts = attempts + 1 WHERE event_id IN \
             (SELECT event_id FROM outbox WHERE delivered_ms IS NULL AND next_attempt_ms <= $2 AND claimed_until <= $2 \
              ORDER BY next_attempt_ms, created_ms LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING event_id, sub_id, resource, version, created_ms, attempts",
        )
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(err)?;
        rows.iter().map(rows::notification).collect::<Result<_, _>>().map_err(err)
    }

    async fn delivered(&mut self, event_id: &str, at_ms: i64) -> StoreResult<()> {
        self.exec(
            "UPDATE outbox SET delivered_ms = $1, claimed_until = 0, last_error = NULL WHERE event_id = $2",
            &[Arg::Int(at_ms), Arg::Text(event_id.to_owned())],
        )
        .await
    }

    async fn retry_notification(&mut self, event_id: &str, next_ms: i64, error: &str) -> StoreResult<()> {
        self.exec(
            "UPDATE outbox SET next_attempt_ms = $1, claimed_until = 0, last_error = $2 WHERE event_id = $3",
            &[Arg::Int(next_ms), Arg::Text(error.to_owned()), Arg::Text(event_id.to_owned())],
        )
        .await
    }

    async fn transfer(&mut self, task_id: &str) -> StoreResult<Option<TransferRow>> {
        let row = sqlx::query(&format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE task_id = $1"))
            .bind(task_id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(err)?;
        row.as_ref().map(transfer_row).transpose().map_err(err)
    }

    async fn put_transfer(&mut self, t: &TransferRow) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (task_id) DO UPDATE SET document_id = excluded.document_id, binary_id = excluded.binary_id, \
             sender_key = excluded.sender_key, recipient_key = excluded.recipient_key, patient = excluded.patient, \
             doc_type = excluded.doc_type, content_hash = excluded.content_hash, status = excluded.status, \
             created_ms = excluded.created_ms, updated_ms = excluded.updated_ms, duplicate_of = excluded.duplicate_of"
        ))
        .bind(&t.task_id)
        .bind(&t.document_id)
        .bind(&t.binary_id)
        .bind(&t.sender_key)
        .bind(&t.recipient_key)
        .bind(&t.patient)
        .bind(&t.doc_type)
        .bind(&t.content_hash)
        .bind(&t.status)
        .bind(t.created_ms)
        .bind(t.updated_ms)
        .bind(&t.duplicate_of)
        .execute(&mut *self.tx)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn same_transfer(&mut self, t: &TransferRow) -> StoreResult<Option<String>> {
        sqlx::query_scalar(
            "SELECT task_id FROM transfers WHERE patient = $1 AND doc_type = $2 AND content_hash = $3 \
             AND sender_key = $4 AND recipient_key = $5 AND task_id <> $6 AND content_hash <> '' \
             ORDER BY created_ms, task_id LIMIT 1",
        )
        .bind(&t.patient)
        .bind(&t.doc_type)
        .bind(&t.content_hash)
        .bind(&t.sender_key)
        .bind(&t.recipient_key)
        .bind(&t.task_id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(err)
    }

    async fn ingest_record(&mut self, source_system: &str, record_id: &str) -> StoreResult<Option<IngestRecord>> {
        // The same record pushed to two replicas at once is written once: the
        // second waits here until the first commits, then finds its entry.
        let key = lock_key(&["ingest", source_system, record_id]);
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(&mut *self.tx).await.map_err(err)?;
        let row = sqlx::query(
            "SELECT mapping, content_hash, resources, municipality, info_type, first_ms, last_ms \
             FROM ingest_records WHERE source_system = $1 AND record_id = $2",
        )
        .bind(source_system)
        .bind(record_id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(err)?;
        row.map(|r| -> Result<IngestRecord, sqlx::Error> {
            Ok(IngestRecord {
                source_system: source_system.to_owned(),
                record_id: record_id.to_owned(),
                mapping: r.try_get(0)?,
                content_hash: r.try_get(1)?,
                resources: r.try_get(2)?,
                municipality: r.try_get(3)?,
                info_type: r.try_get(4)?,
                first_ms: r.try_get(5)?,
                last_ms: r.try_get(6)?,
            })
        })
        .transpose()
        .map_err(err)
    }

    async fn put_ingest_record(&mut self, r: &IngestRecord) -> StoreResult<()> {
        let changed = sqlx::query(
            "INSERT INTO ingest_records (source_system, record_id, mapping, content_hash, resources, municipality, \
             info_type, first_ms, last_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (source_system, record_id) DO UPDATE SET mapping = excluded.mapping, \
             content_hash = excluded.content_hash, resources = excluded.resources, municipality = excluded.municipality, \
             info_type = excluded.info_type, last_ms = excluded.last_ms \
             WHERE ingest_records.first_ms = excluded.first_ms",
        )
        .bind(&r.source_system)
        .bind(&r.record_id)
        .bind(&r.mapping)
        .bind(&r.content_hash)
        .bind(&r.resources)
        .bind(&r.municipality)
        .bind(&r.info_type)
        .bind(r.first_ms)
        .bind(r.last_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(err)?
        .rows_affected();
        if changed == 0 {
            return Err(super::first_push_conflict(r));
        }
        Ok(())
    }

    async fn lock(&mut self, key: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(&["lock", key]))
            .execute(&mut *self.tx)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let PgTx { mut tx, audits, changed } = *self;
        write_pending(&mut tx, &audits).await.map_err(err)?;
        // Delivered to the listening replicas when (and only if) the transaction commits.
        let mut payload = String::new();
        for key in changed.iter().map(String::as_str).chain(std::iter::once("")) {
            if !payload.is_empty() && (key.is_empty() || payload.len() + key.len() + 1 > NOTIFY_PAYLOAD_MAX) {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANGES_CHANNEL)
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                payload.clear();
            }
            if !key.is_empty() {
                if !payload.is_empty() {
                    payload.push('\n');
                }
                payload.push_str(key);
            }
        }
        tx.commit().await.map_err(err)
    }
}

/// Listens for other replicas' changes and drops them from this process's
/// cache. When the listening connection is lost, notifications may have been
/// missed: the whole cache is dropped once it is back.
pub async fn listen_for_changes(pool: PgPool, cache: Invalidator) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(CHANGES_CHANNEL).await {
                    tracing::warn!(error = %e, "cannot listen for changes of other replicas");
                } else {
                    cache.forget_all();
                    backoff = Duration::from_millis(100);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(n)) => {
                                for key in n.payload().split('\n') {
                                    if let Some((ty, id)) = key.split_once('/') {
                                        cache.forget(ty, id);
                                    }
                                }
                            }
                            // The connection was lost; notifications in between are gone.
                            Ok(None) => {
                                cache.forget_all();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "lost the change notifications of other replicas");
                                cache.forget_all();
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "cannot connect to listen for changes of other replicas");
            }
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;

    /// The statistics of `table`: when this gateway (or an operator) last
    /// analysed it, and the rows changed since.
    async fn analysed(pool: &PgPool, table: &str) -> (bool, i64) {
        sqlx::query_as(
            "SELECT last_analyze IS NOT NULL, n_mod_since_analyze FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = $1",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL: set NARA_TEST_POSTGRES_URL and pass --include-ignored"]
    async fn tables_changed_beyond_the_threshold_are_analysed_in_the_background() {
        let db = TestDb::new().await.unwrap();
        assert!(db.is_postgres(), "planner statistics are PostgreSQL's: set NARA_TEST_POSTGRES_URL");
        let config = DatabaseConfig { url: db.url.clone(), ..DatabaseConfig::default() };
        let store = PgStore::open(&config).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        for i in 0..300 {
            let id = format!("p{i}");
            let body = format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#);
            tx.put(NewVersion::test_patient(&id, &body)).await.unwrap();
        }
        tx.commit().await.unwrap();

        // The keeper looks every STATISTICS_INTERVAL; the server's counters
        // of changed rows follow the commit within about a second.
        let deadline = std::time::Instant::now() + 3 * STATISTICS_INTERVAL;
        while analysed(store.pool(), "resources").await != (true, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "resources not analysed: {:?}",
                analysed(store.pool(), "resources").await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Analysed once: nothing is stale now, and a table no one wrote was left alone.
        assert_eq!(refresh_statistics(store.pool()).await.unwrap(), Vec::<String>::new());
        assert_eq!(analysed(store.pool(), "subscriptions").await, (false, 0));
    }
}
