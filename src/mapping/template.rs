//! Templates: the FHIR shape a mapping writes out, with `{{ expression }}`
//! placeholders, `$for` repetition and `$if` conditions, compiled once and
//! evaluated per record.
//!
//! Expressions are a path into the record (`careGiver.hsaId`, `a.activity`
//! inside `"$for" = "a in padl"`), a literal (`'final'`) or a reference to
//! another resource of the same record (`ref patient`, `ref goal g`),
//! followed by filters (`| datetime`, `| code padl`, `| default 'x'`).

use crate::{
    identity::{HSA_ID_SYSTEM, HsaId, PatientId},
    json::{Object, Value},
};

use super::{KEY_REFERENCE_PREFIX, SourceIssue, schema::Schema, time, tree::Node, tree::Spanned};

/// A compile error: the line and what is wrong.
pub type TemplateError = (usize, String);

/// A compiled template node.
#[derive(Debug)]
pub enum Tpl {
    /// A constant.
    Literal(Value),
    /// `"{{ expr }}"`: the expression's own value (string, object, boolean…).
    Expr(Expr),
    /// `"text {{ expr }} text"`: a string; omitted when a part is missing.
    Interpolated(Vec<Part>),
    Object(Vec<(String, Tpl)>, Option<Cond>),
    /// Array items; an item with `$for` expands to one element per source item.
    Array(Vec<Item>),
}

#[derive(Debug)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

#[derive(Debug)]
pub struct Item {
    pub each: Option<Loop>,
    pub tpl: Tpl,
}

/// `"$for" = "a in padl"`.
#[derive(Debug)]
pub struct Loop {
    pub var: String,
    pub over: Path,
}

/// `category == 'padl'`, `!comment`, `approvedForPatient`.
#[derive(Debug)]
pub enum Cond {
    Present(Path),
    Absent(Path),
    Equals(Path, String),
    NotEquals(Path, String),
}

#[derive(Debug)]
pub struct Expr {
    term: Term,
    filters: Vec<Filter>,
}

#[derive(Debug)]
enum Term {
    Path(Path),
    Literal(String),
    Ref { key: String, var: Option<usize> },
}

#[derive(Debug)]
enum Filter {
    DateTime,
    Date,
    Code(String),
    Lookup(String),
    PatientIdentifier,
    HsaIdentifier,
    Organisationsnummer,
    Default(Value),
}

/// A path into the record: from the root, or from a loop variable (its depth in the scope).
#[derive(Clone, Debug)]
pub struct Path {
    var: Option<usize>,
    segs: Vec<Seg>,
    text: String,
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// What compilation needs to know: the record's schema, the loop variables in
/// scope (with their item schemas), the code maps and the resource keys.
pub struct Scope<'a> {
    pub schema: &'a Schema,
    pub vars: Vec<(String, &'a Schema)>,
    pub codes: &'a [String],
    /// Resource keys and the loop variable name they repeat over, if any.
    pub keys: &'a [(String, bool)],
}

impl<'a> Scope<'a> {
    fn with_var(&self, var: String, schema: &'a Schema) -> Scope<'a> {
        let mut vars = self.vars.clone();
        vars.push((var, schema));
        Scope { schema: self.schema, vars, codes: self.codes, keys: self.keys }
    }
}

/// Parses `a.b[0].c` against the scope, checking that each field exists in the input schema.
pub fn parse_path(text: &str, scope: &Scope<'_>, line: usize) -> Result<Path, TemplateError> {
    let mut segs = Vec::new();
    for part in text.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
            return Err((line, format!("`{text}` is not a path (fields separated by dots, e.g. careGiver.hsaId)")));
        }
        segs.push(Seg::Key(name.to_owned()));
        while let Some(close) = rest.find(']') {
            let index = rest[1..close]
                .parse()
                .map_err(|_| (line, format!("`{text}`: an index is a number in brackets, e.g. padl[0]")))?;
            segs.push(Seg::Index(index));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            return Err((line, format!("`{text}` is not a path")));
        }
    }
    let (var, mut schema, first) = match &segs[0] {
        Seg::Key(name) => match scope.vars.iter().rposition(|(v, _)| v == name) {
            Some(depth) => (Some(depth), scope.vars[depth].1, 1),
            None => (None, scope.schema, 0),
        },
        Seg::Index(_) => (None, scope.schema, 0),
    };
    for seg in &segs[first..] {
        let next = match seg {
            Seg::Key(k) => schema.field(k),
            Seg::Index(_) => schema.item(),
        };
        schema = next.ok_or_else(|| {
            (
                line,
                format!(
                    "`{text}`: the input schema has no field here (a typo, or a field the schema does not declare?)"
                ),
            )
        })?;
    }
    Ok(Path { var, segs, text: text.to_owned() })
}

fn parse_loop(text: &str, scope: &Scope<'_>, line: usize) -> Result<(Loop, String), TemplateError> {
    let mut words = text.split_whitespace();
    let (Some(var), Some("in"), Some(over), None) = (words.next(), words.next(), words.next(), words.next()) else {
        return Err((line, format!("`{text}`: a loop reads `NAME in PATH`, e.g. \"a in padl\"")));
    };
    if scope.keys.iter().any(|(k, _)| k == var) || var.contains(['.', '[']) {
        return Err((line, format!("`{var}` cannot name a loop variable")));
    }
    let over = parse_path(over, scope, line)?;
    Ok((Loop { var: var.to_owned(), over }, var.to_owned()))
}

/// The item schema of a loop's array.
fn loop_schema<'a>(l: &Loop, scope: &Scope<'a>, line: usize) -> Result<&'a Schema, TemplateError> {
    let mut schema = match l.over.var {
        Some(d) => scope.vars[d].1,
        None => scope.schema,
    };
    let first = usize::from(l.over.var.is_some());
    for seg in &l.over.segs[first..] {
        schema = match seg {
            Seg::Key(k) => schema.field(k),
            Seg::Index(_) => schema.item(),
        }
        .ok_or_else(|| (line, format!("`{}` is not in the input schema", l.over.text)))?;
    }
    schema.item().ok_or_else(|| (line, format!("`{}` is not an array in the input schema", l.over.text)))
}

/// Compiles a loop header, returning the loop and the scope inside it.
pub fn compile_loop<'a>(text: &str, scope: &Scope<'a>, line: usize) -> Result<(Loop, Scope<'a>), TemplateError> {
    let (l, var) = parse_loop(text, scope, line)?;
    let item = loop_schema(&l, scope, line)?;
    let inner = scope.with_var(var, item);
    Ok((l, inner))
}

pub fn parse_cond(text: &str, scope: &Scope<'_>, line: usize) -> Result<Cond, TemplateError> {
    let text = text.trim();
    for (op, negate) in [("!=", true), ("==", false)] {
        if let Some((lhs, rhs)) = text.split_once(op) {
            let value = rhs.trim();
            let Some(value) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
                return Err((line, format!("`{text}`: compare with a quoted literal, e.g. category == 'padl'")));
            };
            let path = parse_path(lhs.trim(), scope, line)?;
            return Ok(if negate {
                Cond::NotEquals(path, value.to_owned())
            } else {
                Cond::Equals(path, value.to_owned())
            });
        }
    }
    match text.strip_prefix('!') {
        Some(p) => Ok(Cond::Absent(parse_path(p.trim(), scope, line)?)),
        None => Ok(Cond::Present(parse_path(text, scope, line)?)),
    }
}

fn parse_expr(text: &str, scope: &Scope<'_>, line: usize) -> Result<Expr, TemplateError> {
    let mut stages = text.split('|').map(str::trim);
    let head = stages.next().unwrap_or_default();
    let term = if let Some(lit) = head.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Term::Literal(lit.to_owned())
    } else if let Some(rest) = head.strip_prefix("ref ") {
        let mut words = rest.split_whitespace();
        let key = words.next().unwrap_or_default().to_owned();
        let Some((_, repeated)) = scope.keys.iter().find(|(k, _)| *k == key) else {
            return Err((line, format!("`ref {key}`: no resource has the key `{key}`")));
        };
        let var = match (words.next(), repeated) {
            (Some(v), true) => Some(
                scope
                    .vars
                    .iter()
                    .rposition(|(name, _)| name == v)
                    .ok_or_else(|| (line, format!("`ref {key} {v}`: `{v}` is not a loop variable here")))?,
            ),
            (None, false) => None,
            (None, true) => {
                return Err((line, format!("`{key}` is repeated: say which one, e.g. `ref {key} g` inside a loop")));
            }
            (Some(_), false) => return Err((line, format!("`{key}` is not repeated: write `ref {key}`"))),
        };
        Term::Ref { key, var }
    } else {
        Term::Path(parse_path(head, scope, line)?)
    };
    let mut filters = Vec::new();
    for stage in stages {
        let (name, arg) = match stage.split_once(char::is_whitespace) {
            Some((n, a)) => (n, Some(a.trim())),
            None => (stage, None),
        };
        let filter = match (name, arg) {
            ("datetime", None) => Filter::DateTime,
            ("date", None) => Filter::Date,
            ("patient_identifier", None) => Filter::PatientIdentifier,
            ("hsa_identifier", None) => Filter::HsaIdentifier,
            ("organisationsnummer", None) => Filter::Organisationsnummer,
            ("code" | "lookup", Some(map)) => {
                if !scope.codes.iter().any(|c| c == map) {
                    return Err((line, format!("`{name} {map}`: there is no code map `[codes.{map}]`")));
                }
                if name == "code" { Filter::Code(map.to_owned()) } else { Filter::Lookup(map.to_owned()) }
            }
            ("default", Some(v)) => {
                match (v, v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')), crate::json::Number::parse(v)) {
                    (_, Some(s), _) => Filter::Default(Value::String(s.to_owned())),
                    ("true", ..) => Filter::Default(Value::Bool(true)),
                    ("false", ..) => Filter::Default(Value::Bool(false)),
                    (_, None, Some(n)) => Filter::Default(Value::Number(n)),
                    _ => {
                        return Err((
                            line,
                            "`default` takes a quoted literal, true, false or a number, e.g. default 'unknown'".into(),
                        ));
                    }
                }
            }
            _ => {
                return Err((
                    line,
                    format!(
                        "unknown filter `{stage}`; filters: datetime, date, code MAP, lookup MAP, patient_identifier, hsa_identifier, organisationsnummer, default X"
                    ),
                ));
            }
        };
        filters.push(filter);
    }
    Ok(Expr { term, filters })
}

/// Compiles a template node (a resource body or part of one).
pub fn compile(node: &Spanned, scope: &Scope<'_>) -> Result<Tpl, TemplateError> {
    match &node.node {
        Node::Str(s) => compile_string(s, scope, node.line),
        Node::Int(i) => Ok(Tpl::Literal(Value::from(*i))),
        Node::Float(f) => Ok(Tpl::Literal(Value::Number(
            crate::json::Number::parse(f).ok_or((node.line, format!("`{f}` is not a JSON number")))?,
        ))),
        Node::Bool(b) => Ok(Tpl::Literal(Value::Bool(*b))),
        Node::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                match item.get("$for") {
                    Some(header) => {
                        let text = header.as_str().ok_or((header.line, "`$for` is a string".to_owned()))?;
                        let (each, inner) = compile_loop(text, scope, header.line)?;
                        out.push(Item { each: Some(each), tpl: compile(item, &inner)? });
                    }
                    None => out.push(Item { each: None, tpl: compile(item, scope)? }),
                }
            }
            Ok(Tpl::Array(out))
        }
        Node::Table(fields) => {
            let mut out = Vec::new();
            let mut cond = None;
            for (key, value) in fields {
                match key.as_str() {
                    "$for" => {} // handled by the enclosing array
                    "$if" => {
                        let text = value.as_str().ok_or((value.line, "`$if` is a string".to_owned()))?;
                        cond = Some(parse_cond(text, scope, value.line)?);
                    }
                    k if k.starts_with('$') => {
                        return Err((value.line, format!("unknown directive `{k}`; directives: $for, $if")));
                    }
                    _ => out.push((key.clone(), compile(value, scope)?)),
                }
            }
            if fields.iter().any(|(k, _)| k == "$for") && scope.vars.is_empty() && out.is_empty() {
                return Err((node.line, "a `$for` table needs content".into()));
            }
            Ok(Tpl::Object(out, cond))
        }
    }
}

fn compile_string(s: &str, scope: &Scope<'_>, line: usize) -> Result<Tpl, TemplateError> {
    if !s.contains("{{") {
        return Ok(Tpl::Literal(Value::String(s.to_owned())));
    }
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find("}}") else {
            return Err((line, format!("`{s}`: `{{{{` without `}}}}`")));
        };
        parts.push(Part::Expr(parse_expr(rest[open + 2..open + close].trim(), scope, line)?));
        rest = &rest[open + close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    if parts.len() == 1 && matches!(parts[0], Part::Expr(_)) {
        let Some(Part::Expr(e)) = parts.pop() else { unreachable!("checked above") };
        return Ok(Tpl::Expr(e));
    }
    Ok(Tpl::Interpolated(parts))
}

/// A code map: local value → coding.
#[derive(Debug)]
pub struct CodeMap {
    pub name: String,
    pub entries: Vec<(String, Value)>,
}

/// Evaluation state for one record.
pub struct Ctx<'a> {
    pub root: &'a Value,
    /// Loop variables: the item, its index, its path in the record.
    pub vars: Vec<(&'a Value, usize, String)>,
    pub codes: &'a [CodeMap],
}

impl<'a> Ctx<'a> {
    fn resolve(&self, p: &Path) -> Option<&'a Value> {
        let (mut v, first) = match p.var {
            Some(d) => (Some(self.vars[d].0), 1),
            None => (Some(self.root), 0),
        };
        for seg in &p.segs[first..] {
            v = match seg {
                Seg::Key(k) => v.and_then(|v| v.get(k)),
                Seg::Index(i) => v.and_then(Value::as_array).and_then(|a| a.get(*i)),
            };
        }
        v.filter(|v| !matches!(v, Value::Null))
    }

    /// Where `p` points in the record (`padl[1].activity`), for messages.
    fn location(&self, p: &Path) -> String {
        let (mut at, first) = match p.var {
            Some(d) => (self.vars[d].2.clone(), 1),
            None => (String::new(), 0),
        };
        for seg in &p.segs[first..] {
            match seg {
                Seg::Key(k) => at = super::schema::child_path(&at, k),
                Seg::Index(i) => at = format!("{at}[{i}]"),
            }
        }
        at
    }

    pub fn truth(&self, c: &Cond) -> bool {
        match c {
            Cond::Present(p) => matches!(self.resolve(p), Some(v) if v != &Value::Bool(false)),
            Cond::Absent(p) => !matches!(self.resolve(p), Some(v) if v != &Value::Bool(false)),
            Cond::Equals(p, s) => self.resolve(p).and_then(Value::as_str) == Some(s.as_str()),
            Cond::NotEquals(p, s) => self.resolve(p).and_then(Value::as_str) != Some(s.as_str()),
        }
    }

    /// The items of a loop's array with their paths.
    pub fn items(&self, l: &Loop) -> (&'a [Value], String) {
        match self.resolve(&l.over).and_then(Value::as_array) {
            Some(items) if !items.is_empty() => (items, self.location(&l.over)),
            _ => (&[], String::new()),
        }
    }

    pub fn eval_expr(&self, e: &Expr) -> Result<Option<Value>, SourceIssue> {
        let (mut value, path) = match &e.term {
            Term::Literal(s) => (Some(Value::String(s.clone())), None),
            Term::Path(p) => (self.resolve(p).cloned(), Some(p)),
            Term::Ref { key, var } => {
                let reference = match var {
                    Some(d) => format!("{KEY_REFERENCE_PREFIX}{key}[{}]", self.vars[*d].1),
                    None => format!("{KEY_REFERENCE_PREFIX}{key}"),
                };
                (Some(Value::String(reference)), None)
            }
        };
        if e.filters.is_empty() {
            return Ok(value);
        }
        // Where the value came from, worked out only when a filter refuses it.
        let at = || path.map(|p| self.location(p)).unwrap_or_default();
        let text = |v: &Value| -> Result<String, SourceIssue> {
            match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(SourceIssue::new(&at(), format!("must be a string, not {}", other.kind()))),
            }
        };
        for f in &e.filters {
            value = match (f, value) {
                (Filter::Default(d), None) => Some(d.clone()),
                (_, None) => None,
                (Filter::Default(_), v) => v,
                (Filter::DateTime, Some(v)) => {
                    Some(Value::String(time::date_time(&text(&v)?).map_err(|m| SourceIssue::new(&at(), m))?))
                }
                (Filter::Date, Some(v)) => {
                    Some(Value::String(time::date(&text(&v)?).map_err(|m| SourceIssue::new(&at(), m))?))
                }
                (Filter::Code(map), Some(v)) => Some(self.code(map, &text(&v)?, &at)?),
                (Filter::Lookup(map), Some(v)) => self.code(map, &text(&v)?, &at)?.get("code").cloned(),
                (Filter::PatientIdentifier, Some(v)) => Some(patient_identifier(&v, &at())?),
                (Filter::Organisationsnummer, Some(v)) => {
                    let hsa = HsaId::parse(&text(&v)?).map_err(|e| SourceIssue::new(&at(), e.0))?;
                    Some(Value::String(hsa.organisationsnummer().to_owned()))
                }
                (Filter::HsaIdentifier, Some(v)) => {
                    let mut o = Object::new();
                    o.insert("system", HSA_ID_SYSTEM.into());
                    o.insert("value", Value::String(text(&v)?));
                    Some(Value::Object(o))
                }
            };
        }
        Ok(value)
    }

    fn code(&self, map: &str, local: &str, at: &dyn Fn() -> String) -> Result<Value, SourceIssue> {
        let entries = self.codes.iter().find(|c| c.name == map).map(|c| c.entries.as_slice()).unwrap_or_default();
        entries.iter().find(|(k, _)| k == local).map(|(_, v)| v.clone()).ok_or_else(|| {
            let known: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            SourceIssue::new(&at(), format!("\"{local}\" has no code in the mapping (known: {})", known.join(", ")))
        })
    }

    /// Evaluates a template; `None` when everything in it was missing.
    pub fn eval(&mut self, t: &Tpl) -> Result<Option<Value>, SourceIssue> {
        match t {
            Tpl::Literal(v) => Ok(Some(v.clone())),
            Tpl::Expr(e) => self.eval_expr(e),
            Tpl::Interpolated(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        Part::Text(s) => out.push_str(s),
                        Part::Expr(e) => match self.eval_expr(e)? {
                            Some(Value::String(s)) => out.push_str(&s),
                            Some(Value::Number(n)) => out.push_str(n.as_str()),
                            Some(Value::Bool(b)) => out.push_str(if b { "true" } else { "false" }),
                            Some(_) | None => return Ok(None),
                        },
                    }
                }
                Ok(Some(Value::String(out)))
            }
            Tpl::Object(fields, cond) => {
                if let Some(c) = cond
                    && !self.truth(c)
                {
                    return Ok(None);
                }
                // An object made only of constants and values the record lacks is left
                // out whole: `{ url = "…", valueDateTime = "{{ signedAt }}" }` without signedAt.
                let mut o = Object::with_capacity(fields.len() + 1);
                let (mut dynamic, mut present) = (false, false);
                for (k, f) in fields {
                    let constant = matches!(f, Tpl::Literal(_));
                    dynamic |= !constant;
                    if let Some(v) = self.eval(f)? {
                        present |= !constant;
                        // Keys of one TOML table are unique.
                        o.push_new(k.clone(), v);
                    }
                }
                Ok((!o.is_empty() && (present || !dynamic)).then_some(Value::Object(o)))
            }
            Tpl::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match &item.each {
                        None => out.extend(self.eval(&item.tpl)?),
                        Some(l) => {
                            let (elements, at) = self.items(l);
                            for (i, element) in elements.iter().enumerate() {
                                self.vars.push((element, i, format!("{at}[{i}]")));
                                let v = self.eval(&item.tpl);
                                self.vars.pop();
                                out.extend(v?);
                            }
                        }
                    }
                }
                Ok((!out.is_empty()).then_some(Value::Array(out)))
            }
        }
    }
}

/// `{"personnummer": "…"}` or `{"samordningsnummer": "…"}` → a FHIR Identifier (normalised to 12 digits).
fn patient_identifier(v: &Value, at: &str) -> Result<Value, SourceIssue> {
    let id = match (v.get("personnummer").and_then(Value::as_str), v.get("samordningsnummer").and_then(Value::as_str)) {
        (Some(p), None) => {
            PatientId::personnummer(p).map_err(|e| SourceIssue::new(&format!("{at}.personnummer"), e.0))?
        }
        (None, Some(s)) => {
            PatientId::samordningsnummer(s).map_err(|e| SourceIssue::new(&format!("{at}.samordningsnummer"), e.0))?
        }
        _ => return Err(SourceIssue::new(at, "must have exactly one of personnummer, samordningsnummer")),
    };
    let mut o = Object::new();
    o.insert("system", id.system().into());
    o.insert("value", id.value().into());
    Ok(Value::Object(o))
}

impl Path {
    /// The path as written in the mapping.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// An expression that is just `path`.
pub fn path_expr(p: &Path) -> Expr {
    Expr { term: Term::Path(p.clone()), filters: Vec::new() }
}
