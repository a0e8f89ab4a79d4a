//! Extracts search index values from a resource by evaluating the R4
//! search parameter expressions in `params_table.rs`.
//!
//! The evaluator implements the FHIRPath subset those expressions use:
//! member navigation (arrays flatten), `|` unions, `X as T`, `(X as T)`,
//! `X.as(T)`, `X.ofType(T)`, `X.where(resolve() is T)` and
//! `X.where(name = 'literal')`. Each expression is compiled once, with the
//! element types from the R4 StructureDefinitions, into a list of steps; a
//! choice element such as `Observation.effective` becomes a step that reads
//! `effectiveDateTime`, `effectivePeriod`, … with their types known, so the
//! conversion to index values never has to guess a type from the JSON shape.
//!
//! Dates and times without a zone are read as UTC (see `values.rs`).

use std::sync::LazyLock;

use super::params::{self, ElementDef, ParamType, SearchParamDef};
use super::params_table::{ELEMENTS, PARAMS, RESOURCE_TYPES};
use super::values::{date_range, normalize_string};
use crate::json::Value;

/// Separates the texts of one token value (a coding's display and its
/// CodeableConcept's text): each is normalised on its own, and a `:text`
/// search, whose normalised value has no control characters, matches
/// within one of them, never across.
pub const TEXT_SEPARATOR: char = '\u{1f}';

/// One value of one search parameter, ready for an index table.
#[derive(Clone, Debug, PartialEq)]
pub enum IndexValue {
    /// Coding/CodeableConcept codings (+ CodeableConcept.text as `text`),
    /// Identifier (system|value, with type text), code/boolean/id/string/uri
    /// primitives (system None), ContactPoint (value).
    ///
    /// A CodeableConcept yields one value per coding (`text` = the coding's
    /// display). Its own `text` joins the first coding's display after
    /// [`TEXT_SEPARATOR`] — a search reads a resource's rows of a parameter
    /// together, so a row of its own would only cost an index entry — or,
    /// with no coding, is a value with only `text` set.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// `normalized` = lowercased, diacritics removed, whitespace collapsed
    /// (see [`normalize_string`]); `exact` = as written. HumanName yields
    /// family, each given, prefix, suffix and text as separate values;
    /// Address yields each line, city, district, state, postalCode, country, text.
    String {
        exact: String,
        normalized: String,
    },
    /// Inclusive instant range in ms since the Unix epoch (UTC). A Period
    /// runs from its start's low to its end's high (open ends are
    /// `i64::MIN` / `i64::MAX`); a Timing yields each event.
    Date {
        low: i64,
        high: i64,
    },
    /// `reference` as written. For `Type/id`, `Type/id/_history/v` and
    /// absolute URLs ending in `Type/id`, `target_type`/`target_id` are set;
    /// for `urn:uuid:` and contained `#id` references they are None.
    /// `identifier` = Reference.identifier (system, value). Canonical/uri
    /// values of reference parameters: `reference` = the URL.
    Reference {
        reference: Option<String>,
        target_type: Option<String>,
        target_id: Option<String>,
        identifier: Option<(Option<String>, String)>,
    },
    /// A number as its exact JSON text plus its f64.
    Number {
        text: String,
        value: f64,
    },
    Quantity {
        value: f64,
        text: String,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri(String),
}

/// Every (param, value) of a resource to index: all supported parameters
/// of its type but the unions of others, which a search answers from their
/// parts' values ([`params::union_of`]). Unknown types and malformed
/// elements yield nothing; never panics.
pub fn extract(resource: &Value) -> Vec<(&'static SearchParamDef, IndexValue)> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let range = params::range_for(resource_type);
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    let mut scratch = Vec::new();
    for (def, compiled) in PARAMS[range.clone()].iter().zip(&COMPILED[range]) {
        let Ok(expr) = compiled else { continue };
        if params::union_of(resource_type, def.code).is_some() || params::alias_of(resource_type, def.code).is_some() {
            continue;
        }
        for path in &expr.paths {
            nodes.clear();
            nodes.push((resource, path.root));
            for step in &path.steps {
                scratch.clear();
                step.apply(&nodes, resource, &mut scratch);
                std::mem::swap(&mut nodes, &mut scratch);
                if nodes.is_empty() {
                    break;
                }
            }
            for &(node, ty) in &nodes {
                convert(def.kind, ty, node, resource, &mut |v| out.push((def, v)));
            }
        }
    }
    out
}

/// Splits a reference into (type, id) when it is `Type/id`,
/// `Type/id/_history/v`, or an absolute URL ending in one of those, with
/// `Type` an R4 resource type.
pub fn parse_reference(reference: &str) -> Option<(&str, &str)> {
    let (absolute, path) = match reference.find("://") {
        Some(i) => (true, &reference[i + 3..]),
        None => (false, reference),
    };
    let segs: Vec<&str> = path.split('/').collect();
    let n = segs.len();
    let (ty, id, used) = if n >= 4 && segs[n - 2] == "_history" {
        (segs[n - 4], segs[n - 3], 4)
    } else if n >= 2 {
        (segs[n - 2], segs[n - 1], 2)
    } else {
        return None;
    };
    if !absolute && n != used {
        return None;
    }
    let id_ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (id_ok && RESOURCE_TYPES.binary_search(&ty).is_ok()).then_some((ty, id))
}

// ------------------------------------------------------------------ compiled form

/// The compiled expression of every entry of `PARAMS`, same order.
static COMPILED: LazyLock<Vec<Result<Expr, String>>> =
    LazyLock::new(|| PARAMS.iter().map(|p| compile(p.expression, p.resource, p.kind)).collect());

#[derive(Debug)]
struct Expr {
    paths: Vec<Path>,
}

/// One part of a `|` union: steps from the resource root.
#[derive(Debug)]
struct Path {
    root: &'static str,
    steps: Vec<Step>,
}

/// A node with its FHIR type (type code, or backbone element path).
type Node<'a> = (&'a Value, &'static str);

#[derive(Debug)]
enum Step {
    /// Member `key`, arrays flattened; every value has type `ty`.
    Member { key: &'static str, ty: &'static str },
    /// A choice element: the JSON keys (`valueQuantity`, …) and their types.
    Choice(Vec<(String, &'static str)>),
    /// Keeps the nodes of type `ty` (`as`/`ofType` on a non-choice element).
    OfType(&'static str),
    /// Keeps references whose target is of resource type `ty`.
    ResolveIs(&'static str),
    /// Keeps nodes whose primitive member `key` equals `value`.
    WhereEq { key: &'static str, value: &'static str },
}

impl Step {
    fn apply<'a>(&self, nodes: &[Node<'a>], root: &'a Value, out: &mut Vec<Node<'a>>) {
        match self {
            Step::Member { key, ty } => {
                for (node, _) in nodes {
                    push_flat(node.get(key), ty, out);
                }
            }
            Step::Choice(options) => {
                for (node, _) in nodes {
                    for (key, ty) in options {
                        push_flat(node.get(key), ty, out);
                    }
                }
            }
            Step::OfType(ty) => out.extend(nodes.iter().filter(|(_, t)| t == ty)),
            Step::ResolveIs(ty) => {
                out.extend(nodes.iter().filter(|(n, _)| reference_target_type(n, root) == Some(*ty)));
            }
            Step::WhereEq { key, value } => {
                out.extend(nodes.iter().filter(|(n, _)| n.get(key).and_then(Value::as_str) == Some(*value)));
            }
        }
    }
}

fn push_flat<'a>(value: Option<&'a Value>, ty: &'static str, out: &mut Vec<Node<'a>>) {
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => out.extend(items.iter().filter(|v| !matches!(v, Value::Null)).map(|v| (v, ty))),
        Some(v) => out.push((v, ty)),
    }
}

/// The resource type a Reference points to, for `resolve() is T`: from the
/// reference string (a contained `#id` resolves within `root`), or from
/// `Reference.type` when the string names no type (`urn:uuid:`, or only an identifier).
fn reference_target_type<'a>(reference: &'a Value, root: &'a Value) -> Option<&'a str> {
    if let Some(r) = reference.get("reference").and_then(Value::as_str) {
        if let Some(id) = r.strip_prefix('#') {
            return root
                .get("contained")
                .and_then(Value::as_array)?
                .iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?
                .get("resourceType")
                .and_then(Value::as_str);
        }
        if let Some((ty, _)) = parse_reference(r) {
            return Some(ty);
        }
    }
    reference.get("type").and_then(Value::as_str)
}

// ------------------------------------------------------------------ compiler

/// Whether values of FHIR type `ty` can be indexed for a parameter of
/// type `kind`. Must match `CONVERTIBLE` in tools/gen-search-params/gen.py.
fn convertible(kind: ParamType, ty: &str) -> bool {
    let types: &[&str] = match kind {
        ParamType::Token => &[
            "Coding",
            "CodeableConcept",
            "Identifier",
            "ContactPoint",
            "code",
            "boolean",
            "string",
            "id",
            "uri",
            "url",
            "canonical",
            "oid",
            "uuid",
        ],
        ParamType::String => &["string", "markdown", "HumanName", "Address"],
        ParamType::Date => &["date", "dateTime", "instant", "Period", "Timing"],
        ParamType::Reference => &["Reference", "canonical", "uri", "url"],
        ParamType::Quantity => &["Quantity", "Age", "Count", "Distance", "Duration"],
        ParamType::Number => &["integer", "decimal", "positiveInt", "unsignedInt"],
        ParamType::Uri => &["uri", "url", "canonical", "oid", "uuid"],
        ParamType::Composite | ParamType::Special => &[],
    };
    types.contains(&ty)
}

fn element(ctx: &str, name: &str) -> Result<&'static ElementDef, String> {
    let path = format!("{ctx}.{name}");
    ELEMENTS
        .binary_search_by(|e| e.path.cmp(&path))
        .map(|i| &ELEMENTS[i])
        .map_err(|_| format!("unknown element {path}"))
}

/// Upper-cases the first letter: the suffix of a choice element's JSON key.
fn choice_key(name: &str, ty: &str) -> String {
    let mut key = String::with_capacity(name.len() + ty.len());
    key.push_str(name);
    let mut chars = ty.chars();
    if let Some(first) = chars.next() {
        key.push(first.to_ascii_uppercase());
        key.push_str(chars.as_str());
    }
    key
}

/// Compiles an expression for `resource`; the paths whose values `kind`
/// cannot index (e.g. `Observation.value as SampledData` for a quantity) are dropped.
fn compile(expr: &'static str, resource: &'static str, kind: ParamType) -> Result<Expr, String> {
    let tokens = tokenize(expr)?;
    let mut parser = Parser { tokens, pos: 0 };
    let raw = parser.union()?;
    let mut paths = Vec::new();
    for (root, raw_steps) in raw {
        let root = match root {
            r if r == resource => resource,
            "Resource" => "Resource",
            "DomainResource" => "DomainResource",
            other => return Err(format!("expression part rooted at {other}, not {resource}")),
        };
        if let Some(path) = type_path(root, raw_steps, kind)? {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(format!("no value of {expr} can be indexed as {}", kind.as_str()));
    }
    Ok(Expr { paths })
}

/// Resolves a path's element types; `None` when none of its values is indexable.
fn type_path(root: &'static str, raw: Vec<RawStep>, kind: ParamType) -> Result<Option<Path>, String> {
    let mut steps = Vec::new();
    let mut types: Vec<&'static str> = vec![root];
    for step in raw {
        match step {
            RawStep::Member(name) => {
                let [ctx] = types[..] else {
                    return Err(format!("navigation to {name} from several types"));
                };
                let el = element(ctx, name)?;
                types = el.types.to_vec();
                if el.choice {
                    steps.push(Step::Choice(el.types.iter().map(|t| (choice_key(name, t), *t)).collect()));
                } else {
                    steps.push(Step::Member { key: name, ty: el.types[0] });
                }
            }
            RawStep::As(ty) => {
                types.retain(|t| *t == ty);
                match steps.last_mut() {
                    Some(Step::Choice(options)) => options.retain(|(_, t)| *t == ty),
                    _ => steps.push(Step::OfType(ty)),
                }
            }
            RawStep::ResolveIs(ty) => {
                if types != ["Reference"] {
                    return Err("where(resolve() is T) on a non-Reference".into());
                }
                steps.push(Step::ResolveIs(ty));
            }
            RawStep::WhereEq(key, value) => {
                let [ctx] = types[..] else {
                    return Err(format!("where({key}=…) on several types"));
                };
                element(ctx, key)?;
                steps.push(Step::WhereEq { key, value });
            }
        }
    }
    types.retain(|t| convertible(kind, t));
    if types.is_empty() {
        return Ok(None);
    }
    if let Some(Step::Choice(options)) = steps.last_mut() {
        options.retain(|(_, t)| convertible(kind, t));
    }
    Ok(Some(Path { root, steps }))
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(&'static str),
    Str(&'static str),
    Punct(char),
}

fn tokenize(expr: &'static str) -> Result<Vec<Token>, String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'.' | b'(' | b')' | b'|' | b'=' => {
                out.push(Token::Punct(char::from(b[i])));
                i += 1;
            }
            b'\'' => {
                let len = expr[i + 1..].find('\'').ok_or("unterminated string literal")?;
                let lit = &expr[i + 1..i + 1 + len];
                if lit.contains('\\') {
                    return Err("escapes in string literals are not supported".into());
                }
                out.push(Token::Str(lit));
                i += len + 2;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Token::Ident(&expr[start..i]));
            }
            _ => return Err(format!("unsupported syntax at {:?}", &expr[i..])),
        }
    }
    Ok(out)
}

enum RawStep {
    Member(&'static str),
    As(&'static str),
    ResolveIs(&'static str),
    WhereEq(&'static str, &'static str),
}

/// Recursive descent over the subset (grammar as in gen.py):
/// `union := typed ('|' typed)*`, `typed := chain ('as' Type)?`,
/// `chain := ('(' typed ')' | Ident) ('.' call)*`.
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }
    fn punct(&mut self, c: char) -> Result<(), String> {
        match self.tokens.get(self.pos) {
            Some(Token::Punct(p)) if *p == c => {
                self.pos += 1;
                Ok(())
            }
            other => Err(format!("expected '{c}', found {other:?}")),
        }
    }
    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Token::Punct(c))
    }
    fn ident(&mut self) -> Result<&'static str, String> {
        match self.tokens.get(self.pos) {
            Some(Token::Ident(s)) => {
                self.pos += 1;
                Ok(s)
            }
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    fn union(&mut self) -> Result<Vec<(&'static str, Vec<RawStep>)>, String> {
        let mut parts = vec![self.typed()?];
        while self.is_punct('|') {
            self.pos += 1;
            parts.push(self.typed()?);
        }
        match self.peek() {
            None => Ok(parts),
            Some(t) => Err(format!("unsupported operator {t:?}")),
        }
    }

    fn typed(&mut self) -> Result<(&'static str, Vec<RawStep>), String> {
        let (root, mut steps) = self.chain()?;
        if self.peek() == Some(&Token::Ident("as")) {
            self.pos += 1;
            steps.push(RawStep::As(self.ident()?));
        }
        Ok((root, steps))
    }

    fn chain(&mut self) -> Result<(&'static str, Vec<RawStep>), String> {
        let (root, mut steps) = if self.is_punct('(') {
            self.pos += 1;
            let inner = self.typed()?;
            self.punct(')')?;
            inner
        } else {
            (self.ident()?, Vec::new())
        };
        while self.is_punct('.') {
            self.pos += 1;
            let name = self.ident()?;
            if !self.is_punct('(') {
                steps.push(RawStep::Member(name));
                continue;
            }
            self.pos += 1;
            match name {
                "as" | "ofType" => steps.push(RawStep::As(self.ident()?)),
                "where" => steps.push(self.condition()?),
                other => return Err(format!("function {other}() not implemented")),
            }
            self.punct(')')?;
        }
        Ok((root, steps))
    }

    fn condition(&mut self) -> Result<RawStep, String> {
        let first = self.ident()?;
        if first == "resolve" {
            self.punct('(')?;
            self.punct(')')?;
            if self.ident()? != "is" {
                return Err("expected 'is' after resolve()".into());
            }
            return Ok(RawStep::ResolveIs(self.ident()?));
        }
        self.punct('=')?;
        match self.tokens.get(self.pos) {
            Some(Token::Str(lit)) => {
                self.pos += 1;
                Ok(RawStep::WhereEq(first, lit))
            }
            other => Err(format!("where() compares only with a string literal, found {other:?}")),
        }
    }
}

// ------------------------------------------------------------------ conversion

fn str_of<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn owned(node: &Value, key: &str) -> Option<String> {
    str_of(node, key).map(str::to_owned)
}

fn string_value(s: &str) -> IndexValue {
    IndexValue::String { exact: s.to_owned(), normalized: normalize_string(s) }
}

/// Turns one node of FHIR type `ty` into the index values of a `kind` parameter.
fn convert(kind: ParamType, ty: &str, node: &Value, root: &Value, emit: &mut dyn FnMut(IndexValue)) {
    match kind {
        ParamType::Token => token(ty, node, emit),
        ParamType::String => match ty {
            "HumanName" => {
                let parts = ["family", "given", "prefix", "suffix", "text"];
                strings_of(node, &parts, emit);
            }
            "Address" => {
                let parts = ["line", "city", "district", "state", "postalCode", "country", "text"];
                strings_of(node, &parts, emit);
            }
            _ => {
                if let Some(s) = node.as_str().filter(|s| !s.is_empty()) {
                    emit(string_value(s));
                }
            }
        },
        ParamType::Date => match ty {
            "Period" => {
                let bound = |key| node.get(key).and_then(Value::as_str).map(date_range);
                let (start, end) = (bound("start"), bound("end"));
                // A bound that is present but unreadable spoils the period.
                if start.is_none() && end.is_none() || matches!(start, Some(None)) || matches!(end, Some(None)) {
                    return;
                }
                let low = start.flatten().map_or(i64::MIN, |r| r.0);
                let high = end.flatten().map_or(i64::MAX, |r| r.1);
                if low <= high {
                    emit(IndexValue::Date { low, high });
                }
            }
            "Timing" => {
                for event in node.get("event").and_then(Value::as_array).unwrap_or_default() {
                    if let Some((low, high)) = event.as_str().and_then(date_range) {
                        emit(IndexValue::Date { low, high });
                    }
                }
            }
            _ => {
                if let Some((low, high)) = node.as_str().and_then(date_range) {
                    emit(IndexValue::Date { low, high });
                }
            }
        },
        ParamType::Reference => match node {
            Value::String(url) if !url.is_empty() => emit(IndexValue::Reference {
                reference: Some(url.clone()),
                target_type: None,
                target_id: None,
                identifier: None,
            }),
            Value::Object(_) => reference(node, root, emit),
            _ => {}
        },
        ParamType::Number => {
            if let Some(n) = node.as_number() {
                emit(IndexValue::Number { text: n.as_str().to_owned(), value: n.as_f64() });
            }
        }
        ParamType::Quantity => {
            if let Some(n) = node.get("value").and_then(Value::as_number) {
                emit(IndexValue::Quantity {
                    value: n.as_f64(),
                    text: n.as_str().to_owned(),
                    system: owned(node, "system"),
                    code: owned(node, "code"),
                    unit: owned(node, "unit"),
                });
            }
        }
        ParamType::Uri => {
            if let Some(s) = node.as_str().filter(|s| !s.is_empty()) {
                emit(IndexValue::Uri(s.to_owned()));
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

/// Emits each string (or string array item) of the listed members.
fn strings_of(node: &Value, keys: &[&str], emit: &mut dyn FnMut(IndexValue)) {
    for key in keys {
        match node.get(key) {
            Some(Value::String(s)) if !s.is_empty() => emit(string_value(s)),
            Some(Value::Array(items)) => {
                for s in items.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()) {
                    emit(string_value(s));
                }
            }
            _ => {}
        }
    }
}

fn coding(node: &Value, emit: &mut dyn FnMut(IndexValue)) {
    let (system, code, text) = (owned(node, "system"), owned(node, "code"), owned(node, "display"));
    if system.is_some() || code.is_some() || text.is_some() {
        emit(IndexValue::Token { system, code, text });
    }
}

fn token(ty: &str, node: &Value, emit: &mut dyn FnMut(IndexValue)) {
    match ty {
        "Coding" => coding(node, emit),
        "CodeableConcept" => {
            let mut text = owned(node, "text");
            for c in node.get("coding").and_then(Value::as_array).unwrap_or_default() {
                coding(c, &mut |mut v| {
                    if let (IndexValue::Token { text: display, .. }, Some(concept)) = (&mut v, text.take()) {
                        *display = Some(match display.take() {
                            Some(d) => format!("{d}{TEXT_SEPARATOR}{concept}"),
                            None => concept,
                        });
                    }
                    emit(v)
                });
            }
            if let Some(text) = text {
                emit(IndexValue::Token { system: None, code: None, text: Some(text) });
            }
        }
        "Identifier" => {
            let (system, code) = (owned(node, "system"), owned(node, "value"));
            if system.is_some() || code.is_some() {
                let text = node.get("type").and_then(|t| owned(t, "text"));
                emit(IndexValue::Token { system, code, text });
            }
        }
        "ContactPoint" => {
            if let Some(value) = owned(node, "value") {
                emit(IndexValue::Token { system: None, code: Some(value), text: None });
            }
        }
        "boolean" => {
            if let Some(b) = node.as_bool() {
                emit(IndexValue::Token { system: None, code: Some(b.to_string()), text: None });
            }
        }
        _ => {
            if let Some(s) = node.as_str().filter(|s| !s.is_empty()) {
                emit(IndexValue::Token { system: None, code: Some(s.to_owned()), text: None });
            }
        }
    }
}

/// A Reference's row: its target's type as `resolve() is T` sees it (so
/// an alias such as `patient` is the rows of `subject` with target type
/// `Patient`, see [`params::alias_of`]), its id when it is a literal `Type/id`.
fn reference(node: &Value, root: &Value, emit: &mut dyn FnMut(IndexValue)) {
    let reference = str_of(node, "reference");
    let identifier = node.get("identifier").and_then(|i| Some((owned(i, "system"), owned(i, "value")?)));
    if reference.is_none() && identifier.is_none() {
        return; // display-only reference: nothing to search on
    }
    let target = reference.filter(|r| !r.starts_with('#')).and_then(parse_reference);
    emit(IndexValue::Reference {
        reference: reference.map(str::to_owned),
        target_type: target.map(|t| t.0).or_else(|| reference_target_type(node, root)).map(str::to_owned),
        target_id: target.map(|t| t.1.to_owned()),
        identifier,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::values::format_instant;
    use serde_json::json;

    fn values(resource: &Value, code: &str) -> Vec<IndexValue> {
        extract(resource).into_iter().filter(|(p, _)| p.code == code).map(|(_, v)| v).collect()
    }

    fn set(resource: &mut Value, key: &str, value: serde_json::Value) {
        resource.as_object_mut().expect("an object").insert(key, Value::from(value));
    }

    fn tok(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
        IndexValue::Token { system: system.map(Into::into), code: code.map(Into::into), text: text.map(Into::into) }
    }

    fn reference_to(r: &str, ty: Option<&str>, id: Option<&str>) -> IndexValue {
        IndexValue::Reference {
            reference: Some(r.into()),
            target_type: ty.map(Into::into),
            target_id: id.map(Into::into),
            identifier: None,
        }
    }

    fn dates(v: &[IndexValue]) -> Vec<(String, String)> {
        v.iter()
            .map(|d| match d {
                IndexValue::Date { low, high } => {
                    let fmt = |ms: i64| match ms {
                        i64::MIN => "-inf".into(),
                        i64::MAX => "+inf".into(),
                        ms => format_instant(ms),
                    };
                    (fmt(*low), fmt(*high))
                }
                other => panic!("not a date: {other:?}"),
            })
            .collect()
    }

    fn pair(lo: &str, hi: &str) -> (String, String) {
        (lo.into(), hi.into())
    }

    fn observation() -> Value {
        // Parsed from text (not `json!`) so that `72.50` keeps its exact text.
        let text = serde_json::to_string(&json!({
            "resourceType": "Observation",
            "id": "o1",
            "meta": {"profile": ["http://example.org/p"], "tag": [{"system": "urn:t", "code": "x"}]},
            "identifier": [{"system": "urn:ids", "value": "A-1"}],
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"}], "text": "BP"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-02-10T08:30:00+01:00",
            "valueQuantity": {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80}}
            ]
        }))
        .unwrap()
        .replace("72.5", "72.50");
        crate::json::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn every_table_expression_compiles() {
        for (def, compiled) in PARAMS.iter().zip(COMPILED.iter()) {
            assert!(compiled.is_ok(), "{}.{}: {:?}", def.resource, def.code, compiled.as_ref().err());
        }
    }

    #[test]
    fn observation_subject_and_patient_references() {
        let obs = observation();
        assert_eq!(values(&obs, "subject"), [reference_to("Patient/p1", Some("Patient"), Some("p1"))]);
        assert!(values(&obs, "patient").is_empty(), "an alias of subject: no rows of its own");
        let mut group = observation();
        set(&mut group, "subject", json!({"reference": "Group/g1"}));
        assert_eq!(values(&group, "subject").len(), 1);
        assert!(values(&group, "patient").is_empty(), "a Group subject is not a patient");
    }

    #[test]
    fn observation_code_category_status_and_component_code() {
        let obs = observation();
        assert_eq!(
            values(&obs, "code"),
            [tok(Some("http://loinc.org"), Some("85354-9"), Some("Blood pressure\u{1f}BP"))]
        );
        assert_eq!(
            values(&obs, "category"),
            [tok(Some("http://terminology.hl7.org/CodeSystem/observation-category"), Some("vital-signs"), None)]
        );
        assert_eq!(values(&obs, "status"), [tok(None, Some("final"), None)]);
        let comp: Vec<_> = values(&obs, "component-code");
        assert_eq!(
            comp,
            [tok(Some("http://loinc.org"), Some("8480-6"), None), tok(Some("http://loinc.org"), Some("8462-4"), None)]
        );
        // Answered from `code` and `component-code`, with no values of its own.
        assert!(values(&obs, "combo-code").is_empty());
        assert_eq!(values(&obs, "identifier"), [tok(Some("urn:ids"), Some("A-1"), None)]);
        assert_eq!(values(&obs, "_tag"), [tok(Some("urn:t"), Some("x"), None)]);
        assert_eq!(values(&obs, "_profile"), [IndexValue::Uri("http://example.org/p".into())]);
    }

    #[test]
    fn observation_date_from_effective_date_time_in_utc() {
        let v = values(&observation(), "date");
        assert_eq!(dates(&v), [pair("2024-02-10T07:30:00.000Z", "2024-02-10T07:30:00.999Z")]);
    }

    #[test]
    fn observation_date_from_effective_period_with_open_end() {
        let mut obs = observation();
        obs.as_object_mut().unwrap().remove("effectiveDateTime");
        set(&mut obs, "effectivePeriod", json!({"start": "2024-02"}));
        assert_eq!(dates(&values(&obs, "date")), [pair("2024-02-01T00:00:00.000Z", "+inf")]);
        set(&mut obs, "effectivePeriod", json!({"start": "2024-01-05", "end": "2024-01-06"}));
        assert_eq!(dates(&values(&obs, "date")), [pair("2024-01-05T00:00:00.000Z", "2024-01-06T23:59:59.999Z")]);
    }

    #[test]
    fn observation_value_quantity_keeps_exact_text() {
        let v = values(&observation(), "value-quantity");
        assert_eq!(
            v,
            [IndexValue::Quantity {
                value: 72.5,
                text: "72.50".into(),
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("kg".into()),
                unit: Some("kg".into()),
            }]
        );
        assert_eq!(values(&observation(), "component-value-quantity").len(), 2);
        assert!(values(&observation(), "combo-value-quantity").is_empty(), "answered from its parts");
        assert!(values(&observation(), "value-concept").is_empty());
    }

    #[test]
    fn observation_value_string_reads_string_and_concept_text() {
        let mut obs = observation();
        obs.as_object_mut().unwrap().remove("valueQuantity");
        set(&mut obs, "valueString", json!("Mycket Bra"));
        assert_eq!(
            values(&obs, "value-string"),
            [IndexValue::String { exact: "Mycket Bra".into(), normalized: "mycket bra".into() }]
        );
        obs.as_object_mut().unwrap().remove("valueString");
        set(&mut obs, "valueCodeableConcept", json!({"text": "Ökad"}));
        assert_eq!(
            values(&obs, "value-string"),
            [IndexValue::String { exact: "Ökad".into(), normalized: "okad".into() }]
        );
        assert_eq!(values(&obs, "value-concept"), [tok(None, None, Some("Ökad"))]);
    }

    fn task() -> Value {
        Value::from(json!({
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "focus": {"reference": "DocumentReference/d1"},
            "for": {"reference": "https://fhir.example.se/base/Patient/p9/_history/3"},
            "authoredOn": "2024-05-01T12:00:00Z",
            "requester": {"reference": "PractitionerRole/r1"},
            "owner": {"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": "SE2321000016-1234"}, "display": "Vårdcentral"}
        }))
    }

    #[test]
    fn task_owner_requester_status_code_focus_patient_and_authored_on() {
        let t = task();
        assert_eq!(
            values(&t, "owner"),
            [IndexValue::Reference {
                reference: None,
                target_type: None,
                target_id: None,
                identifier: Some((Some("urn:oid:1.2.752.29.4.19".into()), "SE2321000016-1234".into())),
            }]
        );
        assert_eq!(
            values(&t, "requester"),
            [reference_to("PractitionerRole/r1", Some("PractitionerRole"), Some("r1"))]
        );
        assert_eq!(values(&t, "status"), [tok(None, Some("requested"), None)]);
        assert_eq!(values(&t, "code"), [tok(Some("http://hl7.org/fhir/CodeSystem/task-code"), Some("fulfill"), None)]);
        assert_eq!(values(&t, "focus"), [reference_to("DocumentReference/d1", Some("DocumentReference"), Some("d1"))]);
        let abs = "https://fhir.example.se/base/Patient/p9/_history/3";
        assert!(values(&t, "patient").is_empty(), "an alias of subject");
        assert_eq!(values(&t, "subject"), [reference_to(abs, Some("Patient"), Some("p9"))]);
        assert_eq!(dates(&values(&t, "authored-on")), [pair("2024-05-01T12:00:00.000Z", "2024-05-01T12:00:00.999Z")]);
    }

    #[test]
    fn document_reference_type_subject_patient_date_and_author() {
        let d = Value::from(json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"},
            "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]},
            "subject": {"reference": "urn:uuid:0a6a6d3a-1b2c-4d5e-8f90-123456789abc", "type": "Patient"},
            "date": "2024-06-01T09:00:00.123+02:00",
            "author": [{"reference": "Practitioner/pr1"}, {"reference": "Organization/org1"}],
            "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/b1"}}]
        }));
        assert_eq!(values(&d, "type"), [tok(Some("http://loinc.org"), Some("18842-5"), Some("Discharge summary"))]);
        let uuid = "urn:uuid:0a6a6d3a-1b2c-4d5e-8f90-123456789abc";
        assert_eq!(
            values(&d, "subject"),
            [reference_to(uuid, Some("Patient"), None)],
            "Reference.type names the target"
        );
        assert!(values(&d, "patient").is_empty(), "an alias of subject");
        assert_eq!(dates(&values(&d, "date")), [pair("2024-06-01T07:00:00.123Z", "2024-06-01T07:00:00.123Z")]);
        assert_eq!(
            values(&d, "author"),
            [
                reference_to("Practitioner/pr1", Some("Practitioner"), Some("pr1")),
                reference_to("Organization/org1", Some("Organization"), Some("org1"))
            ]
        );
        assert_eq!(values(&d, "identifier"), [tok(Some("urn:ietf:rfc:3986"), Some("urn:oid:1.2.3"), None)]);
        assert_eq!(values(&d, "contenttype"), [tok(None, Some("application/pdf"), None)]);
        assert_eq!(values(&d, "location"), [IndexValue::Uri("Binary/b1".into())]);
    }

    fn patient() -> Value {
        Value::from(json!({
            "resourceType": "Patient",
            "identifier": [{"system": "http://electronichealth.se/identifier/personnummer", "value": "191212121212", "type": {"text": "Personnummer"}}],
            "active": true,
            "name": [{"family": "Tolvansson", "given": ["Tolva", "Åke"], "text": "Tolva Åke Tolvansson"}],
            "telecom": [{"system": "phone", "value": "+46 8 123 456"}, {"system": "email", "value": "tolva@example.se"}],
            "gender": "male",
            "birthDate": "1912-12-12",
            "address": [{"line": ["Storgatan 1"], "city": "Göteborg", "postalCode": "411 01"}],
            "managingOrganization": {"reference": "Organization/org1"},
            "deceasedDateTime": "2001-01-01"
        }))
    }

    #[test]
    fn patient_identifier_with_type_text() {
        assert_eq!(
            values(&patient(), "identifier"),
            [tok(
                Some("http://electronichealth.se/identifier/personnummer"),
                Some("191212121212"),
                Some("Personnummer")
            )]
        );
    }

    #[test]
    fn patient_names_are_indexed_exact_and_normalized() {
        let p = patient();
        assert_eq!(
            values(&p, "family"),
            [IndexValue::String { exact: "Tolvansson".into(), normalized: "tolvansson".into() }]
        );
        let given = values(&p, "given");
        assert_eq!(given[1], IndexValue::String { exact: "Åke".into(), normalized: "ake".into() });
        let name = values(&p, "name");
        assert_eq!(name.len(), 4, "family, two given, text: {name:?}");
        let address = values(&p, "address");
        assert!(address.contains(&IndexValue::String { exact: "Göteborg".into(), normalized: "goteborg".into() }));
        assert_eq!(address.len(), 3);
    }

    #[test]
    fn patient_birthdate_gender_organization_active_and_telecom_filters() {
        let p = patient();
        assert_eq!(dates(&values(&p, "birthdate")), [pair("1912-12-12T00:00:00.000Z", "1912-12-12T23:59:59.999Z")]);
        assert_eq!(values(&p, "gender"), [tok(None, Some("male"), None)]);
        assert_eq!(values(&p, "organization"), [reference_to("Organization/org1", Some("Organization"), Some("org1"))]);
        assert_eq!(values(&p, "active"), [tok(None, Some("true"), None)]);
        assert_eq!(values(&p, "email"), [tok(None, Some("tolva@example.se"), None)]);
        assert_eq!(values(&p, "phone"), [tok(None, Some("+46 8 123 456"), None)]);
        assert_eq!(values(&p, "telecom").len(), 2);
        assert_eq!(dates(&values(&p, "death-date")), [pair("2001-01-01T00:00:00.000Z", "2001-01-01T23:59:59.999Z")]);
    }

    #[test]
    fn care_plan_patient_date_and_activity_timing_events() {
        let c = Value::from(json!({
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "category": [{"text": "Vårdplan"}],
            "subject": {"reference": "Patient/p1"},
            "period": {"end": "2024-12-31"},
            "instantiatesCanonical": ["http://example.org/PlanDefinition/pd|1.0"],
            "activity": [{"detail": {"status": "scheduled", "code": {"coding": [{"code": "x"}]},
                "scheduledTiming": {"event": ["2024-03-01", "2024-03-08"]}}},
                {"detail": {"status": "scheduled", "scheduledString": "varje vecka"}}]
        }));
        assert_eq!(values(&c, "subject"), [reference_to("Patient/p1", Some("Patient"), Some("p1"))]);
        assert_eq!(dates(&values(&c, "date")), [pair("-inf", "2024-12-31T23:59:59.999Z")]);
        assert_eq!(values(&c, "activity-date").len(), 2, "two Timing events, the string is not a date");
        assert_eq!(values(&c, "activity-code"), [tok(None, Some("x"), None)]);
        assert_eq!(values(&c, "category"), [tok(None, None, Some("Vårdplan"))]);
        assert_eq!(
            values(&c, "instantiates-canonical"),
            [reference_to("http://example.org/PlanDefinition/pd|1.0", None, None)]
        );
    }

    #[test]
    fn goal_start_date_only_from_start_date_not_concept() {
        let g = Value::from(json!({
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "subject": {"reference": "Patient/p1"},
            "startDate": "2024-01-15",
            "target": [{"dueDate": "2024-06-30"}, {"dueDuration": {"value": 3, "unit": "mo"}}]
        }));
        assert_eq!(dates(&values(&g, "start-date")), [pair("2024-01-15T00:00:00.000Z", "2024-01-15T23:59:59.999Z")]);
        assert_eq!(dates(&values(&g, "target-date")), [pair("2024-06-30T00:00:00.000Z", "2024-06-30T23:59:59.999Z")]);
        assert_eq!(values(&g, "lifecycle-status"), [tok(None, Some("active"), None)]);
        assert_eq!(values(&g, "subject").len(), 1);
        let concept = Value::from(json!({"resourceType": "Goal", "startCodeableConcept": {"text": "x"}}));
        assert!(values(&concept, "start-date").is_empty());
    }

    #[test]
    fn provenance_target_and_patient() {
        let p = Value::from(json!({
            "resourceType": "Provenance",
            "target": [{"reference": "Observation/o1"}, {"reference": "Patient/p1/_history/2"}],
            "recorded": "2024-01-01T10:00:00Z",
            "occurredDateTime": "2024-01-01",
            "agent": [{"who": {"reference": "Practitioner/x"}}]
        }));
        assert_eq!(
            values(&p, "target"),
            [
                reference_to("Observation/o1", Some("Observation"), Some("o1")),
                reference_to("Patient/p1/_history/2", Some("Patient"), Some("p1"))
            ]
        );
        assert!(values(&p, "patient").is_empty(), "an alias of target");
        assert_eq!(values(&p, "agent").len(), 1);
        assert_eq!(values(&p, "when").len(), 1);
    }

    #[test]
    fn audit_event_patient_from_entity_what_agent_and_date() {
        let a = Value::from(json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
            "recorded": "2024-03-03T03:03:03.3Z",
            "outcome": "0",
            "agent": [{"who": {"reference": "Practitioner/pr1"}, "requestor": true, "name": "Doktor Ödman"}],
            "source": {"observer": {"reference": "Device/gw"}},
            "entity": [{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Observation/o1"}}]
        }));
        assert_eq!(values(&a, "patient"), [reference_to("Patient/p1", Some("Patient"), Some("p1"))]);
        assert_eq!(values(&a, "agent"), [reference_to("Practitioner/pr1", Some("Practitioner"), Some("pr1"))]);
        assert_eq!(values(&a, "entity").len(), 2);
        assert_eq!(dates(&values(&a, "date")), [pair("2024-03-03T03:03:03.300Z", "2024-03-03T03:03:03.399Z")]);
        assert_eq!(
            values(&a, "type"),
            [tok(Some("http://dicom.nema.org/resources/ontology/DCM"), Some("110110"), None)]
        );
        assert_eq!(
            values(&a, "agent-name"),
            [IndexValue::String { exact: "Doktor Ödman".into(), normalized: "doktor odman".into() }]
        );
    }

    #[test]
    fn contained_reference_resolves_within_the_resource() {
        let obs = Value::from(json!({
            "resourceType": "Observation",
            "contained": [{"resourceType": "Patient", "id": "p"}],
            "subject": {"reference": "#p"}
        }));
        assert_eq!(
            values(&obs, "subject"),
            [reference_to("#p", Some("Patient"), None)],
            "the contained resource's type"
        );
    }

    #[test]
    fn references_are_split_only_when_they_name_a_resource_type() {
        assert_eq!(parse_reference("Patient/1"), Some(("Patient", "1")));
        assert_eq!(parse_reference("Patient/1/_history/2"), Some(("Patient", "1")));
        assert_eq!(parse_reference("http://x.se/fhir/Observation/a.b-c"), Some(("Observation", "a.b-c")));
        assert_eq!(parse_reference("Foo/1"), None);
        assert_eq!(parse_reference("a/Patient/1"), None);
        assert_eq!(parse_reference("Patient/"), None);
        assert_eq!(parse_reference("Patient/a_b"), None);
        assert_eq!(parse_reference("urn:uuid:1234"), None);
        assert_eq!(parse_reference("#x"), None);
    }

    #[test]
    fn never_panics_on_odd_json() {
        let odd = [
            json!(null),
            json!([]),
            json!({"resourceType": 5}),
            json!({"resourceType": "Nope"}),
            json!({"resourceType": "Observation", "subject": [[{"reference": 1}]], "code": "x", "component": {"code": []},
                   "effectivePeriod": {"start": "garbage"}, "valueQuantity": {"value": "1"}, "category": [null, 1, "a"]}),
            json!({"resourceType": "Patient", "name": "x", "telecom": [{"system": 1}], "birthDate": 19121212, "identifier": {"value": null}}),
            json!({"resourceType": "Observation", "contained": "x", "subject": {"reference": "#nope"}}),
        ];
        for v in odd {
            let _ = extract(&Value::from(v));
        }
    }
}
