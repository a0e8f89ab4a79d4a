//! The FHIR R4 (4.0.1) REST API at `/fhir`: interactions, search, Bundles,
//! the CapabilityStatement and structural validation.

pub mod bundle;
pub mod capability;
pub mod format;
pub mod interactions;
pub mod resource;
pub mod rest;
pub mod search;
pub mod validate;

/// The media type of every FHIR response body.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The FHIR version this server speaks.
pub const FHIR_VERSION: &str = "4.0.1";

/// Resource types the server stores and serves.
pub const RESOURCE_TYPES: &[&str] = &[
    "AuditEvent",
    "Binary",
    "CarePlan",
    "CareTeam",
    "DocumentReference",
    "Goal",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Provenance",
    "Subscription",
    "Task",
];

/// True when `ty` is a resource type with a REST endpoint here.
pub fn is_supported_type(ty: &str) -> bool {
    RESOURCE_TYPES.binary_search(&ty).is_ok()
}

/// True when `id` is a valid FHIR logical id.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_sorted_for_binary_search() {
        assert!(RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert!(is_supported_type("Task"));
        assert!(!is_supported_type("Medication"));
    }

    #[test]
    fn ids_follow_the_fhir_rule() {
        assert!(is_valid_id("a-1.B"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }
}
