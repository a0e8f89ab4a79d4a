//! The search parameters the gateway supports: the standard FHIR R4
//! definitions for each served resource type, generated into
//! `params_table.rs` by `tools/gen-search-params/gen.py`.
//!
//! Only parameters whose expression `extract.rs` evaluates faithfully are
//! listed; the rest are in [`omitted_for`] with the reason, so the
//! CapabilityStatement can say exactly what is supported.

use super::params_table::{OMITTED, PARAMS};

/// The type of a search parameter, as in `SearchParameter.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    /// The FHIR code (`token`, `date`, …), for the CapabilityStatement.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug)]
pub struct SearchParamDef {
    /// The name used in URLs, e.g. `subject`.
    pub code: &'static str,
    /// The resource type it applies to, e.g. `Observation`.
    pub resource: &'static str,
    pub kind: ParamType,
    /// The parts of the R4 FHIRPath expression that apply to `resource`.
    pub expression: &'static str,
    /// For reference parameters: the resource types the reference may point to.
    pub targets: &'static [&'static str],
    /// Canonical URL of the R4 SearchParameter.
    pub url: &'static str,
    /// First sentence of the R4 description for this resource type.
    pub description: &'static str,
}

/// An R4 parameter of a served type that is deliberately not supported.
#[derive(Debug)]
pub struct OmittedParam {
    pub resource: &'static str,
    pub code: &'static str,
    /// Why it is left out, e.g. `composite parameters not supported`.
    pub reason: &'static str,
}

/// The declared type(s) of an element, as the expression compiler in
/// `extract.rs` needs them. Generated from the R4 StructureDefinitions.
#[derive(Debug)]
pub struct ElementDef {
    /// `Type.element` or `Type.backbone.element`, without `[x]`.
    pub path: &'static str,
    /// True for a choice element `name[x]` (JSON keys `nameQuantity`, …).
    pub choice: bool,
    /// FHIR type codes; a backbone element's type is its own path.
    pub types: &'static [&'static str],
}

/// Parameters whose values are exactly those of other parameters of the
/// same type together: their expression is the others' joined by `|`
/// (checked by a test against the R4 definitions). They get no index rows
/// of their own — a P-ADL Observation's `combo-code` copies were 11 of its
/// 27 token rows — and a search reads the others' rows instead.
const UNIONS: &[(&str, &str, &[&str])] = &[
    ("Observation", "combo-code", &["code", "component-code"]),
    ("Observation", "combo-data-absent-reason", &["data-absent-reason", "component-data-absent-reason"]),
    ("Observation", "combo-value-concept", &["value-concept", "component-value-concept"]),
    ("Observation", "combo-value-quantity", &["value-quantity", "component-value-quantity"]),
];

/// Parameters whose values are those of another reference parameter of
/// the same type that point to one resource type: `(type, code, of, target)`
/// where `code`'s expression is `of`'s with `.where(resolve() is target)`
/// (checked by a test against the R4 definitions). They get no index rows
/// of their own — an Observation's `patient` row repeated its `subject`
/// row, and was a second random page per record in the reference index —
/// and a search reads `of`'s rows with that target type instead (and rows
/// of their own that databases written before still hold).
const ALIASES: &[(&str, &str, &str, &str)] = &[
    ("CarePlan", "patient", "subject", "Patient"),
    ("CareTeam", "patient", "subject", "Patient"),
    ("DocumentReference", "patient", "subject", "Patient"),
    ("Goal", "patient", "subject", "Patient"),
    ("Observation", "patient", "subject", "Patient"),
    ("Provenance", "patient", "target", "Patient"),
    ("Task", "patient", "subject", "Patient"),
];

/// The parameter and target type whose rows answer `resource_type`'s
/// `code`, when it is an alias (see [`ALIASES`]).
pub fn alias_of(resource_type: &str, code: &str) -> Option<(&'static str, &'static str)> {
    ALIASES.iter().find(|(ty, c, _, _)| *ty == resource_type && *c == code).map(|(_, _, of, target)| (*of, *target))
}

/// The parameters whose rows answer `resource_type`'s `code`, when it is a
/// union of others (see [`UNIONS`]); `None` when it has rows of its own.
pub fn union_of(resource_type: &str, code: &str) -> Option<&'static [&'static str]> {
    UNIONS.iter().find(|(ty, c, _)| *ty == resource_type && *c == code).map(|(_, _, parts)| *parts)
}

/// The supported parameter `code` of `resource_type`.
pub fn lookup(resource_type: &str, code: &str) -> Option<&'static SearchParamDef> {
    let params = params_for(resource_type);
    params.binary_search_by(|p| p.code.cmp(code)).ok().map(|i| &params[i])
}

/// All supported parameters of `resource_type`, sorted by code (empty for unknown types).
pub fn params_for(resource_type: &str) -> &'static [SearchParamDef] {
    &PARAMS[range_of(PARAMS, resource_type, |p| p.resource)]
}

/// The R4 parameters of `resource_type` that are not supported, sorted by code.
pub fn omitted_for(resource_type: &str) -> &'static [OmittedParam] {
    &OMITTED[range_of(OMITTED, resource_type, |p| p.resource)]
}

/// Position of `params_for(resource_type)` within the whole table.
pub(super) fn range_for(resource_type: &str) -> std::ops::Range<usize> {
    range_of(PARAMS, resource_type, |p| p.resource)
}

fn range_of<T>(items: &[T], resource: &str, key: impl Fn(&T) -> &str) -> std::ops::Range<usize> {
    let start = items.partition_point(|p| key(p) < resource);
    let end = start + items[start..].partition_point(|p| key(p) == resource);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_by_resource_then_code_without_duplicates() {
        for w in PARAMS.windows(2) {
            assert!((w[0].resource, w[0].code) < (w[1].resource, w[1].code), "{} {}", w[0].code, w[1].code);
        }
    }

    #[test]
    fn looks_up_multi_resource_parameter_with_only_this_types_expression() {
        let p = lookup("Observation", "patient").expect("Observation.patient");
        assert_eq!(p.kind, ParamType::Reference);
        assert_eq!(p.expression, "Observation.subject.where(resolve() is Patient)");
        assert_eq!(p.targets, ["Patient"]);
        assert_eq!(p.url, "http://hl7.org/fhir/SearchParameter/clinical-patient");
        let d = lookup("DocumentReference", "identifier").unwrap();
        assert_eq!(d.expression, "DocumentReference.masterIdentifier | DocumentReference.identifier");
    }

    #[test]
    fn every_type_has_the_common_meta_parameters_but_not_id() {
        for t in [
            "Patient",
            "Organization",
            "Practitioner",
            "PractitionerRole",
            "Observation",
            "CarePlan",
            "Goal",
            "CareTeam",
            "DocumentReference",
            "Binary",
            "Task",
            "Provenance",
            "AuditEvent",
            "Subscription",
        ] {
            for code in ["_profile", "_tag", "_security", "_source"] {
                assert!(lookup(t, code).is_some(), "{t}.{code}");
            }
            assert!(lookup(t, "_id").is_none());
            let codes: Vec<_> = params_for(t).iter().map(|p| p.code).collect();
            assert!(codes.is_sorted(), "{t}");
        }
    }

    #[test]
    fn spec_required_parameters_are_present() {
        for (t, code) in [
            ("Observation", "identifier"),
            ("Observation", "subject"),
            ("Observation", "category"),
            ("Observation", "code"),
            ("Observation", "date"),
            ("Observation", "status"),
            ("Task", "owner"),
            ("Task", "requester"),
            ("DocumentReference", "type"),
            ("DocumentReference", "author"),
            ("Patient", "organization"),
            ("Patient", "identifier"),
        ] {
            assert!(lookup(t, code).is_some(), "{t}.{code}");
        }
    }

    #[test]
    fn each_union_is_exactly_its_parts_of_the_same_kind() {
        for (ty, code, parts) in UNIONS {
            let union = lookup(ty, code).unwrap_or_else(|| panic!("{ty}.{code}"));
            let defs: Vec<_> = parts.iter().map(|p| lookup(ty, p).unwrap_or_else(|| panic!("{ty}.{p}"))).collect();
            let joined: Vec<_> = defs.iter().map(|d| d.expression).collect();
            assert_eq!(union.expression, joined.join(" | "), "{ty}.{code}");
            for d in &defs {
                assert_eq!(d.kind, union.kind, "{ty}.{}", d.code);
                assert!(union_of(ty, d.code).is_none(), "a part has rows of its own");
            }
        }
        assert_eq!(union_of("Observation", "combo-code"), Some(&["code", "component-code"][..]));
        assert_eq!(union_of("Observation", "code"), None);
        assert_eq!(union_of("Condition", "combo-code"), None);
    }

    #[test]
    fn each_alias_is_its_parameter_restricted_to_one_target_type() {
        for (ty, code, of, target) in ALIASES {
            let alias = lookup(ty, code).unwrap_or_else(|| panic!("{ty}.{code}"));
            let base = lookup(ty, of).unwrap_or_else(|| panic!("{ty}.{of}"));
            assert_eq!(alias.expression, format!("{}.where(resolve() is {target})", base.expression), "{ty}.{code}");
            assert_eq!((alias.kind, base.kind), (ParamType::Reference, ParamType::Reference));
            assert_eq!(alias.targets, [*target]);
            assert!(base.targets.contains(target));
            assert!(union_of(ty, code).is_none() && union_of(ty, of).is_none() && alias_of(ty, of).is_none());
        }
        assert_eq!(alias_of("Observation", "patient"), Some(("subject", "Patient")));
        assert_eq!(alias_of("Observation", "subject"), None);
        assert_eq!(alias_of("AuditEvent", "patient"), None, "two expressions: rows of its own");
    }

    #[test]
    fn unknown_types_and_codes_give_nothing() {
        assert!(params_for("Nope").is_empty());
        assert!(lookup("Observation", "nope").is_none());
    }

    #[test]
    fn composite_and_phonetic_are_reported_as_omitted() {
        let omitted: Vec<_> = omitted_for("Observation").iter().map(|o| o.code).collect();
        assert!(omitted.contains(&"code-value-quantity"));
        assert!(omitted_for("Patient").iter().any(|o| o.code == "phonetic"));
        assert!(lookup("Observation", "code-value-quantity").is_none());
    }
}
