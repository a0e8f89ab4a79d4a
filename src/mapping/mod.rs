//! Declarative mappings from municipal push formats to FHIR R4.
//!
//! A mapping is a folder `mappings/<name>/` with `mapping.toml` (what to
//! write), the JSON Schema of its input and `fixtures/` (examples with their
//! expected output). The language is described in `docs/MAPPINGS.md`. Files
//! are compiled at load; every mistake is reported as `file:line: what`, and
//! a set with a mistake is refused as a whole.

pub mod fixtures;
pub mod schema;
pub mod template;
pub mod time;
pub mod tree;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    identity::HsaId,
    json::{Object, Value},
    reference::Reference,
};

use schema::Schema;
use template::{CodeMap, Cond, Ctx, Loop, Scope, Tpl};
use tree::{Node, Spanned};

/// How references between the resources of one record are written before
/// the resources have ids: `urn:nara:key:patient`, `urn:nara:key:goal[1]`.
pub const KEY_REFERENCE_PREFIX: &str = "urn:nara:key:";

/// A problem with a record: where in it (`padl[1].activity`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIssue {
    pub path: String,
    pub message: String,
}

impl SourceIssue {
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        SourceIssue { path: path.to_owned(), message: message.into() }
    }
}

impl fmt::Display for SourceIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// A mistake in a mapping or reference file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Why a record was not mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The record breaks its input format (400).
    Input(Vec<SourceIssue>),
    /// The mapping produced something FHIR does not allow: a mapping defect,
    /// located in the mapping file (422).
    Mapping(Vec<SourceIssue>),
}

/// How a mapped resource is identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Belongs to the record: the same resource on every push of it.
    Owned,
    /// Shared by records (Patient, Organization…): found by identifier, or created.
    Shared { system: String, value: String },
}

/// One resource a record maps to; references to the record's other
/// resources are still `urn:nara:key:…`.
#[derive(Clone, Debug, PartialEq)]
pub struct MappedResource {
    /// The resource's key in the mapping, with the index for repeated ones: `goal[1]`.
    pub key: String,
    pub resource_type: String,
    pub identity: Identity,
    pub body: Value,
}

/// A record mapped to FHIR, with what binding and bookkeeping need.
#[derive(Clone, Debug, PartialEq)]
pub struct MappedRecord {
    pub record_id: String,
    pub source_system: HsaId,
    /// The organisation the record belongs to; the pushing client must be it.
    pub organization: HsaId,
    pub municipality: Option<String>,
    /// Other organisations that may see the record's resources (a transfer's recipient).
    pub recipients: Vec<HsaId>,
    pub resources: Vec<MappedResource>,
}

/// One compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The NPÖ information type its records count for (`funktionsstatus-adl`, `vardplan`).
    pub info_type: Option<String>,
    /// `mappings/<name>/mapping.toml`, for messages.
    pub file: String,
    /// The input JSON Schema as written, served at `GET /ingest`.
    pub input_schema: Value,
    schema: Schema,
    organization: template::Path,
    municipality: Option<template::Path>,
    recipients: Vec<template::Path>,
    codes: Vec<CodeMap>,
    resources: Vec<ResourceRule>,
}

#[derive(Debug)]
struct ResourceRule {
    key: String,
    ty: String,
    line: usize,
    each: Option<Loop>,
    when: Option<Cond>,
    matcher: Option<Tpl>,
    body: Tpl,
}

impl Mapping {
    /// Checks a record against the input schema and maps it.
    pub fn apply(&self, record: &Value, reference: &Reference) -> Result<MappedRecord, Rejected> {
        let mut issues = Vec::new();
        self.schema.check(record, "", reference, &mut issues);
        if !issues.is_empty() {
            return Err(Rejected::Input(issues));
        }
        let mut ctx = Ctx { root: record, vars: Vec::new(), codes: &self.codes };
        let input = |issue: SourceIssue| Rejected::Input(vec![issue]);
        let string_at = |ctx: &Ctx<'_>, path: &template::Path, what: &str| -> Result<String, Rejected> {
            let e = ctx.eval_expr(&template::path_expr(path)).map_err(input)?;
            match e {
                Some(Value::String(s)) => Ok(s),
                _ => Err(input(SourceIssue::new(path.text(), format!("{what} is required")))),
            }
        };
        let hsa = |text: String, path: &template::Path| {
            HsaId::parse(&text).map_err(|e| input(SourceIssue::new(path.text(), e.0)))
        };
        let record_id = match record.get("recordId").and_then(Value::as_str) {
            Some(r) if !r.is_empty() => r.to_owned(),
            _ => return Err(input(SourceIssue::new("recordId", "required: the record's id in its source system"))),
        };
        let source_system = match record.get("sourceSystem").and_then(Value::as_str).map(HsaId::parse) {
            Some(Ok(h)) => h,
            Some(Err(e)) => return Err(input(SourceIssue::new("sourceSystem", e.0))),
            None => return Err(input(SourceIssue::new("sourceSystem", "required: the HSA-id of the sending system"))),
        };
        let organization =
            hsa(string_at(&ctx, &self.organization, "the owning organisation's HSA-id")?, &self.organization)?;
        let municipality = self.municipality.as_ref().map(|p| string_at(&ctx, p, "the kommunkod")).transpose()?;
        let mut recipients = Vec::new();
        for p in &self.recipients {
            recipients.push(hsa(string_at(&ctx, p, "the recipient's HSA-id")?, p)?);
        }
        let mut resources = Vec::new();
        for rule in &self.resources {
            match &rule.each {
                None => {
                    if let Some(r) = self.instance(rule, &mut ctx, rule.key.clone())? {
                        resources.push(r);
                    }
                }
                Some(l) => {
                    let (items, at) = ctx.items(l);
                    for (i, item) in items.iter().enumerate() {
                        ctx.vars.push((item, i, format!("{at}[{i}]")));
                        let r = self.instance(rule, &mut ctx, format!("{}[{i}]", rule.key));
                        ctx.vars.pop();
                        resources.extend(r?);
                    }
                }
            }
        }
        Ok(MappedRecord { record_id, source_system, organization, municipality, recipients, resources })
    }

    fn instance(
        &self,
        rule: &ResourceRule,
        ctx: &mut Ctx<'_>,
        key: String,
    ) -> Result<Option<MappedResource>, Rejected> {
        if let Some(c) = &rule.when
            && !ctx.truth(c)
        {
            return Ok(None);
        }
        let defect = |message: String| {
            Rejected::Mapping(vec![SourceIssue::new(&format!("{}:{}", self.file, rule.line), message)])
        };
        let mut body = match ctx.eval(&rule.body).map_err(|i| Rejected::Input(vec![i]))? {
            Some(Value::Object(o)) => o,
            _ => Object::new(),
        };
        body.insert_front("resourceType", Value::String(rule.ty.clone()));
        let identity = match &rule.matcher {
            None => Identity::Owned,
            Some(m) => match ctx.eval(m).map_err(|i| Rejected::Input(vec![i]))? {
                Some(v) => match (v.get("system").and_then(Value::as_str), v.get("value").and_then(Value::as_str)) {
                    (Some(s), Some(val)) => Identity::Shared { system: s.to_owned(), value: val.to_owned() },
                    _ => {
                        return Err(defect(format!(
                            "resource `{key}`: `match` must give an identifier with system and value"
                        )));
                    }
                },
                None => return Err(defect(format!("resource `{key}`: `match` gave nothing for this record"))),
            },
        };
        let body = Value::Object(body);
        let problems = crate::fhir::validate::validate(&body);
        if !problems.is_empty() {
            let issues = problems
                .iter()
                .map(|p| {
                    SourceIssue::new(
                        &format!("{}:{}", self.file, rule.line),
                        format!(
                            "the mapping produced an invalid {} (`{key}`) at {}: {}",
                            rule.ty, p.expression, p.message
                        ),
                    )
                })
                .collect();
            return Err(Rejected::Mapping(issues));
        }
        Ok(Some(MappedResource { key, resource_type: rule.ty.clone(), identity, body }))
    }

    /// The record path of the owning organisation's HSA-id, for messages.
    pub fn organization_path(&self) -> &str {
        self.organization.text()
    }

    /// The record path of the kommunkod, if the mapping has one.
    pub fn municipality_path(&self) -> Option<&str> {
        self.municipality.as_ref().map(template::Path::text)
    }

    /// The resource keys (without indexes) the mapping writes, in order.
    pub fn resource_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.resources.iter().map(|r| (r.key.as_str(), r.ty.as_str()))
    }
}

/// The mappings in effect, with the reference data they check against.
#[derive(Debug)]
pub struct MappingSet {
    mappings: Vec<Arc<Mapping>>,
    pub reference: Arc<Reference>,
    /// Where they came from: a folder, or `built-in` for the copies compiled into the binary.
    pub origin: String,
}

/// The shipped mapping files, compiled in so the gateway runs without the folder.
const SHIPPED: &[(&str, &str)] = &[
    ("funktionsstatus/mapping.toml", include_str!("../../mappings/funktionsstatus/mapping.toml")),
    ("funktionsstatus/schema.json", include_str!("../../mappings/funktionsstatus/schema.json")),
    ("vardplan/mapping.toml", include_str!("../../mappings/vardplan/mapping.toml")),
    ("vardplan/schema.json", include_str!("../../mappings/vardplan/schema.json")),
    ("dokument/mapping.toml", include_str!("../../mappings/dokument/mapping.toml")),
    ("dokument/schema.json", include_str!("../../mappings/dokument/schema.json")),
    ("reference/municipalities.toml", crate::reference::SHIPPED_MUNICIPALITIES),
    ("reference/npo-declared.toml", crate::reference::SHIPPED_NPO_DECLARED),
];

const REFERENCE_FILE: &str = "reference/municipalities.toml";
const DECLARED_FILE: &str = "reference/npo-declared.toml";

impl MappingSet {
    /// The mappings of `dir`; when `dir` does not exist and `fallback` is set,
    /// the shipped mappings compiled into the binary.
    pub fn load(dir: &Path, fallback: bool) -> Result<MappingSet, Vec<LoadError>> {
        if !dir.exists() && fallback {
            return MappingSet::shipped();
        }
        MappingSet::load_dir(dir)
    }

    /// The shipped mappings, as compiled into the binary.
    pub fn shipped() -> Result<MappingSet, Vec<LoadError>> {
        let names: Vec<String> =
            SHIPPED.iter().filter_map(|(p, _)| p.strip_suffix("/mapping.toml")).map(str::to_owned).collect();
        let read = |rel: &str| {
            SHIPPED
                .iter()
                .find(|(p, _)| *p == rel)
                .map(|(_, t)| (*t).to_owned())
                .ok_or_else(|| "not shipped".to_owned())
        };
        MappingSet::from_files(&names, &read, "mappings", "built-in")
    }

    /// Every `<dir>/<name>/mapping.toml` and `<dir>/reference/municipalities.toml`.
    pub fn load_dir(dir: &Path) -> Result<MappingSet, Vec<LoadError>> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![LoadError { file: shown.clone(), line: 0, message: format!("cannot read the mappings folder: {e}") }]
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("mapping.toml").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        let base: PathBuf = dir.to_path_buf();
        let read = |rel: &str| std::fs::read_to_string(base.join(rel)).map_err(|e| e.to_string());
        MappingSet::from_files(&names, &read, &shown, &shown)
    }

    fn from_files(
        names: &[String],
        read: &dyn Fn(&str) -> Result<String, String>,
        shown_dir: &str,
        origin: &str,
    ) -> Result<MappingSet, Vec<LoadError>> {
        let mut errors = Vec::new();
        let reference_file = format!("{shown_dir}/{REFERENCE_FILE}");
        let mut reference = match read(REFERENCE_FILE) {
            Ok(text) => match Reference::parse(&text) {
                Ok(r) => r,
                Err((line, message)) => return Err(vec![LoadError { file: reference_file, line, message }]),
            },
            Err(e) => {
                return Err(vec![LoadError { file: reference_file, line: 0, message: format!("cannot read: {e}") }]);
            }
        };
        // Declared NPÖ statuses are optional: without the file the registry starts without them.
        if let Ok(text) = read(DECLARED_FILE) {
            reference.declared = reference.parse_declared(&text).map_err(|(line, message)| {
                vec![LoadError { file: format!("{shown_dir}/{DECLARED_FILE}"), line, message }]
            })?;
        }
        let mut mappings = Vec::new();
        for name in names {
            match compile_mapping(name, read, shown_dir) {
                Ok(m) => mappings.push(Arc::new(m)),
                Err(e) => errors.extend(e),
            }
        }
        if mappings.is_empty() && errors.is_empty() {
            errors.push(LoadError {
                file: shown_dir.to_owned(),
                line: 0,
                message: "no mappings (expected <name>/mapping.toml folders)".into(),
            });
        }
        if errors.is_empty() {
            Ok(MappingSet { mappings, reference: Arc::new(reference), origin: origin.to_owned() })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Mapping>> {
        self.mappings.iter().find(|m| m.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Mapping>> {
        self.mappings.iter()
    }
}

const TOP_KEYS: &[&str] = &["name", "version", "description", "schema", "info_type", "record", "codes", "resource"];
const RESOURCE_KEYS: &[&str] = &["key", "type", "for", "when", "identity", "match", "body"];

fn compile_mapping(
    name: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
    shown_dir: &str,
) -> Result<Mapping, Vec<LoadError>> {
    let file = format!("{shown_dir}/{name}/mapping.toml");
    let at = |line: usize, message: String| vec![LoadError { file: file.clone(), line, message }];
    let text = read(&format!("{name}/mapping.toml")).map_err(|e| at(0, format!("cannot read: {e}")))?;
    let doc = tree::parse(&text).map_err(|(line, m)| at(line, m))?;
    let Some(top) = doc.as_table() else { return Err(at(1, "not a table".into())) };
    for (k, v) in top {
        if !TOP_KEYS.contains(&k.as_str()) {
            return Err(at(v.line, format!("unknown key `{k}`; a mapping has: {}", TOP_KEYS.join(", "))));
        }
    }
    let string = |key: &str| -> Result<String, Vec<LoadError>> {
        match doc.get(key) {
            Some(v) => v.as_str().map(str::to_owned).ok_or_else(|| at(v.line, format!("`{key}` is a string"))),
            None => Err(at(1, format!("`{key}` is required"))),
        }
    };
    let declared = string("name")?;
    if declared != name {
        return Err(at(
            doc.get("name").map_or(1, |v| v.line),
            format!("`name` is \"{declared}\" but the folder is `{name}`"),
        ));
    }
    let version = string("version")?;
    let description = string("description")?;
    let info_type = doc.get("info_type").map(|_| string("info_type")).transpose()?;

    // The input schema.
    let schema_rel = string("schema")?;
    let schema_file = format!("{shown_dir}/{name}/{schema_rel}");
    let schema_text = read(&format!("{name}/{schema_rel}")).map_err(|e| {
        at(doc.get("schema").map_or(1, |v| v.line), format!("cannot read the schema {schema_rel}: {e}"))
    })?;
    let input_schema = crate::json::parse(schema_text.as_bytes()).map_err(|e| {
        vec![LoadError { file: schema_file.clone(), line: e.line, message: format!("not valid JSON: {}", e.message) }]
    })?;
    let schema = schema::compile(&input_schema).map_err(|(ptr, message)| {
        let lines = schema::pointer_lines(&schema_text);
        let line = lines.get(&ptr).copied().unwrap_or(1);
        vec![LoadError { file: schema_file.clone(), line, message: format!("{ptr}: {message}") }]
    })?;
    for common in ["recordId", "sourceSystem"] {
        if schema.field(common).is_none() {
            return Err(vec![LoadError {
                file: schema_file.clone(),
                line: 1,
                message: format!("the input schema must declare `{common}`"),
            }]);
        }
    }

    // Code maps.
    let mut codes = Vec::new();
    if let Some(table) = doc.get("codes") {
        let Some(maps) = table.as_table() else { return Err(at(table.line, "`codes` is a table of code maps".into())) };
        for (map_name, map) in maps {
            codes.push(compile_code_map(map_name, map).map_err(|(l, m)| at(l, m))?);
        }
    }
    let code_names: Vec<String> = codes.iter().map(|c| c.name.clone()).collect();

    // Resource keys first, so references can be checked.
    let rules = match doc.get("resource") {
        Some(Spanned { node: Node::Array(items), .. }) if !items.is_empty() => items,
        Some(v) => return Err(at(v.line, "`resource` is an array of tables ([[resource]])".into())),
        None => return Err(at(1, "a mapping writes at least one [[resource]]".into())),
    };
    let mut keys: Vec<(String, bool)> = Vec::new();
    for r in rules {
        let key =
            r.get("key").and_then(Spanned::as_str).ok_or_else(|| at(r.line, "a resource needs a `key`".into()))?;
        if keys.iter().any(|(k, _)| k == key) {
            return Err(at(r.get("key").map_or(r.line, |k| k.line), format!("the key `{key}` is used twice")));
        }
        keys.push((key.to_owned(), r.get("for").is_some()));
    }
    let root = Scope { schema: &schema, vars: Vec::new(), codes: &code_names, keys: &keys };

    // The record section.
    let record = doc.get("record").ok_or_else(|| at(1, "`[record]` is required (at least `organization`)".into()))?;
    let path_of = |key: &str| -> Result<Option<template::Path>, Vec<LoadError>> {
        match record.get(key) {
            None => Ok(None),
            Some(v) => {
                let text = v.as_str().ok_or_else(|| at(v.line, format!("`record.{key}` is a path string")))?;
                template::parse_path(text, &root, v.line).map(Some).map_err(|(l, m)| at(l, m))
            }
        }
    };
    for (k, v) in record.as_table().unwrap_or_default() {
        if !["organization", "municipality", "recipients"].contains(&k.as_str()) {
            return Err(at(
                v.line,
                format!("unknown key `record.{k}`; [record] has organization, municipality, recipients"),
            ));
        }
    }
    let organization =
        path_of("organization")?.ok_or_else(|| at(record.line, "`record.organization` is required".into()))?;
    let municipality = path_of("municipality")?;
    let mut recipients = Vec::new();
    if let Some(list) = record.get("recipients") {
        let Node::Array(items) = &list.node else {
            return Err(at(list.line, "`record.recipients` is an array".into()));
        };
        for item in items {
            let text = item.as_str().ok_or_else(|| at(item.line, "a recipient is a path string".into()))?;
            recipients.push(template::parse_path(text, &root, item.line).map_err(|(l, m)| at(l, m))?);
        }
    }

    // Resources.
    let mut resources = Vec::new();
    for r in rules {
        resources.push(compile_resource(r, &root).map_err(|(l, m)| at(l, m))?);
    }
    Ok(Mapping {
        name: declared,
        version,
        description,
        info_type,
        file,
        input_schema,
        schema,
        organization,
        municipality,
        recipients,
        codes,
        resources,
    })
}

fn compile_code_map(name: &str, map: &Spanned) -> Result<CodeMap, (usize, String)> {
    let system = map.get("system").and_then(Spanned::as_str);
    let entries =
        map.get("map").and_then(Spanned::as_table).ok_or((map.line, format!("`codes.{name}` needs a `map` table")))?;
    for (k, v) in map.as_table().unwrap_or_default() {
        if !["system", "map"].contains(&k.as_str()) {
            return Err((v.line, format!("unknown key `codes.{name}.{k}`; a code map has system and map")));
        }
    }
    let mut out = Vec::new();
    for (local, target) in entries {
        let field = |k: &str| target.get(k).and_then(Spanned::as_str);
        let system = field("system")
            .or(system)
            .ok_or((target.line, format!("`{local}`: no `system` (set codes.{name}.system)")))?;
        let code = field("code").ok_or((target.line, format!("`{local}` needs a `code`")))?;
        let mut coding = Object::new();
        coding.insert("system", system.into());
        coding.insert("code", code.into());
        if let Some(d) = field("display") {
            coding.insert("display", d.into());
        }
        for (k, v) in target.as_table().unwrap_or_default() {
            if !["system", "code", "display"].contains(&k.as_str()) {
                return Err((v.line, format!("unknown key `{k}`; a code has system, code, display")));
            }
        }
        out.push((local.clone(), Value::Object(coding)));
    }
    Ok(CodeMap { name: name.to_owned(), entries: out })
}

fn compile_resource(r: &Spanned, root: &Scope<'_>) -> Result<ResourceRule, (usize, String)> {
    for (k, v) in r.as_table().unwrap_or_default() {
        if !RESOURCE_KEYS.contains(&k.as_str()) {
            return Err((v.line, format!("unknown key `{k}`; a resource has: {}", RESOURCE_KEYS.join(", "))));
        }
    }
    let key = r.get("key").and_then(Spanned::as_str).unwrap_or_default().to_owned();
    let ty_node = r.get("type").ok_or((r.line, format!("resource `{key}` needs a `type`")))?;
    let ty = ty_node.as_str().unwrap_or_default().to_owned();
    if !crate::fhir::is_supported_type(&ty) || ty == "AuditEvent" {
        return Err((ty_node.line, format!("`{ty}` is not a resource type the gateway stores")));
    }
    let (each, scope) = match r.get("for") {
        Some(f) => {
            let text = f.as_str().ok_or((f.line, "`for` is a string: \"g in goals\"".to_owned()))?;
            let (l, inner) = template::compile_loop(text, root, f.line)?;
            (Some(l), inner)
        }
        None => (None, Scope { schema: root.schema, vars: Vec::new(), codes: root.codes, keys: root.keys }),
    };
    let when = match r.get("when") {
        Some(w) => {
            Some(template::parse_cond(w.as_str().ok_or((w.line, "`when` is a string".to_owned()))?, &scope, w.line)?)
        }
        None => None,
    };
    let identity = r.get("identity").map(|v| (v.line, v.as_str()));
    let matcher = match (identity, r.get("match")) {
        (None | Some((_, Some("owned"))), None) => None,
        (Some((_, Some("shared"))), Some(m)) => Some(template::compile(m, &scope)?),
        (Some((_, Some("shared"))), None) => {
            return Err((r.line, format!("resource `{key}` is shared: `match` says which identifier finds it")));
        }
        (None | Some((_, Some("owned"))), Some(m)) => {
            return Err((m.line, "`match` only applies to `identity = \"shared\"`".into()));
        }
        (Some((line, _)), _) => return Err((line, "`identity` is \"owned\" or \"shared\"".into())),
    };
    let body = r.get("body").ok_or((r.line, format!("resource `{key}` needs a `body`")))?;
    for forbidden in ["resourceType", "id", "meta"] {
        if let Some(v) = body.get(forbidden) {
            return Err((v.line, format!("`{forbidden}` is set by the gateway, not the mapping")));
        }
    }
    let body = template::compile(body, &scope)?;
    Ok(ResourceRule { key, ty, line: r.line, each, when, matcher, body })
}

#[cfg(test)]
mod tests;
