//! The CapabilityStatement at `/fhir/metadata`, built from the same tables
//! the server runs on, so it lists exactly what is supported.

use serde_json::json;

use crate::{
    fhir::{
        RESOURCE_TYPES,
        search::params::{self, ParamType},
    },
    json::Value,
};

/// The statement for a server reachable at `base`.
pub fn statement(base: &str, started: &str) -> Value {
    let resources: Vec<serde_json::Value> = RESOURCE_TYPES
        .iter()
        .map(|ty| {
            let defs = params::params_for(ty);
            let mut search_params = vec![
                json!({"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"}),
                json!({"name": "_lastUpdated", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated", "type": "date"}),
            ];
            search_params.extend(defs.iter().map(|d| {
                json!({"name": d.code, "definition": d.url, "type": d.kind.as_str(), "documentation": d.description})
            }));
            let includes: Vec<String> = defs
                .iter()
                .filter(|d| d.kind == ParamType::Reference)
                .map(|d| format!("{ty}:{}", d.code))
                .collect();
            let revincludes: Vec<String> = RESOURCE_TYPES
                .iter()
                .flat_map(|src| {
                    params::params_for(src)
                        .iter()
                        .filter(|d| d.kind == ParamType::Reference && (d.targets.is_empty() || d.targets.contains(ty)))
                        .map(move |d| format!("{src}:{}", d.code))
                })
                .collect();
            json!({
                "type": ty,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "delete"},
                    {"code": "history-instance"}, {"code": "history-type"}, {"code": "create"}, {"code": "search-type"}
                ],
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "local"],
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "searchParam": search_params,
            })
        })
        .collect();
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started,
        "publisher": "nara-gateway",
        "kind": "instance",
        "software": {"name": "nara-gateway", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "nara-gateway FHIR R4 server", "url": base},
        "fhirVersion": super::FHIR_VERSION,
        "format": ["json", "application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "documentation": "Search: _count (default 50, capped), _sort (up to three keys), _total, _summary=count, _include and _revinclude (not :iterate), chained parameters up to three links. Unknown parameters are ignored and reported in an OperationOutcome entry unless Prefer: handling=strict. Paging links are absolute and stable under concurrent writes.",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}]
        }]
    });
    let mut value = Value::from(statement);
    if let Some(obj) = value.as_object_mut() {
        obj.insert_front("resourceType", "CapabilityStatement".into());
    }
    value
}
