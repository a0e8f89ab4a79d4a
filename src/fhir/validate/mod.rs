//! Strict structural validation of FHIR R4 (4.0.1) resources, driven by tables
//! generated from the official definitions (`r4.json`, see
//! `tools/gen-fhir-tables/`), so bad input is rejected with the exact element
//! path instead of being stored half-understood.
//!
//! Checked: resource type, unknown elements, JSON types, arrays vs single
//! values, empty/null values, primitive extensions (`_birthDate`, `_given`),
//! cardinality, choice types (`value[x]`), primitive formats, required
//! bindings that expand statically, the Extension rules (url, value or
//! nested extensions, not both), and contained/Bundle/Parameters resources
//! recursively.
//!
//! Paths (`Issue::expression`) are FHIRPath-style, starting with the resource
//! type: `Observation.component[1].code.coding[0].system`. A resource nested in
//! another (`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`)
//! continues the outer path without naming its type:
//! `Bundle.entry[2].resource.gender`. Problems in a primitive's extension
//! (`_birthDate`) are reported at the primitive's name: `Patient.birthDate.extension[0].url`.

mod primitives;
mod tables;

use crate::json::{Object, Value};
use primitives::PrimError;
use tables::{ElementDef, TABLES, Tables, TypeDef, TypeId, TypeRef, ValueSetDef};

/// Types with more elements than this cannot be tracked (the generator checks).
const MAX_ELEMENTS: usize = 256;
/// Nesting of FHIR objects beyond this is reported instead of followed.
const MAX_DEPTH: usize = 256;
/// After this many issues validation stops, with a final warning saying so.
pub const MAX_ISSUES: usize = 1000;
/// Values quoted in messages are cut to this many characters.
const QUOTE_CHARS: usize = 64;

/// How bad an issue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    /// The FHIR issue-severity code.
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// What kind of problem an issue is (FHIR issue-type codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueCode {
    /// Unknown element, wrong JSON type, array vs single value, empty or null value.
    Structure,
    /// A mandatory element is missing.
    Required,
    /// A primitive's content is invalid (bad date, empty string, …).
    Value,
    /// A code is not in the required value set.
    CodeInvalid,
    /// A FHIR invariant is broken (ext-1: extension has a value or nested extensions, not both).
    Invariant,
    /// The resource type is not one this server handles.
    NotSupported,
}

impl IssueCode {
    /// The FHIR issue-type code.
    pub fn as_str(&self) -> &'static str {
        match self {
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::Invariant => "invariant",
            IssueCode::NotSupported => "not-supported",
        }
    }
}

/// One problem found in a resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// FHIRPath-style location, e.g. `Observation.component[1].code.coding[0].system`.
    pub expression: String,
    pub message: String,
}

/// Validates one resource; returns every problem found (empty = valid), up to
/// [`MAX_ISSUES`].
pub fn validate(resource: &Value) -> Vec<Issue> {
    validate_with(&TABLES, resource)
}

fn validate_with(t: &'static Tables, resource: &Value) -> Vec<Issue> {
    let mut v = Validator { t, path: Vec::with_capacity(32), issues: Vec::new(), depth: 0 };
    match resource {
        Value::Object(obj) => v.resource(obj),
        other => v.issue(IssueCode::Structure, format!("a resource must be a JSON object, found {}", other.kind())),
    }
    v.issues
}

/// True for the resource types the tables describe.
pub fn is_known_resource_type(name: &str) -> bool {
    TABLES.resources.contains_key(name)
}

/// The resource types the tables describe, sorted.
pub fn known_resource_types() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = TABLES.resources.keys().copied().collect();
    names.sort_unstable();
    names
}

/// One step of the path to the value being checked.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Name(&'a str),
    Index(usize),
}

struct Validator<'a> {
    t: &'static Tables,
    path: Vec<Seg<'a>>,
    issues: Vec<Issue>,
    depth: usize,
}

/// The `_name` sibling of a primitive element, if any.
fn partner<'a>(obj: &'a Object, name: &str) -> Option<&'a Value> {
    obj.iter().find(|(k, _)| k.strip_prefix('_') == Some(name)).map(|(_, v)| v)
}

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Number(n) => quote(n.as_str()),
        Value::Bool(b) => b.to_string(),
        other => other.kind().to_owned(),
    }
}

impl<'a> Validator<'a> {
    fn full(&self) -> bool {
        self.issues.len() >= MAX_ISSUES
    }

    fn expression(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Seg::Name(n) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(n);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        if out.is_empty() { "$this".to_owned() } else { out }
    }

    fn issue(&mut self, code: IssueCode, message: String) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(Issue { severity: Severity::Error, code, expression: self.expression(), message });
            if self.issues.len() == MAX_ISSUES {
                self.issues.push(Issue {
                    severity: Severity::Warning,
                    code: IssueCode::Structure,
                    expression: self.expression(),
                    message: format!("validation stopped after {MAX_ISSUES} issues"),
                });
            }
        }
    }

    /// Reports an issue at `path + name` without keeping `name` on the path.
    fn issue_at(&mut self, name: &'a str, code: IssueCode, message: String) {
        self.path.push(Seg::Name(name));
        self.issue(code, message);
        self.path.pop();
    }

    /// A resource: at the root its type starts the path; nested, the outer path goes on.
    fn resource(&mut self, obj: &'a Object) {
        let root = self.path.is_empty();
        let rt = match obj.get("resourceType") {
            None => {
                return self.issue_at("resourceType", IssueCode::Required, "missing 'resourceType'".into());
            }
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return self.issue_at(
                    "resourceType",
                    IssueCode::Structure,
                    format!("'resourceType' must be a string, found {}", other.kind()),
                );
            }
        };
        let Some(&tid) = self.t.resources.get(rt) else {
            let mut supported: Vec<&str> = self.t.resources.keys().copied().collect();
            supported.sort_unstable();
            let supported = supported.join(", ");
            return self.issue_at(
                "resourceType",
                IssueCode::NotSupported,
                format!("resource type '{}' is not supported (supported: {supported})", quote(rt)),
            );
        };
        if root {
            self.path.push(Seg::Name(rt));
        }
        self.object(obj, tid, true);
        if root {
            self.path.pop();
        }
    }

    /// An object of a complex type, backbone element or resource.
    fn object(&mut self, obj: &'a Object, tid: TypeId, is_resource: bool) {
        let t = self.t;
        let td = &t.types[tid];
        if obj.is_empty() {
            return self.issue(IssueCode::Structure, format!("empty object is not allowed for {}", td.name));
        }
        if self.depth >= MAX_DEPTH {
            return self.issue(IssueCode::Structure, format!("elements nested deeper than {MAX_DEPTH} levels"));
        }
        self.depth += 1;
        let mut seen = [0u64; MAX_ELEMENTS / 64];
        for (key, value) in obj.iter() {
            if self.full() {
                break;
            }
            if is_resource && key == "resourceType" {
                continue;
            }
            let (is_ext, name) = match key.strip_prefix('_') {
                Some(name) => (true, name),
                None => (false, key),
            };
            let Some(target) = td.keys.get(name) else {
                self.unknown(key, td);
                continue;
            };
            let el = &td.elements[target.element];
            let ty = el.types[target.choice];
            if is_ext {
                let TypeRef::Primitive(p) = ty else {
                    self.unknown(key, td);
                    continue;
                };
                if !p.allows_extensions() {
                    self.unknown(key, td);
                    continue;
                }
                if obj.contains_key(name) {
                    continue; // checked together with its value
                }
            }
            let bit = &mut seen[target.element / 64];
            let mask = 1u64 << (target.element % 64);
            if *bit & mask != 0 {
                // Only a second concrete name of one choice element gets here.
                self.issue_at(
                    name,
                    IssueCode::Structure,
                    format!("only one of {} may be present", choice_names(td, el)),
                );
                continue;
            }
            *bit |= mask;
            self.path.push(Seg::Name(name));
            if is_ext {
                // `_name` without `name`: extensions only.
                self.primitive_extension_only(value, el);
            } else {
                let ext = match ty {
                    TypeRef::Primitive(p) if p.allows_extensions() => partner(obj, name),
                    _ => None,
                };
                self.element_value(value, ext, el, ty);
            }
            self.path.pop();
        }
        for &idx in &td.required {
            if seen[idx / 64] & (1u64 << (idx % 64)) == 0 {
                let el = &td.elements[idx];
                self.issue_at(
                    el.name,
                    IssueCode::Required,
                    format!("missing required element '{}' in {}", el.name, td.name),
                );
            }
        }
        if tid == t.extension {
            let has_value = obj.keys().any(|k| k.starts_with("value") || k.starts_with("_value"));
            let has_nested = obj.contains_key("extension");
            if has_value == has_nested {
                self.issue(
                    IssueCode::Invariant,
                    if has_value {
                        "extension must have either a value[x] or nested extensions, not both (ext-1)".into()
                    } else {
                        "extension must have a value[x] or nested extensions (ext-1)".into()
                    },
                );
            }
        }
        self.depth -= 1;
    }

    fn unknown(&mut self, key: &'a str, td: &TypeDef) {
        self.issue_at(key, IssueCode::Structure, format!("unknown element '{}' in {}", quote(key), td.name));
    }

    /// The value of element `el` (path already at its name), with the `_name` sibling if any.
    fn element_value(&mut self, value: &'a Value, ext: Option<&'a Value>, el: &ElementDef, ty: TypeRef) {
        if !el.many {
            if let Value::Array(_) = value {
                return self.issue(
                    IssueCode::Structure,
                    format!("'{}' takes a single value (max cardinality 1), not an array", el.name),
                );
            }
            self.single(value, ty, el);
            if let Some(ext) = ext {
                self.primitive_extension(ext, true);
            }
            return;
        }
        let Value::Array(items) = value else {
            return self.issue(
                IssueCode::Structure,
                format!("'{}' must be an array (max cardinality *), found {}", el.name, value.kind()),
            );
        };
        if items.is_empty() {
            return self.issue(IssueCode::Structure, "empty array is not allowed".into());
        }
        let ext_items = match ext {
            None => None,
            Some(Value::Array(e)) if e.len() == items.len() => Some(e.as_slice()),
            Some(other) => {
                let message = match other {
                    Value::Array(e) => format!(
                        "'_{}' has {} entries but '{}' has {}; they must match",
                        el.name,
                        e.len(),
                        el.name,
                        items.len()
                    ),
                    _ => format!("'_{}' must be an array like '{}'", el.name, el.name),
                };
                self.issue(IssueCode::Structure, message);
                None
            }
        };
        for (i, item) in items.iter().enumerate() {
            if self.full() {
                break;
            }
            self.path.push(Seg::Index(i));
            let item_ext = ext_items.and_then(|e| e.get(i)).filter(|e| !matches!(e, Value::Null));
            match item {
                Value::Null if item_ext.is_some() => {}
                Value::Null => self.issue(IssueCode::Structure, "null is not allowed here".into()),
                _ => self.single(item, ty, el),
            }
            if let Some(e) = item_ext {
                self.primitive_extension(e, !matches!(item, Value::Null));
            }
            self.path.pop();
        }
    }

    /// `_name` present without `name`: the extension part must stand alone.
    fn primitive_extension_only(&mut self, value: &'a Value, el: &ElementDef) {
        if !el.many {
            return self.primitive_extension(value, false);
        }
        let Value::Array(items) = value else {
            return self.issue(IssueCode::Structure, format!("'_{}' must be an array", el.name));
        };
        if items.is_empty() {
            return self.issue(IssueCode::Structure, "empty array is not allowed".into());
        }
        for (i, item) in items.iter().enumerate() {
            if self.full() {
                break;
            }
            self.path.push(Seg::Index(i));
            self.primitive_extension(item, false);
            self.path.pop();
        }
    }

    /// The `{id?, extension?}` object of a primitive; without a value it needs extensions.
    fn primitive_extension(&mut self, value: &'a Value, has_value: bool) {
        let Value::Object(obj) = value else {
            return self.issue(
                IssueCode::Structure,
                format!("a primitive's extensions must be an object {{id, extension}}, found {}", value.kind()),
            );
        };
        if obj.is_empty() {
            return self.issue(IssueCode::Structure, "empty object is not allowed".into());
        }
        let t = self.t;
        let ext_td = &t.types[t.extension];
        for (key, v) in obj.iter() {
            let Some(target) = (key == "id" || key == "extension").then(|| ext_td.keys.get(key)).flatten() else {
                self.issue_at(
                    key,
                    IssueCode::Structure,
                    format!("unknown element '{}' in a primitive's extensions (allowed: id, extension)", quote(key)),
                );
                continue;
            };
            let el = &ext_td.elements[target.element];
            self.path.push(Seg::Name(key));
            self.element_value(v, None, el, el.types[0]);
            self.path.pop();
        }
        if !has_value && !obj.contains_key("extension") {
            self.issue(IssueCode::Required, "element has neither a value nor extensions".into());
        }
    }

    /// One value (not an array) of type `ty`.
    fn single(&mut self, value: &'a Value, ty: TypeRef, el: &ElementDef) {
        match ty {
            TypeRef::Primitive(p) => {
                if let Value::Null = value {
                    return self.issue(IssueCode::Structure, "null is not allowed here".into());
                }
                match p.check(value) {
                    Ok(()) => {}
                    Err(PrimError::JsonType { expected }) => {
                        return self.issue(
                            IssueCode::Structure,
                            format!("{} must be {expected}, found {}", p.name(), value.kind()),
                        );
                    }
                    Err(PrimError::Invalid(allowed)) => {
                        return self.issue(
                            IssueCode::Value,
                            format!("value '{}' is not a valid {} (expected {allowed})", describe(value), p.name()),
                        );
                    }
                }
                if let (Some(vs), Value::String(code)) = (el.binding, value) {
                    let vs = &self.t.value_sets[vs];
                    if !vs.codes.contains(code.as_str()) {
                        self.bad_code(code, vs);
                    }
                }
            }
            TypeRef::Complex(tid) => {
                let Value::Object(obj) = value else {
                    return self.issue(
                        IssueCode::Structure,
                        format!("{} must be a JSON object, found {}", self.t.types[tid].name, value.kind()),
                    );
                };
                self.object(obj, tid, false);
                if let Some(vs) = el.binding {
                    self.coded(obj, tid, &self.t.value_sets[vs]);
                }
            }
            TypeRef::Resource => {
                let Value::Object(obj) = value else {
                    return self.issue(
                        IssueCode::Structure,
                        format!("a resource must be a JSON object, found {}", value.kind()),
                    );
                };
                if obj.is_empty() {
                    return self.issue(IssueCode::Structure, "empty object is not allowed".into());
                }
                self.resource(obj);
            }
        }
    }

    /// Required binding on a Coding or CodeableConcept: codings in the value set's systems must use its codes.
    fn coded(&mut self, obj: &'a Object, tid: TypeId, vs: &ValueSetDef) {
        match self.t.types[tid].name {
            "Coding" => self.coding(obj, vs),
            "CodeableConcept" => {
                let Some(Value::Array(codings)) = obj.get("coding") else {
                    return;
                };
                self.path.push(Seg::Name("coding"));
                for (i, c) in codings.iter().enumerate() {
                    if let Value::Object(c) = c {
                        self.path.push(Seg::Index(i));
                        self.coding(c, vs);
                        self.path.pop();
                    }
                }
                self.path.pop();
            }
            _ => {}
        }
    }

    fn coding(&mut self, obj: &'a Object, vs: &ValueSetDef) {
        let (Some(Value::String(system)), Some(Value::String(code))) = (obj.get("system"), obj.get("code")) else {
            return;
        };
        if let Some(codes) = vs.by_system.get(system.as_str())
            && !codes.contains(code.as_str())
        {
            self.path.push(Seg::Name("code"));
            self.bad_code(code, vs);
            self.path.pop();
        }
    }

    fn bad_code(&mut self, code: &str, vs: &ValueSetDef) {
        self.issue(
            IssueCode::CodeInvalid,
            format!(
                "code '{}' is not in the required value set {} (allowed: {})",
                quote(code),
                vs.canonical,
                vs.allowed
            ),
        );
    }
}

/// `valueString, valueQuantity, …` for messages about a choice element.
fn choice_names(td: &TypeDef, el: &ElementDef) -> String {
    let idx = td.elements.iter().position(|e| std::ptr::eq(e, el));
    let mut names: Vec<&str> = td.keys.iter().filter(|(_, t)| Some(t.element) == idx).map(|(k, _)| &**k).collect();
    names.sort_unstable();
    format!("{} ({})", el.name, names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Vec<Issue> {
        let value = crate::json::parse(json.as_bytes()).expect("test input is JSON");
        validate(&value)
    }

    fn assert_valid(json: &str) {
        let issues = check(json);
        assert!(issues.is_empty(), "unexpected issues: {issues:#?}");
    }

    /// Asserts exactly one issue, with this code and path; returns its message.
    fn assert_one(json: &str, code: IssueCode, expression: &str) -> String {
        let issues = check(json);
        assert_eq!(issues.len(), 1, "expected one issue, got {issues:#?}");
        assert_eq!(issues[0].code, code, "{issues:#?}");
        assert_eq!(issues[0].expression, expression, "{issues:#?}");
        assert_eq!(issues[0].severity, Severity::Error);
        issues[0].message.clone()
    }

    const PATIENT: &str = r#"{
      "resourceType": "Patient",
      "id": "pat-1",
      "meta": {"versionId": "1", "lastUpdated": "2024-03-01T10:15:00.123+01:00", "profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
      "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Anna Andersson</div>"},
      "extension": [{"url": "http://example.org/birthplace", "valueAddress": {"city": "Uppsala", "country": "SE"}}],
      "identifier": [{"use": "official", "system": "http://electronichealth.se/identifier/personnummer", "value": "191212121212"}],
      "active": true,
      "name": [{"use": "official", "family": "Andersson", "given": ["Anna", "Maria"], "_given": [null, {"extension": [{"url": "http://example.org/callname", "valueBoolean": true}]}]}],
      "telecom": [{"system": "phone", "value": "+46 70 123 45 67", "use": "mobile", "rank": 1}],
      "gender": "female",
      "birthDate": "1912-12-12",
      "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1912-12-12T08:30:00+01:00"}]},
      "deceasedBoolean": false,
      "address": [{"use": "home", "line": ["Storgatan 1"], "city": "Uppsala", "postalCode": "753 20", "country": "SE", "period": {"start": "2001"}}],
      "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
      "multipleBirthInteger": 2,
      "contact": [{"relationship": [{"text": "daughter"}], "name": {"text": "Eva Andersson"}, "telecom": [{"system": "email", "value": "eva@example.se"}]}],
      "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "sv"}]}, "preferred": true}],
      "managingOrganization": {"reference": "Organization/org-1", "display": "Vårdcentralen"}
    }"#;

    const OBSERVATION: &str = r#"{
      "resourceType": "Observation",
      "id": "bp-1",
      "status": "final",
      "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
      "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}], "text": "Blood pressure"},
      "subject": {"reference": "Patient/pat-1"},
      "effectiveDateTime": "2024-03-01T10:15:00+01:00",
      "issued": "2024-03-01T10:20:00Z",
      "performer": [{"reference": "Practitioner/pr-1"}],
      "valueQuantity": {"value": 12.50, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
      "referenceRange": [{"low": {"value": 3.5, "unit": "mmol/L"}, "high": {"value": 15, "unit": "mmol/L"}}],
      "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"text": "position"}, "valueCodeableConcept": {"text": "sitting"}},
        {"code": {"text": "comment"}, "valueString": "after rest", "interpretation": [{"text": "normal"}]},
        {"code": {"text": "cuff"}, "dataAbsentReason": {"text": "not measured"}, "referenceRange": [{"text": "n/a"}]}
      ]
    }"#;

    #[test]
    fn accepts_realistic_patient() {
        assert_valid(PATIENT);
        assert_valid(
            r#"{"resourceType":"Patient","name":[{"text":"Okänd"}],"gender":"unknown","deceasedDateTime":"2020-05"}"#,
        );
    }

    #[test]
    fn accepts_observation_with_components_and_decimal() {
        assert_valid(OBSERVATION);
    }

    #[test]
    fn accepts_task_document_reference_and_transaction_bundle() {
        assert_valid(
            r#"{"resourceType":"Task","id":"t1","status":"requested","intent":"order","priority":"routine",
          "code":{"text":"Transfer"},"for":{"reference":"Patient/pat-1"},"authoredOn":"2024-03-01T10:00:00Z",
          "restriction":{"repetitions":1,"period":{"end":"2024-04-01"}},
          "input":[{"type":{"text":"doc"},"valueReference":{"reference":"DocumentReference/d1"}}],
          "output":[{"type":{"text":"count"},"valueUnsignedInt":0}]}"#,
        );
        assert_valid(
            r#"{"resourceType":"DocumentReference","status":"current","docStatus":"final",
          "type":{"coding":[{"system":"http://loinc.org","code":"18842-5"}]},"subject":{"reference":"Patient/pat-1"},
          "date":"2024-03-01T10:00:00+01:00","securityLabel":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"N"}]}],
          "content":[{"attachment":{"contentType":"application/pdf","language":"sv","data":"JVBERi0xLjQK","size":9,"hash":"2jmj7l5rSw0yVb/vlWAYkK/YBwk=","title":"Epikris","creation":"2024-03-01"},
            "format":{"system":"urn:oid:1.3.6.1.4.1.19376.1.2.3","code":"urn:ihe:iti:xds:2017:mimeTypeSufficient"}}],
          "context":{"period":{"start":"2024-02-01"}}}"#,
        );
        assert_valid(
            r#"{"resourceType":"Bundle","type":"transaction","entry":[
          {"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{"resourceType":"Patient","active":true},
           "request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=http://x|1"}},
          {"fullUrl":"urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059","resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
            "subject":{"reference":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},"valueBoolean":true},
           "request":{"method":"PUT","url":"Observation/o1"}},
          {"request":{"method":"DELETE","url":"Patient/old"}}]}"#,
        );
    }

    #[test]
    fn reports_missing_non_string_and_unsupported_resource_type() {
        assert_one(r#"{"id":"x"}"#, IssueCode::Required, "resourceType");
        assert_one(r#"{"resourceType":7}"#, IssueCode::Structure, "resourceType");
        let msg = assert_one(r#"{"resourceType":"Medication"}"#, IssueCode::NotSupported, "resourceType");
        assert!(msg.contains("'Medication'") && msg.contains("Patient"), "{msg}");
        assert_eq!(check("[]")[0].code, IssueCode::Structure);
    }

    #[test]
    fn rejects_unknown_element_with_path() {
        let msg = assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},
               "component":[{"code":{"text":"a"}},{"code":{"text":"b","coding":[{"system":"http://loinc.org","sytem":"x"}]}}]}"#,
            IssueCode::Structure,
            "Observation.component[1].code.coding[0].sytem",
        );
        assert_eq!(msg, "unknown element 'sytem' in Coding");
        assert_one(r#"{"resourceType":"Patient","birthdate":"2000-01-01"}"#, IssueCode::Structure, "Patient.birthdate");
    }

    #[test]
    fn rejects_elements_from_other_fhir_versions() {
        // STU3's Patient.animal and R5's Observation.instantiatesCanonical do not exist in R4.
        assert_one(
            r#"{"resourceType":"Patient","animal":{"species":{"text":"dog"}}}"#,
            IssueCode::Structure,
            "Patient.animal",
        );
        assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"instantiatesCanonical":"http://x"}"#,
            IssueCode::Structure,
            "Observation.instantiatesCanonical",
        );
    }

    #[test]
    fn rejects_wrong_json_types() {
        assert_one(r#"{"resourceType":"Patient","active":"true"}"#, IssueCode::Structure, "Patient.active");
        assert_one(
            r#"{"resourceType":"Patient","name":[{"family":42}]}"#,
            IssueCode::Structure,
            "Patient.name[0].family",
        );
        assert_one(r#"{"resourceType":"Patient","gender":{"code":"male"}}"#, IssueCode::Structure, "Patient.gender");
        assert_one(r#"{"resourceType":"Patient","maritalStatus":"M"}"#, IssueCode::Structure, "Patient.maritalStatus");
        let msg = assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":"12.5"}}"#,
            IssueCode::Structure,
            "Observation.valueQuantity.value",
        );
        assert_eq!(msg, "decimal must be a JSON number, found string");
    }

    #[test]
    fn rejects_single_value_where_array_required_and_array_where_single() {
        assert_one(r#"{"resourceType":"Patient","name":{"family":"A"}}"#, IssueCode::Structure, "Patient.name");
        assert_one(r#"{"resourceType":"Patient","gender":["male"]}"#, IssueCode::Structure, "Patient.gender");
    }

    #[test]
    fn rejects_empty_arrays_objects_strings_and_nulls() {
        assert_one(r#"{"resourceType":"Patient","name":[]}"#, IssueCode::Structure, "Patient.name");
        assert_one(r#"{"resourceType":"Patient","maritalStatus":{}}"#, IssueCode::Structure, "Patient.maritalStatus");
        assert_one(r#"{"resourceType":"Patient","name":[{"family":""}]}"#, IssueCode::Value, "Patient.name[0].family");
        assert_one(
            r#"{"resourceType":"Patient","name":[{"family":"   "}]}"#,
            IssueCode::Value,
            "Patient.name[0].family",
        );
        assert_one(r#"{"resourceType":"Patient","gender":null}"#, IssueCode::Structure, "Patient.gender");
        assert_one(r#"{"resourceType":"Patient","name":[null]}"#, IssueCode::Structure, "Patient.name[0]");
        assert_one(
            r#"{"resourceType":"Patient","name":[{"given":["A",null]}]}"#,
            IssueCode::Structure,
            "Patient.name[0].given[1]",
        );
    }

    #[test]
    fn checks_primitive_extensions() {
        // Value absent, extension present: allowed.
        assert_valid(
            r#"{"resourceType":"Patient","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]}}"#,
        );
        // null placeholder where the extension array carries the item.
        assert_valid(
            r#"{"resourceType":"Patient","name":[{"given":[null,"B"],"_given":[{"extension":[{"url":"http://x","valueString":"A"}]},null]}]}"#,
        );
        assert_one(
            r#"{"resourceType":"Patient","birthDate":"2000-01-01","_birthDate":{"foo":1}}"#,
            IssueCode::Structure,
            "Patient.birthDate.foo",
        );
        assert_one(r#"{"resourceType":"Patient","_birthDate":{"id":"a"}}"#, IssueCode::Required, "Patient.birthDate");
        assert_one(
            r#"{"resourceType":"Patient","_birthDate":{"extension":[{"valueCode":"unknown"}]}}"#,
            IssueCode::Required,
            "Patient.birthDate.extension[0].url",
        );
        assert_one(
            r#"{"resourceType":"Patient","name":[{"given":["A","B"],"_given":[null]}]}"#,
            IssueCode::Structure,
            "Patient.name[0].given",
        );
        assert_one(
            r#"{"resourceType":"Patient","name":[{"given":["A",null],"_given":[null,null]}]}"#,
            IssueCode::Structure,
            "Patient.name[0].given[1]",
        );
        // Complex types have no `_` form.
        assert_one(
            r#"{"resourceType":"Patient","_maritalStatus":{"id":"x"}}"#,
            IssueCode::Structure,
            "Patient._maritalStatus",
        );
    }

    #[test]
    fn rejects_missing_required_elements() {
        let msg = assert_one(
            r#"{"resourceType":"Observation","code":{"text":"x"}}"#,
            IssueCode::Required,
            "Observation.status",
        );
        assert_eq!(msg, "missing required element 'status' in Observation");
        assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"component":[{"valueString":"a"}]}"#,
            IssueCode::Required,
            "Observation.component[0].code",
        );
        // A required primitive given only by its extension counts as present.
        assert_valid(
            r#"{"resourceType":"Observation","_status":{"extension":[{"url":"http://x","valueString":"y"}]},"code":{"text":"x"}}"#,
        );
    }

    #[test]
    fn checks_choice_types() {
        assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveBogus":"2020"}"#,
            IssueCode::Structure,
            "Observation.effectiveBogus",
        );
        let msg = assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2020","effectivePeriod":{"start":"2020"}}"#,
            IssueCode::Structure,
            "Observation.effectivePeriod",
        );
        assert!(msg.contains("effective[x]"), "{msg}");
        // The choice name picks the type: a Period written as effectiveDateTime.
        assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":{"start":"2020"}}"#,
            IssueCode::Structure,
            "Observation.effectiveDateTime",
        );
    }

    #[test]
    fn checks_primitive_formats_with_paths() {
        let msg =
            assert_one(r#"{"resourceType":"Patient","birthDate":"2024-02-30"}"#, IssueCode::Value, "Patient.birthDate");
        assert!(msg.starts_with("value '2024-02-30' is not a valid date"), "{msg}");
        assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2024-03-01T10:00"}"#,
            IssueCode::Value,
            "Observation.effectiveDateTime",
        );
        assert_one(r#"{"resourceType":"Patient","id":"has space"}"#, IssueCode::Value, "Patient.id");
        assert_one(
            r#"{"resourceType":"Patient","multipleBirthInteger":1.5}"#,
            IssueCode::Value,
            "Patient.multipleBirthInteger",
        );
        assert_one(r#"{"resourceType":"Patient","telecom":[{"rank":0}]}"#, IssueCode::Value, "Patient.telecom[0].rank");
        assert_one(
            r#"{"resourceType":"Patient","photo":[{"data":"not base64!"}]}"#,
            IssueCode::Value,
            "Patient.photo[0].data",
        );
        assert_one(
            r#"{"resourceType":"Patient","meta":{"lastUpdated":"2024-03-01"}}"#,
            IssueCode::Value,
            "Patient.meta.lastUpdated",
        );
        assert_one(
            r#"{"resourceType":"Patient","text":{"status":"generated","div":"<p>x</p>"}}"#,
            IssueCode::Value,
            "Patient.text.div",
        );
        assert_one(
            r#"{"resourceType":"Patient","identifier":[{"system":"http://x y"}]}"#,
            IssueCode::Value,
            "Patient.identifier[0].system",
        );
    }

    #[test]
    fn keeps_decimal_text_exact() {
        let value = crate::json::parse(OBSERVATION.as_bytes()).expect("JSON");
        assert!(validate(&value).is_empty());
        assert_eq!(
            value.get("valueQuantity").and_then(|q| q.get("value")).map(|v| v.to_json()).as_deref(),
            Some("12.50")
        );
    }

    #[test]
    fn rejects_code_outside_required_value_set() {
        let msg = assert_one(
            r#"{"resourceType":"Observation","status":"bogus","code":{"text":"x"}}"#,
            IssueCode::CodeInvalid,
            "Observation.status",
        );
        assert!(
            msg.starts_with("code 'bogus' is not in the required value set http://hl7.org/fhir/ValueSet/observation-status|4.0.1 (allowed: "),
            "{msg}"
        );
        assert!(msg.contains("preliminary"), "{msg}");
        assert_one(r#"{"resourceType":"Patient","gender":"M"}"#, IssueCode::CodeInvalid, "Patient.gender");
        assert_one(
            r#"{"resourceType":"Patient","name":[{"use":"nick"}]}"#,
            IssueCode::CodeInvalid,
            "Patient.name[0].use",
        );
        assert_one(
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"FETCH","url":"x"}}]}"#,
            IssueCode::CodeInvalid,
            "Bundle.entry[0].request.method",
        );
    }

    #[test]
    fn checks_required_bindings_on_codings() {
        static MINI: &str = r#"{"resources":["Thing"],
          "types":{"Thing":[["kind",0,"1",["CodeableConcept"],"http://x/vs"],["c",0,"*",["Coding"],"http://x/vs"]],
                   "CodeableConcept":[["coding",0,"*",["Coding"],null],["text",0,"1",["string"],null]],
                   "Coding":[["system",0,"1",["uri"],null],["code",0,"1",["code"],null]],
                   "Extension":[["id",0,"1",["string"],null],["extension",0,"*",["Extension"],null],["url",1,"1",["uri"],null]]},
          "valueSets":{"http://x/vs":{"http://x/cs":["a","b"]}}}"#;
        let tables: &'static Tables = Box::leak(Box::new(Tables::load(MINI).expect("mini table")));
        let run = |json: &str| validate_with(tables, &crate::json::parse(json.as_bytes()).expect("JSON"));
        assert!(run(r#"{"resourceType":"Thing","kind":{"coding":[{"system":"http://other","code":"zz"},{"system":"http://x/cs","code":"a"}]}}"#).is_empty());
        let issues = run(
            r#"{"resourceType":"Thing","kind":{"coding":[{"system":"http://x/cs","code":"a"},{"system":"http://x/cs","code":"c"}]},"c":[{"system":"http://x/cs","code":"z"}]}"#,
        );
        let got: Vec<(IssueCode, &str)> = issues.iter().map(|i| (i.code, i.expression.as_str())).collect();
        assert_eq!(
            got,
            [(IssueCode::CodeInvalid, "Thing.kind.coding[1].code"), (IssueCode::CodeInvalid, "Thing.c[0].code")]
        );
    }

    #[test]
    fn validates_contained_and_bundled_resources_recursively() {
        assert_one(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Patient","id":"p","gender":"x"}]}"#,
            IssueCode::CodeInvalid,
            "Observation.contained[0].gender",
        );
        assert_one(
            r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Patient","birthDate":"2023-02-29"}}]}"#,
            IssueCode::Value,
            "Bundle.entry[2].resource.birthDate",
        );
        assert_one(
            r#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Medication"}}]}"#,
            IssueCode::NotSupported,
            "Bundle.entry[0].resource.resourceType",
        );
        assert_one(
            r#"{"resourceType":"Parameters","parameter":[{"name":"p","part":[{"name":"q","resource":{"resourceType":"Patient","active":"yes"}}]}]}"#,
            IssueCode::Structure,
            "Parameters.parameter[0].part[0].resource.active",
        );
    }

    #[test]
    fn checks_extensions_and_modifier_extensions() {
        assert_one(
            r#"{"resourceType":"Patient","extension":[{"valueString":"x"}]}"#,
            IssueCode::Required,
            "Patient.extension[0].url",
        );
        assert_one(
            r#"{"resourceType":"Patient","modifierExtension":[{"url":"http://x","valueHumanName":{"family":7}}]}"#,
            IssueCode::Structure,
            "Patient.modifierExtension[0].valueHumanName.family",
        );
        assert_one(
            r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueFoo":"x"}]}"#,
            IssueCode::Structure,
            "Patient.extension[0].valueFoo",
        );
        assert_one(
            r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueString":"x","extension":[{"url":"y","valueBoolean":true}]}]}"#,
            IssueCode::Invariant,
            "Patient.extension[0]",
        );
        assert_one(
            r#"{"resourceType":"Patient","extension":[{"url":"http://x"}]}"#,
            IssueCode::Invariant,
            "Patient.extension[0]",
        );
        assert_valid(
            r#"{"resourceType":"Patient","extension":[{"url":"http://x","extension":[{"url":"a","valueDecimal":1.0},{"url":"b","valueMeta":{"versionId":"1"}}]}]}"#,
        );
    }

    #[test]
    fn survives_hostile_input_without_panicking() {
        // As deep as the parser allows: valid all the way down.
        let deep = format!(
            r#"{{"resourceType":"Parameters","parameter":[{}{{"name":"z"}}{}]}}"#,
            r#"{"name":"a","part":["#.repeat(62),
            "]}".repeat(62)
        );
        assert_valid(&deep);
        // Deeper than the parser allows, built in code: reported, not followed.
        let mut part = Object::new();
        part.insert("name", "z".into());
        for _ in 0..300 {
            let mut outer = Object::new();
            outer.insert("name", "a".into());
            outer.insert("part", Value::Array(vec![Value::Object(part)]));
            part = outer;
        }
        let mut params = Object::new();
        params.insert("resourceType", "Parameters".into());
        params.insert("parameter", Value::Array(vec![Value::Object(part)]));
        let issues = validate(&Value::Object(params));
        assert_eq!(issues.len(), 1, "{:?}", issues.first().map(|i| &i.message));
        assert!(issues[0].message.contains("nested deeper"));
        let many = format!(r#"{{"resourceType":"Patient","name":[{}]}}"#, vec!["1"; 5000].join(","));
        let issues = check(&many);
        assert_eq!(issues.len(), MAX_ISSUES + 1);
        assert_eq!(issues[MAX_ISSUES].severity, Severity::Warning);
        for junk in [
            r#"{"resourceType":"Bundle","entry":{"resource":[]}}"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Bundle","entry":[{"resource":7}]}}]}"#,
            r#"{"resourceType":"Patient","_name":[null],"name":[{"_given":7,"given":{"a":null}}],"_":1,"":{}}"#,
            r#"{"resourceType":"Observation","valueQuantity":[],"_valueQuantity":null,"_status":[],"component":[[],{},null,"x"]}"#,
            r#"{"resourceType":"Patient","birthDate":"9999-99-99T99:99:99+99:99","id":"ä","text":{"div":"<div"}}"#,
        ] {
            assert!(!check(junk).is_empty(), "{junk}");
        }
        assert!(!validate(&Value::Null).is_empty());
    }

    #[test]
    fn knows_the_table_resource_types() {
        for name in ["Patient", "Observation", "Bundle", "Parameters", "CapabilityStatement", "Subscription"] {
            assert!(is_known_resource_type(name), "{name}");
        }
        assert!(!is_known_resource_type("Medication"));
        assert!(!is_known_resource_type("patient"));
        assert_eq!(known_resource_types().len(), 18);
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use crate::json::{Number, Object};

        /// JSON made of FHIR-looking member names, so the validator goes deep.
        fn fhirish() -> impl Strategy<Value = Value> {
            let names = prop::sample::select(
                &[
                    "resourceType",
                    "id",
                    "meta",
                    "status",
                    "code",
                    "coding",
                    "system",
                    "value",
                    "valueQuantity",
                    "valueString",
                    "effectiveDateTime",
                    "component",
                    "subject",
                    "reference",
                    "extension",
                    "url",
                    "_birthDate",
                    "birthDate",
                    "name",
                    "given",
                    "_given",
                    "contained",
                    "entry",
                    "resource",
                    "text",
                    "div",
                ][..],
            );
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|i| Value::Number(Number::from_i64(i))),
                prop::sample::select(&["Patient", "Observation", "final", "2024-02-30", "", "x", "Bundle"][..])
                    .prop_map(|s| Value::String(s.to_owned())),
            ];
            leaf.prop_recursive(6, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(names.clone(), inner, 0..6).prop_map(|m| {
                        Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Object>())
                    }),
                ]
            })
        }

        proptest! {
            #[test]
            fn any_json_is_validated_without_panic(mut v in fhirish(), ty in prop::sample::select(&["Patient", "Observation", "Bundle", "Task"][..])) {
                if let Some(o) = v.as_object_mut() {
                    o.insert_front("resourceType", Value::String(ty.to_owned()));
                }
                let _ = validate(&v);
            }
        }
    }
}
