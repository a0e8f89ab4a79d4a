//! The SQLite backend's read connections: a small pool of rusqlite
//! connections whose queries run on the thread of the task that asks.
//!
//! A read of a few pages costs microseconds; sqlx ran each query on the
//! connection's own thread, which cost a thread wake-up each way (15 % of a
//! search's samples were the kernel's context switch). A query that runs
//! longer than [`INLINE_BUDGET`] is interrupted by SQLite's progress handler
//! and run again, to completion, on a blocking thread: a long search holds an
//! async worker for at most the budget, and pays the budget once more.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rusqlite::OpenFlags;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{StoreError, StoreResult};

/// How long a query may run on an async worker before it moves to a blocking thread.
pub(super) const INLINE_BUDGET: Duration = Duration::from_millis(1);

/// SQLite virtual-machine steps between two looks at the clock.
const STEPS_PER_CHECK: i32 = 1_000;

/// A pool of read-only connections to one database file, opened as needed
/// up to its size; clones share it.
#[derive(Clone)]
pub(super) struct Readers {
    inner: Arc<Inner>,
}

struct Inner {
    path: String,
    pragmas: Vec<(&'static str, &'static str)>,
    statement_cache: usize,
    busy_timeout: Duration,
    idle: Mutex<Vec<ReadConn>>,
    permits: Arc<Semaphore>,
}

struct ReadConn {
    conn: rusqlite::Connection,
    budget: Arc<Budget>,
}

/// The deadline of the query running inline, and whether it was interrupted for it.
#[derive(Default)]
struct Budget {
    /// Nanoseconds since [`epoch`]; 0 while no deadline is set.
    deadline: AtomicU64,
    fired: AtomicBool,
}

impl Budget {
    fn start(&self) {
        let deadline = since_epoch() + u64::try_from(INLINE_BUDGET.as_nanos()).unwrap_or(u64::MAX);
        self.deadline.store(deadline, Ordering::Relaxed);
    }

    /// Clears the deadline; whether the query was interrupted for it.
    fn stop(&self) -> bool {
        self.deadline.store(0, Ordering::Relaxed);
        self.fired.swap(false, Ordering::Relaxed)
    }

    /// SQLite's progress handler: true interrupts the running statement.
    fn expired(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        let expired = deadline != 0 && since_epoch() > deadline;
        if expired {
            self.fired.store(true, Ordering::Relaxed);
        }
        expired
    }
}

fn since_epoch() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A connection taken from the pool; it goes back when dropped.
struct Lease {
    conn: Option<ReadConn>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    fn get(&self) -> &ReadConn {
        self.conn.as_ref().expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
    }
}

impl Readers {
    /// A pool of at most `size` connections to the file at `path`, each with
    /// `pragmas` and `query_only` set.
    pub(super) fn new(
        path: &str,
        pragmas: &[(&'static str, &'static str)],
        size: u32,
        statement_cache: usize,
        busy_timeout: Duration,
    ) -> Readers {
        Readers {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                pragmas: pragmas.to_vec(),
                statement_cache,
                busy_timeout,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(size.max(1) as usize)),
            }),
        }
    }

    /// Runs `query` on a connection of the pool: here, or when it outlasts
    /// [`INLINE_BUDGET`], again from the start on a blocking thread.
    pub(super) async fn run<T, F>(&self, mut query: F) -> StoreResult<T>
    where
        F: FnMut(&rusqlite::Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let lease = self.lease().await?;
        let conn = lease.get();
        conn.budget.start();
        let inline = query(&conn.conn);
        if !conn.budget.stop() {
            return inline;
        }
        drop(inline);
        tracing::debug!(
            budget_ms = INLINE_BUDGET.as_secs_f64() * 1e3,
            "a read outlasted its inline budget; running it again on a blocking thread"
        );
        tokio::task::spawn_blocking(move || query(&lease.get().conn))
            .await
            .map_err(|e| StoreError::Internal(format!("a read on a blocking thread failed: {e}")))?
    }

    async fn lease(&self) -> StoreResult<Lease> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the read connections are closed".into()))?;
        let idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                self.inner.open().map_err(|e| StoreError::Unavailable(format!("cannot open a read connection: {e}")))?
            }
        };
        Ok(Lease { conn: Some(conn), inner: self.inner.clone(), _permit: permit })
    }
}

impl Inner {
    fn open(&self) -> rusqlite::Result<ReadConn> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(self.busy_timeout)?;
        for (name, value) in &self.pragmas {
            conn.execute_batch(&format!("PRAGMA {name} = {value}"))?;
        }
        conn.execute_batch("PRAGMA query_only = 1")?;
        conn.set_prepared_statement_cache_capacity(self.statement_cache);
        let budget = Arc::new(Budget::default());
        let handler = budget.clone();
        conn.progress_handler(STEPS_PER_CHECK, Some(move || handler.expired()));
        Ok(ReadConn { conn, budget })
    }
}

#[cfg(test)]
mod tests {
    use std::thread::ThreadId;

    use super::*;

    /// A pool of `size` on a new database file holding one table of three rows.
    fn pool(size: u32) -> (tempfile::TempDir, Readers) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1), (2), (3);",
        )
        .unwrap();
        let readers =
            Readers::new(path.to_str().unwrap(), &[("synchronous", "FULL")], size, 16, Duration::from_secs(5));
        (dir, readers)
    }

    /// Counts to a million in SQL: far longer than the budget.
    const LONG: &str =
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000000) SELECT COUNT(*) FROM c";

    fn count(conn: &rusqlite::Connection, sql: &str) -> StoreResult<i64> {
        conn.query_row(sql, [], |r| r.get(0)).map_err(|e| StoreError::Internal(e.to_string()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_query_runs_once_on_the_asking_thread() {
        let (_dir, readers) = pool(2);
        let threads = Arc::new(Mutex::new(Vec::<ThreadId>::new()));
        let seen = threads.clone();
        let (asker, n) = tokio::spawn(async move {
            let asker = std::thread::current().id();
            let n = readers
                .run(move |c| {
                    seen.lock().unwrap().push(std::thread::current().id());
                    count(c, "SELECT SUM(n) FROM t")
                })
                .await;
            (asker, n)
        })
        .await
        .unwrap();
        assert_eq!(n.unwrap(), 6);
        assert_eq!(*threads.lock().unwrap(), vec![asker]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_past_the_budget_is_stopped_and_finished_on_a_blocking_thread() {
        let (_dir, readers) = pool(2);
        let runs = Arc::new(Mutex::new(Vec::<(ThreadId, Duration, Result<i64, String>)>::new()));
        let seen = runs.clone();
        let (asker, n) = tokio::spawn(async move {
            let asker = std::thread::current().id();
            let n = readers
                .run(move |c| {
                    let started = Instant::now();
                    let n = count(c, LONG);
                    let result = n.as_ref().map(|v| *v).map_err(|e| e.to_string());
                    seen.lock().unwrap().push((std::thread::current().id(), started.elapsed(), result));
                    n
                })
                .await;
            (asker, n)
        })
        .await
        .unwrap();
        assert_eq!(n.unwrap(), 1_000_000);
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), 2, "{runs:?}");
        let (first, took, result) = &runs[0];
        assert_eq!(*first, asker);
        assert!(result.as_ref().is_err_and(|e| e.contains("interrupt")), "{result:?}");
        assert!(*took < INLINE_BUDGET * 20, "the inline run was stopped after {took:?}");
        assert_ne!(runs[1].0, asker);
        assert_eq!(runs[1].2, Ok(1_000_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_connections_than_the_size_are_open_and_the_rest_wait() {
        let (_dir, readers) = pool(1);
        let at_once = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let queries = (0..4).map(|_| {
            let (readers, at_once, most) = (readers.clone(), at_once.clone(), most.clone());
            tokio::spawn(async move {
                readers
                    .run(move |c| {
                        let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let n = count(c, LONG);
                        at_once.fetch_sub(1, Ordering::SeqCst);
                        n
                    })
                    .await
            })
        });
        for q in queries.collect::<Vec<_>>() {
            assert_eq!(q.await.unwrap().unwrap(), 1_000_000);
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(readers.inner.idle.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn read_connections_cannot_write() {
        let (_dir, readers) = pool(1);
        let wrote = readers
            .run(|c| c.execute("INSERT INTO t VALUES (4)", []).map_err(|e| StoreError::Internal(e.to_string())))
            .await;
        assert!(wrote.is_err_and(|e| e.to_string().contains("readonly")));
        assert_eq!(readers.run(|c| count(c, "SELECT COUNT(*) FROM t")).await.unwrap(), 3);
    }
}
