//! The JSON Schema subset mappings declare their input with, compiled once at
//! load and checked against every record before it is mapped.
//!
//! Supported (draft 2020-12 meaning): `type`, `properties`, `required`,
//! `additionalProperties`, `items`, `minItems`, `maxItems`, `minLength`,
//! `maxLength`, `minProperties`, `maxProperties`, `enum`, `const`, `format`,
//! `allOf`, `oneOf`, `not`, `if`/`then`/`else`, boolean schemas, and the
//! annotations `$schema`, `$id`, `$comment`, `title`, `description`,
//! `examples`, `default`. One extension: `x-uniqueBy` (an array's items must
//! differ in the named property). Formats are the Swedish identifiers and
//! time forms of the push formats (see [`Format`]). Any other keyword is a
//! load error: a schema keyword the gateway ignored would let data through
//! that the mapping's author meant to refuse.

use std::collections::HashMap;

use crate::{
    identity::{HsaId, Kommunkod, PatientId},
    json::Value,
    reference::Reference,
};

use super::{SourceIssue, time};

/// A compiled schema.
#[derive(Debug)]
pub enum Schema {
    Bool(bool),
    Rules(Box<Rules>),
}

#[derive(Debug, Default)]
pub struct Rules {
    types: Option<Vec<&'static str>>,
    properties: Vec<(String, Schema)>,
    required: Vec<String>,
    additional: Option<Schema>,
    items: Option<Schema>,
    min_items: Option<usize>,
    max_items: Option<usize>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    min_properties: Option<usize>,
    max_properties: Option<usize>,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    format: Option<Format>,
    all_of: Vec<Schema>,
    one_of: Vec<Schema>,
    not: Option<Schema>,
    condition: Option<Condition>,
    unique_by: Option<String>,
}

#[derive(Debug)]
struct Condition {
    test: Schema,
    then: Option<Schema>,
    otherwise: Option<Schema>,
    /// `category` is "padl" / is not "padl", for messages, when the test is a simple `const`.
    described: Option<(String, String)>,
}

/// The string formats the push formats use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 12 digits (or `YYYYMMDD-NNNN`), Luhn-valid.
    Personnummer,
    /// As personnummer, day + 60.
    Samordningsnummer,
    /// `SE` + organisationsnummer + `-` + letters/digits, ≤ 31 characters.
    HsaId,
    /// A kommunkod of the reference data's municipalities.
    Kommunkod,
    /// `YYYY-MM-DD` or `YYYYMMDD`.
    Date,
    /// RFC 3339 with offset, or RIV-TA `YYYYMMDDhhmmss` (Europe/Stockholm).
    DateTime,
    /// Standard base64 (RFC 4648, padded).
    Base64,
    /// An ICF code without qualifier: a component letter (b, s, d, e) and 1–5 digits, e.g. `b7300`.
    Icf,
}

impl Format {
    fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "personnummer" => Format::Personnummer,
            "samordningsnummer" => Format::Samordningsnummer,
            "hsa-id" => Format::HsaId,
            "kommunkod" => Format::Kommunkod,
            "date" => Format::Date,
            "date-time" => Format::DateTime,
            "base64" => Format::Base64,
            "icf" => Format::Icf,
            _ => return None,
        })
    }

    fn check(self, s: &str, reference: &Reference) -> Result<(), String> {
        match self {
            Format::Personnummer => PatientId::personnummer(s).map(drop).map_err(|e| e.0),
            Format::Samordningsnummer => PatientId::samordningsnummer(s).map(drop).map_err(|e| e.0),
            Format::HsaId => HsaId::parse(s).map(drop).map_err(|e| e.0),
            Format::Kommunkod => {
                let code = Kommunkod::parse(s).map_err(|e| e.0)?;
                if reference.municipality(code.as_str()).is_some() {
                    Ok(())
                } else {
                    Err(format!("{s} is not a municipality in the gateway's reference data"))
                }
            }
            Format::Date => time::date(s).map(drop),
            Format::DateTime => time::date_time(s).map(drop),
            Format::Icf => {
                let b = s.as_bytes();
                let ok = matches!(b.first(), Some(b'b' | b's' | b'd' | b'e'))
                    && (2..=6).contains(&b.len())
                    && b[1..].iter().all(u8::is_ascii_digit);
                if ok { Ok(()) } else { Err("must be an ICF code without qualifier, e.g. b7300 or d510".into()) }
            }
            Format::Base64 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(s).map(drop).map_err(|_| "not valid base64".into())
            }
        }
    }
}

/// A schema mistake: the JSON pointer of the keyword and what is wrong.
pub type CompileError = (String, String);

const ANNOTATIONS: &[&str] = &["$schema", "$id", "$comment", "title", "description", "examples", "default"];

/// Compiles a schema document.
pub fn compile(v: &Value) -> Result<Schema, CompileError> {
    compile_at(v, "")
}

fn compile_at(v: &Value, ptr: &str) -> Result<Schema, CompileError> {
    let obj = match v {
        Value::Bool(b) => return Ok(Schema::Bool(*b)),
        Value::Object(o) => o,
        _ => return Err((ptr.to_owned(), "a schema is an object or a boolean".into())),
    };
    let mut r = Rules::default();
    for (key, value) in obj.iter() {
        let at = format!("{ptr}/{key}");
        let err = |m: &str| Err((at.clone(), m.to_owned()));
        match key {
            k if ANNOTATIONS.contains(&k) => {}
            "type" => {
                let names: Vec<&str> = match value {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => return err("`type` is a type name or an array of them"),
                };
                let mut types = Vec::new();
                for n in names {
                    match ["object", "array", "string", "number", "integer", "boolean", "null"]
                        .iter()
                        .find(|t| **t == n)
                    {
                        Some(t) => types.push(*t),
                        None => return err(&format!("unknown type `{n}`")),
                    }
                }
                r.types = Some(types);
            }
            "properties" => {
                let Some(props) = value.as_object() else { return err("`properties` is an object") };
                for (name, s) in props.iter() {
                    r.properties.push((name.to_owned(), compile_at(s, &format!("{at}/{name}"))?));
                }
            }
            "required" => {
                let Some(list) = value.as_array() else { return err("`required` is an array of names") };
                for n in list {
                    let Some(n) = n.as_str() else { return err("`required` is an array of names") };
                    r.required.push(n.to_owned());
                }
            }
            "additionalProperties" => r.additional = Some(compile_at(value, &at)?),
            "items" => r.items = Some(compile_at(value, &at)?),
            "minItems" => r.min_items = Some(count(value, &at)?),
            "maxItems" => r.max_items = Some(count(value, &at)?),
            "minLength" => r.min_length = Some(count(value, &at)?),
            "maxLength" => r.max_length = Some(count(value, &at)?),
            "minProperties" => r.min_properties = Some(count(value, &at)?),
            "maxProperties" => r.max_properties = Some(count(value, &at)?),
            "enum" => match value.as_array() {
                Some(list) if !list.is_empty() => r.enumeration = Some(list.to_vec()),
                _ => return err("`enum` is a non-empty array"),
            },
            "const" => r.constant = Some(value.clone()),
            "format" => match value.as_str().and_then(Format::parse) {
                Some(f) => r.format = Some(f),
                None => {
                    return err(
                        "unknown format; supported: personnummer, samordningsnummer, hsa-id, kommunkod, date, date-time, base64, icf",
                    );
                }
            },
            "allOf" | "oneOf" => {
                let Some(list) = value.as_array().filter(|l| !l.is_empty()) else {
                    return err(&format!("`{key}` is a non-empty array of schemas"));
                };
                let compiled = list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| compile_at(s, &format!("{at}/{i}")))
                    .collect::<Result<_, _>>()?;
                if key == "allOf" {
                    r.all_of = compiled;
                } else {
                    r.one_of = compiled;
                }
            }
            "not" => r.not = Some(compile_at(value, &at)?),
            "if" => {
                let then = obj.get("then").map(|s| compile_at(s, &format!("{ptr}/then"))).transpose()?;
                let otherwise = obj.get("else").map(|s| compile_at(s, &format!("{ptr}/else"))).transpose()?;
                r.condition =
                    Some(Condition { test: compile_at(value, &at)?, then, otherwise, described: describe(value) });
            }
            "then" | "else" => {
                if obj.get("if").is_none() {
                    return err(&format!("`{key}` without `if`"));
                }
            }
            "x-uniqueBy" => match value.as_str() {
                Some(p) => r.unique_by = Some(p.to_owned()),
                None => return err("`x-uniqueBy` names a property"),
            },
            _ => return err(&format!("the keyword `{key}` is not supported by the gateway's schema checker")),
        }
    }
    Ok(Schema::Rules(Box::new(r)))
}

fn count(v: &Value, at: &str) -> Result<usize, CompileError> {
    v.as_number()
        .and_then(|n| n.as_i64())
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| (at.to_owned(), "a non-negative integer".into()))
}

/// (`category` is "padl", `category` is not "padl") for an `if` of the form
/// `{"properties": {"category": {"const": "padl"}}}`.
fn describe(test: &Value) -> Option<(String, String)> {
    let props = test.get("properties")?.as_object()?;
    if props.len() != 1 {
        return None;
    }
    let (name, s) = props.iter().next()?;
    let value = s.get("const")?.to_json();
    Some((format!("`{name}` is {value}"), format!("`{name}` is not {value}")))
}

/// Where a value sits in the record: `padl[1].activity`.
pub fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_integer() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

static ANY: Schema = Schema::Bool(true);

impl Schema {
    /// The schema of field `name` of an object matching this schema, if any branch declares it.
    pub fn field(&self, name: &str) -> Option<&Schema> {
        let r = match self {
            Schema::Bool(true) => return Some(&ANY),
            Schema::Bool(false) => return None,
            Schema::Rules(r) => r,
        };
        if let Some((_, s)) = r.properties.iter().find(|(n, _)| n == name) {
            return Some(s);
        }
        let branches =
            r.all_of.iter().chain(&r.one_of).chain(r.condition.iter().flat_map(|c| c.then.iter().chain(&c.otherwise)));
        for b in branches {
            if let Some(s) = b.field(name).filter(|s| !matches!(s, Schema::Bool(false))) {
                return Some(s);
            }
        }
        match &r.additional {
            None => Some(&ANY),
            Some(Schema::Bool(false)) => None,
            Some(s) => Some(s),
        }
    }

    /// The schema of an array's items.
    pub fn item(&self) -> Option<&Schema> {
        match self {
            Schema::Bool(true) => Some(&ANY),
            Schema::Bool(false) => None,
            Schema::Rules(r) => r.items.as_ref().or_else(|| r.all_of.iter().find_map(Schema::item)).or(Some(&ANY)),
        }
    }
}

impl Schema {
    /// Checks `v` (at `path`), adding one issue per broken rule.
    pub fn check(&self, v: &Value, path: &str, reference: &Reference, out: &mut Vec<SourceIssue>) {
        match self {
            Schema::Bool(true) => {}
            Schema::Bool(false) => out.push(SourceIssue::new(path, "not allowed here")),
            Schema::Rules(r) => r.check(v, path, reference, out),
        }
    }

    fn passes(&self, v: &Value, reference: &Reference) -> bool {
        let mut issues = Vec::new();
        self.check(v, "", reference, &mut issues);
        issues.is_empty()
    }
}

impl Rules {
    fn check(&self, v: &Value, path: &str, reference: &Reference, out: &mut Vec<SourceIssue>) {
        let ty = type_of(v);
        if let Some(types) = &self.types {
            let ok = types.iter().any(|t| *t == ty || (*t == "number" && ty == "integer"));
            if !ok {
                let want = types.join(" or ");
                out.push(SourceIssue::new(path, format!("must be {} {want}, not {ty}", article(types[0]))));
                return;
            }
        }
        if let Some(c) = &self.constant
            && c != v
        {
            out.push(SourceIssue::new(path, format!("must be {}", c.to_json())));
        }
        if let Some(list) = &self.enumeration
            && !list.contains(v)
        {
            let options: Vec<String> = list.iter().map(Value::to_json).collect();
            out.push(SourceIssue::new(path, format!("must be one of {}", options.join(", "))));
        }
        match v {
            Value::String(s) => self.check_string(s, path, reference, out),
            Value::Array(items) => self.check_array(items, path, reference, out),
            Value::Object(o) => self.check_object(o, path, reference, out),
            _ => {}
        }
        for s in &self.all_of {
            s.check(v, path, reference, out);
        }
        if !self.one_of.is_empty() {
            let passing = self.one_of.iter().filter(|s| s.passes(v, reference)).count();
            if passing != 1 {
                let why = if passing == 0 { "none" } else { "more than one" };
                out.push(SourceIssue::new(path, format!("must match exactly one of its alternatives ({why} matched)")));
            }
        }
        if let Some(n) = &self.not
            && n.passes(v, reference)
        {
            out.push(SourceIssue::new(path, "matches a form that is not allowed here"));
        }
        if let Some(c) = &self.condition {
            let holds = c.test.passes(v, reference);
            let branch = if holds { &c.then } else { &c.otherwise };
            if let Some(b) = branch {
                let start = out.len();
                b.check(v, path, reference, out);
                if let Some((yes, no)) = &c.described {
                    let d = if holds { yes } else { no };
                    for issue in &mut out[start..] {
                        issue.message = format!("{} (when {d})", issue.message);
                    }
                }
            }
        }
    }

    fn check_string(&self, s: &str, path: &str, reference: &Reference, out: &mut Vec<SourceIssue>) {
        let chars = s.chars().count();
        if let Some(min) = self.min_length
            && chars < min
        {
            out.push(SourceIssue::new(path, format!("must have at least {min} characters")));
        }
        if let Some(max) = self.max_length
            && chars > max
        {
            out.push(SourceIssue::new(path, format!("must have at most {max} characters")));
        }
        if let Some(f) = self.format
            && let Err(e) = f.check(s, reference)
        {
            out.push(SourceIssue::new(path, e));
        }
    }

    fn check_array(&self, items: &[Value], path: &str, reference: &Reference, out: &mut Vec<SourceIssue>) {
        if let Some(min) = self.min_items
            && items.len() < min
        {
            out.push(SourceIssue::new(path, format!("must have at least {min} items")));
        }
        if let Some(max) = self.max_items
            && items.len() > max
        {
            out.push(SourceIssue::new(path, format!("must have at most {max} items")));
        }
        if let Some(s) = &self.items {
            let mut at = String::with_capacity(path.len() + 8);
            for (i, item) in items.iter().enumerate() {
                at.clear();
                at.push_str(path);
                at.push('[');
                at.push_str(itoa(i).as_str());
                at.push(']');
                s.check(item, &at, reference, out);
            }
        }
        if let Some(key) = &self.unique_by {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let Some(value) = item.get(key) else { continue };
                if let Some(first) = seen.insert(value.to_json(), i) {
                    out.push(SourceIssue::new(
                        &format!("{path}[{i}].{key}"),
                        format!("{} appears more than once (also at {path}[{first}].{key})", value.to_json()),
                    ));
                }
            }
        }
    }

    fn check_object(&self, o: &crate::json::Object, path: &str, reference: &Reference, out: &mut Vec<SourceIssue>) {
        for name in &self.required {
            if !o.contains_key(name) {
                out.push(SourceIssue::new(&child_path(path, name), "required field is missing"));
            }
        }
        if let Some(min) = self.min_properties
            && o.len() < min
        {
            out.push(SourceIssue::new(path, format!("must have at least {min} field(s)")));
        }
        if let Some(max) = self.max_properties
            && o.len() > max
        {
            let names: Vec<&str> = o.keys().collect();
            out.push(SourceIssue::new(path, format!("must have at most {max} field(s), has {}", names.join(", "))));
        }
        let mut at = String::with_capacity(path.len() + 24);
        for (name, value) in o.iter() {
            at.clear();
            if !path.is_empty() {
                at.push_str(path);
                at.push('.');
            }
            at.push_str(name);
            let at = at.as_str();
            match self.properties.iter().find(|(n, _)| n == name) {
                Some((_, s)) => s.check(value, at, reference, out),
                None => match &self.additional {
                    Some(Schema::Bool(false)) => {
                        out.push(SourceIssue::new(at, "unknown field (not in the input format)"))
                    }
                    Some(s) => s.check(value, at, reference, out),
                    None => {}
                },
            }
        }
    }
}

/// A small index as text without going through `format!`.
fn itoa(i: usize) -> String {
    i.to_string()
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

/// The line each JSON pointer of a (valid) JSON text starts on, for load errors.
pub fn pointer_lines(text: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut scanner = Scanner { b: text.as_bytes(), pos: 0, line: 1 };
    scanner.value("", &mut out);
    out
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            match c {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => return,
            }
            self.pos += 1;
        }
    }

    fn string(&mut self) -> String {
        let start = self.pos + 1;
        self.pos += 1;
        while let Some(&c) = self.b.get(self.pos) {
            self.pos += 1;
            match c {
                b'\\' => self.pos += 1,
                b'"' => break,
                _ => {}
            }
        }
        let raw = &self.b[start..self.pos.saturating_sub(1).max(start)];
        String::from_utf8_lossy(raw).into_owned()
    }

    fn value(&mut self, ptr: &str, out: &mut HashMap<String, usize>) {
        self.skip_ws();
        out.insert(ptr.to_owned(), self.line);
        match self.b.get(self.pos) {
            Some(b'{') => {
                self.pos += 1;
                loop {
                    self.skip_ws();
                    match self.b.get(self.pos) {
                        Some(b'"') => {
                            let key = self.string();
                            self.skip_ws();
                            self.pos += 1; // ':'
                            self.value(&format!("{ptr}/{key}"), out);
                        }
                        Some(b',') => self.pos += 1,
                        _ => {
                            self.pos += 1;
                            return;
                        }
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut i = 0;
                loop {
                    self.skip_ws();
                    match self.b.get(self.pos) {
                        Some(b']') | None => {
                            self.pos += 1;
                            return;
                        }
                        Some(b',') => self.pos += 1,
                        _ => {
                            self.value(&format!("{ptr}/{i}"), out);
                            i += 1;
                        }
                    }
                }
            }
            Some(b'"') => {
                self.string();
            }
            _ => {
                while let Some(&c) = self.b.get(self.pos) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Schema {
        compile(&crate::json::parse(text.as_bytes()).unwrap()).unwrap()
    }

    fn issues(s: &Schema, record: &str) -> Vec<(String, String)> {
        let v = crate::json::parse(record.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.check(&v, "", &Reference::shipped(), &mut out);
        out.into_iter().map(|i| (i.path, i.message)).collect()
    }

    #[test]
    fn objects_refuse_unknown_and_missing_fields_by_path() {
        let s = schema(
            r#"{"type":"object","required":["a"],"additionalProperties":false,
                "properties":{"a":{"type":"array","items":{"type":"object","additionalProperties":false,
                  "properties":{"x":{"enum":["p","q"]}}}}}}"#,
        );
        assert!(issues(&s, r#"{"a":[{"x":"p"}]}"#).is_empty());
        let got = issues(&s, r#"{"a":[{"x":"p"},{"x":"r","y":1}],"b":2}"#);
        assert_eq!(
            got,
            vec![
                ("a[1].x".into(), r#"must be one of "p", "q""#.into()),
                ("a[1].y".into(), "unknown field (not in the input format)".into()),
                ("b".into(), "unknown field (not in the input format)".into()),
            ]
        );
        assert_eq!(issues(&s, "{}"), vec![("a".into(), "required field is missing".into())]);
        assert_eq!(issues(&s, "[]"), vec![("".into(), "must be an object, not array".into())]);
    }

    #[test]
    fn conditions_say_when_they_apply() {
        let s = schema(
            r#"{"if":{"properties":{"category":{"const":"padl"}}},
                "then":{"properties":{"disability":false}},
                "else":{"required":["disability"]}}"#,
        );
        assert_eq!(
            issues(&s, r#"{"category":"padl","disability":{}}"#),
            vec![("disability".into(), r#"not allowed here (when `category` is "padl")"#.into())]
        );
        assert_eq!(
            issues(&s, r#"{"category":"fun"}"#),
            vec![("disability".into(), r#"required field is missing (when `category` is not "padl")"#.into())]
        );
    }

    #[test]
    fn formats_check_swedish_identifiers_and_times() {
        let s = schema(
            r#"{"properties":{"p":{"format":"personnummer"},"h":{"format":"hsa-id"},"k":{"format":"kommunkod"},
                "t":{"format":"date-time"},"d":{"format":"date"},"b":{"format":"base64"}}}"#,
        );
        assert!(
            issues(
                &s,
                r#"{"p":"19121212-1212","h":"SE2120001231-X1","k":"1281","t":"20251121143000","d":"20251121","b":"QUJD"}"#
            )
            .is_empty()
        );
        let got =
            issues(&s, r#"{"p":"191212121213","h":"SE1-X","k":"0180","t":"20250330023000","d":"2025-02-30","b":"@@"}"#);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["p", "h", "k", "t", "d", "b"], "{got:?}");
    }

    #[test]
    fn unique_by_names_the_repeat() {
        let s = schema(r#"{"type":"array","x-uniqueBy":"a"}"#);
        assert_eq!(
            issues(&s, r#"[{"a":"x"},{"a":"y"},{"a":"x"}]"#),
            vec![("[2].a".into(), r#""x" appears more than once (also at [0].a)"#.into())]
        );
    }

    #[test]
    fn unsupported_keywords_are_load_errors_with_their_pointer() {
        let v = crate::json::parse(br#"{"properties":{"a":{"pattern":"x"}}}"#).unwrap();
        let (ptr, msg) = compile(&v).unwrap_err();
        assert_eq!(ptr, "/properties/a/pattern");
        assert!(msg.contains("not supported"), "{msg}");
        let lines = pointer_lines("{\n  \"properties\": {\n    \"a\": {\n      \"pattern\": \"x\"\n    }\n  }\n}\n");
        assert_eq!(lines["/properties/a/pattern"], 4);
    }
}
