//! Read, vread, create, update, delete, conditional operations and history.

use reqwest::{Method, StatusCode};

use crate::helpers::{observation_json, patient_json, spawn_app};

#[tokio::test]
async fn create_answers_201_with_location_etag_and_server_meta() {
    let app = spawn_app().await;
    let r = app.post("/fhir/Patient", &patient_json("Tolvansson", "191212121212")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.id();
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some());
    assert_eq!(r.header("location").unwrap(), format!("{}/Patient/{id}/_history/1", app.base));
    assert_eq!(r.json["meta"]["versionId"], "1");
    assert!(r.json["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert!(r.header("content-type").unwrap().starts_with("application/fhir+json"));
}

#[tokio::test]
async fn read_returns_exactly_what_was_stored_decimals_and_key_order_included() {
    let app = spawn_app().await;
    let pid = app.create("Patient", &patient_json("Tolvansson", "191212121212")).await;
    let body = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"Vikt"}},"subject":{{"reference":"Patient/{pid}"}},"valueQuantity":{{"value":12.50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}},"component":[{{"code":{{"text":"a"}},"valueQuantity":{{"value":12500.00}}}},{{"code":{{"text":"b"}},"valueQuantity":{{"value":0.10}}}},{{"code":{{"text":"c"}},"valueQuantity":{{"value":1.0e2}}}}]}}"#
    );
    let created = app.post("/fhir/Observation", &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let read = app.get(&format!("/fhir/Observation/{}", created.id())).await;
    assert_eq!(read.status, StatusCode::OK);
    for exact in ["\"value\":12.50", "\"value\":12500.00", "\"value\":0.10", "\"value\":1.0e2"] {
        assert!(read.text.contains(exact), "{exact} missing from {}", read.text);
    }
    // Everything but id/meta is the client's JSON, in the client's order.
    let stripped = read.text.replacen(&format!("\"id\":\"{}\",", created.id()), "", 1);
    let meta_start = stripped.find("\"meta\":").unwrap();
    let meta_end = stripped[meta_start..].find("},").unwrap() + meta_start + 2;
    let without_meta = format!("{}{}", &stripped[..meta_start], &stripped[meta_end..]);
    assert_eq!(without_meta, body);
}

#[tokio::test]
async fn update_makes_versions_and_vread_returns_each() {
    let app = spawn_app().await;
    let id = app.create("Patient", &patient_json("Första", "191212121212")).await;
    let mut v2: serde_json::Value = serde_json::from_str(&patient_json("Andra", "191212121212")).unwrap();
    v2["id"] = id.clone().into();
    let r = app.put(&format!("/fhir/Patient/{id}"), &v2.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let v1 = app.get(&format!("/fhir/Patient/{id}/_history/1")).await;
    assert_eq!(v1.json["name"][0]["family"], "Första");
    let v2r = app.get(&format!("/fhir/Patient/{id}/_history/2")).await;
    assert_eq!(v2r.json["name"][0]["family"], "Andra");
    assert_eq!(app.get(&format!("/fhir/Patient/{id}/_history/3")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.json["meta"]["versionId"], "2");
}

#[tokio::test]
async fn update_with_stale_if_match_is_refused_with_412() {
    let app = spawn_app().await;
    let id = app.create("Patient", &patient_json("A", "191212121212")).await;
    let mut body: serde_json::Value = serde_json::from_str(&patient_json("B", "191212121212")).unwrap();
    body["id"] = id.clone().into();
    let path = format!("/fhir/Patient/{id}");
    let ok = app.send(Method::PUT, &path, Some(&body.to_string()), &[("if-match", "W/\"1\"")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let stale = app.send(Method::PUT, &path, Some(&body.to_string()), &[("if-match", "W/\"1\"")]).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{}", stale.text);
    assert_eq!(stale.json["resourceType"], "OperationOutcome");
    assert_eq!(app.get(&path).await.json["meta"]["versionId"], "2");
}

#[tokio::test]
async fn update_creates_with_the_clients_id_and_checks_the_id() {
    let app = spawn_app().await;
    let mut body: serde_json::Value = serde_json::from_str(&patient_json("A", "191212121212")).unwrap();
    body["id"] = "lund-patient-1".into();
    let r = app.put("/fhir/Patient/lund-patient-1", &body.to_string()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.id(), "lund-patient-1");
    app.put("/fhir/Patient/other-id", &body.to_string()).await.assert_outcome(400, "Patient.id");
    body.as_object_mut().unwrap().remove("id");
    app.put("/fhir/Patient/lund-patient-1", &body.to_string()).await.assert_outcome(400, "Patient.id");
}

#[tokio::test]
async fn delete_is_soft_read_gives_410_and_history_keeps_it() {
    let app = spawn_app().await;
    let id = app.create("Patient", &patient_json("A", "191212121212")).await;
    let path = format!("/fhir/Patient/{id}");
    assert_eq!(app.delete(&path).await.status, StatusCode::NO_CONTENT);
    let gone = app.get(&path).await;
    assert_eq!(gone.status, StatusCode::GONE);
    assert_eq!(gone.json["resourceType"], "OperationOutcome");
    assert_eq!(app.delete(&path).await.status, StatusCode::NO_CONTENT, "deleting twice is fine");
    assert_eq!(app.get(&format!("{path}/_history/1")).await.status, StatusCode::OK);
    let hist = app.get(&format!("{path}/_history")).await;
    assert_eq!(hist.json["type"], "history");
    let entries = hist.json["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["request"]["method"], "POST");
    assert_eq!(app.delete("/fhir/Patient/never-existed").await.status, StatusCode::NOT_FOUND);
    let search = app.get("/fhir/Patient").await;
    assert_eq!(search.json["total"], 0, "deleted resources are not found: {}", search.text);
}

#[tokio::test]
async fn conditional_create_finds_the_existing_resource_instead_of_duplicating() {
    let app = spawn_app().await;
    let body = patient_json("A", "191212121212");
    let cond = [("if-none-exist", "identifier=http://electronichealth.se/identifier/personnummer|191212121212")];
    let first = app.send(Method::POST, "/fhir/Patient", Some(&body), &cond).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let second = app.send(Method::POST, "/fhir/Patient", Some(&body), &cond).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.id(), first.id());
    assert_eq!(app.get("/fhir/Patient?_summary=count").await.json["total"], 1);
    // Two matches: the precondition cannot hold.
    app.create("Patient", &body).await;
    let many = app.send(Method::POST, "/fhir/Patient", Some(&body), &cond).await;
    assert_eq!(many.status, StatusCode::PRECONDITION_FAILED, "{}", many.text);
}

#[tokio::test]
async fn conditional_update_creates_then_updates_the_match() {
    let app = spawn_app().await;
    let path = "/fhir/Patient?identifier=http://electronichealth.se/identifier/personnummer%7C191212121212";
    let first = app.put(path, &patient_json("A", "191212121212")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let second = app.put(path, &patient_json("B", "191212121212")).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.id(), first.id());
    assert_eq!(second.json["meta"]["versionId"], "2");
}

#[tokio::test]
async fn conditional_delete_removes_the_single_match() {
    let app = spawn_app().await;
    let id = app.create("Patient", &patient_json("A", "191212121212")).await;
    let r = app.delete("/fhir/Patient?identifier=191212121212").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(app.get(&format!("/fhir/Patient/{id}")).await.status, StatusCode::GONE);
    assert_eq!(app.delete("/fhir/Patient?identifier=191212121212").await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn type_and_system_history_page_with_absolute_links() {
    let app = spawn_app().await;
    let pid = app.create("Patient", &patient_json("A", "191212121212")).await;
    for i in 0..5 {
        app.create("Observation", &observation_json(&pid, "survey", "d510", &format!("2025-11-2{i}T10:00:00+01:00")))
            .await;
    }
    let page1 = app.get("/fhir/Observation/_history?_count=3").await;
    assert_eq!(page1.json["entry"].as_array().unwrap().len(), 3);
    let next = page1.link("next").expect("next link");
    assert!(next.starts_with(&app.base), "{next}");
    let page2 = app.get(&next).await;
    assert_eq!(page2.json["entry"].as_array().unwrap().len(), 2);
    assert!(page2.link("next").is_none());
    let system = app.get("/fhir/_history").await;
    assert_eq!(system.json["entry"].as_array().unwrap().len(), 6);
    let since = app.get("/fhir/_history?_since=2999-01-01").await;
    assert!(since.json.get("entry").is_none(), "{}", since.text);
}

#[tokio::test]
async fn prefer_return_minimal_and_operation_outcome() {
    let app = spawn_app().await;
    let body = patient_json("A", "191212121212");
    let minimal = app.send(Method::POST, "/fhir/Patient", Some(&body), &[("prefer", "return=minimal")]).await;
    assert_eq!(minimal.status, StatusCode::CREATED);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").is_some());
    let oo = app.send(Method::POST, "/fhir/Patient", Some(&body), &[("prefer", "return=OperationOutcome")]).await;
    assert_eq!(oo.json["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn conditional_read_answers_304_when_unchanged() {
    let app = spawn_app().await;
    let id = app.create("Patient", &patient_json("A", "191212121212")).await;
    let path = format!("/fhir/Patient/{id}");
    let r = app.send(Method::GET, &path, None, &[("if-none-match", "W/\"1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = app.send(Method::GET, &path, None, &[("if-none-match", "W/\"0\"")]).await;
    assert_eq!(r.status, StatusCode::OK);
}
