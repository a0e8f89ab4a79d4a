//! The queue between callers appending audit entries (audited reads) and a
//! backend's audit writer task. The task writes in batches: everything
//! queued while the previous batch was being written goes into the next. It
//! is a task of its own, so a caller that gives up (a client that
//! disconnects) cannot take other callers' entries with it.

use tokio::sync::{mpsc, oneshot};

use super::{AuditRecord, StoreError, StoreResult};

/// How a write went, as told to the callers waiting for it.
pub(crate) type CommitResult = Result<(), String>;

/// Audit entries to append and where to say when they are durable.
pub(crate) type AuditRequest = (Vec<AuditRecord>, oneshot::Sender<CommitResult>);

/// Most audit entries in one batch.
const MAX_BATCH: usize = 4096;

/// The callers' end.
pub(crate) struct AuditQueue(mpsc::UnboundedSender<AuditRequest>);

/// The writer task's end.
pub(crate) struct AuditRequests(mpsc::UnboundedReceiver<AuditRequest>);

pub(crate) fn audit_queue() -> (AuditQueue, AuditRequests) {
    let (tx, rx) = mpsc::unbounded_channel();
    (AuditQueue(tx), AuditRequests(rx))
}

impl AuditQueue {
    /// Queues `records` and waits until the writer says they are durable.
    pub(crate) async fn append(&self, records: Vec<AuditRecord>) -> StoreResult<()> {
        let (done, result) = oneshot::channel();
        self.0.send((records, done)).map_err(|_| StoreError::Unavailable("the audit writer has stopped".into()))?;
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("audit append failed: {e}"))),
            Err(_) => Err(StoreError::Unavailable("the audit writer stopped before committing".into())),
        }
    }
}

impl AuditRequests {
    /// Waits for the next request, then takes whatever else is queued (up to
    /// a batch's size). `None` when the store is gone.
    pub(crate) async fn next_batch(&mut self) -> Option<Vec<AuditRequest>> {
        let first = self.0.recv().await?;
        Some(self.batch_after(first))
    }

    /// The same for a thread of its own (the SQLite backend's audit journal).
    pub(crate) fn blocking_next_batch(&mut self) -> Option<Vec<AuditRequest>> {
        let first = self.0.blocking_recv()?;
        Some(self.batch_after(first))
    }

    fn batch_after(&mut self, first: AuditRequest) -> Vec<AuditRequest> {
        let mut entries = first.0.len();
        let mut batch = vec![first];
        while entries < MAX_BATCH {
            match self.0.try_recv() {
                Ok(r) => {
                    entries += r.0.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        batch
    }
}
