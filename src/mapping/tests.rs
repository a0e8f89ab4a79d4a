use std::path::{Path, PathBuf};

use super::*;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")
}

fn testdata(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata").join(name);
    crate::json::parse(&std::fs::read(&path).unwrap()).unwrap()
}

fn apply(mapping: &str, record: &Value) -> Result<MappedRecord, Rejected> {
    let set = MappingSet::load_dir(&shipped_dir()).unwrap();
    set.get(mapping).unwrap().apply(record, &set.reference)
}

/// A copy of the shipped mappings in a temporary folder, with `edit` applied to one file.
fn with_edit(file: &str, edit: impl Fn(&str) -> String) -> (tempfile::TempDir, Result<MappingSet, Vec<LoadError>>) {
    let tmp = tempfile::tempdir().unwrap();
    for entry in ["funktionsstatus", "vardplan", "dokument", "reference"] {
        let from = shipped_dir().join(entry);
        std::fs::create_dir_all(tmp.path().join(entry)).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap();
            if f.path().is_file() {
                std::fs::copy(f.path(), tmp.path().join(entry).join(f.file_name())).unwrap();
            }
        }
    }
    let target = tmp.path().join(file);
    let text = std::fs::read_to_string(&target).unwrap();
    std::fs::write(&target, edit(&text)).unwrap();
    let set = MappingSet::load_dir(tmp.path());
    (tmp, set)
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn the_shipped_mappings_load_from_the_folder_and_from_the_binary() {
    let dir = MappingSet::load_dir(&shipped_dir()).unwrap();
    let built_in = MappingSet::shipped().unwrap();
    let names: Vec<&str> = dir.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["dokument", "funktionsstatus", "vardplan"]);
    assert_eq!(built_in.iter().count(), 3);
    assert_eq!(built_in.origin, "built-in");
}

#[test]
fn every_fixture_of_the_shipped_mappings_passes() {
    let set = MappingSet::load_dir(&shipped_dir()).unwrap();
    let results = fixtures::run(&set, &shipped_dir(), false);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.outcome != fixtures::Outcome::Passed)
        .map(|r| format!("{}/{}: {:?}", r.mapping, r.case, r.outcome))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    for name in ["funktionsstatus", "vardplan", "dokument"] {
        assert!(results.iter().filter(|r| r.mapping == name).count() >= 3, "{name} has too few fixtures");
    }
}

#[test]
fn a_padl_record_maps_to_an_observation_with_icf_components() {
    let record = apply("funktionsstatus", &testdata("funktionsstatus-padl.json")).unwrap();
    assert_eq!(record.record_id, "fs-2025-000123");
    assert_eq!(record.organization.as_str(), "SE2120001231-0001");
    assert_eq!(record.municipality.as_deref(), Some("1281"));
    let obs = record.resources.iter().find(|r| r.resource_type == "Observation").unwrap();
    let components = obs.body.get("component").unwrap().as_array().unwrap();
    let codes: Vec<&str> = components
        .iter()
        .map(|c| {
            c.get("code").unwrap().get("coding").unwrap().as_array().unwrap()[0].get("code").unwrap().as_str().unwrap()
        })
        .collect();
    assert_eq!(codes, ["d510", "d540", "d420", "d530", "d550"]);
    assert_eq!(components[0].get("code").unwrap().get("text").unwrap().as_str(), Some("personlig hygien"));
    assert_eq!(obs.body.get("subject").unwrap().get("reference").unwrap().as_str(), Some("urn:nara:key:patient"));
    let patient = &record.resources[0];
    assert_eq!(
        patient.identity,
        Identity::Shared { system: crate::identity::PERSONNUMMER_SYSTEM.into(), value: "191212121212".into() }
    );
}

#[test]
fn a_riv_time_becomes_rfc3339_with_the_swedish_offset() {
    let record = apply("funktionsstatus", &testdata("funktionsstatus-icf.json")).unwrap();
    let obs = record.resources.iter().find(|r| r.resource_type == "Observation").unwrap();
    assert_eq!(obs.body.get("effectiveDateTime").unwrap().as_str(), Some("2025-11-21T14:30:00+01:00"));
    let coding = &obs.body.get("code").unwrap().get("coding").unwrap().as_array().unwrap()[0];
    assert_eq!(coding.get("system").unwrap().as_str(), Some("http://hl7.org/fhir/sid/icf"));
    assert_eq!(coding.get("code").unwrap().as_str(), Some("b7300"));
}

#[test]
fn bad_records_are_refused_with_the_field_and_the_rule() {
    let mut record = testdata("funktionsstatus-padl.json");
    let text = record.to_json().replace("\"förflyttning\"", "\"flyga\"").replace("\"comment\"", "\"commnet\"");
    record = crate::json::parse(text.as_bytes()).unwrap();
    let Err(Rejected::Input(issues)) = apply("funktionsstatus", &record) else { panic!("accepted") };
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert!(paths.contains(&"padl[2].activity"), "{issues:?}");
    assert!(paths.contains(&"commnet"), "{issues:?}");
}

#[test]
fn a_syntax_error_names_file_and_line() {
    let (_tmp, set) =
        with_edit("funktionsstatus/mapping.toml", |t| t.replacen("status = \"final\"", "status = \"final", 1));
    let errors = set.unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].file.ends_with("funktionsstatus/mapping.toml"), "{errors:?}");
    let shipped = std::fs::read_to_string(shipped_dir().join("funktionsstatus/mapping.toml")).unwrap();
    assert_eq!(errors[0].line, line_of(&shipped, "status = \"final\""), "{errors:?}");
}

#[test]
fn a_path_the_schema_does_not_know_names_file_and_line() {
    let (_tmp, set) =
        with_edit("vardplan/mapping.toml", |t| t.replacen("{{ careUnit.name }}", "{{ careUnit.nmae }}", 1));
    let errors = set.unwrap_err();
    let shipped = std::fs::read_to_string(shipped_dir().join("vardplan/mapping.toml")).unwrap();
    assert_eq!(errors[0].line, line_of(&shipped, "{{ careUnit.name }}"), "{errors:?}");
    assert!(errors[0].message.contains("careUnit.nmae"), "{errors:?}");
    assert!(errors[0].to_string().contains("vardplan/mapping.toml:"), "{}", errors[0]);
}

#[test]
fn mapping_mistakes_of_each_kind_are_refused_with_their_line() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("dokument/mapping.toml", "{{ ref document }}", "{{ ref docment }}", "no resource has the key"),
        ("dokument/mapping.toml", "| code document_type", "| code doc_type", "no code map"),
        ("dokument/mapping.toml", "{{ createdAt | datetime }}", "{{ createdAt | datetim }}", "unknown filter"),
        ("dokument/mapping.toml", "type = \"Task\"", "type = \"Tsk\"", "not a resource type"),
        ("dokument/mapping.toml", "intent = \"order\"", "\"$each\" = \"x\"\nintent = \"order\"", "unknown directive"),
        ("vardplan/mapping.toml", "for = \"g in goals\"", "for = \"g in gaols\"", "gaols"),
        ("vardplan/mapping.toml", "{{ ref goal g }}", "{{ ref goal }}", "repeated"),
        ("funktionsstatus/mapping.toml", "when = \"author\"", "when = \"author ==\"", "quoted literal"),
    ];
    for (file, from, to, expected) in cases {
        let (_tmp, set) = with_edit(file, |t| t.replacen(from, to, 1));
        let errors = set.expect_err(to);
        let shipped = std::fs::read_to_string(shipped_dir().join(file)).unwrap();
        let line = line_of(&shipped, from);
        assert!(
            errors.iter().any(|e| e.message.contains(expected) && e.line == line),
            "{to}: expected `{expected}` at line {line}, got {errors:?}"
        );
    }
}

#[test]
fn an_unsupported_schema_keyword_names_the_schema_file_and_line() {
    let (_tmp, set) = with_edit("dokument/schema.json", |t| t.replacen("\"minLength\": 1", "\"pattern\": \"x\"", 1));
    let errors = set.unwrap_err();
    assert!(errors[0].file.ends_with("dokument/schema.json"), "{errors:?}");
    assert!(errors[0].message.contains("pattern"), "{errors:?}");
    assert!(errors[0].line > 1, "{errors:?}");
}

#[test]
fn mapping_defects_that_produce_invalid_fhir_are_located_in_the_mapping() {
    let (_tmp, set) =
        with_edit("dokument/mapping.toml", |t| t.replacen("intent = \"order\"", "intent = \"whenever\"", 1));
    let set = set.unwrap();
    let Err(Rejected::Mapping(issues)) =
        set.get("dokument").unwrap().apply(&testdata("dokument-utskrivning.json"), &set.reference)
    else {
        panic!("accepted")
    };
    assert!(issues[0].path.contains("dokument/mapping.toml:"), "{issues:?}");
    assert!(issues[0].message.contains("Task"), "{issues:?}");
}
