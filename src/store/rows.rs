//! Row decoding and argument binding shared by the SQL backends: the same
//! column lists are selected from SQLite and PostgreSQL, so one decoder
//! serves both (every integer column is 64-bit in both schemas).

use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type, query::Query};

use super::{
    AuditRow, IdentifierHit, NpoOrganization, NpoStatement, Observed, SearchPlan, Stored, SubscriptionRow, TransferRow,
    plan::{Cursor, CursorValue},
    sql::Arg,
    sql::{self as sqlgen, CursorKind},
};

/// What a backend's rows must decode: 64-bit integers, doubles and text, by
/// position. Implemented for sqlx's rows and for the SQLite writer's rusqlite rows.
pub(crate) trait SqlRow {
    fn int(&self, i: usize) -> Result<i64, sqlx::Error>;
    fn real(&self, i: usize) -> Result<f64, sqlx::Error>;
    fn text(&self, i: usize) -> Result<String, sqlx::Error>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error>;
}

impl<R> SqlRow for R
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, i: usize) -> Result<i64, sqlx::Error> {
        self.try_get(i)
    }
    fn real(&self, i: usize) -> Result<f64, sqlx::Error> {
        self.try_get(i)
    }
    fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }
}

/// Binds `args` in order.
pub(crate) fn bind_all<'q, DB>(
    mut q: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    args: &'q [Arg],
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    f64: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    &'q [u8]: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    for a in args {
        q = match a {
            Arg::Null => q.bind(Option::<String>::None),
            Arg::Int(i) => q.bind(*i),
            Arg::Real(f) => q.bind(*f),
            Arg::Text(t) => q.bind(t.as_str()),
            Arg::Blob(b) => q.bind(b.as_slice()),
        };
    }
    q
}

pub(crate) fn method_name(m: &str) -> &'static str {
    match m {
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "PUT",
    }
}

/// Reads a row selected with [`super::sql::ROW_COLUMNS`].
pub(crate) fn stored<R: SqlRow>(row: &R) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        rid: row.int(0)?,
        ty: row.text(1)?,
        id: row.text(2)?,
        version: row.int(3)?,
        last_updated_ms: row.int(4)?,
        deleted: row.int(5)? != 0,
        method: method_name(&row.text(6)?),
        body: row.text(7)?.into(),
        access: row.text(8)?.into(),
        patients: row.text(9)?.into(),
    })
}

/// Reads a row selected by [`sqlgen::identifier_lookup`].
pub(crate) fn identifier_hit<R: SqlRow>(r: &R) -> Result<IdentifierHit, sqlx::Error> {
    Ok(IdentifierHit { ty: r.text(0)?, id: r.text(1)?, access: r.text(2)?, system: r.opt_text(3)?, value: r.text(4)? })
}

/// The columns of the transfers table, in [`transfer_row`]'s order.
pub(crate) const TRANSFER_COLUMNS: &str = "task_id, document_id, binary_id, sender_key, recipient_key, patient, doc_type, content_hash, status, created_ms, updated_ms, duplicate_of";

pub(crate) fn transfer_row<R: SqlRow>(r: &R) -> Result<TransferRow, sqlx::Error> {
    Ok(TransferRow {
        task_id: r.text(0)?,
        document_id: r.text(1)?,
        binary_id: r.opt_text(2)?,
        sender_key: r.text(3)?,
        recipient_key: r.text(4)?,
        patient: r.text(5)?,
        doc_type: r.text(6)?,
        content_hash: r.text(7)?,
        status: r.text(8)?,
        created_ms: r.int(9)?,
        updated_ms: r.int(10)?,
        duplicate_of: r.opt_text(11)?,
    })
}

/// The columns of the audit log, in [`audit_row`]'s order.
pub(crate) const AUDIT_COLUMNS: &str = "seq, event_id, recorded_ms, body, prev_hash, hash";

pub(crate) fn audit_row<R: SqlRow>(r: &R) -> Result<AuditRow, sqlx::Error> {
    Ok(AuditRow {
        seq: r.int(0)?,
        event_id: r.text(1)?,
        recorded_ms: r.int(2)?,
        body: r.text(3)?,
        prev_hash: r.text(4)?,
        hash: r.text(5)?,
    })
}

/// Per municipality and information type: count and latest time of ingested records since `?`.
pub(crate) const OBSERVED_QUERY: &str = "SELECT municipality, info_type, COUNT(*), MAX(last_ms) FROM ingest_records \
     WHERE last_ms >= ? AND info_type IS NOT NULL AND municipality IS NOT NULL \
     GROUP BY municipality, info_type ORDER BY municipality, info_type";

pub(crate) fn observed<R: SqlRow>(r: &R) -> Result<Observed, sqlx::Error> {
    Ok(Observed {
        municipality: r.text(0)?,
        info_type: r.text(1)?,
        records: r.int(2)?.max(0) as u64,
        last_ms: r.int(3)?,
    })
}

pub(crate) const NPO_ORGANIZATION_QUERY: &str = "SELECT code, name, delregion, hsa_id, organisationsnummer, is_region, \
     updated_ms, updated_by FROM npo_organizations ORDER BY is_region, code";

pub(crate) fn npo_organization<R: SqlRow>(r: &R) -> Result<NpoOrganization, sqlx::Error> {
    Ok(NpoOrganization {
        code: r.text(0)?,
        name: r.text(1)?,
        delregion: r.opt_text(2)?,
        hsa_id: r.opt_text(3)?,
        organisationsnummer: r.opt_text(4)?,
        is_region: r.int(5)? != 0,
        updated_ms: r.int(6)?,
        updated_by: r.text(7)?,
    })
}

/// The statements of one organisation (`?`) or, with `all`, of every one.
pub(crate) fn npo_statements_query(all: bool) -> String {
    let filter = if all { "" } else { "WHERE code = ?" };
    format!(
        "SELECT seq, code, info_type, declared_producer, declared_consumer, declared_at, source, recorded_by, \
         recorded_ms FROM npo_statements {filter} ORDER BY seq"
    )
}

pub(crate) fn npo_statement<R: SqlRow>(r: &R) -> Result<NpoStatement, sqlx::Error> {
    Ok(NpoStatement {
        seq: r.int(0)?,
        code: r.text(1)?,
        info_type: r.text(2)?,
        producer: r.opt_int(3)?.map(|v| v != 0),
        consumer: r.opt_int(4)?.map(|v| v != 0),
        declared_at: r.text(5)?,
        source: r.text(6)?,
        recorded_by: r.text(7)?,
        recorded_ms: r.int(8)?,
    })
}

pub(crate) const SUBSCRIPTION_QUERY: &str = "SELECT sub_id, owner_key, criteria, endpoint, payload, headers, status, \
     failing_since FROM subscriptions WHERE status IN ('active', 'error') ORDER BY sub_id";

pub(crate) fn subscription<R: SqlRow>(r: &R) -> Result<SubscriptionRow, sqlx::Error> {
    Ok(SubscriptionRow {
        sub_id: r.text(0)?,
        owner_key: r.text(1)?,
        criteria: r.text(2)?,
        endpoint: r.text(3)?,
        payload: r.opt_text(4)?,
        headers: serde_json::from_str(&r.text(5)?).unwrap_or_default(),
        status: r.text(6)?,
        failing_since: r.opt_int(7)?,
    })
}

/// Reads a notification row: `event_id, sub_id, resource, version, created_ms, attempts`.
pub(crate) fn notification<R: SqlRow>(r: &R) -> Result<super::Notification, sqlx::Error> {
    Ok(super::Notification {
        event_id: r.text(0)?,
        sub_id: r.text(1)?,
        resource: r.text(2)?,
        version: r.int(3)?,
        created_ms: r.int(4)?,
        attempts: r.int(5)?,
    })
}

/// Splits a page query's rows (one look-ahead row beyond the page) into the
/// page and the cursor where the next page starts.
pub(crate) fn page<R: SqlRow>(rows: &[R], plan: &SearchPlan) -> Result<(Vec<Stored>, Option<Cursor>), sqlx::Error> {
    let mut page = PageRows::new(plan);
    for row in rows {
        if !page.push(row)? {
            break;
        }
    }
    Ok(page.finish())
}

/// A page query's rows taken one at a time, as [`page`] takes them all.
#[derive(Clone)]
pub(crate) struct PageRows {
    count: usize,
    /// The kinds of the sort values after the row's columns.
    sort: Vec<CursorKind>,
    rows: Vec<Stored>,
    /// Where the next page starts, if the look-ahead row comes.
    cursor: Option<Cursor>,
    more: bool,
}

impl PageRows {
    pub(crate) fn new(plan: &SearchPlan) -> Self {
        let sort = plan.sort.iter().map(sqlgen::sort_value_kind).collect();
        PageRows { count: plan.count, sort, rows: Vec::new(), cursor: None, more: false }
    }

    /// Takes the next row; false once it was the look-ahead row.
    pub(crate) fn push<R: SqlRow>(&mut self, row: &R) -> Result<bool, sqlx::Error> {
        let i = self.rows.len();
        if i == self.count {
            self.more = true;
            return Ok(false);
        }
        self.rows.push(stored(row)?);
        if i + 1 == self.count {
            let mut values = Vec::with_capacity(self.sort.len());
            for (k, kind) in self.sort.iter().enumerate() {
                let col = sqlgen::ROW_COLUMN_COUNT + k;
                values.push(match kind {
                    CursorKind::Int => CursorValue::Int(row.int(col)?),
                    CursorKind::Real => CursorValue::Real(row.real(col)?),
                    CursorKind::Text => CursorValue::Text(row.text(col)?),
                });
            }
            self.cursor = Some(Cursor { values, rid: row.int(0)? });
        }
        Ok(true)
    }

    /// The page, and where the next one starts.
    pub(crate) fn finish(self) -> (Vec<Stored>, Option<Cursor>) {
        (self.rows, if self.more { self.cursor } else { None })
    }
}

/// A history page from rows selected by [`super::sql::history_query`] (one
/// look-ahead row beyond `count`): the versions, and where the next page starts.
pub(crate) fn history_page<R: SqlRow>(rows: &[R], count: usize) -> Result<super::HistoryPage, sqlx::Error> {
    let versions = rows.iter().take(count.saturating_add(1)).map(stored).collect::<Result<_, _>>()?;
    Ok(history_of(versions, count))
}

/// A history page from the versions a history query selected ([`history_page`]).
pub(crate) fn history_of(mut versions: Vec<Stored>, count: usize) -> super::HistoryPage {
    let more = versions.len() > count;
    versions.truncate(count);
    let mut page = super::HistoryPage::default();
    for mut s in versions {
        page.next_seq = Some(s.rid);
        s.rid = 0;
        page.rows.push(s);
    }
    if !more {
        page.next_seq = None;
    }
    page
}
