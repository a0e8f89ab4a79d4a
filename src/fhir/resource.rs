//! Working with one resource's JSON: checking it against R4, setting the
//! server-owned `id` and `meta`, and resolving references inside Bundles.

use std::collections::HashMap;

use crate::{
    error::{ApiError, Issue},
    fhir::validate,
    json::{Object, Value},
};

/// Checks that `value` is a resource of type `expected` and valid FHIR R4.
/// `at` prefixes issue locations (e.g. `Bundle.entry[2].resource`).
pub fn check(value: &Value, expected: &str, at: Option<&str>) -> Result<(), ApiError> {
    let locate = |expr: &str| match at {
        Some(prefix) => format!("{prefix}.{expr}"),
        None => expr.to_owned(),
    };
    let Some(obj) = value.as_object() else {
        let at = at.map_or_else(|| expected.to_owned(), str::to_owned);
        return Err(ApiError::invalid_at("structure", "a resource must be a JSON object", at));
    };
    match obj.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == expected => {}
        Some(t) => {
            return Err(ApiError::invalid_at(
                "invalid",
                format!("resourceType is `{t}` but this endpoint takes `{expected}`"),
                locate("resourceType"),
            ));
        }
        None => {
            return Err(ApiError::invalid_at("required", "resourceType is missing", locate("resourceType")));
        }
    }
    let problems = validate::validate(value);
    let errors: Vec<Issue> = problems
        .into_iter()
        .filter(|p| matches!(p.severity, validate::Severity::Error))
        .map(|p| Issue::error(p.code.as_str(), p.message).at(prefixed(at, &p.expression)))
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(ApiError::Invalid(errors)) }
}

/// `Observation.status` inside `Bundle.entry[2].resource` is `Bundle.entry[2].resource.status`.
fn prefixed(at: Option<&str>, expr: &str) -> String {
    match at {
        Some(prefix) => match expr.split_once('.') {
            Some((_, rest)) => format!("{prefix}.{rest}"),
            None => prefix.to_owned(),
        },
        None => expr.to_owned(),
    }
}

/// The `id` element of a resource, if any.
pub fn id_of(value: &Value) -> Option<&str> {
    value.get("id").and_then(Value::as_str)
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated` (keeping the client's
/// other `meta` elements) and returns the JSON text to store.
pub fn finalize(value: &mut Value, id: &str, version: i64, at_ms: i64) -> String {
    if let Some(obj) = value.as_object_mut() {
        obj.insert_after("resourceType", "id", Value::String(id.to_owned()));
        let version_text = Value::String(version.to_string());
        let updated = Value::String(super::format::instant(at_ms));
        match obj.get_mut("meta").and_then(Value::as_object_mut) {
            Some(meta) => {
                meta.insert_front("lastUpdated", updated);
                meta.insert_front("versionId", version_text);
            }
            None => {
                let mut meta = Object::new();
                meta.insert("versionId", version_text);
                meta.insert("lastUpdated", updated);
                obj.insert_after("id", "meta", Value::Object(meta));
            }
        }
    }
    value.to_json()
}

/// Replaces every `reference` found in `map` (e.g. `urn:uuid:…` → `Patient/123`).
/// Returns the references that look local to the Bundle (`urn:uuid:`/`urn:oid:`) but are not in `map`.
pub fn rewrite_references(value: &mut Value, map: &HashMap<String, String>) -> Vec<String> {
    let mut dangling = Vec::new();
    rewrite(value, map, &mut dangling);
    dangling
}

fn rewrite(value: &mut Value, map: &HashMap<String, String>, dangling: &mut Vec<String>) {
    match value {
        Value::Object(obj) => {
            for (key, v) in obj.iter_mut() {
                if key == "reference"
                    && let Value::String(r) = v
                {
                    if let Some(new) = map.get(r.as_str()) {
                        *r = new.clone();
                    } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                        dangling.push(r.clone());
                    }
                    continue;
                }
                // An Attachment's `url` naming another entry of the Bundle (its Binary).
                if key == "url"
                    && let Value::String(u) = v
                    && let Some(new) = map.get(u.as_str())
                {
                    *u = new.clone();
                    continue;
                }
                rewrite(v, map, dangling);
            }
        }
        Value::Array(items) => {
            for v in items {
                rewrite(v, map, dangling);
            }
        }
        _ => {}
    }
}

/// Conditional references (`Patient?identifier=…`) in a resource, to resolve in a transaction.
pub fn conditional_references(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for_each_reference(value, &mut |r| {
        if r.contains('?') && !r.starts_with('#') && !r.contains("://") {
            out.push(r.to_owned());
        }
    });
    out
}

/// References that point into a Bundle (`urn:uuid:`/`urn:oid:`), which only a transaction resolves.
pub fn bundle_local_references(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for_each_reference(value, &mut |r| {
        if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
            out.push(r.to_owned());
        }
    });
    out
}

/// Calls `f` with every `reference` string in `value`.
fn for_each_reference(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::Object(obj) => {
            for (key, v) in obj.iter() {
                match v {
                    Value::String(r) if key == "reference" => f(r),
                    _ => for_each_reference(v, f),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| for_each_reference(v, f)),
        _ => {}
    }
}

/// A new server-assigned logical id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    #[test]
    fn finalize_sets_id_and_meta_and_keeps_everything_else() {
        let mut v = parse(br#"{"resourceType":"Observation","meta":{"tag":[{"code":"x"}],"versionId":"99"},"valueQuantity":{"value":12.50}}"#).unwrap();
        let text = finalize(&mut v, "abc", 3, 0);
        assert_eq!(
            text,
            r#"{"resourceType":"Observation","id":"abc","meta":{"versionId":"3","lastUpdated":"1970-01-01T00:00:00.000Z","tag":[{"code":"x"}]},"valueQuantity":{"value":12.50}}"#
        );
    }

    #[test]
    fn rewrites_bundle_local_references_and_reports_dangling_ones() {
        let mut v = parse(br#"{"subject":{"reference":"urn:uuid:1"},"performer":[{"reference":"urn:uuid:2"}],"x":{"reference":"Patient/7"}}"#).unwrap();
        let map = HashMap::from([("urn:uuid:1".to_string(), "Patient/p1".to_string())]);
        let dangling = rewrite_references(&mut v, &map);
        assert_eq!(dangling, ["urn:uuid:2"]);
        assert_eq!(v.get("subject").unwrap().get("reference").unwrap().as_str(), Some("Patient/p1"));
        assert_eq!(v.get("x").unwrap().get("reference").unwrap().as_str(), Some("Patient/7"));
    }

    #[test]
    fn finds_bundle_local_references() {
        let v = parse(br#"{"a":[{"reference":"urn:uuid:1"}],"b":{"reference":"Patient/1"}}"#).unwrap();
        assert_eq!(bundle_local_references(&v), ["urn:uuid:1"]);
    }

    #[test]
    fn finds_conditional_references() {
        let v = parse(br#"{"subject":{"reference":"Patient?identifier=a|b"},"y":{"reference":"Patient/1"}}"#).unwrap();
        assert_eq!(conditional_references(&v), ["Patient?identifier=a|b"]);
    }
}
