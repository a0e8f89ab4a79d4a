//! A JSON tree that loses nothing: numbers keep their exact text (`12.50`
//! stays `12.50`), objects keep their key order, and duplicate keys are a
//! parse error instead of a silent "last one wins".
//!
//! FHIR resources are stored exactly as received, so the gateway parses them
//! into this tree (never through typed models), adds server-owned elements
//! such as `meta.versionId`, and writes them back out.

use std::fmt;

/// Nesting deeper than this is rejected, so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 128;

/// A parsed JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON number, kept as the exact text it was written with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Number(Box<str>);

impl Number {
    /// The number's text as received, e.g. `12.50` or `-3e2`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True when written without fraction or exponent.
    pub fn is_integer(&self) -> bool {
        !self.0.contains(['.', 'e', 'E'])
    }
    /// The value as i64 when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        if self.is_integer() { self.0.parse().ok() } else { None }
    }
    /// The value as f64 (may round; never use it to write the number back).
    pub fn as_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }
    /// Builds a number from an integer.
    pub fn from_i64(v: i64) -> Self {
        Number(v.to_string().into_boxed_str())
    }
    /// Builds a number from text, checking it is valid JSON number syntax.
    pub fn parse(text: &str) -> Option<Self> {
        let mut p = Parser { src: text.as_bytes(), pos: 0, depth: 0 };
        match p.number() {
            Ok(Value::Number(n)) if p.pos == text.len() => Some(n),
            _ => None,
        }
    }
}

/// A JSON object with its members in the order they were written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object(Vec<(String, Value)>);

impl Object {
    pub fn new() -> Self {
        Object(Vec::new())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    /// Sets `key`, replacing an existing member in place or appending a new one.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.get_mut(&key) {
            Some(slot) => *slot = value,
            None => self.0.push((key, value)),
        }
    }
    /// Appends a member whose key the caller knows is not there yet (keys
    /// that come from one TOML table, say); skips `insert`'s search.
    pub fn push_new(&mut self, key: String, value: Value) {
        debug_assert!(self.get(&key).is_none(), "duplicate key {key}");
        self.0.push((key, value));
    }
    /// An empty object with room for `n` members.
    pub fn with_capacity(n: usize) -> Self {
        Object(Vec::with_capacity(n))
    }
    /// Sets `key` as the object's first member (e.g. `resourceType`, `id`).
    pub fn insert_front(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        self.remove(&key);
        self.0.insert(0, (key, value));
    }
    /// Sets `key` right after the member `after` (or at the front when absent).
    pub fn insert_after(&mut self, after: &str, key: impl Into<String>, value: Value) {
        let key = key.into();
        if let Some(slot) = self.get_mut(&key) {
            *slot = value;
            return;
        }
        let at = self.0.iter().position(|(k, _)| k == after).map_or(0, |i| i + 1);
        self.0.insert(at, (key, value));
    }
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(at).1)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Value)> {
        self.0.iter_mut().map(|(k, v)| (k.as_str(), v))
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut o = Object::new();
        for (k, v) in iter {
            o.insert(k, v);
        }
        o
    }
}

impl Value {
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_object_mut(&mut self) -> Option<&mut Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }
    /// Member `key` of an object; `None` for other values.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.get(key)
    }
    /// A short name of the JSON type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    /// Compact JSON text.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_compact(&mut out);
        out
    }
    /// Appends compact JSON text to `out`.
    pub fn write_compact(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Number(n) => out.push_str(n.as_str()),
            Value::String(s) => write_string(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write_compact(out);
                }
                out.push(']');
            }
            Value::Object(o) => {
                out.push('{');
                for (i, (k, v)) in o.0.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(k, out);
                    out.push(':');
                    v.write_compact(out);
                }
                out.push('}');
            }
        }
    }
    /// Indented JSON text (two spaces), for `_pretty=true` and files.
    pub fn to_json_pretty(&self) -> String {
        let mut out = String::with_capacity(512);
        self.write_pretty(&mut out, 0);
        out
    }
    fn write_pretty(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n * 2));
        match self {
            Value::Array(items) if !items.is_empty() => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(",\n");
                    }
                    pad(out, indent + 1);
                    v.write_pretty(out, indent + 1);
                }
                out.push('\n');
                pad(out, indent);
                out.push(']');
            }
            Value::Object(o) if !o.is_empty() => {
                out.push_str("{\n");
                for (i, (k, v)) in o.0.iter().enumerate() {
                    if i > 0 {
                        out.push_str(",\n");
                    }
                    pad(out, indent + 1);
                    write_string(k, out);
                    out.push_str(": ");
                    v.write_pretty(out, indent + 1);
                }
                out.push('\n');
                pad(out, indent);
                out.push('}');
            }
            other => other.write_compact(out),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Number(Number::from_i64(n))
    }
}
impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(o)
    }
}
impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Self {
        Value::Array(a)
    }
}

/// Converts a `serde_json` value (built with `json!` for fixed structures).
/// Numbers go through their `serde_json` text, which is exact for integers.
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(Number(n.to_string().into_boxed_str())),
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(a) => Value::Array(a.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
        }
    }
}

pub(crate) fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Why a text is not acceptable JSON, with the 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line}, column {column}")]
pub struct ParseError {
    pub message: String,
    pub line: usize,
    pub column: usize,
    /// The JSON path of the value being read when the error occurred, e.g. `$.code.coding[0]`.
    pub path: String,
}

/// Parses one JSON document (RFC 8259, strict: no trailing commas, no
/// comments, no duplicate keys, no trailing content). A leading UTF-8 BOM is skipped.
pub fn parse(src: &[u8]) -> Result<Value, ParseError> {
    let src = src.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(src);
    let mut p = Parser { src, pos: 0, depth: 0 };
    let mut path = Vec::new();
    p.skip_ws();
    let v = p.value(&mut path).map_err(|m| p.error(m, &path))?;
    p.skip_ws();
    if p.pos != p.src.len() {
        return Err(p.error("unexpected content after the JSON value".into(), &path));
    }
    Ok(v)
}

/// A segment of the path being parsed, for error messages.
enum Seg {
    Key(String),
    Index(usize),
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    depth: usize,
}

type PResult<T> = Result<T, String>;

impl Parser<'_> {
    fn error(&self, message: String, path: &[Seg]) -> ParseError {
        let upto = &self.src[..self.pos.min(self.src.len())];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = upto.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&upto[line_start..]).chars().count() + 1;
        let mut p = String::from("$");
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    p.push('.');
                    p.push_str(k);
                }
                Seg::Index(i) => p.push_str(&format!("[{i}]")),
            }
        }
        ParseError { message, line, column, path: p }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, lit: &[u8], v: Value) -> PResult<Value> {
        if self.src[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(v)
        } else {
            Err("invalid literal".into())
        }
    }

    fn value(&mut self, path: &mut Vec<Seg>) -> PResult<Value> {
        match self.peek() {
            None => Err("unexpected end of input".into()),
            Some(b'{') => self.object(path),
            Some(b'[') => self.array(path),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.expect_literal(b"true", Value::Bool(true)),
            Some(b'f') => self.expect_literal(b"false", Value::Bool(false)),
            Some(b'n') => self.expect_literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b) => Err(format!("unexpected character '{}'", char::from(b).escape_default())),
        }
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn object(&mut self, path: &mut Vec<Seg>) -> PResult<Value> {
        self.enter()?;
        self.pos += 1;
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Object(Object(members)));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err("expected a member name in double quotes".into());
            }
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(format!("duplicate member name \"{key}\""));
            }
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err("expected ':' after member name".into());
            }
            self.pos += 1;
            self.skip_ws();
            path.push(Seg::Key(key));
            let v = self.value(path)?;
            let Some(Seg::Key(key)) = path.pop() else { unreachable!("pushed a key above") };
            members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Object(Object(members)));
                }
                _ => return Err("expected ',' or '}' in object".into()),
            }
        }
    }

    fn array(&mut self, path: &mut Vec<Seg>) -> PResult<Value> {
        self.enter()?;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            path.push(Seg::Index(items.len()));
            let v = self.value(path)?;
            path.pop();
            items.push(v);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err("expected ',' or ']' in array".into()),
            }
        }
    }

    fn number(&mut self) -> PResult<Value> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err("invalid number".into()),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err("invalid number: digits expected after '.'".into());
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err("invalid number: digits expected in exponent".into());
            }
            self.digits();
        }
        // Only ASCII was consumed, so this slice is valid UTF-8.
        let text = std::str::from_utf8(&self.src[start..self.pos]).map_err(|e| e.to_string())?;
        Ok(Value::Number(Number(text.into())))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> PResult<u32> {
        let hex = self.src.get(self.pos..self.pos + 4).ok_or("incomplete \\u escape")?;
        let text = std::str::from_utf8(hex).map_err(|_| "invalid \\u escape")?;
        let v = u32::from_str_radix(text, 16).map_err(|_| "invalid \\u escape")?;
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> PResult<String> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let chunk =
                std::str::from_utf8(&self.src[start..self.pos]).map_err(|_| "string is not valid UTF-8".to_string())?;
            out.push_str(chunk);
            match self.peek() {
                None => return Err("unterminated string".into()),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or("unterminated string")?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.src[self.pos..].starts_with(b"\\u") {
                                    return Err("unpaired UTF-16 surrogate in \\u escape".into());
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("unpaired UTF-16 surrogate in \\u escape".into());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let c = char::from_u32(code).ok_or("unpaired UTF-16 surrogate in \\u escape")?;
                            out.push(c);
                        }
                        _ => return Err("invalid escape in string".into()),
                    }
                }
                Some(_) => return Err("control character in string must be escaped".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        parse(text.as_bytes()).expect("valid JSON").to_json()
    }

    #[test]
    fn keeps_decimal_text_and_key_order() {
        let text = r#"{"z":1,"a":12.50,"m":[1e3,-0.0,12500.00],"s":"å\"\n"}"#;
        assert_eq!(roundtrip(text), text);
    }

    #[test]
    fn rejects_duplicate_keys_with_position_and_path() {
        let err = parse(b"{\n  \"a\": {\"b\": 1, \"b\": 2}\n}").unwrap_err();
        assert!(err.message.contains("duplicate member name \"b\""), "{err}");
        assert_eq!(err.line, 2);
        assert_eq!(err.path, "$.a");
    }

    #[test]
    fn rejects_trailing_content_comma_and_bad_numbers() {
        for bad in ["{} x", "[1,]", "{\"a\":1,}", "01", "1.", "-", "1e", "NaN", "\"\t\"", "[\"\\x\"]"] {
            assert!(parse(bad.as_bytes()).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn decodes_surrogate_pairs_and_rejects_lone_ones() {
        assert_eq!(parse(br#""\ud83d\ude00""#).unwrap(), Value::String("😀".into()));
        assert!(parse(br#""\ud83d""#).is_err());
        assert!(parse(br#""\ude00""#).is_err());
    }

    #[test]
    fn limits_nesting_depth() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).unwrap_err().message.contains("nesting"));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert!(parse(b"\"\xff\"").is_err());
    }

    #[test]
    fn escapes_control_characters_on_output() {
        let v = Value::String("a\u{1}b".into());
        assert_eq!(v.to_json(), "\"a\\u0001b\"");
        assert_eq!(parse(v.to_json().as_bytes()).unwrap(), v);
    }

    #[test]
    fn number_helpers() {
        let n = Number::parse("12.50").unwrap();
        assert!(!n.is_integer());
        assert_eq!(n.as_f64(), 12.5);
        assert_eq!(Number::parse("42").unwrap().as_i64(), Some(42));
        assert!(Number::parse("4 2").is_none());
    }

    #[test]
    fn object_insertion_helpers_keep_order() {
        let mut o = Object::new();
        o.insert("b", Value::Null);
        o.insert_front("resourceType", "Patient".into());
        o.insert_after("resourceType", "id", "x".into());
        assert_eq!(o.keys().collect::<Vec<_>>(), ["resourceType", "id", "b"]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Arbitrary JSON trees with exact-text numbers and unique keys.
        fn value() -> impl Strategy<Value = Value> {
            let number = prop_oneof![
                any::<i64>().prop_map(|i| i.to_string()),
                (any::<i32>(), 0u32..1000, 0usize..4).prop_map(|(i, f, pad)| format!("{i}.{f}{}", "0".repeat(pad))),
                (1u32..10, -300i32..300).prop_map(|(m, e)| format!("{m}e{e}")),
            ]
            .prop_map(|t| Value::Number(Number::parse(&t).expect("generated numbers are valid")));
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                number,
                any::<String>().prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn written_json_parses_back_to_the_same_tree(v in value()) {
                prop_assert_eq!(parse(v.to_json().as_bytes()).unwrap(), v.clone());
                prop_assert_eq!(parse(v.to_json_pretty().as_bytes()).unwrap(), v);
            }

            #[test]
            fn any_bytes_are_parsed_or_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn mangled_json_is_parsed_or_refused_without_panic(v in value(), cut in any::<prop::sample::Index>()) {
                let text = v.to_json();
                let at = cut.index(text.len() + 1);
                let _ = parse(&text.as_bytes()[..at]);
            }
        }
    }
}
