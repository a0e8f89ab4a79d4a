//! Translates a [`SearchPlan`] into SQL text and arguments, shared by the
//! SQLite and PostgreSQL backends (they differ only in the [`Dialect`]).
//!
//! Every filter becomes `rid IN (SELECT rid FROM idx_… WHERE …)`, so the
//! database can drive the query from the most selective index.

use crate::fhir::search::{
    params,
    values::{Prefix, TokenQuery},
};

use super::{
    Stored,
    plan::{Atom, Cursor, CursorValue, Filter, IndexTable, SearchPlan, Sort, SortKey, StringMode},
};

/// The SQL flavour to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// SQL text with `?` placeholders (renumbered to `$n` for PostgreSQL) and its arguments.
#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    fn arg(&mut self, a: Arg) -> &mut Self {
        self.text.push('?');
        self.args.push(a);
        self
    }
    fn text_arg(&mut self, s: &str) -> &mut Self {
        self.arg(Arg::Text(s.to_owned()))
    }
    /// `?, ?, …`: one text argument per item.
    fn text_list(&mut self, items: &[&str]) -> &mut Self {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.text_arg(item);
        }
        self
    }
    fn int(&mut self, i: i64) -> &mut Self {
        self.arg(Arg::Int(i))
    }

    /// The final text for `dialect`.
    pub fn render(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::Sqlite => self.text.clone(),
            Dialect::Postgres => {
                let mut out = String::with_capacity(self.text.len() + 16);
                let mut n = 0;
                let mut in_str = false;
                for c in self.text.chars() {
                    match c {
                        '\'' => {
                            in_str = !in_str;
                            out.push(c);
                        }
                        '?' if !in_str => {
                            n += 1;
                            out.push('$');
                            out.push_str(&n.to_string());
                        }
                        _ => out.push(c),
                    }
                }
                out
            }
        }
    }
}

/// The columns every resource row query selects, in this order.
pub const ROW_COLUMNS: &str =
    "r.rid, v.res_type, v.res_id, v.version, v.last_updated_ms, v.deleted, v.method, v.body, r.access, r.patients";

/// How many columns [`ROW_COLUMNS`] has; sort values follow them.
pub const ROW_COLUMN_COUNT: usize = 10;

/// A string that sorts after every real index value (nulls last when ascending).
const TEXT_MAX: &str = "\u{10FFFF}";

/// The page query: rows, plus one sort value column per sort key, one row more than the page.
pub fn search_page(plan: &SearchPlan) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT ").push(ROW_COLUMNS);
    for s in &plan.sort {
        sql.push(", ");
        sort_expr(&mut sql, &plan.ty, s);
    }
    sql.push(" FROM resources r JOIN versions v ON v.vid = r.vid WHERE ");
    where_clause(&mut sql, plan, "r");
    if let Some(cursor) = &plan.after {
        sql.push(" AND ");
        cursor_condition(&mut sql, &plan.ty, &plan.sort, cursor);
    }
    sql.push(" ORDER BY ");
    for s in &plan.sort {
        sort_expr(&mut sql, &plan.ty, s);
        sql.push(if s.descending { " DESC, " } else { " ASC, " });
    }
    sql.push("r.rid ASC LIMIT ").int(plan.count as i64 + 1);
    sql
}

/// The count of all matches.
pub fn search_count(plan: &SearchPlan) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) FROM resources r WHERE ");
    where_clause(&mut sql, plan, "r");
    sql
}

/// Ids of matches, for conditional operations (at most `plan.count`).
pub fn search_ids(plan: &SearchPlan) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT r.res_id FROM resources r WHERE ");
    where_clause(&mut sql, plan, "r");
    sql.push(" ORDER BY r.rid LIMIT ").int(plan.count as i64);
    sql
}

/// Versions newest first for a history request, one more than the page.
pub fn history_query(q: &super::HistoryQuery) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "SELECT v.vid, v.res_type, v.res_id, v.version, v.last_updated_ms, v.deleted, v.method, v.body, '', '' \
         FROM versions v WHERE 1 = 1",
    );
    if let Some(ty) = &q.ty {
        sql.push(" AND v.res_type = ").text_arg(ty);
    }
    if let Some(id) = &q.id {
        sql.push(" AND v.res_id = ").text_arg(id);
    }
    if let Some(since) = q.since_ms {
        sql.push(" AND v.last_updated_ms >= ").int(since);
    }
    if let Some(before) = q.before_ms {
        sql.push(" AND v.last_updated_ms < ").int(before);
    }
    if let Some(after) = q.after_seq {
        sql.push(" AND v.vid < ").int(after);
    }
    sql.push(" ORDER BY v.vid DESC LIMIT ").int(q.count as i64 + 1);
    sql
}

/// Audit entries newest first; `None` when the query cannot match anything.
/// On SQLite the patient index lags (see `migrations/sqlite/0007_…`): entries
/// after `audit_indexed.seq` are found by their `patients` column.
pub fn audit_query(q: &super::AuditQuery, dialect: Dialect) -> Option<Sql> {
    let mut sql = Sql::default();
    sql.push("SELECT a.seq, a.event_id, a.recorded_ms, a.body, a.prev_hash, a.hash FROM audit_log a WHERE 1 = 1");
    if let Some(patients) = &q.patients {
        if patients.is_empty() {
            return None;
        }
        let list = |sql: &mut Sql| {
            for (i, p) in patients.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.text_arg(p);
            }
        };
        sql.push(" AND a.seq IN (SELECT seq FROM audit_patient WHERE patient IN (");
        list(&mut sql);
        sql.push(")");
        if dialect == Dialect::Sqlite {
            sql.push(
                " UNION ALL SELECT t.seq FROM audit_log t, json_each(t.patients) j \
                 WHERE t.seq > (SELECT seq FROM audit_indexed WHERE one = 1) AND j.value IN (",
            );
            list(&mut sql);
            sql.push(")");
        }
        sql.push(")");
    }
    if let Some(id) = &q.event_id {
        sql.push(" AND a.event_id = ").text_arg(id);
    }
    if let Some(from) = q.from_ms {
        sql.push(" AND a.recorded_ms >= ").int(from);
    }
    if let Some(before) = q.before_ms {
        sql.push(" AND a.recorded_ms < ").int(before);
    }
    if let Some(below) = q.below_seq {
        sql.push(" AND a.seq < ").int(below);
    }
    sql.push(" ORDER BY a.seq DESC LIMIT ").int(q.count as i64);
    Some(sql)
}

/// Values per [`identifier_lookup`] query: far below either backend's limit
/// on bound arguments, and one query still answers a whole ingest batch.
pub const IDENTIFIER_VALUES_PER_QUERY: usize = 512;

/// Current resources with an identifier whose value is one of `values`,
/// under any system (decoded by `rows::identifier_hit`), oldest first.
pub fn identifier_lookup(values: &[&str]) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT r.res_type, r.res_id, r.access, t.system, t.code FROM idx_token t JOIN resources r ON r.rid = t.rid WHERE t.param = 'identifier' AND t.code IN (");
    sql.text_list(values).push(") AND r.deleted = 0 ORDER BY r.rid");
    sql
}

/// Current resources that `rows` (a page of one search, all of one type)
/// reference through `param` (an `_include`).
pub fn include_query(rows: &[Stored], param: &str, target_type: Option<&str>, limit: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT ").push(ROW_COLUMNS);
    sql.push(" FROM resources r JOIN versions v ON v.vid = r.vid WHERE r.deleted = 0 AND r.rid IN (SELECT t.rid FROM idx_reference x JOIN resources t ON t.res_type = x.target_type AND t.res_id = x.target_id WHERE ");
    param_is(&mut sql, "x.", rows.first().map_or("", |r| r.ty.as_str()), param).push(" AND x.rid IN (");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.int(r.rid);
    }
    sql.push(")");
    if let Some(t) = target_type {
        sql.push(" AND x.target_type = ").text_arg(t);
    }
    sql.push(") ORDER BY r.rid LIMIT ").int(limit as i64);
    sql
}

/// Current resources of `source_type` referencing `rows` through `param` (a `_revinclude`).
pub fn revinclude_query(rows: &[Stored], source_type: &str, param: &str, limit: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT ").push(ROW_COLUMNS);
    sql.push(" FROM resources r JOIN versions v ON v.vid = r.vid WHERE r.res_type = ")
        .text_arg(source_type)
        .push(" AND r.deleted = 0 AND r.rid IN (SELECT x.rid FROM idx_reference x WHERE ");
    param_is(&mut sql, "x.", source_type, param).push(" AND (");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(x.target_id = ").text_arg(&r.id).push(" AND x.target_type = ").text_arg(&r.ty).push(")");
    }
    sql.push(")) ORDER BY r.rid LIMIT ").int(limit as i64);
    sql
}

fn where_clause(sql: &mut Sql, plan: &SearchPlan, alias: &str) {
    // With a selective filter to drive the query, the type test must not use
    // the (res_type, …) index: that would walk every resource of the type.
    // `res_type || ''` keeps the meaning and hides the column from the planner.
    if driver(&plan.filters).is_some() {
        sql.push("(").push(alias).push(".res_type || '') = ").text_arg(&plan.ty);
    } else {
        sql.push(alias).push(".res_type = ").text_arg(&plan.ty);
    }
    sql.push(" AND ").push(alias).push(".deleted = 0");
    conditions(sql, &plan.ty, &plan.filters, alias);
}

/// How a filter is written: as the set that drives the query (`rid IN (…)`,
/// read from the parameter's index) or as a per-row check (`EXISTS (…)`,
/// an index lookup by row id).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Drive,
    Check,
}

/// The filter that should drive the query: the most selective one, if any can.
fn driver(filters: &[Filter]) -> Option<usize> {
    filters
        .iter()
        .enumerate()
        .map(|(i, f)| (i, selectivity(f)))
        .filter(|(_, score)| *score > 0)
        .max_by_key(|(i, score)| (*score, std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
}

/// Appends ` AND <filter>` for each filter; the most selective one drives.
fn conditions(sql: &mut Sql, ty: &str, filters: &[Filter], alias: &str) {
    let driver = driver(filters);
    for (i, f) in filters.iter().enumerate() {
        sql.push(" AND ");
        filter(sql, ty, f, alias, if Some(i) == driver { Mode::Drive } else { Mode::Check });
    }
}

/// A rough guess of how few rows a filter matches (higher: fewer). 0: never drive with it.
fn selectivity(f: &Filter) -> u8 {
    let Filter::Any(atoms) = f else { return 0 };
    atoms
        .iter()
        .map(|a| match a {
            Atom::Id(_) => 100,
            Atom::Token { param: "identifier", .. } | Atom::ReferenceIdentifier { .. } => 90,
            Atom::Reference { .. } | Atom::ReferenceUrl { .. } | Atom::Chain { .. } => 80,
            Atom::Uri { below: false, .. } => 70,
            Atom::String { mode: StringMode::Exact, .. } => 60,
            Atom::String { mode: StringMode::StartsWith, .. } => 50,
            Atom::Date { .. } => 40,
            Atom::Token { .. } | Atom::Number { .. } | Atom::Quantity { .. } | Atom::Uri { .. } => 30,
            Atom::String { mode: StringMode::Contains, .. } | Atom::TokenText { .. } => 10,
            Atom::LastUpdated { .. } | Atom::Missing { .. } => 0,
        })
        .min()
        .unwrap_or(0)
}

fn filter(sql: &mut Sql, ty: &str, f: &Filter, alias: &str, mode: Mode) {
    let (atoms, negate) = match f {
        Filter::Any(a) => (a, false),
        Filter::None(a) => (a, true),
    };
    if negate {
        sql.push("NOT ");
    }
    sql.push("(");
    if atoms.is_empty() {
        sql.push("1 = 0");
    }
    for (i, a) in atoms.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        atom(sql, ty, a, alias, mode);
    }
    sql.push(")");
}

/// Opens the subquery of one index table, left open for the caller's predicate:
/// `alias.rid IN (SELECT rid FROM t WHERE param = ? AND ` or
/// `EXISTS (SELECT 1 FROM t m WHERE m.rid = alias.rid AND m.param = ? AND `
/// (`param IN (…)` for a parameter answered from others' rows, see [`param_is`]).
fn open_in<'a>(sql: &'a mut Sql, ty: &str, alias: &str, table: IndexTable, param: &str, mode: Mode) -> &'a mut Sql {
    match mode {
        Mode::Drive => sql.push(alias).push(".rid IN (SELECT rid FROM ").push(table.name()).push(" WHERE "),
        Mode::Check => sql
            .push("EXISTS (SELECT 1 FROM ")
            .push(table.name())
            .push(" m WHERE m.rid = ")
            .push(alias)
            .push(".rid AND "),
    };
    param_is(sql, if mode == Mode::Drive { "" } else { "m." }, ty, param).push(" AND ")
}

/// `table.param = param`; `table.param IN (…)` when `ty`'s `param` is the
/// union of other parameters and has no index rows of its own
/// ([`params::union_of`]); for an alias ([`params::alias_of`]) the rows of
/// the parameter it restricts with its target type, or its own rows from
/// before. `table` is the index table's alias with its dot (`x.`), or `""`.
fn param_is<'a>(sql: &'a mut Sql, table: &str, ty: &str, param: &str) -> &'a mut Sql {
    if let Some((of, target)) = params::alias_of(ty, param) {
        sql.push("(").push(table).push("param = ").text_arg(param);
        sql.push(" OR ").push(table).push("param = ").text_arg(of);
        return sql.push(" AND ").push(table).push("target_type = ").text_arg(target).push(")");
    }
    sql.push(table).push("param");
    match params::union_of(ty, param) {
        None => sql.push(" = ").text_arg(param),
        Some(parts) => sql.push(" IN (").text_list(parts).push(")"),
    }
}

fn atom(sql: &mut Sql, of: &str, a: &Atom, alias: &str, mode: Mode) {
    match a {
        Atom::Id(id) => {
            sql.push(alias).push(".res_id = ").text_arg(id);
        }
        Atom::LastUpdated { prefix, low, high } => {
            let col = format!("{alias}.last_updated_ms");
            date_predicate(sql, &col, &col, *prefix, *low, *high);
        }
        Atom::Token { param, query } => {
            open_in(sql, of, alias, IndexTable::Token, param, mode);
            token_predicate(sql, query, "system", "code");
            sql.push(")");
        }
        Atom::TokenText { param, normalized } => {
            open_in(sql, of, alias, IndexTable::Token, param, mode);
            sql.push("text_norm LIKE ").text_arg(&format!("%{}%", like_escape(normalized))).push(" ESCAPE '\\')");
        }
        Atom::String { param, mode: how, value } => {
            open_in(sql, of, alias, IndexTable::String, param, mode);
            match how {
                StringMode::StartsWith => {
                    sql.push("norm >= ").text_arg(value);
                    sql.push(" AND norm < ").text_arg(&format!("{value}{TEXT_MAX}"));
                }
                StringMode::Exact => {
                    sql.push("exact = ").text_arg(value);
                }
                StringMode::Contains => {
                    sql.push("norm LIKE ").text_arg(&format!("%{}%", like_escape(value))).push(" ESCAPE '\\'");
                }
            }
            sql.push(")");
        }
        Atom::Date { param, prefix, low, high } => {
            open_in(sql, of, alias, IndexTable::Date, param, mode);
            date_predicate(sql, "low", "high", *prefix, *low, *high);
            sql.push(")");
        }
        Atom::Reference { param, ty, id } => {
            open_in(sql, of, alias, IndexTable::Reference, param, mode);
            sql.push("target_id = ").text_arg(id);
            if let Some(ty) = ty {
                sql.push(" AND target_type = ").text_arg(ty);
            }
            sql.push(")");
        }
        Atom::ReferenceUrl { param, url } => {
            open_in(sql, of, alias, IndexTable::Reference, param, mode);
            // An absolute `…/Type/id` URL is found through the target index;
            // other URLs (urn:, canonicals) by the reference text alone.
            if let Some((_, id)) = crate::fhir::search::extract::parse_reference(url) {
                sql.push("target_id = ").text_arg(id).push(" AND ");
            }
            sql.push("ref = ").text_arg(url).push(")");
        }
        Atom::ReferenceIdentifier { param, query } => {
            open_in(sql, of, alias, IndexTable::Reference, param, mode);
            token_predicate(sql, query, "id_system", "id_value");
            sql.push(")");
        }
        Atom::Chain { param, ty, filters } => {
            // The chained type's matches are found first (driven by their own
            // most selective filter), then the references pointing at them.
            open_in(sql, of, alias, IndexTable::Reference, param, mode);
            sql.push("target_type = ").text_arg(ty);
            let hide = if driver(filters).is_some() { "(t.res_type || '')" } else { "t.res_type" };
            sql.push(" AND target_id IN (SELECT t.res_id FROM resources t WHERE ").push(hide).push(" = ").text_arg(ty);
            sql.push(" AND t.deleted = 0");
            conditions(sql, ty, filters, "t");
            sql.push("))");
        }
        Atom::Number { param, prefix, value, low, high } => {
            open_in(sql, of, alias, IndexTable::Number, param, mode);
            number_predicate(sql, *prefix, *value, *low, *high);
            sql.push(")");
        }
        Atom::Quantity { param, prefix, value, low, high, system, code } => {
            open_in(sql, of, alias, IndexTable::Quantity, param, mode);
            number_predicate(sql, *prefix, *value, *low, *high);
            if let Some(s) = system {
                sql.push(" AND system = ").text_arg(s);
            }
            if let Some(c) = code {
                sql.push(" AND (code = ").text_arg(c).push(" OR unit = ").text_arg(c).push(")");
            }
            sql.push(")");
        }
        Atom::Uri { param, value, below } => {
            open_in(sql, of, alias, IndexTable::Uri, param, mode);
            if *below {
                sql.push("uri >= ").text_arg(value);
                sql.push(" AND uri < ").text_arg(&format!("{value}{TEXT_MAX}"));
            } else {
                sql.push("uri = ").text_arg(value);
            }
            sql.push(")");
        }
        Atom::Missing { param, table, missing } => {
            if *missing {
                sql.push("NOT ");
            }
            sql.push("EXISTS (SELECT 1 FROM ")
                .push(table.name())
                .push(" m WHERE m.rid = ")
                .push(alias)
                .push(".rid AND ");
            param_is(sql, "m.", of, param).push(")");
        }
    }
}

fn token_predicate(sql: &mut Sql, q: &TokenQuery, system_col: &str, code_col: &str) {
    match q {
        TokenQuery::Code(c) => {
            sql.push(code_col).push(" = ").text_arg(c);
        }
        TokenQuery::SystemCode(s, c) => {
            sql.push(code_col).push(" = ").text_arg(c);
            sql.push(" AND ").push(system_col).push(" = ").text_arg(s);
        }
        TokenQuery::NoSystemCode(c) => {
            sql.push(code_col).push(" = ").text_arg(c);
            sql.push(" AND ").push(system_col).push(" IS NULL");
        }
        TokenQuery::System(s) => {
            sql.push(system_col).push(" = ").text_arg(s);
        }
    }
}

/// FHIR date comparison between a resource range `[lo_col, hi_col]` and the query range `[ql, qh]`.
fn date_predicate(sql: &mut Sql, lo: &str, hi: &str, prefix: Prefix, ql: i64, qh: i64) {
    let contained = |sql: &mut Sql| {
        sql.push("(").push(lo).push(" >= ").int(ql).push(" AND ").push(hi).push(" <= ").int(qh).push(")");
    };
    match prefix {
        Prefix::Eq => contained(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            contained(sql);
        }
        Prefix::Gt => {
            sql.push(hi).push(" > ").int(qh);
        }
        Prefix::Lt => {
            sql.push(lo).push(" < ").int(ql);
        }
        Prefix::Ge => {
            sql.push("(").push(hi).push(" > ").int(qh).push(" OR ");
            contained(sql);
            sql.push(")");
        }
        Prefix::Le => {
            sql.push("(").push(lo).push(" < ").int(ql).push(" OR ");
            contained(sql);
            sql.push(")");
        }
        Prefix::Sa => {
            sql.push(lo).push(" > ").int(qh);
        }
        Prefix::Eb => {
            sql.push(hi).push(" < ").int(ql);
        }
        Prefix::Ap => {
            // Approximately: within 10% of the distance to now, at least a day.
            let now = chrono::Utc::now().timestamp_millis();
            let slack = ((now - ql).abs() / 10).max(86_400_000);
            sql.push("(").push(lo).push(" <= ").int(qh.saturating_add(slack));
            sql.push(" AND ").push(hi).push(" >= ").int(ql.saturating_sub(slack)).push(")");
        }
    }
}

fn number_predicate(sql: &mut Sql, prefix: Prefix, value: f64, low: f64, high: f64) {
    let real = |sql: &mut Sql, v: f64| {
        sql.arg(Arg::Real(v));
    };
    match prefix {
        Prefix::Eq => {
            sql.push("value >= ");
            real(sql, low);
            sql.push(" AND value < ");
            real(sql, high);
        }
        Prefix::Ne => {
            sql.push("(value < ");
            real(sql, low);
            sql.push(" OR value >= ");
            real(sql, high);
            sql.push(")");
        }
        Prefix::Gt | Prefix::Sa => {
            sql.push("value > ");
            real(sql, value);
        }
        Prefix::Lt | Prefix::Eb => {
            sql.push("value < ");
            real(sql, value);
        }
        Prefix::Ge => {
            sql.push("value >= ");
            real(sql, value);
        }
        Prefix::Le => {
            sql.push("value <= ");
            real(sql, value);
        }
        Prefix::Ap => {
            let slack = (value.abs() * 0.1).max(high - low);
            sql.push("value >= ");
            real(sql, value - slack);
            sql.push(" AND value <= ");
            real(sql, value + slack);
        }
    }
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// The sort value of the row `r`, never NULL (missing values sort last).
fn sort_expr(sql: &mut Sql, ty: &str, s: &Sort) {
    match &s.key {
        SortKey::Id => {
            sql.push("r.res_id");
        }
        SortKey::LastUpdated => {
            sql.push("r.last_updated_ms");
        }
        SortKey::Param { param, table } => {
            let (col_asc, col_desc) = match table {
                IndexTable::Date => ("low", "high"),
                IndexTable::String => ("norm", "norm"),
                IndexTable::Token => ("code", "code"),
                IndexTable::Reference => ("ref", "ref"),
                IndexTable::Uri => ("uri", "uri"),
                IndexTable::Number | IndexTable::Quantity => ("value", "value"),
            };
            let (agg, col) = if s.descending { ("MAX", col_desc) } else { ("MIN", col_asc) };
            sql.push("COALESCE((SELECT ")
                .push(agg)
                .push("(")
                .push(col)
                .push(") FROM ")
                .push(table.name())
                .push(" s WHERE s.rid = r.rid AND ");
            param_is(sql, "s.", ty, param).push("), ");
            match (table, s.descending) {
                (IndexTable::Date, false) => sql.int(i64::MAX),
                (IndexTable::Date, true) => sql.int(i64::MIN + 1),
                (IndexTable::Number | IndexTable::Quantity, false) => sql.arg(Arg::Real(f64::MAX)),
                (IndexTable::Number | IndexTable::Quantity, true) => sql.arg(Arg::Real(f64::MIN)),
                (_, false) => sql.text_arg(TEXT_MAX),
                (_, true) => sql.text_arg(""),
            };
            sql.push(")");
        }
    }
}

/// Which kind of value a sort key yields, to read it back for the cursor.
pub fn sort_value_kind(s: &Sort) -> CursorKind {
    match &s.key {
        SortKey::Id => CursorKind::Text,
        SortKey::LastUpdated => CursorKind::Int,
        SortKey::Param { table, .. } => match table {
            IndexTable::Date => CursorKind::Int,
            IndexTable::Number | IndexTable::Quantity => CursorKind::Real,
            _ => CursorKind::Text,
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorKind {
    Int,
    Real,
    Text,
}

/// Rows strictly after `cursor` in the plan's order (sort keys, then row id).
fn cursor_condition(sql: &mut Sql, ty: &str, sort: &[Sort], cursor: &Cursor) {
    let value = |sql: &mut Sql, v: &CursorValue| match v {
        CursorValue::Int(i) => {
            sql.int(*i);
        }
        CursorValue::Real(f) => {
            sql.arg(Arg::Real(*f));
        }
        CursorValue::Text(t) => {
            sql.text_arg(t);
        }
    };
    let keys = sort.len().min(cursor.values.len());
    sql.push("(");
    for i in 0..=keys {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for (key, v) in sort.iter().zip(&cursor.values).take(i) {
            sort_expr(sql, ty, key);
            sql.push(" = ");
            value(sql, v);
            sql.push(" AND ");
        }
        if i < keys {
            sort_expr(sql, ty, &sort[i]);
            sql.push(if sort[i].descending { " < " } else { " > " });
            value(sql, &cursor.values[i]);
        } else {
            sql.push("r.rid > ").int(cursor.rid);
        }
        sql.push(")");
    }
    sql.push(")");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_outside_quotes() {
        let mut sql = Sql::default();
        sql.push("a = ").int(1).push(" AND b LIKE ").text_arg("x").push(" ESCAPE '?' AND c = ").int(2);
        assert_eq!(sql.render(Dialect::Postgres), "a = $1 AND b LIKE $2 ESCAPE '?' AND c = $3");
        assert_eq!(sql.args.len(), 3);
    }

    #[test]
    fn page_query_binds_every_placeholder() {
        let mut plan = SearchPlan::new("Observation");
        plan.filters.push(Filter::Any(vec![Atom::Token {
            param: "code",
            query: TokenQuery::SystemCode("http://loinc.org".into(), "1234-5".into()),
        }]));
        plan.sort.push(Sort { key: SortKey::Param { param: "date", table: IndexTable::Date }, descending: true });
        plan.after = Some(Cursor { values: vec![CursorValue::Int(5)], rid: 9 });
        let sql = search_page(&plan);
        assert_eq!(sql.text.matches('?').count(), sql.args.len());
        assert!(sql.text.contains("ORDER BY COALESCE((SELECT MAX(high)"));
    }
}
