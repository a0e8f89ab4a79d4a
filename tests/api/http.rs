//! The HTTP surface around the interactions: content negotiation, errors,
//! limits, health, metrics and the CapabilityStatement.

use reqwest::{Method, StatusCode};

use crate::helpers::{patient_json, spawn_app, spawn_app_with};

#[tokio::test]
async fn format_parameter_and_accept_header_are_honoured() {
    let app = spawn_app().await;
    let id = app.create("Patient", &patient_json("A", "191212121212")).await;
    let path = format!("/fhir/Patient/{id}");
    let xml = app.get(&format!("{path}?_format=xml")).await;
    assert_eq!(xml.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(xml.json["resourceType"], "OperationOutcome");
    let plain = app.send(Method::GET, &path, None, &[("accept", "application/json")]).await;
    assert!(plain.header("content-type").unwrap().starts_with("application/json"));
    let fhir = app.get(&format!("{path}?_format=json")).await;
    assert!(fhir.header("content-type").unwrap().starts_with("application/fhir+json"));
    let refused = app.send(Method::GET, &path, None, &[("accept", "application/fhir+xml")]).await;
    assert_eq!(refused.status, StatusCode::NOT_ACCEPTABLE);
    let pretty = app.get(&format!("{path}?_pretty=true")).await;
    assert!(pretty.text.contains("\n  \"resourceType\""), "{}", pretty.text);
    assert_eq!(pretty.json, fhir.json);
}

#[tokio::test]
async fn wrong_content_type_is_415_with_an_outcome() {
    let app = spawn_app().await;
    let r = app
        .send(Method::POST, "/fhir/Patient", Some(&patient_json("A", "1")), &[("content-type", "application/xml")])
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    let plain_json = app
        .send(
            Method::POST,
            "/fhir/Patient",
            Some(&patient_json("A", "191212121212")),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(plain_json.status, StatusCode::CREATED, "{}", plain_json.text);
}

#[tokio::test]
async fn oversize_bodies_are_413_with_an_outcome() {
    let app = spawn_app_with(&[("NARA_SERVER__MAX_BODY_BYTES", "2048")]).await;
    let big = format!(r#"{{"resourceType":"Patient","name":[{{"text":"{}"}}]}}"#, "x".repeat(4096));
    let r = app.post("/fhir/Patient", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn unknown_routes_types_and_methods_get_outcomes() {
    let app = spawn_app().await;
    let r = app.get("/nowhere").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    let r = app.get("/fhir/Medication/1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
    let r = app.send(Method::PATCH, "/fhir/Patient/1", Some("{}"), &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live").await.status, StatusCode::OK);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["storage"], "ok");
    app.create("Patient", &patient_json("A", "191212121212")).await;
    let m = app.get("/metrics").await;
    assert!(m.text.contains("nara_http_requests_total{interaction=\"create\",status=\"201\"} 1"), "{}", m.text);
    assert!(m.text.contains("nara_http_request_duration_seconds_count{interaction=\"create\"} 1"));
}

#[tokio::test]
async fn capability_statement_lists_what_is_supported() {
    let app = spawn_app().await;
    let r = app.get("/fhir/metadata").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["resourceType"], "CapabilityStatement");
    assert_eq!(r.json["fhirVersion"], "4.0.1");
    let resources = r.json["rest"][0]["resource"].as_array().unwrap();
    let types: Vec<&str> = resources.iter().map(|r| r["type"].as_str().unwrap()).collect();
    for t in nara_gateway::fhir::RESOURCE_TYPES {
        assert!(types.contains(t), "{t} missing");
    }
    let obs = resources.iter().find(|r| r["type"] == "Observation").unwrap();
    let params: Vec<&str> =
        obs["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["_id", "_lastUpdated", "subject", "patient", "category", "code", "date", "status", "identifier"] {
        assert!(params.contains(&p), "{p} missing from Observation search params");
    }
    // Every advertised parameter really works: searching with it is not rejected as unknown.
    for p in params {
        let probe = app
            .send(Method::GET, &format!("/fhir/Observation?{p}:missing=true"), None, &[("prefer", "handling=strict")])
            .await;
        assert_ne!(probe.status, StatusCode::INTERNAL_SERVER_ERROR, "{p}: {}", probe.text);
        assert!(!probe.text.contains("unknown search parameter"), "{p}: {}", probe.text);
    }
}
