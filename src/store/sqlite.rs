//! The embedded SQLite backend: one file, write-ahead log, a pool of
//! read-only connections and a single writer connection, so writes never
//! fail on lock contention and readers never wait for writers.
//!
//! Group commit: each logical transaction runs as a SAVEPOINT inside an
//! outer transaction on the writer connection. `commit` releases the
//! savepoint and waits; a flusher task then COMMITs the outer transaction,
//! lets go of the writer, syncs the write-ahead log — one durable sync for
//! every transaction that finished meanwhile — and only then are their
//! callers told they succeeded. The next group's statements run while the
//! disk syncs the last one. A transaction that fails or is dropped is rolled
//! back to its savepoint and takes nobody else with it.
//!
//! The writer is a rusqlite connection called directly by the task that
//! holds it: a statement costs microseconds, and handing each one to a
//! connection thread of its own (as sqlx does) cost two thread wake-ups per
//! statement, which on these machines outweighed the statement itself. Only
//! COMMIT and the log's sync run on blocking threads. The readers
//! are rusqlite connections used the same way, within a time budget (see
//! [`super::sqlite_readers`]).
//!
//! Writes inside a logical transaction say `OR FAIL`: a failing statement
//! then leaves its earlier rows for the savepoint's rollback to undo, so
//! SQLite opens no statement journal for it. With the default `ABORT`, every
//! multi-row statement opened one, and closing it walks the in-memory
//! sub-journal, which holds every page the savepoint has touched — quadratic
//! in the size of the transaction (a batch of 100 ingested records spent
//! most of its time there).

use std::{
    path::Path,
    sync::{
        Arc, LazyLock, Weak,
        atomic::{AtomicI64, Ordering},
        mpsc::SyncSender,
    },
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::{
    OptionalExtension, ToSql, params,
    types::{ToSqlOutput, ValueRef},
};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, oneshot};

use super::ACCESS_PARAM;
use super::{
    AuditQuery, AuditRecord, AuditRow, Current, HistoryPage, HistoryQuery, IdentifierHit, IngestRecord, NewVersion,
    Notification, NpoOrganization, NpoStatement, Observed, SearchPage, SearchPlan, Store, StoreError, StoreResult,
    StoreTx, Stored, SubscriptionRow, TransferRow,
    audit_journal::{self, DurableBatches, Journal, Position},
    audit_queue::CommitResult,
    plan::IndexTable,
    rows::{
        self, AUDIT_COLUMNS, NPO_ORGANIZATION_QUERY, OBSERVED_QUERY, PageRows, SUBSCRIPTION_QUERY, SqlRow,
        TRANSFER_COLUMNS, stored, transfer_row,
    },
    sql::{self, Arg, Dialect, ROW_COLUMNS, Sql},
    sqlite_readers::Readers,
};
use crate::config::DatabaseConfig;

/// Schema migrations, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "resources", include_str!("../../migrations/sqlite/0001_resources.sql")),
    (2, "access_audit_ingest", include_str!("../../migrations/sqlite/0002_access_audit_ingest.sql")),
    (3, "npo", include_str!("../../migrations/sqlite/0003_npo.sql")),
    (4, "transfers", include_str!("../../migrations/sqlite/0004_transfers.sql")),
    (5, "subscriptions", include_str!("../../migrations/sqlite/0005_subscriptions.sql")),
    (6, "token_assertions", include_str!("../../migrations/sqlite/0006_token_assertions.sql")),
    (7, "audit_patient_deferred", include_str!("../../migrations/sqlite/0007_audit_patient_deferred.sql")),
    (8, "audit_journal", include_str!("../../migrations/sqlite/0008_audit_journal.sql")),
    (9, "audit_journal_id", include_str!("../../migrations/sqlite/0009_audit_journal_id.sql")),
    (10, "union_params", include_str!("../../migrations/sqlite/0010_union_params.sql")),
];

pub struct SqliteStore {
    readers: Readers,
    writer: Arc<Mutex<Writer>>,
    /// Wakes the flusher after a transaction released its savepoint.
    flush: Arc<Notify>,
    /// Where audited reads' entries become durable (see [`audit_journal`]);
    /// `None` when another process holds this database's journal.
    journal: Option<Journal>,
    /// The last journal batch in the chain, and how to ask for the next import now.
    imported: tokio::sync::watch::Receiver<u64>,
    import_now: Arc<Notify>,
}

struct Writer {
    conn: rusqlite::Connection,
    /// The outer transaction is open (it may hold released, uncommitted work).
    outer: bool,
    /// A logical transaction's savepoint is still open: it failed or was
    /// dropped, and must be rolled back before anything else runs.
    abandoned: bool,
    /// Callers waiting for the next COMMIT.
    waiters: Vec<oneshot::Sender<CommitResult>>,
    /// Set when a sync of the log failed: what was written since may or may
    /// not be on disk, so nothing more is committed until a restart.
    log_failed: Arc<std::sync::OnceLock<String>>,
    /// The audit chain's last committed-or-pending entry: sequence number and hash.
    audit_seq: i64,
    audit_hash: String,
}

impl Writer {
    /// Rolls back a savepoint left behind by a failed or dropped transaction.
    /// If SQLite already rolled back more than that (some errors end the whole
    /// transaction), the outer transaction is abandoned too and its waiters fail.
    fn discard_abandoned(&mut self) -> rusqlite::Result<()> {
        if !self.abandoned {
            return Ok(());
        }
        let rolled_back = self.conn.execute_batch("ROLLBACK TO tx; RELEASE tx");
        self.abandoned = false;
        if let Err(e) = rolled_back {
            tracing::error!(error = %e, "the write transaction was lost; failing the transactions waiting in it");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.outer = false;
            for w in self.waiters.drain(..) {
                let _ = w.send(Err(format!("the transaction was rolled back: {e}")));
            }
            self.reload_audit_head()?;
        }
        Ok(())
    }

    /// Re-reads the audit chain's head after a rollback undid appends.
    fn reload_audit_head(&mut self) -> rusqlite::Result<()> {
        let (seq, hash) = self
            .conn
            .query_row("SELECT seq, hash FROM audit_head WHERE one = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        self.audit_seq = seq;
        self.audit_hash = hash;
        Ok(())
    }

    /// Commits the outer transaction without waiting for the disk; its
    /// callers are answered once the log is synced ([`Group::answer`]).
    /// After a failed sync it rolls back instead: nothing more is stored.
    fn commit_group(&mut self) -> Option<Group> {
        if let Err(e) = self.discard_abandoned() {
            tracing::error!(error = %e, "could not roll back an abandoned transaction");
        }
        if !self.outer {
            return None;
        }
        let result = match self.log_failed.get() {
            Some(e) => Err(e.clone()),
            None => self.conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = self.waiters.len(), "group commit failed; its transactions are not stored");
            let _ = self.conn.execute_batch("ROLLBACK");
            if let Err(e) = self.reload_audit_head() {
                tracing::error!(error = %e, "could not re-read the audit chain head");
            }
        }
        self.outer = false;
        Some(Group { waiters: std::mem::take(&mut self.waiters), result })
    }

    /// Checkpoints on the writer connection, syncing the log and the file as
    /// the background checkpointer does (the writer itself never syncs).
    /// `None` when another checkpoint was running.
    fn checkpoint_durably(&mut self, mode: Checkpoint) -> rusqlite::Result<Option<LogPages>> {
        self.conn.execute_batch("PRAGMA synchronous = FULL")?;
        let pages = checkpoint(&self.conn, mode);
        self.conn.execute_batch("PRAGMA synchronous = OFF")?;
        pages
    }
}

/// How a checkpoint treats the readers (SQLite's `wal_checkpoint` modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checkpoint {
    /// Copies what no reader still needs from the log; never waits.
    Passive,
    /// Copies everything, then waits (the busy timeout) until no reader
    /// reads from the log, so that the next write starts it from the
    /// beginning; takes the writer's lock.
    Restart,
}

/// The write-ahead log as a checkpoint found it, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LogPages {
    /// Pages written since the log last started from the beginning.
    length: i64,
    /// Of them, those copied into the database file.
    copied: i64,
    /// Whether SQLite answered busy: a restart whose readers outlasted the
    /// busy timeout (what a passive one left, it tells by `copied`).
    busy: bool,
}

impl LogPages {
    fn behind(self) -> i64 {
        self.length - self.copied
    }
}

/// A checkpoint on `conn`, or `None` when another connection's checkpoint
/// was running (SQLite then reports neither the log's length nor what was
/// copied).
fn checkpoint(conn: &rusqlite::Connection, mode: Checkpoint) -> rusqlite::Result<Option<LogPages>> {
    let sql = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
    };
    conn.query_row(sql, [], |r| {
        let (busy, length, copied): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok((length >= 0 && copied >= 0).then_some(LogPages { length, copied, busy: busy != 0 }))
    })
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The last connection to close checkpoints the log into the file and
        // deletes it, with its own connection's syncs: the writer's must be on.
        if let Err(e) = self.conn.execute_batch("PRAGMA synchronous = FULL") {
            tracing::error!(error = %e, "could not turn the writer's syncs on before closing");
        }
    }
}

/// The transactions of one COMMIT, waiting to hear how it went.
struct Group {
    waiters: Vec<oneshot::Sender<CommitResult>>,
    result: CommitResult,
}

impl Group {
    fn answer(self) {
        for w in self.waiters {
            let _ = w.send(self.result.clone());
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Lets the flusher see that the store is gone and end.
        self.flush.notify_one();
    }
}

/// Commits whenever transactions are waiting; ends when the store is dropped.
/// The writer is held for the COMMIT only: the sync of the log that makes
/// the group durable runs after it has been let go, so the next group's
/// statements run meanwhile; the group's callers are answered after the
/// sync. (A sync took 1–3 ms on these machines' disks, during which every
/// write used to wait.) After each commit the checkpointer is told that the
/// log has grown; if it is far behind, or the log long, the writer
/// checkpoints before it lets go ([`LogProgress::writer_checkpoint`]).
async fn flusher(writer: Weak<Mutex<Writer>>, wake: Arc<Notify>, log: Option<LogFile>, checkpointer: Checkpointer) {
    loop {
        wake.notified().await;
        let Some(writer) = writer.upgrade() else { return };
        let mut guard = writer.lock_owned().await;
        let progress = checkpointer.progress.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let group = guard.commit_group();
            if let Some(mode) = group.as_ref().and_then(|_| progress.writer_checkpoint()) {
                match guard.checkpoint_durably(mode) {
                    Ok(Some(pages)) => progress.record(mode, pages),
                    Ok(None) => {} // the checkpointer is at it
                    Err(e) => tracing::warn!(error = %e, "the writer's checkpoint did not run"),
                }
            }
            group
        });
        let Ok(group) = committed.await else { return }; // the runtime is shutting down
        let Some(mut group) = group else { continue };
        if let (Ok(()), Some(log)) = (&group.result, &log) {
            let Ok(synced) = log.sync().await else { return };
            if let Err(e) = synced {
                let e = format!("the write-ahead log could not be synced to disk ({e}); restart the gateway");
                tracing::error!(error = %e, "nothing more is committed until a restart");
                let _ = log.failed.set(e.clone());
                group.result = Err(e);
            }
        }
        group.answer();
        let _ = checkpointer.wake.try_send(());
    }
}

/// How the flusher makes a COMMIT durable: `fdatasync` of the write-ahead
/// log ([`sync_log_file`]; tests put other functions in its place).
type SyncLog = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The log's sync, and where its failure is told to the writer. Absent with
/// `database.sqlite_synchronous = "normal"`, which syncs at checkpoints only.
struct LogFile {
    sync: SyncLog,
    failed: Arc<std::sync::OnceLock<String>>,
}

impl LogFile {
    /// Runs the sync on a blocking thread; `Err` of the outer result when
    /// the runtime is shutting down.
    async fn sync(&self) -> Result<std::io::Result<()>, tokio::task::JoinError> {
        let sync = self.sync.clone();
        tokio::task::spawn_blocking(move || sync()).await
    }
}

/// Opens the log SQLite created beside the database (the writer has read
/// from it, so it exists) and syncs the folder once, so that the log's name
/// survives a power loss too; the sync is the log's `fdatasync`.
fn sync_log_file(database: &Path) -> std::io::Result<SyncLog> {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    let file = std::fs::File::open(&name)?;
    if let Some(folder) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(Arc::new(move || file.sync_data()))
}

/// The least time between two background checkpoints (each ends with a
/// sync of the database file).
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(5);

/// Copies committed pages from the write-ahead log into the database file
/// on a connection and thread of its own, while the writer goes on. Without
/// it the writer's automatic checkpoint did all the copying inside a COMMIT
/// every thousand pages, holding up every write meanwhile (a COMMIT of a
/// few creates took 0.7–1.4 ms, one with the checkpoint about 5 ms). Once
/// everything is copied, the writer's next transaction starts the log from
/// the beginning again. Its connection syncs (`synchronous` FULL or
/// NORMAL): the log before copying from it, the file before the log may be
/// started again. Ends when the flusher (the sender) is gone.
fn spawn_checkpointer(conn: rusqlite::Connection) -> std::io::Result<Checkpointer> {
    let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let progress = Arc::new(LogProgress::default());
    let recorded = progress.clone();
    std::thread::Builder::new().name("nara-checkpoint".into()).spawn(move || {
        while rx.recv().is_ok() {
            match checkpoint(&conn, Checkpoint::Passive) {
                Ok(Some(pages)) => recorded.record(Checkpoint::Passive, pages),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "background checkpoint did not run"),
            }
            std::thread::sleep(CHECKPOINT_PAUSE);
        }
    })?;
    Ok(Checkpointer { wake, progress })
}

/// The background checkpointer: how to wake it, and what the last
/// checkpoint found.
struct Checkpointer {
    wake: SyncSender<()>,
    progress: Arc<LogProgress>,
}

/// The log as the last checkpoint (the checkpointer's or the writer's) found it.
#[derive(Default)]
struct LogProgress {
    length: AtomicI64,
    behind: AtomicI64,
}

impl LogProgress {
    fn record(&self, mode: Checkpoint, pages: LogPages) {
        // After a restart that finished, the next write starts the log from
        // the beginning.
        let length = if mode == Checkpoint::Restart && !pages.busy { 0 } else { pages.length };
        self.length.store(length, Ordering::Relaxed);
        self.behind.store(pages.behind(), Ordering::Relaxed);
    }

    /// The checkpoint the writer runs before letting go, if any: a restart
    /// when the log has grown past [`WRITER_RESTART_PAGES`], a passive one
    /// when the checkpointer is more than [`WRITER_CHECKPOINT_PAGES`] behind.
    fn writer_checkpoint(&self) -> Option<Checkpoint> {
        if self.length.load(Ordering::Relaxed) > WRITER_RESTART_PAGES {
            Some(Checkpoint::Restart)
        } else if self.behind.load(Ordering::Relaxed) > WRITER_CHECKPOINT_PAGES {
            Some(Checkpoint::Passive)
        } else {
            None
        }
    }
}

/// Pages of the write-ahead log left uncopied by the background
/// checkpointer at which the writer checkpoints itself before letting go:
/// the backstop for a checkpointer that falls behind (32 MB of log), which
/// holds up writes rather than let the log grow. SQLite's own automatic
/// checkpoint is off on the writer, whose connection does not sync; at its
/// default of 1,000 pages a group commit of two ingest batches (about 1,150
/// pages) set it off every time, which made the COMMIT 50 % longer.
const WRITER_CHECKPOINT_PAGES: i64 = 8192;

/// Pages in the write-ahead log at which the writer restarts it (64 MB).
/// The log starts from the beginning only when a write finds all of it
/// copied and no reader reading from it; under steady reads and writes
/// that moment never comes, and 15 s of batch ingest left a log of 1.6 GB
/// (larger than the database), which the first start after a crash reads
/// whole (0.4–0.6 s). The restart holds up writes while the last pages are
/// copied and the log's readers finish (milliseconds).
const WRITER_RESTART_PAGES: i64 = 16_384;

/// How long a connection waits for another process's lock on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

/// The settings of every connection to the file, the writer's and the
/// readers' (besides write-ahead logging and [`BUSY_TIMEOUT`]); the writer
/// turns `synchronous` off once migrations are done (see [`flusher`]).
fn connection_pragmas(synchronous: &str) -> [(&'static str, &'static str); 4] {
    let sync = if synchronous == "normal" { "NORMAL" } else { "FULL" };
    [("synchronous", sync), ("foreign_keys", "OFF"), ("cache_size", "-2000"), ("temp_store", "MEMORY")]
}

/// Opens the writer connection, creating the file, with the settings the
/// readers get too (see [`SqliteStore::open`]).
fn open_writer(path: &str, pragmas: &[(&str, &str)]) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    for (name, value) in pragmas {
        conn.execute_batch(&format!("PRAGMA {name} = {value}"))?;
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Binds an [`Arg`] to a rusqlite statement.
impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Arg::Null => ValueRef::Null,
            Arg::Int(i) => return Ok(ToSqlOutput::from(*i)),
            Arg::Real(f) => return Ok(ToSqlOutput::from(*f)),
            Arg::Text(t) => ValueRef::Text(t.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// A row of the writer connection, for the decoders shared with the readers ([`rows`]).
struct LiteRow<'a, 'r>(&'a rusqlite::Row<'r>);

fn decode(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

impl SqlRow for LiteRow<'_, '_> {
    fn int(&self, i: usize) -> Result<i64, sqlx::Error> {
        self.0.get(i).map_err(decode)
    }
    fn real(&self, i: usize) -> Result<f64, sqlx::Error> {
        self.0.get(i).map_err(decode)
    }
    fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        self.0.get(i).map_err(decode)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        self.0.get(i).map_err(decode)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.0.get(i).map_err(decode)
    }
}

/// The writer connection's errors, as the store reports them.
fn lite_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    match &e {
        rusqlite::Error::SqliteFailure(f, message)
            if f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            StoreError::Conflict(message.clone().unwrap_or_else(|| e.to_string()))
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::CannotOpen
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

fn decode_err(e: sqlx::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file named by `sqlite://PATH`
    /// and applies pending migrations.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<SqliteStore> {
        Self::open_syncing(config, sync_log_file).await
    }

    /// [`SqliteStore::open`] with the function that returns how to sync its
    /// write-ahead log, given the database's path.
    async fn open_syncing(
        config: &DatabaseConfig,
        sync_log: impl FnOnce(&Path) -> std::io::Result<SyncLog>,
    ) -> anyhow::Result<SqliteStore> {
        let path =
            config.url.strip_prefix("sqlite://").or_else(|| config.url.strip_prefix("sqlite:")).unwrap_or(&config.url);
        if path.is_empty() {
            anyhow::bail!("database.url: no file path after sqlite://");
        }
        if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("database.url: cannot create folder {}: {e}", parent.display()))?;
        }
        let pragmas = connection_pragmas(&config.sqlite_synchronous);
        let (conn, checkpointer) = {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || -> anyhow::Result<(rusqlite::Connection, rusqlite::Connection)> {
                let mut conn = open_writer(&path, &pragmas)?;
                // A group commit of two ingest batches dirties about 1,150
                // pages, more than the page cache holds: SQLite wrote the
                // overflow to the log mid-transaction, rewrote those frames at
                // COMMIT and then read the log back to recompute its checksums
                // (`walRewriteChecksums`, 2.5 % of a batch ingest's processor
                // time). Without spilling, the cache holds a transaction's
                // dirty pages until COMMIT and shrinks back to its size after.
                conn.pragma_update(None, "cache_spill", false)?;
                migrate(&mut conn)?;
                // The flusher syncs the log after each COMMIT, outside the
                // writer's lock, and the checkpointer copies the log into the
                // file (see [`flusher`]); a checkpoint on this connection
                // would not sync.
                conn.pragma_update(None, "synchronous", "OFF")?;
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                Ok((conn, open_writer(&path, &pragmas)?))
            })
            .await??
        };
        let readers = Readers::new(path, &pragmas, config.max_connections, STATEMENT_CACHE, BUSY_TIMEOUT);
        let log_failed = Arc::new(std::sync::OnceLock::new());
        let mut writer = Writer {
            conn,
            outer: false,
            abandoned: false,
            waiters: Vec::new(),
            log_failed: log_failed.clone(),
            audit_seq: 0,
            audit_hash: String::new(),
        };
        writer.reload_audit_head()?;
        let log = match config.sqlite_synchronous.as_str() {
            "normal" => None,
            _ => Some(LogFile {
                sync: sync_log(Path::new(path))
                    .map_err(|e| anyhow::anyhow!("database.url: cannot open the write-ahead log of {path}: {e}"))?,
                failed: log_failed,
            }),
        };
        let writer = Arc::new(Mutex::new(writer));
        let flush = Arc::new(Notify::new());
        tokio::spawn(flusher(Arc::downgrade(&writer), flush.clone(), log, spawn_checkpointer(checkpointer)?));
        let (imported_tx, imported) = tokio::sync::watch::channel(0);
        let import_now = Arc::new(Notify::new());
        let journal = match open_journal(Path::new(path), &writer, &flush).await? {
            Some((journal, durable)) => {
                let importer = Importer {
                    writer: Arc::downgrade(&writer),
                    flush: flush.clone(),
                    imported: imported_tx,
                    progress: journal.progress(),
                };
                tokio::spawn(importer.run(durable, import_now.clone()));
                Some(journal)
            }
            None => None,
        };
        tokio::spawn(audit_indexer(Arc::downgrade(&writer), flush.clone(), readers.clone()));
        Ok(SqliteStore { readers, writer, flush, journal, imported, import_now })
    }

    /// Waits until every audit entry acknowledged so far is in the chain in
    /// the database, so that reads of the log see it.
    async fn settle_audit(&self) -> StoreResult<()> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let target = journal.acknowledged();
        let mut imported = self.imported.clone();
        if *imported.borrow() >= target {
            return Ok(());
        }
        self.import_now.notify_one();
        let reached = imported.wait_for(|&b| b >= target);
        match tokio::time::timeout(SETTLE_TIMEOUT, reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("the audit importer has stopped".into())),
            Err(_) => Err(StoreError::Unavailable("the audit log is not up to date; try again".into())),
        }
    }
}

/// An audit log row, its body decoded (see [`super::audit_body`]).
fn stored_audit_row(r: &LiteRow<'_, '_>) -> Result<AuditRow, sqlx::Error> {
    // Stored as a blob; an entry changed by hand may hold text, which the chain's check must still see.
    let stored = match r.0.get_ref(3).map_err(decode)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b,
        other => return Err(sqlx::Error::Decode(format!("audit body of type {}", other.data_type()).into())),
    };
    let body = super::audit_body::unpack(stored).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(AuditRow {
        seq: r.int(0)?,
        event_id: r.text(1)?,
        recorded_ms: r.int(2)?,
        body,
        prev_hash: r.text(4)?,
        hash: r.text(5)?,
    })
}

/// A query's text for SQLite, and its arguments.
fn rendered(sql: Sql) -> (String, Vec<Arg>) {
    (sql.render(Dialect::Sqlite), sql.args)
}

/// How long a read of the audit log waits for the journal's newest entries.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the database's audit journal: imports whatever it holds past the
/// recorded position (entries acknowledged before a crash), then starts it.
/// `None` when another process holds it.
async fn open_journal(
    database: &Path,
    writer: &Arc<Mutex<Writer>>,
    flush: &Arc<Notify>,
) -> anyhow::Result<Option<(Journal, DurableBatches)>> {
    let folder = audit_journal::folder_of(database);
    let (from, journal_id) = {
        let conn = &writer.lock().await.conn;
        let read = |conn: &rusqlite::Connection| {
            conn.query_row("SELECT segment, offset, journal_id FROM audit_journal WHERE one = 1", [], |r| {
                Ok((Position { segment: r.get(0)?, offset: r.get(1)? }, r.get::<_, String>(2)?))
            })
        };
        let (from, journal_id) = read(conn)?;
        if journal_id.is_empty() {
            let id = uuid::Uuid::new_v4().simple().to_string();
            conn.execute("UPDATE audit_journal SET journal_id = ? WHERE one = 1 AND journal_id = ''", [&id])?;
            read(conn)? // another process may have set it first
        } else {
            (from, journal_id)
        }
    };
    let opened = {
        let folder = folder.clone();
        tokio::task::spawn_blocking(move || audit_journal::open(&folder, &journal_id, from)).await?
    };
    let recovery = match opened.map_err(|e| anyhow::anyhow!("audit journal {}: {e}", folder.display()))? {
        audit_journal::Opened::Owned(r) => r,
        audit_journal::Opened::HeldElsewhere => {
            tracing::info!("another process holds this database's audit journal; this one appends no audit entries");
            return Ok(None);
        }
    };
    if recovery.end != from {
        let found = recovery.entries.len();
        let entries: Vec<&audit_journal::Entry> = recovery.entries.iter().collect();
        import(writer, flush, &entries, recovery.end).await?;
        tracing::info!(entries = found, "imported audit entries from the journal after an unclean stop");
    }
    let started = tokio::task::spawn_blocking(move || recovery.start()).await?;
    Ok(Some(started.map_err(|e| anyhow::anyhow!("audit journal {}: {e}", folder.display()))?))
}

/// Adds journal entries to the chain and records the journal position they end at, in one transaction.
async fn import(
    writer: &Arc<Mutex<Writer>>,
    flush: &Arc<Notify>,
    entries: &[&audit_journal::Entry],
    end: Position,
) -> StoreResult<()> {
    let mut tx = begin_on(writer, flush).await?;
    off_worker(|| tx.append_audit_rows(entries))?;
    tx.exec(
        "UPDATE OR FAIL audit_journal SET segment = ?, offset = ? WHERE one = 1",
        params![end.segment, end.offset],
    )?;
    StoreTx::commit(Box::new(tx)).await
}

/// Moves durable journal entries into the chain in the database, in batches.
struct Importer {
    writer: Weak<Mutex<Writer>>,
    flush: Arc<Notify>,
    imported: tokio::sync::watch::Sender<u64>,
    progress: audit_journal::Progress,
}

/// How long the importer gathers journal batches before a transaction,
/// unless a reader of the log asks for them.
const IMPORT_INTERVAL: Duration = Duration::from_millis(50);

impl Importer {
    /// Runs until the journal is gone (the store was dropped).
    async fn run(self, mut durable: DurableBatches, now: Arc<Notify>) {
        let mut pending: Vec<audit_journal::Durable> = Vec::new();
        loop {
            if pending.is_empty() {
                match durable.recv().await {
                    Some(d) => pending.push(d),
                    None => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(IMPORT_INTERVAL) => {}
                    () = now.notified() => {}
                }
            }
            while let Some(d) = durable.try_recv() {
                pending.push(d);
            }
            let Some(writer) = self.writer.upgrade() else { return };
            let entries: Vec<&audit_journal::Entry> = pending.iter().flat_map(|d| &d.entries).collect();
            let (end, batch) = pending.last().map(|d| (d.end, d.batch)).expect("pending is not empty");
            let imported = import(&writer, &self.flush, &entries, end).await;
            let count = entries.len();
            drop(entries);
            match imported {
                Ok(()) => {
                    pending.clear();
                    self.imported.send_replace(batch);
                    self.progress.reached(end);
                }
                Err(e) => {
                    tracing::warn!(error = %e, entries = count, "could not import audit entries from the journal; retrying");
                    drop(writer);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Applies the migrations this database has not seen yet.
fn migrate(conn: &mut rusqlite::Connection) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)",
    )?;
    let applied: Vec<i64> = conn
        .prepare("SELECT version FROM schema_migrations")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (version, name, script) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(script)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
            params![version, name, chrono::Utc::now().timestamp_millis()],
        )?;
        tx.commit()?;
        tracing::info!(migration.version = version, migration.name = name, "applied database migration");
    }
    Ok(())
}

/// The query of a current version by type and id.
static READ_QUERY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ROW_COLUMNS} FROM resources r JOIN versions v ON v.vid = r.vid WHERE r.res_type = ? AND r.res_id = ?"
    )
});

/// Runs a read query and hands each row to `each` until it says stop (false).
fn read_each(
    conn: &rusqlite::Connection,
    text: &str,
    args: &[Arg],
    mut each: impl FnMut(&LiteRow<'_, '_>) -> Result<bool, sqlx::Error>,
) -> StoreResult<()> {
    let mut statement = conn.prepare_cached(text).map_err(lite_err)?;
    let mut rows = statement.query(rusqlite::params_from_iter(args)).map_err(lite_err)?;
    while let Some(row) = rows.next().map_err(lite_err)? {
        if !each(&LiteRow(row)).map_err(decode_err)? {
            break;
        }
    }
    Ok(())
}

/// Runs a read query; all its rows, decoded.
fn read_rows<T>(
    conn: &rusqlite::Connection,
    text: &str,
    args: &[Arg],
    mut decode: impl FnMut(&LiteRow<'_, '_>) -> Result<T, sqlx::Error>,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    read_each(conn, text, args, |row| {
        out.push(decode(row)?);
        Ok(true)
    })?;
    Ok(out)
}

/// Runs a read query for its first row, if any.
fn read_optional<T>(
    conn: &rusqlite::Connection,
    text: &str,
    args: &[Arg],
    mut decode: impl FnMut(&LiteRow<'_, '_>) -> Result<T, sqlx::Error>,
) -> StoreResult<Option<T>> {
    let mut first = None;
    read_each(conn, text, args, |row| {
        first = Some(decode(row)?);
        Ok(false)
    })?;
    Ok(first)
}

/// Runs a read query whose first row (there is one) holds what is wanted.
fn read_first<T>(
    conn: &rusqlite::Connection,
    text: &str,
    args: &[Arg],
    decode: impl FnMut(&LiteRow<'_, '_>) -> Result<T, sqlx::Error>,
) -> StoreResult<T> {
    read_optional(conn, text, args, decode)?.ok_or_else(|| StoreError::Internal(format!("no row from `{text}`")))
}

fn text_args<const N: usize>(values: [&str; N]) -> Vec<Arg> {
    values.iter().map(|v| Arg::Text((*v).to_owned())).collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn read(&self, ty: &str, id: &str) -> StoreResult<Option<Stored>> {
        let args = text_args([ty, id]);
        self.readers.run(move |c| read_optional(c, &READ_QUERY, &args, |r| stored(r))).await
    }

    async fn vread(&self, ty: &str, id: &str, version: i64) -> StoreResult<Option<Stored>> {
        let mut args = text_args([ty, id]);
        args.push(Arg::Int(version));
        self.readers
            .run(move |c| {
                let text = "SELECT 0, v.res_type, v.res_id, v.version, v.last_updated_ms, v.deleted, v.method, v.body, '', '' \
                            FROM versions v WHERE v.res_type = ? AND v.res_id = ? AND v.version = ?";
                read_optional(c, text, &args, |r| stored(r))
            })
            .await
    }

    async fn history(&self, q: &HistoryQuery) -> StoreResult<HistoryPage> {
        let (text, args) = rendered(sql::history_query(q));
        let count = q.count;
        let versions = self.readers.run(move |c| read_rows(c, &text, &args, |r| stored(r))).await?;
        Ok(rows::history_of(versions, count))
    }

    async fn search(&self, plan: &SearchPlan) -> StoreResult<SearchPage> {
        let page_query = (plan.count > 0).then(|| rendered(sql::search_page(plan)));
        let count_query = plan.with_total.then(|| rendered(sql::search_count(plan)));
        let empty = PageRows::new(plan);
        self.readers
            .run(move |c| {
                let mut page = SearchPage::default();
                if let Some((text, args)) = &page_query {
                    let mut rows = empty.clone();
                    read_each(c, text, args, |r| rows.push(r))?;
                    (page.rows, page.next) = rows.finish();
                }
                if let Some((text, args)) = &count_query {
                    let n = read_first(c, text, args, |r| r.int(0))?;
                    page.total = Some(u64::try_from(n).unwrap_or(0));
                }
                Ok(page)
            })
            .await
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
        self.fetch_rows(sql::include_query(rows, param, target_type, limit)).await
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
        self.fetch_rows(sql::revinclude_query(rows, source_type, param, limit)).await
    }

    async fn find_by_identifier(&self, values: &[&str]) -> StoreResult<Vec<IdentifierHit>> {
        let queries: Vec<(String, Vec<Arg>)> = values
            .chunks(sql::IDENTIFIER_VALUES_PER_QUERY)
            .map(|chunk| rendered(sql::identifier_lookup(chunk)))
            .collect();
        self.readers
            .run(move |c| {
                let mut hits = Vec::new();
                for (text, args) in &queries {
                    hits.extend(read_rows(c, text, args, |r| rows::identifier_hit(r))?);
                }
                Ok(hits)
            })
            .await
    }

    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>> {
        Ok(Box::new(self.begin_tx().await?))
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> StoreResult<()> {
        match &self.journal {
            Some(journal) => journal.append(records).await,
            None => Err(audit_journal::held_elsewhere_error()),
        }
    }

    async fn audit_entries(&self, q: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        let Some(sql) = sql::audit_query(q, Dialect::Sqlite) else { return Ok(Vec::new()) };
        self.settle_audit().await?;
        let (text, args) = rendered(sql);
        self.readers.run(move |c| read_rows(c, &text, &args, stored_audit_row)).await
    }

    async fn audit_chain(&self, after_seq: i64, limit: usize) -> StoreResult<Vec<AuditRow>> {
        if after_seq == 0 {
            self.settle_audit().await?;
        }
        let args = vec![Arg::Int(after_seq), Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX))];
        self.readers
            .run(move |c| {
                let text = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?");
                read_rows(c, &text, &args, stored_audit_row)
            })
            .await
    }

    async fn audit_head(&self) -> StoreResult<(i64, String)> {
        self.settle_audit().await?;
        self.readers
            .run(|c| {
                read_first(c, "SELECT seq, hash FROM audit_head WHERE one = 1", &[], |r| Ok((r.int(0)?, r.text(1)?)))
            })
            .await
    }

    async fn observed(&self, since_ms: i64) -> StoreResult<Vec<Observed>> {
        let args = vec![Arg::Int(since_ms)];
        self.readers.run(move |c| read_rows(c, OBSERVED_QUERY, &args, |r| rows::observed(r))).await
    }

    async fn npo_organizations(&self) -> StoreResult<Vec<NpoOrganization>> {
        self.readers.run(|c| read_rows(c, NPO_ORGANIZATION_QUERY, &[], |r| rows::npo_organization(r))).await
    }

    async fn npo_statements(&self, code: Option<&str>) -> StoreResult<Vec<NpoStatement>> {
        let text = rows::npo_statements_query(code.is_none());
        let args: Vec<Arg> = code.map(|c| Arg::Text(c.to_owned())).into_iter().collect();
        self.readers.run(move |c| read_rows(c, &text, &args, |r| rows::npo_statement(r))).await
    }

    async fn transfers_for_binary(&self, binary_id: &str) -> StoreResult<Vec<TransferRow>> {
        let args = text_args([binary_id]);
        self.readers
            .run(move |c| {
                let text = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE binary_id = ?");
                read_rows(c, &text, &args, |r| transfer_row(r))
            })
            .await
    }

    async fn open_transfers(&self, before_ms: i64, party: Option<&str>, limit: usize) -> StoreResult<Vec<TransferRow>> {
        let party_clause = if party.is_some() { " AND (sender_key = ? OR recipient_key = ?)" } else { "" };
        let text = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE status IN ('requested', 'received') \
             AND created_ms < ?{party_clause} ORDER BY created_ms, task_id LIMIT ?"
        );
        let mut args = vec![Arg::Int(before_ms)];
        if let Some(p) = party {
            args.extend(text_args([p, p]));
        }
        args.push(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        self.readers.run(move |c| read_rows(c, &text, &args, |r| transfer_row(r))).await
    }

    async fn claim_assertion(&self, key: &str, expires_ms: i64, now_ms: i64) -> StoreResult<bool> {
        let mut tx = self.begin_tx().await?;
        tx.exec("DELETE FROM token_assertions WHERE expires_ms < ?", [now_ms])?;
        let claimed = tx.exec(
            "INSERT INTO token_assertions (client_jti, expires_ms) VALUES (?, ?) ON CONFLICT (client_jti) DO NOTHING",
            params![key, expires_ms],
        )? == 1;
        StoreTx::commit(Box::new(tx)).await?;
        Ok(claimed)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.readers.run(|c| read_first(c, "SELECT 1", &[], |r| r.int(0))).await.map(drop)
    }

    fn audit_unavailable(&self) -> Option<StoreError> {
        self.journal.is_none().then(audit_journal::held_elsewhere_error)
    }
}

/// How often new audit entries are added to the patient index, and at most
/// how many in one transaction (which holds up other writes while it runs).
const AUDIT_INDEX_INTERVAL: Duration = Duration::from_millis(100);
const AUDIT_INDEX_BATCH: i64 = 2_000;

/// Adds new audit entries to `audit_patient` in sorted batches; ends when
/// the store is dropped. Until then, queries find them by `audit_log.patients`.
async fn audit_indexer(writer: Weak<Mutex<Writer>>, flush: Arc<Notify>, readers: Readers) {
    loop {
        tokio::time::sleep(AUDIT_INDEX_INTERVAL).await;
        let Some(writer) = writer.upgrade() else { return };
        let behind = readers
            .run(|c| {
                let text =
                    "SELECT (SELECT seq FROM audit_head WHERE one = 1) - (SELECT seq FROM audit_indexed WHERE one = 1)";
                read_first(c, text, &[], |r| r.int(0))
            })
            .await;
        if matches!(behind, Ok(n) if n <= 0) {
            continue;
        }
        let indexed = async {
            let mut tx = begin_on(&writer, &flush).await?;
            drop(writer);
            off_worker(|| {
                tx.exec(
                    "INSERT OR IGNORE INTO audit_patient (patient, seq) SELECT j.value, a.seq \
                     FROM audit_log a, json_each(a.patients) j, audit_indexed i \
                     WHERE i.one = 1 AND a.seq > i.seq AND a.seq <= i.seq + ? ORDER BY 1, 2",
                    [AUDIT_INDEX_BATCH],
                )
            })?;
            tx.exec(
                "UPDATE OR FAIL audit_indexed SET seq = MIN(seq + ?, (SELECT seq FROM audit_head WHERE one = 1)) \
                 WHERE one = 1",
                [AUDIT_INDEX_BATCH],
            )?;
            StoreTx::commit(Box::new(tx)).await
        };
        if let Err(e) = indexed.await {
            tracing::warn!(error = %e, "could not index new audit entries by patient; retrying");
        }
    }
}

/// Runs a long stretch of writer statements (an import of a thousand audit
/// entries takes milliseconds) so that the async worker's other tasks —
/// requests — move to another worker meanwhile instead of waiting behind
/// it. On a single-threaded runtime (tests) it just runs `f`.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Starts a logical transaction on the writer connection (waiting for it).
async fn begin_on(writer: &Arc<Mutex<Writer>>, flush: &Arc<Notify>) -> StoreResult<SqliteTx> {
    let mut guard = writer.clone().lock_owned().await;
    if let Some(e) = guard.log_failed.get() {
        return Err(StoreError::Unavailable(e.clone()));
    }
    guard.discard_abandoned().map_err(lite_err)?;
    Ok(SqliteTx { guard, flush: flush.clone(), started: false, audit_saved: None })
}

impl SqliteStore {
    async fn begin_tx(&self) -> StoreResult<SqliteTx> {
        begin_on(&self.writer, &self.flush).await
    }

    async fn fetch_rows(&self, sql: Sql) -> StoreResult<Vec<Stored>> {
        let (text, args) = rendered(sql);
        self.readers.run(move |c| read_rows(c, &text, &args, |r| stored(r))).await
    }
}

/// A logical transaction: a savepoint on the writer connection, holding its lock.
/// Dropped without `commit`, it is rolled back before the next writer runs.
///
/// Statements run when they are called, on the caller's thread (see the
/// module comment); each stays prepared in the connection's statement cache.
struct SqliteTx {
    guard: OwnedMutexGuard<Writer>,
    flush: Arc<Notify>,
    /// The savepoint exists in the database.
    started: bool,
    /// The audit chain head before this transaction's first append, restored if it is dropped.
    audit_saved: Option<(i64, String)>,
}

impl SqliteTx {
    /// The writer connection, with the outer transaction and this
    /// transaction's savepoint opened the first time.
    fn conn(&mut self) -> StoreResult<&rusqlite::Connection> {
        if !self.started {
            if !self.guard.outer {
                self.guard.conn.execute_batch("BEGIN IMMEDIATE").map_err(lite_err)?;
                self.guard.outer = true;
            }
            self.guard.conn.execute_batch("SAVEPOINT tx").map_err(lite_err)?;
            // From here on, whatever part ran must be undone if the rest fails.
            self.guard.abandoned = true;
            self.started = true;
        }
        Ok(&self.guard.conn)
    }

    /// Runs one statement; the number of rows it changed.
    fn exec(&mut self, statement: &str, params: impl rusqlite::Params) -> StoreResult<usize> {
        self.conn()?.prepare_cached(statement).and_then(|mut s| s.execute(params)).map_err(lite_err)
    }

    /// Runs a query for at most one row.
    fn one<T>(
        &mut self,
        statement: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Option<T>> {
        self.conn()?.prepare_cached(statement).and_then(|mut s| s.query_row(params, row).optional()).map_err(lite_err)
    }

    /// Runs a query for all its rows.
    fn all<T>(
        &mut self,
        statement: &str,
        params: impl rusqlite::Params,
        mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Vec<T>> {
        let conn = self.conn()?;
        let mut s = conn.prepare_cached(statement).map_err(lite_err)?;
        let mut rows = s.query(params).map_err(lite_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(lite_err)? {
            out.push(row(r).map_err(lite_err)?);
        }
        Ok(out)
    }

    /// Writes a new version: the version row, the resource row pointing at
    /// it (with its access and patients when given) and, for a resource that
    /// existed before, the removal of its old index. Returns the resource's row id.
    #[expect(clippy::too_many_arguments, reason = "the columns of one version row")]
    fn write_version(
        &mut self,
        ty: &str,
        id: &str,
        version: i64,
        at_ms: i64,
        method: &str,
        body: &str,
        deleted: bool,
        access_patients: Option<(&str, &str)>,
    ) -> StoreResult<i64> {
        self.exec(
            "INSERT OR FAIL INTO versions (res_type, res_id, version, last_updated_ms, deleted, method, body) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            params![ty, id, version, at_ms, i64::from(deleted), method, body],
        )?;
        let vid = self.guard.conn.last_insert_rowid();
        // Not an upsert: SQLite opens a statement journal for `ON CONFLICT DO
        // UPDATE … RETURNING`. A first version is new (the versions insert
        // above fails otherwise); a later one updates the row.
        // Deletions keep the access set and patients of the last version.
        let (access, patients) = access_patients.unzip();
        let deleted = i64::from(deleted);
        let updated = if version > 1 {
            self.one(
                "UPDATE OR FAIL resources SET version = ?, vid = ?, last_updated_ms = ?, deleted = ?, \
                 access = COALESCE(?, access), patients = COALESCE(?, patients) \
                 WHERE res_type = ? AND res_id = ? RETURNING rid",
                params![version, vid, at_ms, deleted, access, patients, ty, id],
                |r| r.get(0),
            )?
        } else {
            None
        };
        let rid = match updated {
            Some(rid) => rid,
            None => {
                self.exec(
                    "INSERT OR FAIL INTO resources (res_type, res_id, version, vid, last_updated_ms, deleted, access, \
                     patients) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    params![ty, id, version, vid, at_ms, deleted, access.unwrap_or(""), patients.unwrap_or("")],
                )?;
                self.guard.conn.last_insert_rowid()
            }
        };
        if version > 1 {
            for table in INDEX_TABLES {
                self.exec(&format!("DELETE FROM {} WHERE rid = ?", table.name()), [rid])?;
            }
        }
        Ok(rid)
    }

    /// Writes an audit entry, extending the hash chain; the chain head row
    /// is written once, at commit (a batch of ingested records appends one
    /// entry per record).
    fn write_audit(&mut self, r: &AuditRecord) -> StoreResult<()> {
        self.append_audit_row(r, &super::audit_body::pack(&r.body))
    }

    /// Inserts the next entry of the hash chain and moves the chain head on
    /// to it (in memory; [`Self::write_audit_head`] records it).
    fn append_audit_row(&mut self, r: &AuditRecord, packed_body: &[u8]) -> StoreResult<()> {
        if self.audit_saved.is_none() {
            self.audit_saved = Some((self.guard.audit_seq, self.guard.audit_hash.clone()));
        }
        let seq = self.guard.audit_seq + 1;
        let prev = self.guard.audit_hash.clone();
        let hash = super::audit_hash(&prev, seq, r.recorded_ms, &r.body);
        // The patient index follows in the background (see `audit_indexer`).
        let patients = serde_json::to_string(&r.patients).unwrap_or_else(|_| "[]".into());
        self.exec(
            "INSERT OR FAIL INTO audit_log (seq, event_id, recorded_ms, body, prev_hash, hash, patients) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            params![seq, r.event_id, r.recorded_ms, packed_body, prev, hash, patients],
        )?;
        self.guard.audit_seq = seq;
        self.guard.audit_hash = hash;
        Ok(())
    }

    /// Records the chain head as it is now (at commit, when this transaction appended).
    fn write_audit_head(&mut self) -> StoreResult<()> {
        let (seq, hash) = (self.guard.audit_seq, self.guard.audit_hash.clone());
        self.exec("UPDATE OR FAIL audit_head SET seq = ?, hash = ? WHERE one = 1", params![seq, hash])?;
        Ok(())
    }

    /// Appends many audit entries (a journal import; the head is written at commit).
    fn append_audit_rows(&mut self, entries: &[&audit_journal::Entry]) -> StoreResult<()> {
        for e in entries {
            self.append_audit_row(&e.record, &e.packed)?;
        }
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some((seq, hash)) = self.audit_saved.take() {
            self.guard.audit_seq = seq;
            self.guard.audit_hash = hash;
        }
        // Dropped without commit after reaching the database: let the flusher
        // roll it back and close the outer transaction instead of waiting for
        // the next writer.
        if self.guard.abandoned {
            self.flush.notify_one();
        }
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn current(&mut self, ty: &str, id: &str) -> StoreResult<Option<Current>> {
        self.one(
            "SELECT version, deleted, access FROM resources WHERE res_type = ? AND res_id = ?",
            params![ty, id],
            |r| Ok(Current { version: r.get(0)?, deleted: r.get::<_, i64>(1)? != 0, access: r.get(2)? }),
        )
    }

    async fn current_body(&mut self, ty: &str, id: &str) -> StoreResult<Option<String>> {
        self.one(
            "SELECT v.body FROM resources r JOIN versions v ON v.vid = r.vid \
             WHERE r.res_type = ? AND r.res_id = ? AND r.deleted = 0",
            params![ty, id],
            |r| r.get(0),
        )
    }

    async fn find_ids(&mut self, plan: &SearchPlan) -> StoreResult<Vec<String>> {
        let sql = sql::search_ids(plan);
        let text = sql.render(Dialect::Sqlite);
        self.all(&text, rusqlite::params_from_iter(&sql.args), |r| r.get(0))
    }

    async fn put(&mut self, v: NewVersion<'_>) -> StoreResult<()> {
        let rid = self.write_version(
            v.ty,
            v.id,
            v.version,
            v.last_updated_ms,
            v.method,
            v.body,
            false,
            Some((v.access, v.patients)),
        )?;
        // One multi-row insert per index table (in chunks): a statement per
        // row cost more in preparing, binding and stepping than the rows did.
        let mut rows: [Vec<Arg>; INDEX_TABLES.len()] = Default::default();
        for org in v.access.split(' ').filter(|o| !o.is_empty()) {
            rows[table_slot(IndexTable::Token)].extend([
                Arg::Int(rid),
                Arg::Text(ACCESS_PARAM.to_owned()),
                Arg::Null,
                Arg::Text(org.to_owned()),
                Arg::Null,
            ]);
        }
        for (param, value) in &v.index {
            let (table, columns) = super::index_columns(value);
            let slot = &mut rows[table_slot(table)];
            slot.extend([Arg::Int(rid), Arg::Text((*param).to_owned())]);
            slot.extend(columns);
        }
        for (table, args) in INDEX_TABLES.into_iter().zip(&rows) {
            let width = table.width() + 2;
            for chunk in args.chunks(width * INDEX_ROWS_PER_INSERT) {
                self.exec(&index_insert(table, chunk.len() / width), rusqlite::params_from_iter(chunk))?;
            }
        }
        Ok(())
    }

    async fn delete(&mut self, ty: &str, id: &str, version: i64, at_ms: i64) -> StoreResult<()> {
        self.write_version(ty, id, version, at_ms, "DELETE", "", true, None)?;
        Ok(())
    }

    async fn grant(&mut self, ty: &str, id: &str, access: &str) -> StoreResult<()> {
        self.exec(
            "UPDATE OR FAIL resources SET access = ? WHERE res_type = ? AND res_id = ?",
            params![access, ty, id],
        )?;
        self.exec(
            "DELETE FROM idx_token WHERE param = ? AND rid = (SELECT rid FROM resources WHERE res_type = ? AND res_id = ?)",
            params![ACCESS_PARAM, ty, id],
        )?;
        for org in access.split(' ').filter(|o| !o.is_empty()) {
            self.exec(
                "INSERT OR FAIL INTO idx_token (rid, param, system, code, text_norm) \
                 SELECT rid, ?, NULL, ?, NULL FROM resources WHERE res_type = ? AND res_id = ? AND deleted = 0",
                params![ACCESS_PARAM, org, ty, id],
            )?;
        }
        Ok(())
    }

    async fn audit(&mut self, record: AuditRecord) -> StoreResult<()> {
        self.write_audit(&record)
    }

    async fn npo_put_organization(&mut self, o: &NpoOrganization) -> StoreResult<()> {
        self.exec(
            "INSERT OR REPLACE INTO npo_organizations (code, name, delregion, hsa_id, organisationsnummer, is_region, \
             updated_ms, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                o.code,
                o.name,
                o.delregion,
                o.hsa_id,
                o.organisationsnummer,
                i64::from(o.is_region),
                o.updated_ms,
                o.updated_by
            ],
        )?;
        Ok(())
    }

    async fn npo_add_statement(&mut self, st: &NpoStatement) -> StoreResult<()> {
        self.exec(
            "INSERT OR FAIL INTO npo_statements (code, info_type, declared_producer, declared_consumer, declared_at, \
             source, recorded_by, recorded_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                st.code,
                st.info_type,
                st.producer.map(i64::from),
                st.consumer.map(i64::from),
                st.declared_at,
                st.source,
                st.recorded_by,
                st.recorded_ms
            ],
        )?;
        Ok(())
    }

    async fn put_subscription(&mut self, r: &SubscriptionRow) -> StoreResult<()> {
        let headers = serde_json::to_string(&r.headers).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.exec(
            "INSERT OR REPLACE INTO subscriptions (sub_id, owner_key, criteria, endpoint, payload, headers, status, \
             failing_since) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params![r.sub_id, r.owner_key, r.criteria, r.endpoint, r.payload, headers, r.status, r.failing_since],
        )?;
        Ok(())
    }

    async fn remove_subscription(&mut self, sub_id: &str) -> StoreResult<()> {
        self.exec("DELETE FROM subscriptions WHERE sub_id = ?", [sub_id])?;
        self.exec("DELETE FROM outbox WHERE sub_id = ? AND delivered_ms IS NULL", [sub_id])?;
        Ok(())
    }

    async fn live_subscriptions(&mut self) -> StoreResult<Vec<SubscriptionRow>> {
        let rows = self.all(SUBSCRIPTION_QUERY, [], |r| Ok(rows::subscription(&LiteRow(r))))?;
        rows.into_iter().collect::<Result<_, _>>().map_err(decode_err)
    }

    async fn add_notification(&mut self, n: &Notification, due_ms: i64) -> StoreResult<()> {
        self.exec(
            "INSERT OR FAIL INTO outbox (event_id, sub_id, resource, version, created_ms, next_attempt_ms, attempts, \
             claimed_until) VALUES (?, ?, ?, ?, ?, ?, 0, 0)",
            params![n.event_id, n.sub_id, n.resource, n.version, n.created_ms, due_ms],
        )?;
        Ok(())
    }

    async fn claim_notifications(
        &mut self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Notification>> {
        let rows = self.all(
            "UPDATE OR FAIL outbox SET claimed_until = ?, attempts = attempts + 1 WHERE event_id IN \
             (SELECT event_id FROM outbox WHERE delivered_ms IS NULL AND next_attempt_ms <= ? AND claimed_until <= ? \
              ORDER BY next_attempt_ms, created_ms LIMIT ?) \
             RETURNING event_id, sub_id, resource, version, created_ms, attempts",
            params![lease_until_ms, now_ms, now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| Ok(rows::notification(&LiteRow(r))),
        )?;
        rows.into_iter().collect::<Result<_, _>>().map_err(decode_err)
    }

    async fn delivered(&mut self, event_id: &str, at_ms: i64) -> StoreResult<()> {
        self.exec(
            "UPDATE OR FAIL outbox SET delivered_ms = ?, claimed_until = 0, last_error = NULL WHERE event_id = ?",
            params![at_ms, event_id],
        )?;
        Ok(())
    }

    async fn retry_notification(&mut self, event_id: &str, next_ms: i64, error: &str) -> StoreResult<()> {
        self.exec(
            "UPDATE OR FAIL outbox SET next_attempt_ms = ?, claimed_until = 0, last_error = ? WHERE event_id = ?",
            params![next_ms, error, event_id],
        )?;
        Ok(())
    }

    async fn transfer(&mut self, task_id: &str) -> StoreResult<Option<TransferRow>> {
        let row = self.one(&format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE task_id = ?"), [task_id], |r| {
            Ok(transfer_row(&LiteRow(r)))
        })?;
        row.transpose().map_err(decode_err)
    }

    async fn put_transfer(&mut self, t: &TransferRow) -> StoreResult<()> {
        self.exec(
            &format!(
                "INSERT OR REPLACE INTO transfers ({TRANSFER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            params![
                t.task_id,
                t.document_id,
                t.binary_id,
                t.sender_key,
                t.recipient_key,
                t.patient,
                t.doc_type,
                t.content_hash,
                t.status,
                t.created_ms,
                t.updated_ms,
                t.duplicate_of
            ],
        )?;
        Ok(())
    }

    async fn same_transfer(&mut self, t: &TransferRow) -> StoreResult<Option<String>> {
        self.one(
            "SELECT task_id FROM transfers WHERE patient = ? AND doc_type = ? AND content_hash = ? \
             AND sender_key = ? AND recipient_key = ? AND task_id <> ? AND content_hash <> '' \
             ORDER BY created_ms, task_id LIMIT 1",
            params![t.patient, t.doc_type, t.content_hash, t.sender_key, t.recipient_key, t.task_id],
            |r| r.get(0),
        )
    }

    async fn ingest_record(&mut self, source_system: &str, record_id: &str) -> StoreResult<Option<IngestRecord>> {
        self.one(
            "SELECT mapping, content_hash, resources, municipality, info_type, first_ms, last_ms \
             FROM ingest_records WHERE source_system = ? AND record_id = ?",
            params![source_system, record_id],
            |r| {
                Ok(IngestRecord {
                    source_system: source_system.to_owned(),
                    record_id: record_id.to_owned(),
                    mapping: r.get(0)?,
                    content_hash: r.get(1)?,
                    resources: r.get(2)?,
                    municipality: r.get(3)?,
                    info_type: r.get(4)?,
                    first_ms: r.get(5)?,
                    last_ms: r.get(6)?,
                })
            },
        )
    }

    async fn put_ingest_record(&mut self, r: &IngestRecord) -> StoreResult<()> {
        let changed = self.exec(
            "INSERT OR FAIL INTO ingest_records (source_system, record_id, mapping, content_hash, resources, \
             municipality, info_type, first_ms, last_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (source_system, record_id) DO UPDATE SET mapping = excluded.mapping, \
             content_hash = excluded.content_hash, resources = excluded.resources, \
             municipality = excluded.municipality, info_type = excluded.info_type, last_ms = excluded.last_ms \
             WHERE ingest_records.first_ms = excluded.first_ms",
            params![
                r.source_system,
                r.record_id,
                r.mapping,
                r.content_hash,
                r.resources,
                r.municipality,
                r.info_type,
                r.first_ms,
                r.last_ms
            ],
        )?;
        if changed == 0 {
            return Err(super::first_push_conflict(r));
        }
        Ok(())
    }

    async fn lock(&mut self, _key: &str) -> StoreResult<()> {
        Ok(()) // the writer connection is held for the whole transaction
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        if !self.started {
            return Ok(()); // nothing was read or written
        }
        let mut this = *self;
        if this.audit_saved.is_some() {
            this.write_audit_head()?;
        }
        // The work joins the outer transaction, which the flusher commits.
        this.guard.conn.execute_batch("RELEASE tx").map_err(lite_err)?;
        this.guard.abandoned = false;
        this.audit_saved = None;
        let (done, result) = oneshot::channel();
        this.guard.waiters.push(done);
        let flush = this.flush.clone();
        drop(this);
        flush.notify_one();
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("commit failed: {e}"))),
            Err(_) => Err(StoreError::Unavailable("the database writer stopped before committing".into())),
        }
    }
}

const INDEX_TABLES: [IndexTable; 7] = [
    IndexTable::Token,
    IndexTable::String,
    IndexTable::Date,
    IndexTable::Reference,
    IndexTable::Number,
    IndexTable::Quantity,
    IndexTable::Uri,
];

/// The place of `table` in [`INDEX_TABLES`].
fn table_slot(table: IndexTable) -> usize {
    match table {
        IndexTable::Token => 0,
        IndexTable::String => 1,
        IndexTable::Date => 2,
        IndexTable::Reference => 3,
        IndexTable::Number => 4,
        IndexTable::Quantity => 5,
        IndexTable::Uri => 6,
    }
}

/// Most rows in one index insert.
const INDEX_ROWS_PER_INSERT: usize = 16;

/// The insert of `rows` index rows: each the resource's row id, the
/// parameter and the table's value columns, in the table's column order.
fn index_insert(table: IndexTable, rows: usize) -> String {
    let width = table.width() + 2;
    let mut text = format!("INSERT OR FAIL INTO {} VALUES ", table.name());
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for column in 0..width {
            text.push_str(if column == 0 { "?" } else { ", ?" });
        }
        text.push(')');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::extract::IndexValue;

    async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(dir.path()).await;
        (dir, Arc::new(store))
    }

    /// The settings of the test database in `dir`.
    fn config_in(dir: &Path) -> DatabaseConfig {
        DatabaseConfig { url: format!("sqlite://{}/t.db", dir.display()), ..DatabaseConfig::default() }
    }

    /// Opens (or reopens) the test database in `dir`.
    async fn open_in(dir: &Path) -> SqliteStore {
        SqliteStore::open(&config_in(dir)).await.unwrap()
    }

    /// Version 1 of `Patient/id`.
    fn first_version<'a>(id: &'a str, body: &'a str, index: Vec<(&'static str, IndexValue)>) -> NewVersion<'a> {
        NewVersion { index, ..NewVersion::test_patient(id, body) }
    }

    async fn put(store: &SqliteStore, id: &str, commit: bool) {
        let mut tx = store.begin().await.unwrap();
        let body = format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\"}}");
        tx.put(first_version(id, &body, vec![])).await.unwrap();
        if commit {
            tx.commit().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_dropped_transaction_is_rolled_back_without_harming_its_neighbours() {
        let (_dir, store) = store().await;
        put(&store, "a", true).await;
        put(&store, "b", false).await;
        put(&store, "c", true).await;
        assert!(store.read("Patient", "a").await.unwrap().is_some());
        assert!(store.read("Patient", "b").await.unwrap().is_none());
        assert!(store.read("Patient", "c").await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_share_syncs_and_all_become_visible() {
        let (_dir, store) = store().await;
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { put(&store, &format!("p{i}"), true).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..50 {
            assert!(store.read("Patient", &format!("p{i}")).await.unwrap().is_some(), "p{i} missing");
        }
    }

    #[tokio::test]
    async fn the_chain_head_is_recorded_once_per_transaction_and_survives_a_reopen() {
        use crate::audit::{Verdict, verify};
        let record = |i: usize| AuditRecord {
            event_id: format!("e{i}"),
            recorded_ms: 1_700_000_000_000,
            body: format!("{{\"resourceType\":\"AuditEvent\",\"id\":\"e{i}\"}}"),
            patients: vec![],
        };
        let (dir, store) = store().await;
        let mut tx = store.begin().await.unwrap();
        for i in 0..3 {
            tx.audit(record(i)).await.unwrap();
        }
        tx.commit().await.unwrap();
        let (seq, hash) = store.audit_head().await.unwrap();
        assert_eq!(seq, 3);
        let last = store.audit_chain(2, 1).await.unwrap();
        assert_eq!(last[0].hash, hash, "the head row names the last entry");
        // Appends of a transaction that is dropped leave the head where it was.
        let mut tx = store.begin().await.unwrap();
        tx.audit(record(9)).await.unwrap();
        drop(tx);
        assert_eq!(store.audit_head().await.unwrap(), (seq, hash));
        drop(store);
        // A reopened store goes on from the recorded head: one unbroken chain.
        let store = open_in(dir.path()).await;
        let mut tx = store.begin().await.unwrap();
        tx.audit(record(3)).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(verify(&store).await.unwrap(), Verdict::Intact { entries: 4 });
    }

    #[tokio::test]
    async fn a_duplicate_version_fails_alone() {
        let (_dir, store) = store().await;
        put(&store, "a", true).await;
        let mut tx = store.begin().await.unwrap();
        let result = tx.put(first_version("a", "{}", vec![])).await;
        drop(tx);
        assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        put(&store, "after", true).await;
        assert!(store.read("Patient", "after").await.unwrap().is_some());
        assert_eq!(store.read("Patient", "a").await.unwrap().unwrap().version, 1);
    }

    #[tokio::test]
    async fn index_rows_beyond_one_insert_are_all_written() {
        use crate::fhir::search::values::TokenQuery;
        let (_dir, store) = store().await;
        let rows = 2 * INDEX_ROWS_PER_INSERT + 3;
        let index = (0..rows)
            .map(|n| {
                (
                    "identifier",
                    IndexValue::Token { system: Some("urn:s".into()), code: Some(format!("v{n}")), text: None },
                )
            })
            .collect();
        let mut tx = store.begin().await.unwrap();
        tx.put(first_version("many", r#"{"resourceType":"Patient","id":"many"}"#, index)).await.unwrap();
        tx.commit().await.unwrap();
        for n in [0, INDEX_ROWS_PER_INSERT - 1, INDEX_ROWS_PER_INSERT, rows - 1] {
            let mut plan = SearchPlan::new("Patient");
            plan.filters.push(super::super::Filter::Any(vec![super::super::plan::Atom::Token {
                param: "identifier",
                query: TokenQuery::SystemCode("urn:s".into(), format!("v{n}")),
            }]));
            let found = store.search(&plan).await.unwrap();
            assert_eq!(found.rows.len(), 1, "identifier v{n} of {rows}");
        }
    }

    #[test]
    fn each_index_value_fills_its_tables_columns() {
        let values = [
            IndexValue::Token { system: None, code: Some("c".into()), text: None },
            IndexValue::String { exact: "A".into(), normalized: "a".into() },
            IndexValue::Date { low: 1, high: 2 },
            IndexValue::Reference { reference: None, target_type: None, target_id: None, identifier: None },
            IndexValue::Number { text: "1.0".into(), value: 1.0 },
            IndexValue::Quantity { value: 1.0, text: "1".into(), system: None, code: None, unit: None },
            IndexValue::Uri("urn:x".into()),
        ];
        for v in &values {
            let (table, columns) = super::super::index_columns(v);
            assert_eq!(columns.len(), table.width(), "{}", table.name());
            assert_eq!(INDEX_TABLES[table_slot(table)], table);
            assert_eq!(index_insert(table, 3).matches('?').count(), 3 * (table.width() + 2), "{}", table.name());
        }
    }

    /// A log sync for tests: passes at once, or — while `hold` is set — says
    /// it started and waits until it is let go.
    struct HeldSync {
        hold: std::sync::atomic::AtomicBool,
        started: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl HeldSync {
        fn sync(&self) -> std::io::Result<()> {
            if self.hold.load(Ordering::SeqCst) {
                self.started.lock().unwrap().send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
            Ok(())
        }
    }

    async fn open_with_sync(dir: &Path, sync: SyncLog) -> SqliteStore {
        SqliteStore::open_syncing(&config_in(dir), move |_| Ok(sync)).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_answered_after_its_log_sync_while_the_next_one_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let held = Arc::new(HeldSync {
            hold: true.into(),
            started: std::sync::Mutex::new(started_tx),
            release: std::sync::Mutex::new(release_rx),
        });
        let sync = held.clone();
        let store = Arc::new(open_with_sync(dir.path(), Arc::new(move || sync.sync())).await);
        let first = tokio::spawn({
            let store = store.clone();
            async move { put(&store, "p1", true).await }
        });
        tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(10)).map(|_| started))
            .await
            .unwrap()
            .expect("the group's log sync started");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_finished(), "the commit was answered before its log was synced");
        // The writer is free meanwhile: the next transaction writes.
        let mut tx = tokio::time::timeout(Duration::from_secs(5), store.begin())
            .await
            .expect("the writer was held during the log sync")
            .unwrap();
        tx.put(NewVersion::test_patient("p2", r#"{"resourceType":"Patient","id":"p2"}"#)).await.unwrap();
        held.hold.store(false, Ordering::SeqCst);
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), first).await.expect("answered after the sync").unwrap();
        tx.commit().await.unwrap();
        assert!(store.read("Patient", "p1").await.unwrap().is_some());
        assert!(store.read("Patient", "p2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_failed_log_sync_fails_its_group_and_every_write_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_sync(dir.path(), Arc::new(|| Err(std::io::Error::other("EIO")))).await;
        let mut tx = store.begin().await.unwrap();
        tx.put(NewVersion::test_patient("p1", r#"{"resourceType":"Patient","id":"p1"}"#)).await.unwrap();
        let failed = tx.commit().await.unwrap_err();
        assert!(
            matches!(&failed, StoreError::Unavailable(e) if e.contains("could not be synced") && e.contains("EIO")),
            "{failed:?}"
        );
        let next = store.begin().await.err().expect("no write after a failed sync");
        assert!(matches!(&next, StoreError::Unavailable(e) if e.contains("restart")), "{next:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_stretch_of_writer_statements_leaves_the_worker_to_other_tasks() {
        // On the only worker: a stretch that ends only once another task,
        // queued on the same worker, has run.
        let stretch = tokio::spawn(async {
            let (done, other_ran) = std::sync::mpsc::channel::<()>();
            let other = tokio::spawn(async move { done.send(()).unwrap() });
            let waited = off_worker(|| other_ran.recv_timeout(Duration::from_secs(5)));
            (waited, other)
        });
        let (waited, other) = stretch.await.unwrap();
        assert!(waited.is_ok(), "the other task waited for the statements");
        other.await.unwrap();
    }

    #[tokio::test]
    async fn on_a_single_threaded_runtime_a_stretch_just_runs() {
        assert_eq!(off_worker(|| 7), 7);
    }

    #[tokio::test]
    async fn the_log_is_synced_after_each_group_unless_synchronous_is_normal() {
        for (synchronous, synced) in [("full", true), ("normal", false)] {
            let dir = tempfile::tempdir().unwrap();
            let config = DatabaseConfig { sqlite_synchronous: synchronous.into(), ..config_in(dir.path()) };
            let syncs = Arc::new(AtomicI64::new(0));
            let counter = syncs.clone();
            let store = SqliteStore::open_syncing(&config, move |_| {
                Ok(Arc::new(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }) as SyncLog)
            })
            .await
            .unwrap();
            let before = syncs.load(Ordering::SeqCst);
            put(&store, "p1", true).await;
            assert_eq!(syncs.load(Ordering::SeqCst) > before, synced, "{synchronous}");
        }
    }

    #[tokio::test]
    async fn the_writer_leaves_syncing_and_checkpoints_to_the_flusher_and_checkpointer() {
        let (dir, store) = store().await;
        let file = dir.path().join("t.db");
        put(&store, "p1", true).await;
        let mut writer = store.writer.lock().await;
        let setting = |w: &Writer, name: &str| -> i64 { w.conn.pragma_query_value(None, name, |r| r.get(0)).unwrap() };
        assert_eq!(setting(&writer, "synchronous"), 0, "OFF");
        assert_eq!(setting(&writer, "wal_autocheckpoint"), 0);
        // Its backstop checkpoint copies the log into the file, syncing, and turns syncs off again.
        let marker = b"a row only in the log";
        let in_file = || std::fs::read(&file).unwrap().windows(marker.len()).any(|w| w == marker);
        writer
            .conn
            .execute_batch("CREATE TABLE filler (t TEXT); INSERT INTO filler VALUES ('a row only in the log')")
            .unwrap();
        assert!(!in_file());
        let pages = checkpoint_when_free(&mut writer, Checkpoint::Passive);
        assert_eq!(pages.behind(), 0);
        assert!(in_file());
        assert_eq!(setting(&writer, "synchronous"), 0, "OFF again");
    }

    /// The writer's checkpoint in `mode`, retried while the background
    /// checkpointer may still be at the last commit's pages.
    fn checkpoint_when_free(writer: &mut Writer, mode: Checkpoint) -> LogPages {
        for _ in 0..500 {
            if let Some(pages) = writer.checkpoint_durably(mode).unwrap() {
                return pages;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the background checkpointer never let go");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_checkpoint_waits_for_the_logs_reader_so_the_next_write_starts_it_over() {
        let (dir, store) = store().await;
        for i in 0..20 {
            put(&store, &format!("p{i}"), true).await;
        }
        // A reader in the middle of a read of the log's newest pages.
        let reader = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM versions").unwrap();
        let reading = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            reader.execute_batch("COMMIT").unwrap();
        });
        let started = std::time::Instant::now();
        let restarted = checkpoint_when_free(&mut *store.writer.lock().await, Checkpoint::Restart);
        assert!(started.elapsed() >= Duration::from_millis(250), "it waited for the reader");
        assert!(!restarted.busy && restarted.behind() == 0 && restarted.length >= 20, "{restarted:?}");
        put(&store, "after", true).await;
        let after = checkpoint_when_free(&mut *store.writer.lock().await, Checkpoint::Passive);
        assert!(after.length < restarted.length / 2, "the log started over: {after:?} after {restarted:?}");
        reading.join().unwrap();
    }

    #[test]
    fn the_writer_restarts_a_long_log_and_checkpoints_behind_the_checkpointer() {
        let progress = LogProgress::default();
        assert_eq!(progress.writer_checkpoint(), None);
        let pages = |length, copied| LogPages { length, copied, busy: false };
        progress.record(Checkpoint::Passive, pages(WRITER_RESTART_PAGES + 1, WRITER_RESTART_PAGES + 1));
        assert_eq!(progress.writer_checkpoint(), Some(Checkpoint::Restart));
        progress.record(Checkpoint::Restart, LogPages { busy: true, ..pages(WRITER_RESTART_PAGES + 1, 0) });
        assert_eq!(progress.writer_checkpoint(), Some(Checkpoint::Restart), "kept waiting: not restarted");
        progress.record(Checkpoint::Restart, pages(WRITER_RESTART_PAGES + 1, WRITER_RESTART_PAGES + 1));
        assert_eq!(progress.writer_checkpoint(), None, "the next write starts the log over");
        progress.record(Checkpoint::Passive, pages(WRITER_CHECKPOINT_PAGES + 10, 5));
        assert_eq!(progress.writer_checkpoint(), Some(Checkpoint::Passive));
        progress.record(Checkpoint::Passive, pages(WRITER_CHECKPOINT_PAGES + 10, 10));
        assert_eq!(progress.writer_checkpoint(), None);
    }

    #[tokio::test]
    async fn a_transaction_larger_than_the_page_cache_writes_the_log_only_at_commit() {
        let (dir, store) = store().await;
        let log = dir.path().join("t.db-wal");
        let mut tx = store.begin().await.unwrap();
        let before = std::fs::read(&log).unwrap_or_default();
        // 1,000 rows of 3 KB, a page each: twice what the page cache holds.
        let body = format!(r#"{{"resourceType":"Patient","text":"{}"}}"#, "x".repeat(3000));
        let ids: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        for id in &ids {
            tx.put(NewVersion::test_patient(id, &body)).await.unwrap();
        }
        assert!(std::fs::read(&log).unwrap_or_default() == before, "the log was written before COMMIT");
        tx.commit().await.unwrap();
        assert!(std::fs::read(&log).unwrap() != before, "COMMIT wrote the log");
        assert_eq!(store.read("Patient", "p999").await.unwrap().map(|s| s.body.len()), Some(body.len()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_pages_reach_the_database_file_without_waiting_for_the_writer() {
        let (dir, store) = store().await;
        let file = dir.path().join("t.db");
        let before = std::fs::metadata(&file).unwrap().len();
        // 30 KB in 30 commits: far fewer pages than the writer's automatic
        // checkpoint waits for, so only the background checkpointer copies
        // them from the log into the file.
        let text = "x".repeat(1000);
        for i in 0..30 {
            let id = format!("p{i}");
            let body = format!(r#"{{"resourceType":"Patient","id":"{id}","text":"{text}"}}"#);
            let mut tx = store.begin().await.unwrap();
            tx.put(first_version(&id, &body, vec![])).await.unwrap();
            tx.commit().await.unwrap();
        }
        let mut after = before;
        for _ in 0..200 {
            after = std::fs::metadata(&file).unwrap().len();
            if after >= before + 30_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(after >= before + 30_000, "database file {before} -> {after} bytes");
    }

    fn entry(n: usize) -> AuditRecord {
        AuditRecord {
            event_id: format!("01900000-0000-7000-8000-{n:012}"),
            recorded_ms: 1_700_000_000_000 + n as i64,
            body: format!(r#"{{"resourceType":"AuditEvent","id":"e{n}"}}"#),
            patients: vec!["Patient/p1".into()],
        }
    }

    /// Opens the store again once the dropped one has let go of its journal.
    async fn reopen(config: &DatabaseConfig) -> SqliteStore {
        for _ in 0..200 {
            let s = SqliteStore::open(config).await.unwrap();
            if s.journal.is_some() {
                return s;
            }
            drop(s);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the journal was not released");
    }

    async fn chain(store: &SqliteStore) -> Vec<String> {
        store.audit_chain(0, 1000).await.unwrap().into_iter().map(|r| r.event_id).collect()
    }

    #[tokio::test]
    async fn journal_entries_not_yet_imported_are_imported_once_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let store = SqliteStore::open(&config).await.unwrap();
        store.append_audit(vec![entry(1), entry(2)]).await.unwrap();
        assert_eq!(chain(&store).await.len(), 2, "a read of the log waits for the import");
        // Acknowledged, then the store goes away before the importer's next round (as in a crash).
        store.append_audit(vec![entry(3)]).await.unwrap();
        store.append_audit(vec![entry(4)]).await.unwrap();
        drop(store);
        let store = reopen(&config).await;
        let ids = chain(&store).await;
        let expected: Vec<String> = (1..=4).map(|n| entry(n).event_id).collect();
        assert_eq!(ids, expected, "every acknowledged entry, once, in order");
        store.append_audit(vec![entry(5)]).await.unwrap();
        assert_eq!(crate::audit::verify(&store).await.unwrap(), crate::audit::Verdict::Intact { entries: 5 });
    }

    #[tokio::test]
    async fn a_journal_left_by_a_deleted_database_is_not_imported_into_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let store = SqliteStore::open(&config).await.unwrap();
        store.append_audit(vec![entry(1), entry(2)]).await.unwrap();
        drop(store);
        for name in ["t.db", "t.db-wal", "t.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(name));
        }
        let folder = audit_journal::folder_of(&dir.path().join("t.db"));
        assert!(std::fs::read_dir(&folder).unwrap().count() > 1, "the old journal is still there");
        let store = reopen(&config).await;
        assert!(chain(&store).await.is_empty(), "the other database's entries stay out");
        store.append_audit(vec![entry(3)]).await.unwrap();
        assert_eq!(chain(&store).await, vec![entry(3).event_id]);
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_file_reads_but_does_not_append() {
        let (dir, store) = store().await;
        store.append_audit(vec![entry(1)]).await.unwrap();
        assert_eq!(store.audit_head().await.unwrap().0, 1);
        let config = config_in(dir.path());
        let second = SqliteStore::open(&config).await.unwrap();
        assert!(second.journal.is_none());
        let refused = second.append_audit(vec![entry(2)]).await;
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("another nara-gateway process")),
            "{refused:?}"
        );
        assert_eq!(chain(&second).await, vec![entry(1).event_id]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journal_segments_roll_over_and_are_reused() {
        let (dir, store) = store().await;
        // Bodies of 256 KiB that do not compress (random hex): a 16 MiB segment
        // holds about 64, so 440 of them fill seven segments, more than are kept.
        // (LZ4 looks back 64 KiB at most: one random block repeated across entries stays incompressible.)
        let big: String = (0..8192).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
        for n in 0..440 {
            let mut e = entry(n);
            e.body = format!(r#"{{"resourceType":"AuditEvent","id":"e{n}","pad":"{big}"}}"#);
            store.append_audit(vec![e]).await.unwrap();
            if n % 20 == 0 {
                store.audit_head().await.unwrap(); // lets the importer catch up
            }
        }
        assert_eq!(store.audit_head().await.unwrap().0, 440);
        let folder = audit_journal::folder_of(&dir.path().join("t.db"));
        let numbers: Vec<u64> = std::fs::read_dir(&folder)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_string_lossy().strip_suffix(".journal")?.parse().ok())
            .collect();
        assert!(numbers.iter().any(|&n| n >= 7), "110 MiB of entries went through seven segments: {numbers:?}");
        let segments = numbers.len();
        assert!(segments <= 5, "imported segments are reused or removed, not kept: {segments}");
        assert_eq!(crate::audit::verify(store.as_ref()).await.unwrap(), crate::audit::Verdict::Intact { entries: 440 });
    }
}
