//! Batch and transaction Bundles.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{patient_json, spawn_app};

fn patient_value(family: &str) -> serde_json::Value {
    serde_json::from_str(&patient_json(family, "191212121212")).unwrap()
}

#[tokio::test]
async fn transaction_resolves_urn_uuid_references_atomically() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:0b7e4a1c-2f7b-4c5e-9a53-8f0e1b2c3d4e",
             "resource": patient_value("Tolvansson"),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:1c8f5b2d-3a8c-4d6f-8b64-9a1f2c3d4e5f",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "ADL"},
                          "subject": {"reference": "urn:uuid:0b7e4a1c-2f7b-4c5e-9a53-8f0e1b2c3d4e"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = app.post("/fhir", &bundle.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["type"], "transaction-response");
    let entries = r.json["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    let patient_loc = entries[0]["response"]["location"].as_str().unwrap();
    let patient_id = patient_loc.split('/').nth(1).unwrap();
    let obs = &entries[1]["resource"];
    assert_eq!(obs["subject"]["reference"], format!("Patient/{patient_id}"));
    let found = app.get(&format!("/fhir/Observation?subject=Patient/{patient_id}")).await;
    assert_eq!(found.json["total"], 1);
}

#[tokio::test]
async fn transaction_rolls_back_everything_when_one_entry_fails() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": patient_value("Ska-inte-finnas"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": "p2", "gender": "male"},
             "request": {"method": "PUT", "url": "Patient/p2", "ifMatch": "W/\"7\""}}
        ]
    });
    let r = app.post("/fhir", &bundle.to_string()).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text);
    assert!(r.text.contains("Bundle.entry[1]"), "{}", r.text);
    assert_eq!(app.get("/fhir/Patient?_summary=count").await.json["total"], 0, "nothing of the transaction stays");
}

#[tokio::test]
async fn transaction_with_invalid_resource_names_the_entry() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": patient_value("A"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2024-02-30"},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = app.post("/fhir", &bundle.to_string()).await;
    r.assert_outcome(400, "Bundle.entry[1].resource.effectiveDateTime");
    assert_eq!(app.get("/fhir/Patient?_summary=count").await.json["total"], 0);
}

#[tokio::test]
async fn transaction_rejects_dangling_bundle_references() {
    let app = spawn_app().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:9d6c3a1b-0000-4000-8000-000000000000"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = app.post("/fhir", &bundle.to_string()).await;
    r.assert_outcome(400, "Bundle.entry[0].resource");
}

#[tokio::test]
async fn transaction_conditional_create_reuses_the_existing_patient() {
    let app = spawn_app().await;
    let existing = app.create("Patient", &patient_json("A", "191212121212")).await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:2d9a6c3b-4b9d-4e7a-8c75-0b2a3d4e5f60", "resource": patient_value("A"),
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": "identifier=http://electronichealth.se/identifier/personnummer|191212121212"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:2d9a6c3b-4b9d-4e7a-8c75-0b2a3d4e5f60"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = app.post("/fhir", &bundle.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(r.json["entry"][1]["resource"]["subject"]["reference"], format!("Patient/{existing}"));
    assert_eq!(app.get("/fhir/Patient?_summary=count").await.json["total"], 1);
}

#[tokio::test]
async fn batch_runs_entries_independently() {
    let app = spawn_app().await;
    let id = app.create("Patient", &patient_json("A", "191212121212")).await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": patient_value("B"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": "nonsense"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": format!("Patient/{id}")}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"request": {"method": "DELETE", "url": format!("Patient/{id}")}},
            {"request": {"method": "GET", "url": "Patient?family=b"}}
        ]
    });
    let r = app.post("/fhir", &bundle.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["type"], "batch-response");
    let statuses: Vec<&str> =
        r.json["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "400 Bad Request", "200 OK", "404 Not Found", "204 No Content", "200 OK"]);
    let bad = &r.json["entry"][1]["response"]["outcome"];
    assert_eq!(bad["resourceType"], "OperationOutcome");
    assert!(bad.to_string().contains("Bundle.entry[1].resource.gender"), "{bad}");
    assert_eq!(r.json["entry"][5]["resource"]["type"], "searchset");
}

#[tokio::test]
async fn only_batch_and_transaction_bundles_are_processed() {
    let app = spawn_app().await;
    let r = app.post("/fhir", &json!({"resourceType": "Bundle", "type": "collection"}).to_string()).await;
    r.assert_outcome(400, "Bundle.type");
    let r = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient_value("A")}]})
                .to_string(),
        )
        .await;
    r.assert_outcome(400, "Bundle.entry[0].request");
    // Only the server's resource types can be written through a Bundle, even ones R4 knows.
    let nested = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Bundle", "type": "collection"}, "request": {"method": "POST", "url": "Bundle"}}]});
    app.post("/fhir", &nested.to_string()).await.assert_outcome(400, "Bundle.entry[0].request.url");
}
