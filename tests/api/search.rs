//! Search: parameter types and prefixes, chains, includes, sorting, totals
//! and paging that stays stable while others write.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, observation_json, patient_json, spawn_app};

fn ids(r: &crate::helpers::Resp) -> Vec<String> {
    r.json["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Two patients; Tolvan has three observations, Åsa one.
async fn seed(app: &TestApp) -> (String, String, Vec<String>) {
    let tolvan = app.create("Patient", &patient_json("Tolvansson", "191212121212")).await;
    let asa = app.create("Patient", &patient_json("Åström", "201212121212")).await;
    let mut obs = Vec::new();
    for (cat, code, when) in [
        ("survey", "d510", "2025-11-20T10:00:00+01:00"),
        ("survey", "d540", "2025-11-21T10:00:00+01:00"),
        ("vital-signs", "b7300", "2025-12-01T08:30:00Z"),
    ] {
        obs.push(app.create("Observation", &observation_json(&tolvan, cat, code, when)).await);
    }
    app.create("Observation", &observation_json(&asa, "survey", "d510", "2025-11-20T10:00:00+01:00")).await;
    (tolvan, asa, obs)
}

#[tokio::test]
async fn search_by_subject_and_category() {
    let app = spawn_app().await;
    let (tolvan, _, obs) = seed(&app).await;
    let r = app.get(&format!("/fhir/Observation?subject=Patient/{tolvan}&category=survey")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["type"], "searchset");
    assert_eq!(r.json["total"], 2);
    let found: HashSet<String> = ids(&r).into_iter().collect();
    assert_eq!(found, HashSet::from([obs[0].clone(), obs[1].clone()]));
    let by_patient = app.get(&format!("/fhir/Observation?patient={tolvan}")).await;
    assert_eq!(by_patient.json["total"], 3);
    assert!(r.json["entry"][0]["fullUrl"].as_str().unwrap().starts_with(&app.base));
}

#[tokio::test]
async fn token_search_with_system_code_forms_and_not() {
    let app = spawn_app().await;
    seed(&app).await;
    let icf = "http://hl7.org/fhir/sid/icf";
    assert_eq!(app.get(&format!("/fhir/Observation?code={icf}|d510")).await.json["total"], 2);
    assert_eq!(app.get("/fhir/Observation?code=d510,d540").await.json["total"], 3);
    assert_eq!(app.get("/fhir/Observation?code=http://other|d510").await.json["total"], 0);
    assert_eq!(app.get(&format!("/fhir/Observation?code={icf}|")).await.json["total"], 4);
    assert_eq!(app.get("/fhir/Observation?code:not=d510").await.json["total"], 2);
    assert_eq!(app.get("/fhir/Observation?status=final").await.json["total"], 4);
}

#[tokio::test]
async fn date_search_with_prefixes() {
    let app = spawn_app().await;
    seed(&app).await;
    let count = |q: &'static str| {
        let app = &app;
        async move { app.get(&format!("/fhir/Observation?date={q}")).await.json["total"].as_u64().unwrap() }
    };
    assert_eq!(count("2025-11-20").await, 2);
    assert_eq!(count("2025-11").await, 3);
    assert_eq!(count("gt2025-11-30").await, 1);
    assert_eq!(count("ge2025-11-21").await, 2);
    assert_eq!(count("lt2025-11-21").await, 2);
    assert_eq!(count("le2025-11-21").await, 3);
    assert_eq!(count("ne2025-11-20").await, 2);
    assert_eq!(count("sa2025-11-21").await, 1);
    assert_eq!(count("eb2025-11-21").await, 2);
    assert_eq!(count("2025-11-20T09:00:00Z").await, 2);
    let bad = app.get("/fhir/Observation?date=2025-13-01").await;
    bad.assert_outcome(400, "date");
}

#[tokio::test]
async fn string_search_ignores_case_and_accents_and_supports_exact() {
    let app = spawn_app().await;
    let (_, asa, _) = seed(&app).await;
    let r = app.get("/fhir/Patient?family=astr").await;
    assert_eq!(ids(&r), vec![asa.clone()]);
    assert_eq!(app.get("/fhir/Patient?name=ÅSTRÖM").await.json["total"], 1);
    assert_eq!(app.get("/fhir/Patient?family:exact=Åström").await.json["total"], 1);
    assert_eq!(app.get("/fhir/Patient?family:exact=åström").await.json["total"], 0);
    assert_eq!(app.get("/fhir/Patient?name:contains=ansso").await.json["total"], 1);
}

#[tokio::test]
async fn id_last_updated_and_identifier() {
    let app = spawn_app().await;
    let (tolvan, asa, _) = seed(&app).await;
    assert_eq!(app.get(&format!("/fhir/Patient?_id={tolvan},{asa}")).await.json["total"], 2);
    assert_eq!(app.get("/fhir/Patient?_lastUpdated=gt2000-01-01").await.json["total"], 2);
    assert_eq!(app.get("/fhir/Patient?_lastUpdated=lt2000-01-01").await.json["total"], 0);
    let pnr = "http://electronichealth.se/identifier/personnummer|191212121212";
    assert_eq!(ids(&app.get(&format!("/fhir/Patient?identifier={pnr}")).await), vec![tolvan]);
}

#[tokio::test]
async fn chained_search_on_patient_identifier() {
    let app = spawn_app().await;
    seed(&app).await;
    let pnr = "http://electronichealth.se/identifier/personnummer|191212121212";
    let r = app.get(&format!("/fhir/Observation?subject:Patient.identifier={pnr}")).await;
    assert_eq!(r.json["total"], 3, "{}", r.text);
    let r = app.get("/fhir/Observation?patient.family=astr").await;
    assert_eq!(r.json["total"], 1, "{}", r.text);
}

#[tokio::test]
async fn include_and_revinclude_add_referenced_resources() {
    let app = spawn_app().await;
    let (tolvan, _, _) = seed(&app).await;
    let r = app.get(&format!("/fhir/Observation?subject={tolvan}&_include=Observation:subject")).await;
    let entries = r.json["entry"].as_array().unwrap();
    let included: Vec<_> = entries.iter().filter(|e| e["search"]["mode"] == "include").collect();
    assert_eq!(included.len(), 1, "the patient once, not per observation: {}", r.text);
    assert_eq!(included[0]["resource"]["id"], tolvan.as_str());
    let r = app.get(&format!("/fhir/Patient?_id={tolvan}&_revinclude=Observation:subject")).await;
    let included = r.json["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").count();
    assert_eq!(included, 3);
    app.get("/fhir/Observation?_include=Observation:nonsense").await.assert_outcome(400, "_include");
}

#[tokio::test]
async fn sort_by_date_both_ways_and_by_last_updated() {
    let app = spawn_app().await;
    let (tolvan, _, obs) = seed(&app).await;
    let asc = ids(&app.get(&format!("/fhir/Observation?subject={tolvan}&_sort=date")).await);
    assert_eq!(asc, obs);
    let desc = ids(&app.get(&format!("/fhir/Observation?subject={tolvan}&_sort=-date")).await);
    assert_eq!(desc, obs.iter().rev().cloned().collect::<Vec<_>>());
    let recent = ids(&app.get(&format!("/fhir/Observation?subject={tolvan}&_sort=-_lastUpdated")).await);
    assert_eq!(recent, obs.iter().rev().cloned().collect::<Vec<_>>());
}

#[tokio::test]
async fn summary_count_and_total() {
    let app = spawn_app().await;
    seed(&app).await;
    let r = app.get("/fhir/Observation?_summary=count").await;
    assert_eq!(r.json["total"], 4);
    assert!(r.json.get("entry").is_none());
    let r = app.get("/fhir/Observation?_count=1&_total=accurate").await;
    assert_eq!(r.json["total"], 4);
    assert_eq!(ids(&r).len(), 1);
    let r = app.get("/fhir/Observation?_count=1&_total=none").await;
    assert!(r.json.get("total").is_none());
}

#[tokio::test]
async fn unknown_parameters_are_reported_or_refused_when_strict() {
    let app = spawn_app().await;
    seed(&app).await;
    let lenient = app.get("/fhir/Observation?nonsense=1").await;
    assert_eq!(lenient.status, StatusCode::OK);
    assert_eq!(lenient.json["total"], 4, "ignored, not applied");
    let outcome = lenient.json["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").cloned();
    assert!(outcome.is_some(), "{}", lenient.text);
    assert!(!lenient.link("self").unwrap().contains("nonsense"));
    let strict = app.send(Method::GET, "/fhir/Observation?nonsense=1", None, &[("prefer", "handling=strict")]).await;
    strict.assert_outcome(400, "nonsense");
}

#[tokio::test]
async fn post_search_combines_form_and_query() {
    let app = spawn_app().await;
    let (tolvan, _, _) = seed(&app).await;
    let r = app
        .send(
            Method::POST,
            "/fhir/Observation/_search?category=survey",
            Some(&format!("subject=Patient%2F{tolvan}")),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["total"], 2);
}

#[tokio::test]
async fn task_and_document_reference_parameters() {
    let app = spawn_app().await;
    let (tolvan, _, _) = seed(&app).await;
    let task = format!(
        r#"{{"resourceType":"Task","status":"requested","intent":"order","code":{{"coding":[{{"system":"https://nara-gateway.se/fhir/CodeSystem/task-code","code":"transfer"}}]}},"for":{{"reference":"Patient/{tolvan}"}},"requester":{{"reference":"Organization/region"}},"owner":{{"reference":"Organization/lund"}}}}"#
    );
    let tid = app.create("Task", &task).await;
    let inbox = app.get("/fhir/Task?owner=Organization/lund&status=requested").await;
    assert_eq!(ids(&inbox), vec![tid.clone()]);
    assert_eq!(app.get("/fhir/Task?requester=Organization/region").await.json["total"], 1);
    assert_eq!(app.get("/fhir/Task?owner=Organization/malmo").await.json["total"], 0);
    let doc = format!(
        r#"{{"resourceType":"DocumentReference","status":"current","type":{{"coding":[{{"system":"http://loinc.org","code":"18842-5"}}]}},"subject":{{"reference":"Patient/{tolvan}"}},"content":[{{"attachment":{{"contentType":"application/pdf","url":"Binary/b1"}}}}]}}"#
    );
    app.create("DocumentReference", &doc).await;
    assert_eq!(app.get("/fhir/DocumentReference?type=http://loinc.org|18842-5").await.json["total"], 1);
}

#[tokio::test]
async fn paging_is_complete_and_stable_while_others_write() {
    let app = spawn_app().await;
    let pid = app.create("Patient", &patient_json("A", "191212121212")).await;
    let mut created = HashSet::new();
    for i in 0..40 {
        let id = app
            .create(
                "Observation",
                &observation_json(&pid, "survey", "d510", &format!("2025-01-{:02}T10:00:00Z", i % 28 + 1)),
            )
            .await;
        created.insert(id);
    }
    for sort in ["", "&_sort=date", "&_sort=-date,_id"] {
        let mut seen = Vec::new();
        let mut url = format!("/fhir/Observation?subject={pid}&_count=7{sort}");
        let mut pages = 0;
        loop {
            let page = app.get(&url).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.text);
            seen.extend(ids(&page));
            // Someone else writes between our pages.
            app.create("Observation", &observation_json(&pid, "vital-signs", "b7300", "2030-01-01T00:00:00Z")).await;
            pages += 1;
            match page.link("next") {
                Some(next) => {
                    assert!(next.starts_with("http://"), "next links are absolute: {next}");
                    url = next;
                }
                None => break,
            }
            assert!(pages < 50, "paging does not end");
        }
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "no resource twice ({sort})");
        assert!(created.is_subset(&unique), "every resource that existed at the start is seen ({sort})");
    }
}

#[tokio::test]
async fn count_is_capped_by_configuration() {
    let app = crate::helpers::spawn_app_with(&[("NARA_FHIR__MAX_COUNT", "2"), ("NARA_FHIR__DEFAULT_COUNT", "2")]).await;
    seed(&app).await;
    let r = app.get("/fhir/Observation?_count=100").await;
    assert_eq!(ids(&r).len(), 2);
    assert!(r.link("next").is_some());
}

/// An Observation coded `code` (ICF) with a Quantity `value` and `components` (ICF code, Quantity value).
fn observation_with_components(code: &str, value: u32, components: &[(&str, u32)]) -> String {
    let quantity = |v: u32| format!(r#"{{"value":{v},"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}"#);
    let coded = |c: &str| format!(r#"{{"coding":[{{"system":"http://hl7.org/fhir/sid/icf","code":"{c}"}}]}}"#);
    let components: Vec<String> = components
        .iter()
        .map(|(c, v)| format!(r#"{{"code":{},"valueQuantity":{}}}"#, coded(c), quantity(*v)))
        .collect();
    let components =
        if components.is_empty() { String::new() } else { format!(r#","component":[{}]"#, components.join(",")) };
    format!(
        r#"{{"resourceType":"Observation","status":"final","code":{},"valueQuantity":{}{components}}}"#,
        coded(code),
        quantity(value)
    )
}

#[tokio::test]
async fn combined_parameters_match_the_observation_or_any_component() {
    let app = spawn_app().await;
    let plain = app.create("Observation", &observation_with_components("d550", 70, &[])).await;
    let composed = app.create("Observation", &observation_with_components("b100", 20, &[("d540", 120)])).await;
    let found = |query: &str| {
        let app = &app;
        let path = format!("/fhir/Observation?{query}");
        async move {
            let r = app.get(&path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
            ids(&r)
        }
    };
    assert_eq!(found("combo-code=d550").await, [plain.as_str()]);
    assert_eq!(found("combo-code=http://hl7.org/fhir/sid/icf|d540").await, [composed.as_str()]);
    assert_eq!(found("combo-code=b100").await, [composed.as_str()]);
    assert_eq!(found("combo-code=d540,d550&_sort=_id").await.len(), 2);
    assert_eq!(found("combo-code:not=d540").await, [plain.as_str()]);
    assert_eq!(found("combo-code:missing=true").await, Vec::<String>::new());
    assert_eq!(found("combo-code:missing=false").await.len(), 2);
    // Sorted by the smallest code ascending, the largest descending.
    assert_eq!(found("_sort=combo-code").await, [composed.as_str(), plain.as_str()]);
    assert_eq!(found("_sort=-combo-code").await, [plain.as_str(), composed.as_str()]);
    assert_eq!(found("combo-value-quantity=gt100").await, [composed.as_str()]);
    assert_eq!(found("combo-value-quantity=lt30").await, [composed.as_str()]);
    assert_eq!(found("combo-value-quantity=70|http://unitsofmeasure.org|kg").await, [plain.as_str()]);
    // The parts keep their own meaning.
    assert_eq!(found("code=d540").await, Vec::<String>::new());
    assert_eq!(found("component-code=d540").await, [composed.as_str()]);
}
