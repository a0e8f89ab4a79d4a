//! A mapping file's TOML as a plain tree whose every node knows its line, so
//! that each mistake the compiler finds can be reported as `file:line`.

use toml_edit::{ImDocument, Item, Table, Value as TomlValue};

/// One node of a mapping file.
#[derive(Clone, Debug)]
pub enum Node {
    Str(String),
    Int(i64),
    Float(String),
    Bool(bool),
    Array(Vec<Spanned>),
    Table(Vec<(String, Spanned)>),
}

/// A node and the (1-based) line it starts on.
#[derive(Clone, Debug)]
pub struct Spanned {
    pub line: usize,
    pub node: Node,
}

impl Spanned {
    pub fn as_str(&self) -> Option<&str> {
        match &self.node {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&[(String, Spanned)]> {
        match &self.node {
            Node::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Spanned> {
        self.as_table()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn kind(&self) -> &'static str {
        match self.node {
            Node::Str(_) => "a string",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Bool(_) => "a boolean",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }
}

/// Parses TOML text into a spanned tree; the error is `(line, message)`.
pub fn parse(text: &str) -> Result<Spanned, (usize, String)> {
    let lines = LineIndex::new(text);
    let doc = ImDocument::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| lines.line(s.start));
        let message = e.message().trim().to_owned();
        (line, message)
    })?;
    table(doc.as_table(), 1, &lines)
}

struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex(text.match_indices('\n').map(|(i, _)| i).collect())
    }
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

fn line_of(span: Option<std::ops::Range<usize>>, fallback: usize, lines: &LineIndex) -> usize {
    span.map_or(fallback, |s| lines.line(s.start))
}

fn table(t: &Table, fallback: usize, lines: &LineIndex) -> Result<Spanned, (usize, String)> {
    let line = line_of(t.span(), fallback, lines);
    let mut out = Vec::new();
    for (key, item) in t.iter() {
        let key_line = line_of(t.key(key).and_then(|k| k.span()), line, lines);
        out.push((key.to_owned(), item_node(item, key_line, lines)?));
    }
    Ok(Spanned { line, node: Node::Table(out) })
}

fn item_node(item: &Item, fallback: usize, lines: &LineIndex) -> Result<Spanned, (usize, String)> {
    match item {
        Item::None => Err((fallback, "empty value".into())),
        Item::Value(v) => value(v, fallback, lines),
        Item::Table(t) => table(t, fallback, lines),
        Item::ArrayOfTables(a) => {
            let line = line_of(a.span(), fallback, lines);
            let items = a.iter().map(|t| table(t, line, lines)).collect::<Result<_, _>>()?;
            Ok(Spanned { line, node: Node::Array(items) })
        }
    }
}

fn value(v: &TomlValue, fallback: usize, lines: &LineIndex) -> Result<Spanned, (usize, String)> {
    let line = line_of(v.span(), fallback, lines);
    let node = match v {
        TomlValue::String(s) => Node::Str(s.value().clone()),
        TomlValue::Integer(i) => Node::Int(*i.value()),
        TomlValue::Float(f) => Node::Float(f.value().to_string()),
        TomlValue::Boolean(b) => Node::Bool(*b.value()),
        TomlValue::Datetime(_) => {
            return Err((line, "TOML dates are not used in mappings; write dates as strings".into()));
        }
        TomlValue::Array(a) => Node::Array(a.iter().map(|v| value(v, line, lines)).collect::<Result<_, _>>()?),
        TomlValue::InlineTable(t) => {
            let mut out = Vec::new();
            for (key, v) in t.iter() {
                let key_line = line_of(t.key(key).and_then(|k| k.span()), line, lines);
                out.push((key.to_owned(), value(v, key_line, lines)?));
            }
            Node::Table(out)
        }
    };
    Ok(Spanned { line, node })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_lines() {
        let t = parse("name = \"x\"\n\n[[resource]]\nkey = \"a\"\n[resource.body]\nstatus = \"final\"\n").unwrap();
        assert_eq!(t.get("name").unwrap().line, 1);
        let Node::Array(rs) = &t.get("resource").unwrap().node else { panic!() };
        assert_eq!(rs[0].get("key").unwrap().line, 4);
        assert_eq!(rs[0].get("body").unwrap().get("status").unwrap().line, 6);
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let (line, msg) = parse("a = 1\nb = \n").unwrap_err();
        assert_eq!(line, 2, "{msg}");
    }
}
