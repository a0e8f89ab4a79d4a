//! A parsed search, independent of SQL dialect: what the FHIR layer asks,
//! what every backend answers.

use crate::fhir::search::values::{Prefix, TokenQuery};

/// One search: resources of `ty` matching all `filters`, in `sort` order.
#[derive(Clone, Debug)]
pub struct SearchPlan {
    pub ty: String,
    /// All must hold.
    pub filters: Vec<Filter>,
    /// Sort keys in order; the resource's row id always breaks ties.
    pub sort: Vec<Sort>,
    /// Page size (0: only count).
    pub count: usize,
    /// Continue after this position.
    pub after: Option<Cursor>,
    /// Whether to count all matches.
    pub with_total: bool,
}

impl SearchPlan {
    pub fn new(ty: impl Into<String>) -> Self {
        SearchPlan { ty: ty.into(), filters: Vec::new(), sort: Vec::new(), count: 50, after: None, with_total: false }
    }
}

/// One search parameter occurrence.
#[derive(Clone, Debug)]
pub enum Filter {
    /// At least one of the atoms matches (comma-separated values).
    Any(Vec<Atom>),
    /// None of the atoms matches (`:not`).
    None(Vec<Atom>),
}

/// One value of one parameter.
#[derive(Clone, Debug)]
pub enum Atom {
    /// `_id`.
    Id(String),
    /// `_lastUpdated` with its prefix and the query's ms range.
    LastUpdated {
        prefix: Prefix,
        low: i64,
        high: i64,
    },
    Token {
        param: &'static str,
        query: TokenQuery,
    },
    /// `:text` on a token: prefix of the coding display / concept text.
    TokenText {
        param: &'static str,
        normalized: String,
    },
    String {
        param: &'static str,
        mode: StringMode,
        value: String,
    },
    Date {
        param: &'static str,
        prefix: Prefix,
        low: i64,
        high: i64,
    },
    /// A reference to a local resource; `ty` None means any target type.
    Reference {
        param: &'static str,
        ty: Option<String>,
        id: String,
    },
    /// A reference written as an absolute URL or a canonical.
    ReferenceUrl {
        param: &'static str,
        url: String,
    },
    /// `:identifier` on a reference.
    ReferenceIdentifier {
        param: &'static str,
        query: TokenQuery,
    },
    /// A chained search: resources whose `param` points at a `ty` that matches `filters`.
    Chain {
        param: &'static str,
        ty: String,
        filters: Vec<Filter>,
    },
    /// `value` as given; `low..high` is the range its precision implies (for `eq`/`ne`/`ap`).
    Number {
        param: &'static str,
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        param: &'static str,
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        param: &'static str,
        value: String,
        below: bool,
    },
    /// `:missing`: `missing = true` wants resources without the parameter.
    Missing {
        param: &'static str,
        table: IndexTable,
        missing: bool,
    },
}

/// How a string parameter matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMode {
    /// Case- and accent-insensitive prefix (the default); value is normalized.
    StartsWith,
    /// Exact, as written.
    Exact,
    /// Case- and accent-insensitive substring; value is normalized.
    Contains,
}

/// The index table a parameter's values live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexTable {
    Token,
    String,
    Date,
    Reference,
    Number,
    Quantity,
    Uri,
}

impl IndexTable {
    pub fn name(self) -> &'static str {
        match self {
            IndexTable::Token => "idx_token",
            IndexTable::String => "idx_string",
            IndexTable::Date => "idx_date",
            IndexTable::Reference => "idx_reference",
            IndexTable::Number => "idx_number",
            IndexTable::Quantity => "idx_quantity",
            IndexTable::Uri => "idx_uri",
        }
    }

    /// The value columns of the table (after `rid` and `param`).
    pub fn width(self) -> usize {
        match self {
            IndexTable::Token => 3,
            IndexTable::String => 2,
            IndexTable::Date => 2,
            IndexTable::Reference => 5,
            IndexTable::Number => 2,
            IndexTable::Quantity => 4,
            IndexTable::Uri => 1,
        }
    }
}

/// One sort key.
#[derive(Clone, Debug)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

#[derive(Clone, Debug)]
pub enum SortKey {
    Id,
    LastUpdated,
    /// A parameter's smallest value (ascending) or largest (descending).
    Param {
        param: &'static str,
        table: IndexTable,
    },
}

/// A position in a sorted result: the last row's sort values and row id.
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    pub values: Vec<CursorValue>,
    pub rid: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CursorValue {
    Int(i64),
    Real(f64),
    Text(String),
}

impl Cursor {
    /// An opaque, URL-safe token.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let mut parts = vec![self.rid.to_string()];
        for v in &self.values {
            parts.push(match v {
                CursorValue::Int(i) => format!("i{i}"),
                CursorValue::Real(f) => format!("r{f:e}"),
                CursorValue::Text(s) => format!("t{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)),
            });
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("!"))
    }

    /// Reads a token made by [`Cursor::encode`]; `None` when it was not.
    pub fn decode(token: &str) -> Option<Cursor> {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let text = String::from_utf8(engine.decode(token).ok()?).ok()?;
        let mut parts = text.split('!');
        let rid = parts.next()?.parse().ok()?;
        let mut values = Vec::new();
        for p in parts {
            let (tag, rest) = p.split_at_checked(1)?;
            values.push(match tag {
                "i" => CursorValue::Int(rest.parse().ok()?),
                "r" => CursorValue::Real(rest.parse().ok()?),
                "t" => CursorValue::Text(String::from_utf8(engine.decode(rest).ok()?).ok()?),
                _ => return None,
            });
        }
        Some(Cursor { values, rid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            values: vec![CursorValue::Int(-5), CursorValue::Text("Åsa.b".into()), CursorValue::Real(1.5)],
            rid: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("!!!"), None);
        assert_eq!(Cursor::decode(""), None);
    }
}
