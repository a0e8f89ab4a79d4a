//! Bad input is rejected with an OperationOutcome that names where the
//! problem is, and nothing of it is stored.

use reqwest::StatusCode;

use crate::helpers::{patient_json, spawn_app};

async fn rejected(body: &str, expression: &str) {
    let app = spawn_app().await;
    let r = app.post("/fhir/Observation", body).await;
    r.assert_outcome(400, expression);
    let count = app.get("/fhir/Observation?_summary=count").await;
    assert_eq!(count.json["total"], 0, "a rejected resource must not be stored");
}

const OK_HEAD: &str = r#""resourceType":"Observation","status":"final","code":{"text":"Vikt"}"#;

#[tokio::test]
async fn rejects_unknown_element_with_location() {
    rejected(
        &format!(r#"{{{OK_HEAD},"valueQuantity":{{"value":1,"unitt":"kg"}}}}"#),
        "Observation.valueQuantity.unitt",
    )
    .await;
}

#[tokio::test]
async fn rejects_invalid_choice_value_instead_of_dropping_it() {
    rejected(&format!(r#"{{{OK_HEAD},"effectiveDateTime":"not-a-date"}}"#), "Observation.effectiveDateTime").await;
}

#[tokio::test]
async fn rejects_impossible_calendar_dates() {
    rejected(&format!(r#"{{{OK_HEAD},"effectiveDateTime":"2024-02-30"}}"#), "Observation.effectiveDateTime").await;
}

#[tokio::test]
async fn rejects_datetime_with_time_but_no_zone() {
    rejected(&format!(r#"{{{OK_HEAD},"effectiveDateTime":"2024-02-03T10:00:00"}}"#), "Observation.effectiveDateTime")
        .await;
}

#[tokio::test]
async fn rejects_wrong_json_types() {
    rejected(&format!(r#"{{{OK_HEAD},"valueQuantity":{{"value":"12.5"}}}}"#), "Observation.valueQuantity.value").await;
}

#[tokio::test]
async fn rejects_empty_strings() {
    rejected(&format!(r#"{{{OK_HEAD},"valueString":""}}"#), "Observation.valueString").await;
}

#[tokio::test]
async fn rejects_two_choices_of_one_element() {
    let r = format!(r#"{{{OK_HEAD},"valueString":"a","valueBoolean":true}}"#);
    let app = spawn_app().await;
    let resp = app.post("/fhir/Observation", &r).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text);
    assert!(resp.issue_expressions().iter().any(|e| e.starts_with("Observation.value")), "{}", resp.text);
}

#[tokio::test]
async fn rejects_missing_required_elements() {
    rejected(r#"{"resourceType":"Observation","code":{"text":"Vikt"}}"#, "Observation.status").await;
}

#[tokio::test]
async fn rejects_codes_outside_required_value_sets() {
    rejected(r#"{"resourceType":"Observation","status":"done","code":{"text":"Vikt"}}"#, "Observation.status").await;
    let app = spawn_app().await;
    let body = patient_json("A", "191212121212").replace("\"male\"", "\"man\"");
    app.post("/fhir/Patient", &body).await.assert_outcome(400, "Patient.gender");
}

#[tokio::test]
async fn rejects_array_where_single_value_belongs() {
    rejected(r#"{"resourceType":"Observation","status":["final"],"code":{"text":"Vikt"}}"#, "Observation.status").await;
}

#[tokio::test]
async fn rejects_duplicate_json_keys_instead_of_keeping_the_last() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/fhir/Observation",
            r#"{"resourceType":"Observation","status":"final","status":"amended","code":{"text":"x"}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("duplicate member name"), "{}", r.text);
}

#[tokio::test]
async fn rejects_malformed_json_with_line_and_column() {
    let app = spawn_app().await;
    let r = app.post("/fhir/Patient", "{\n  \"resourceType\": \"Patient\",\n  \"active\": tru\n}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.contains("line 3"), "{}", r.text);
    r.assert_outcome(400, "$.active");
}

#[tokio::test]
async fn rejects_resource_of_another_type_than_the_endpoint() {
    let app = spawn_app().await;
    app.post("/fhir/Observation", &patient_json("A", "191212121212")).await.assert_outcome(400, "resourceType");
}

#[tokio::test]
async fn rejects_bad_ids_in_the_url() {
    let app = spawn_app().await;
    let r = app.get("/fhir/Patient/a_b").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn hostile_inputs_never_cause_a_server_error() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let bodies = [
        deep.as_str(),
        "null",
        "[]",
        "\"x\"",
        "{\"resourceType\":5}",
        "{\"resourceType\":\"Patient\",\"contained\":[{\"resourceType\":\"Patient\",\"contained\":[{}]}]}",
        "{\"resourceType\":\"Patient\",\"extension\":[{\"url\":\"\",\"valueFoo\":1}]}",
        "{\"resourceType\":\"Patient\",\"_birthDate\":{\"extension\":[]},\"birthDate\":null}",
        "{\"resourceType\":\"Patient\",\"name\":[{\"given\":[null,null]}]}",
        "\u{feff}{\"resourceType\":\"Patient\",\"text\":{\"status\":\"generated\",\"div\":\"<p>no</p>\"}}",
    ];
    for body in bodies {
        for path in ["/fhir/Patient", "/fhir", "/fhir/Patient/x"] {
            let method = if path.ends_with("/x") { reqwest::Method::PUT } else { reqwest::Method::POST };
            let r = app.send(method, path, Some(body), &[]).await;
            assert!(r.status.is_client_error(), "{path} {body:.60}: {} {}", r.status, r.text);
            assert_eq!(r.json["resourceType"], "OperationOutcome", "{}", r.text);
        }
    }
}
