//! The municipal push over real HTTP: each shipped example in and back out
//! through `/fhir`, idempotency, concurrency, rejections, batches, binding, reload.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, spawn_app, spawn_app_with};

fn example(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata").join(name);
    serde_json::from_slice(&std::fs::read(path).expect("testdata")).expect("json")
}

impl TestApp {
    async fn push_as(&self, client: &str, path: &str, body: &str) -> Resp {
        let token = format!("Bearer {}", self.token_for(client, None));
        self.send(Method::POST, path, Some(body), &[("authorization", &token), ("content-type", "application/json")])
            .await
    }

    async fn get_as(&self, client: &str, path: &str) -> Resp {
        let token = format!("Bearer {}", self.token_for(client, None));
        self.send(Method::GET, path, None, &[("authorization", &token)]).await
    }
}

fn resources_of(r: &Resp) -> Vec<String> {
    r.json["resources"].as_array().expect("resources").iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn find<'a>(refs: &'a [String], ty: &str) -> &'a str {
    refs.iter().find(|r| r.starts_with(&format!("{ty}/"))).unwrap_or_else(|| panic!("no {ty} in {refs:?}"))
}

#[tokio::test]
async fn each_shipped_example_is_ingested_and_read_back_through_fhir() {
    let app = spawn_app().await;
    let cases = [
        ("lund-ehr", "funktionsstatus", "funktionsstatus-padl.json", "Observation"),
        ("lund-ehr", "funktionsstatus", "funktionsstatus-icf.json", "Observation"),
        ("lund-ehr", "vardplan", "vardplan-sip.json", "CarePlan"),
        ("region-skane", "dokument", "dokument-utskrivning.json", "Task"),
    ];
    for (client, mapping, file, main_type) in cases {
        let record = example(file);
        let r = app.push_as(client, &format!("/ingest/{mapping}"), &record.to_string()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{file}: {}", r.text);
        assert_eq!(r.json["status"], "created");
        assert_eq!(r.json["recordId"], record["recordId"]);
        assert!(r.json.get("outcome").is_none());
        let refs = resources_of(&r);
        for reference in &refs {
            let got = app.get(&format!("/fhir/{reference}")).await;
            assert_eq!(got.status, StatusCode::OK, "{reference}: {}", got.text);
        }
        let main = app.get(&format!("/fhir/{}", find(&refs, main_type))).await;
        let patient_ref = find(&refs, "Patient");
        let subject = main.json.get("subject").or(main.json.get("for")).expect("subject");
        assert_eq!(subject["reference"], patient_ref);
        let patient = app.get(&format!("/fhir/{patient_ref}")).await;
        assert_eq!(patient.json["identifier"][0]["value"], "191212121212");
        // A Provenance names the source, the record and the mapping version.
        let prov = app.get(&format!("/fhir/Provenance?target={}", find(&refs, main_type))).await;
        assert_eq!(
            prov.json["total"].as_u64().or(Some(prov.json["entry"].as_array().unwrap().len() as u64)),
            Some(1),
            "{}",
            prov.text
        );
        let p = &prov.json["entry"][0]["resource"];
        assert_eq!(p["policy"][0], format!("https://nara-gateway.se/mappings/{mapping}/1.0.0"));
        assert_eq!(p["entity"][0]["what"]["identifier"]["value"], record["recordId"]);
        assert_eq!(p["agent"][0]["who"]["identifier"]["value"], record["sourceSystem"]);
    }
    // One patient for all four records.
    let patients =
        app.get("/fhir/Patient?identifier=http://electronichealth.se/identifier/personnummer|191212121212").await;
    assert_eq!(patients.json["entry"].as_array().unwrap().len(), 1, "{}", patients.text);
}

#[tokio::test]
async fn the_padl_example_reads_back_as_the_observation_the_mapping_describes() {
    let app = spawn_app().await;
    let r = app.push_as("lund-ehr", "/ingest/funktionsstatus", &example("funktionsstatus-padl.json").to_string()).await;
    let refs = resources_of(&r);
    let obs = app.get_as("lund-ehr", &format!("/fhir/{}", find(&refs, "Observation"))).await;
    assert_eq!(obs.status, StatusCode::OK);
    let o = &obs.json;
    assert_eq!(o["effectiveDateTime"], "2025-11-21T10:15:00+01:00");
    assert_eq!(o["category"][0]["coding"][0]["code"], "survey");
    let icf: Vec<&str> =
        o["component"].as_array().unwrap().iter().map(|c| c["code"]["coding"][0]["code"].as_str().unwrap()).collect();
    assert_eq!(icf, ["d510", "d540", "d420", "d530", "d550"]);
    assert_eq!(o["component"][2]["code"]["text"], "förflyttning");
    let role = o["performer"][0]["reference"].as_str().unwrap();
    assert!(role.starts_with("PractitionerRole/"), "{role}");
    let role = app.get(&format!("/fhir/{role}")).await;
    assert!(role.json["organization"]["reference"].as_str().unwrap().starts_with("Organization/"));
    // Other municipalities do not see it; the region does.
    let other = app.get_as("malmo-ehr", &format!("/fhir/{}", find(&refs, "Observation"))).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_repeated_record_is_unchanged_and_a_changed_one_updates_the_same_resources() {
    let app = spawn_app().await;
    let mut record = example("funktionsstatus-padl.json");
    let first = app.push_as("lund-ehr", "/ingest/funktionsstatus", &record.to_string()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let refs = resources_of(&first);
    let obs_ref = find(&refs, "Observation").to_owned();

    let again = app.push_as("lund-ehr", "/ingest/funktionsstatus", &record.to_string()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json["status"], "unchanged");
    assert_eq!(resources_of(&again), refs);
    assert_eq!(app.get(&format!("/fhir/{obs_ref}")).await.json["meta"]["versionId"], "1");

    record["padl"][0]["assessment"] = json!("Klarar dusch med stöd");
    let changed = app.push_as("lund-ehr", "/ingest/funktionsstatus", &record.to_string()).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.json["status"], "updated");
    assert_eq!(resources_of(&changed), refs, "the same resources, not new ones");
    let obs = app.get(&format!("/fhir/{obs_ref}")).await;
    assert_eq!(obs.json["meta"]["versionId"], "2");
    assert_eq!(obs.json["component"][0]["valueString"], "Klarar dusch med stöd");
    let observations = app.get("/fhir/Observation?_summary=count").await;
    assert_eq!(observations.json["total"], 1);
}

#[tokio::test]
async fn concurrent_pushes_of_one_patient_create_one_patient() {
    let app = spawn_app().await;
    let pushes = (0..8).map(|i| {
        let mut record = example("funktionsstatus-icf.json");
        record["recordId"] = json!(format!("fs-concurrent-{i}"));
        let app = &app;
        async move { app.push_as("lund-ehr", "/ingest/funktionsstatus", &record.to_string()).await }
    });
    let results = futures::future::join_all(pushes).await;
    for r in &results {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let patients = app.get("/fhir/Patient?_summary=count").await;
    assert_eq!(patients.json["total"], 1, "{}", patients.text);
    let orgs = app.get("/fhir/Organization?_summary=count").await;
    assert_eq!(orgs.json["total"], 2, "care giver and care unit once each: {}", orgs.text);
    let observations = app.get("/fhir/Observation?_summary=count").await;
    assert_eq!(observations.json["total"], 8);
}

#[tokio::test]
async fn concurrent_first_pushes_of_one_record_write_it_once() {
    let app = spawn_app().await;
    // The patient, care unit and author exist already: nothing serialises the pushes.
    let mut earlier = example("funktionsstatus-padl.json");
    earlier["recordId"] = json!("fs-earlier");
    let warm = app.push_as("lund-ehr", "/ingest/funktionsstatus", &earlier.to_string()).await;
    assert_eq!(warm.status, StatusCode::CREATED, "{}", warm.text);
    let record = example("funktionsstatus-padl.json").to_string();
    let pushes = (0..8).map(|_| {
        let (app, record) = (&app, &record);
        async move { app.push_as("lund-ehr", "/ingest/funktionsstatus", record).await }
    });
    let results = futures::future::join_all(pushes).await;
    let mut created = 0;
    for r in &results {
        assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{}", r.text);
        created += usize::from(r.json["status"] == "created");
        assert_eq!(resources_of(r), resources_of(&results[0]), "every receipt names the same resources");
    }
    assert_eq!(created, 1, "one push writes the record, the others find it unchanged");
    let observations = app.get("/fhir/Observation?_summary=count").await;
    assert_eq!(observations.json["total"], 2, "{}", observations.text);
    let provenances = app.get("/fhir/Provenance?_summary=count").await;
    assert_eq!(provenances.json["total"], 2, "{}", provenances.text);
}

#[tokio::test]
async fn every_input_rule_refuses_with_the_field_that_breaks_it() {
    let app = spawn_app().await;
    let base = example("funktionsstatus-padl.json");
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit)] = &[
        ("padl[1].activity", |r| r["padl"][1]["activity"] = json!("flyga")),
        ("padl[3].activity", |r| r["padl"][3]["activity"] = json!("personlig hygien")),
        ("commnet", |r| r["commnet"] = json!("typo")),
        ("careUnit.hsaid", |r| r["careUnit"]["hsaid"] = json!("SE2120001231-HSL1")),
        ("patient.personnummer", |r| r["patient"]["personnummer"] = json!("191212121213")),
        ("patient", |r| r["patient"] = json!({})),
        ("sourceSystem", |r| r["sourceSystem"] = json!("EHR1")),
        ("municipality", |r| r["municipality"] = json!("0180")),
        ("assessedAt", |r| r["assessedAt"] = json!("20250330023000")),
        ("assessedAt", |r| r["assessedAt"] = json!("2025-11-21 10:15")),
        ("recordId", |r| r.as_object_mut().unwrap().remove("recordId").map(drop).unwrap_or(())),
        ("disability", |r| r["disability"] = json!({"icf": "b7300"})),
        ("approvedForPatient", |r| r["approvedForPatient"] = json!("yes")),
        ("category", |r| r["category"] = json!("adl")),
    ];
    for (path, edit) in cases {
        let mut record = base.clone();
        edit(&mut record);
        let r = app.push_as("lund-ehr", "/ingest/funktionsstatus", &record.to_string()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert_eq!(r.json["status"], "rejected");
        assert!(r.json["resources"].as_array().unwrap().is_empty());
        let expressions: Vec<&str> =
            r.json["outcome"]["issue"].as_array().unwrap().iter().filter_map(|i| i["expression"][0].as_str()).collect();
        assert!(expressions.contains(path), "{path}: {}", r.text);
    }
    let bad_json = app.push_as("lund-ehr", "/ingest/funktionsstatus", r#"{"recordId": "x",}"#).await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_json.json["resourceType"], "OperationOutcome");
    // Nothing was written by any of them.
    assert_eq!(app.get("/fhir/Patient?_summary=count").await.json["total"], 0);
}

#[tokio::test]
async fn a_batch_answers_each_record_in_order_and_one_bad_record_harms_no_other() {
    let app = spawn_app().await;
    let good = |id: &str| {
        let mut r = example("funktionsstatus-icf.json");
        r["recordId"] = json!(id);
        r.to_string()
    };
    let mut bad = example("funktionsstatus-icf.json");
    bad["recordId"] = json!("bad-1");
    bad["disability"]["icf"] = json!("x");
    let ndjson = format!("{}\n{}\nnot json\n\n{}\n", good("b-1"), bad, good("b-2"));
    let r = app.push_as("lund-ehr", "/ingest/funktionsstatus/batch", &ndjson).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let receipts = r.json["receipts"].as_array().unwrap();
    let statuses: Vec<&str> = receipts.iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["created", "rejected", "rejected", "created"]);
    assert_eq!(receipts[1]["recordId"], "bad-1");
    assert_eq!(receipts[1]["outcome"]["issue"][0]["expression"][0], "disability.icf");
    assert!(receipts[2]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap().contains("line 3"));
    assert_eq!(app.get("/fhir/Observation?_summary=count").await.json["total"], 2);

    // The same as a JSON array: now unchanged, updated and created.
    let mut changed: Value = serde_json::from_str(&good("b-2")).unwrap();
    changed["disability"]["text"] = json!("Ändrad text");
    let array = format!("[{}, {}, {}]", good("b-1"), changed, good("b-3"));
    let r = app.push_as("lund-ehr", "/ingest/funktionsstatus/batch", &array).await;
    let statuses: Vec<&str> =
        r.json["receipts"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["unchanged", "updated", "created"], "{}", r.text);
}

#[tokio::test]
async fn a_batch_of_more_than_a_megabyte_is_written_whole() {
    let app = spawn_app().await;
    // Parsed on a blocking thread (bodies over 1 MiB), unlike the small ones above.
    let text = "Nedsatt muskelkraft i benen. ".repeat(17);
    let lines: Vec<String> = (0..1200)
        .map(|i| {
            let mut r = example("funktionsstatus-icf.json");
            r["recordId"] = json!(format!("big-{i}"));
            r["disability"]["text"] = json!(text);
            r.to_string()
        })
        .collect();
    let body = lines.join("\n");
    assert!(body.len() > 1024 * 1024, "{} bytes", body.len());
    let r = app.push_as("lund-ehr", "/ingest/funktionsstatus/batch", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let receipts = r.json["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 1200);
    assert!(receipts.iter().all(|x| x["status"] == "created"), "{}", r.text);
    assert_eq!(receipts[1199]["recordId"], "big-1199");
    assert_eq!(app.get("/fhir/Observation?_summary=count").await.json["total"], 1200);
}

#[tokio::test]
async fn a_batch_of_more_than_ten_thousand_records_is_refused_whole() {
    let app = spawn_app().await;
    let body = "{}\n".repeat(10_001);
    let r = app.push_as("lund-ehr", "/ingest/funktionsstatus/batch", &body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn a_push_finds_the_resources_already_stored_by_identifier_hsa_ids_under_any_of_their_systems() {
    let app = spawn_app().await;
    // Another type with the same identifier, stored first, is not the unit.
    app.create(
        "Practitioner",
        r#"{"resourceType":"Practitioner","identifier":[{"system":"urn:oid:1.2.752.129.2.1.4.1","value":"SE2120001231-HSL1"}]}"#,
    )
    .await;
    let patient = app.create("Patient", &crate::helpers::patient_json("Tolvansson", "191212121212")).await;
    let unit = app
        .create(
            "Organization",
            r#"{"resourceType":"Organization","identifier":[{"system":"urn:oid:1.2.752.129.2.1.4.1","value":"SE2120001231-HSL1"}],"name":"Hemsjukvården Lund"}"#,
        )
        .await;
    let pushed =
        app.push_as("lund-ehr", "/ingest/funktionsstatus", &example("funktionsstatus-padl.json").to_string()).await;
    assert_eq!(pushed.status, StatusCode::CREATED, "{}", pushed.text);
    let refs = resources_of(&pushed);
    assert_eq!(find(&refs, "Patient"), format!("Patient/{patient}"));
    assert!(refs.contains(&format!("Organization/{unit}")), "{refs:?}");
    let patients = app.get("/fhir/Patient?_summary=count").await;
    assert_eq!(patients.json["total"], 1, "{}", patients.text);
    let units = app.get("/fhir/Organization?identifier=urn:oid:1.2.752.129.2.1.4.1|SE2120001231-HSL1").await;
    assert_eq!(units.json["entry"].as_array().map(Vec::len), Some(1), "{}", units.text);
    // The municipality may now see the patient it pushed for.
    let r = app.get_as("lund-ehr", &format!("/fhir/Patient/{patient}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn a_patient_shared_by_two_municipalities_stays_visible_to_both() {
    let app = spawn_app().await;
    let lund =
        app.push_as("lund-ehr", "/ingest/funktionsstatus", &example("funktionsstatus-icf.json").to_string()).await;
    let patient = find(&resources_of(&lund), "Patient").to_owned();
    let mut record = example("funktionsstatus-icf.json");
    record["recordId"] = json!("malmo-1");
    record["sourceSystem"] = json!("SE2120000829-EHR1");
    record["municipality"] = json!("1280");
    record["careGiver"] = json!({"hsaId": "SE2120000829-0001", "name": "Malmö stad (fiktiv)"});
    record["careUnit"] = json!({"hsaId": "SE2120000829-HSL2", "name": "Hemsjukvården Malmö (fiktiv)"});
    let malmo = app.push_as("malmo-ehr", "/ingest/funktionsstatus", &record.to_string()).await;
    assert_eq!(malmo.status, StatusCode::CREATED, "{}", malmo.text);
    assert_eq!(find(&resources_of(&malmo), "Patient"), patient, "one patient");
    for client in ["lund-ehr", "malmo-ehr"] {
        let r = app.get_as(client, &format!("/fhir/{patient}")).await;
        assert_eq!(r.status, StatusCode::OK, "{client}: {}", r.text);
    }
    // Each sees its own Observation only.
    let lund_obs = app.get_as("lund-ehr", "/fhir/Observation?_summary=count").await;
    assert_eq!(lund_obs.json["total"], 1, "{}", lund_obs.text);
}

#[tokio::test]
async fn a_client_pushes_only_for_its_own_organisation() {
    let app = spawn_app().await;
    let r =
        app.push_as("malmo-ehr", "/ingest/funktionsstatus", &example("funktionsstatus-padl.json").to_string()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.json["outcome"]["issue"][0]["expression"][0], "careGiver.hsaId");
    // Without the ingest scope there is no push at all.
    let admin =
        app.push_as("nara-admin", "/ingest/funktionsstatus", &example("funktionsstatus-padl.json").to_string()).await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/fhir/Observation?_summary=count").await.json["total"], 0);
}

#[tokio::test]
async fn a_transfer_document_is_seen_by_sender_and_recipient_only() {
    let app = spawn_app().await;
    let r = app.push_as("region-skane", "/ingest/dokument", &example("dokument-utskrivning.json").to_string()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let refs = resources_of(&r);
    let task = app.get_as("lund-ehr", &format!("/fhir/{}", find(&refs, "Task"))).await;
    assert_eq!(task.status, StatusCode::OK, "the recipient sees the transfer: {}", task.text);
    assert_eq!(task.json["status"], "requested");
    assert_eq!(task.json["code"]["coding"][0]["code"], "transfer");
    let owner = app.get(&format!("/fhir/{}", task.json["owner"]["reference"].as_str().unwrap())).await;
    assert_eq!(owner.json["identifier"][0]["value"], "SE2120001231-HSL1");
    let doc = app.get_as("lund-ehr", &format!("/fhir/{}", find(&refs, "DocumentReference"))).await;
    let url = doc.json["content"][0]["attachment"]["url"].as_str().unwrap();
    assert_eq!(url, find(&refs, "Binary"));
    assert_eq!(app.get_as("malmo-ehr", &format!("/fhir/{}", find(&refs, "Task"))).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn get_ingest_lists_the_mappings_with_their_input_schemas() {
    let app = spawn_app().await;
    let r = app.get("/ingest").await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<&str> = r.json["mappings"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dokument", "funktionsstatus", "vardplan"]);
    assert_eq!(r.json["mappings"][1]["version"], "1.0.0");
    assert_eq!(r.json["mappings"][1]["inputSchema"]["additionalProperties"], false);
    let unknown = app.push_as("lund-ehr", "/ingest/nosuch", "{}").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let anonymous = app.send(Method::GET, "/ingest", None, &[("authorization", "Bearer x")]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

fn copy_mappings() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    for entry in ["funktionsstatus", "vardplan", "dokument", "reference"] {
        std::fs::create_dir_all(tmp.path().join(entry)).unwrap();
        for f in std::fs::read_dir(from.join(entry)).unwrap() {
            let f = f.unwrap();
            if f.path().is_file() {
                std::fs::copy(f.path(), tmp.path().join(entry).join(f.file_name())).unwrap();
            }
        }
    }
    tmp
}

#[tokio::test]
async fn reload_picks_up_a_changed_mapping_and_refuses_a_broken_one() {
    let dir = copy_mappings();
    let app = spawn_app_with(&[("NARA_MAPPINGS__DIR", dir.path().to_str().unwrap())]).await;
    let file = dir.path().join("funktionsstatus/mapping.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("version = \"1.0.0\"", "version = \"1.1.0\"")).unwrap();
    app.state.reload_mappings().expect("reloads");
    let r = app.get("/ingest").await;
    assert_eq!(r.json["mappings"][1]["version"], "1.1.0");

    std::fs::write(&file, text.replace("status = \"final\"", "status = \"final")).unwrap();
    let errors = app.state.reload_mappings().expect_err("refused");
    assert!(errors[0].to_string().contains("funktionsstatus/mapping.toml:"), "{}", errors[0]);
    let r = app.get("/ingest").await;
    assert_eq!(r.json["mappings"][1]["version"], "1.1.0", "the previous set stays");
    let push =
        app.push_as("lund-ehr", "/ingest/funktionsstatus", &example("funktionsstatus-icf.json").to_string()).await;
    assert_eq!(push.status, StatusCode::CREATED, "{}", push.text);
}

#[test]
fn the_gateway_refuses_to_start_with_a_broken_mapping_and_names_file_and_line() {
    let dir = copy_mappings();
    let file = dir.path().join("vardplan/mapping.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("{{ title }}", "{{ titel }}", 1)).unwrap();
    let line = text[..text.find("{{ title }}").unwrap()].matches('\n').count() + 1;
    let db = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
        .env("NARA_MAPPINGS__DIR", dir.path())
        .env("NARA_DATABASE__URL", format!("sqlite://{}/nara.db", db.path().display()))
        .env("NARA_SERVER__LISTEN", "127.0.0.1:0")
        .env("NARA_SERVER__TLS__ENABLED", "false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("vardplan/mapping.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("titel"), "{stderr}");
    // `mapping check` reports the same.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
        .args(["mapping", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains(&format!("vardplan/mapping.toml:{line}:")));
}
