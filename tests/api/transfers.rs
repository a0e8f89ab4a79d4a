//! Document transfers over real HTTP: the state machine, the first content
//! fetch, the inbox, creation by a region transaction, overdue list, duplicates.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, spawn_app};

fn example() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/dokument-utskrivning.json");
    serde_json::from_slice(&std::fs::read(path).expect("testdata")).expect("json")
}

async fn as_client(app: &TestApp, client: &str, method: Method, path: &str, body: Option<&Value>) -> Resp {
    let token = format!("Bearer {}", app.token_for(client, None));
    let text = body.map(Value::to_string);
    app.send(method, path, text.as_deref(), &[("authorization", &token)]).await
}

/// Pushes the example document from the region; returns (Task id, Binary id).
async fn send_example(app: &TestApp, record: &Value) -> (String, String) {
    let r = as_client(app, "region-skane", Method::POST, "/ingest/dokument", Some(record)).await;
    assert!(r.status.is_success(), "{}", r.text);
    let refs: Vec<String> =
        r.json["resources"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let id = |ty: &str| refs.iter().find(|r| r.starts_with(ty)).unwrap().split('/').nth(1).unwrap().to_owned();
    (id("Task/"), id("Binary/"))
}

async fn set_status(app: &TestApp, client: &str, task_id: &str, change: impl Fn(&mut Value)) -> Resp {
    let current = as_client(app, "region-skane", Method::GET, &format!("/fhir/Task/{task_id}"), None).await;
    let mut task = current.json.clone();
    change(&mut task);
    as_client(app, client, Method::PUT, &format!("/fhir/Task/{task_id}"), Some(&task)).await
}

#[tokio::test]
async fn the_recipients_first_content_fetch_marks_the_transfer_received() {
    let app = spawn_app().await;
    let (task, binary) = send_example(&app, &example()).await;
    // The sender looking at its own document changes nothing.
    assert_eq!(
        as_client(&app, "region-skane", Method::GET, &format!("/fhir/Binary/{binary}"), None).await.status,
        StatusCode::OK
    );
    let t = app.get(&format!("/fhir/Task/{task}")).await;
    assert_eq!((t.json["status"].as_str(), t.json["meta"]["versionId"].as_str()), (Some("requested"), Some("1")));
    // Another municipality cannot fetch it at all.
    assert_eq!(
        as_client(&app, "malmo-ehr", Method::GET, &format!("/fhir/Binary/{binary}"), None).await.status,
        StatusCode::NOT_FOUND
    );
    // The recipient's fetch: received, once.
    let fetched = as_client(&app, "lund-ehr", Method::GET, &format!("/fhir/Binary/{binary}"), None).await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.text);
    let t = app.get(&format!("/fhir/Task/{task}")).await;
    assert_eq!((t.json["status"].as_str(), t.json["meta"]["versionId"].as_str()), (Some("received"), Some("2")));
    as_client(&app, "lund-ehr", Method::GET, &format!("/fhir/Binary/{binary}"), None).await;
    assert_eq!(app.get(&format!("/fhir/Task/{task}")).await.json["meta"]["versionId"], "2");
    // The change is in the audit trail as a transfer event.
    let audit = as_client(&app, "nara-admin", Method::GET, "/fhir/AuditEvent?_count=100", None).await;
    let transfer_events = audit.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["subtype"][0]["code"] == "transfer")
        .count();
    assert_eq!(transfer_events, 1, "{}", audit.text);
}

#[tokio::test]
async fn only_the_allowed_transitions_by_the_right_party_are_accepted() {
    let app = spawn_app().await;
    let (task, _) = send_example(&app, &example()).await;
    // The recipient cannot cancel; the sender cannot complete.
    let r = set_status(&app, "lund-ehr", &task, |t| t["status"] = json!("cancelled")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = set_status(&app, "region-skane", &task, |t| t["status"] = json!("completed")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // Another municipality sees nothing.
    let r = set_status(&app, "malmo-ehr", &task, |t| t["status"] = json!("completed")).await;
    assert!(matches!(r.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN), "{}", r.text);
    // Rejection needs a reason.
    let r = set_status(&app, "lund-ehr", &task, |t| t["status"] = json!("rejected")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.json["issue"][0]["expression"][0], "Task.statusReason");
    // The fixed parts stay fixed.
    let r = set_status(&app, "lund-ehr", &task, |t| t["owner"] = t["requester"].clone()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.json["issue"][0]["expression"][0], "Task.owner");
    // The recipient completes it; after that nothing moves.
    let r = set_status(&app, "lund-ehr", &task, |t| t["status"] = json!("completed")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = set_status(&app, "region-skane", &task, |t| t["status"] = json!("cancelled")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = set_status(&app, "lund-ehr", &task, |t| {
        t["status"] = json!("rejected");
        t["statusReason"] = json!({"text": "fel mottagare"});
    })
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    // A transfer is never deleted.
    let r = as_client(&app, "region-skane", Method::DELETE, &format!("/fhir/Task/{task}"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
}

#[tokio::test]
async fn a_pushed_again_transfer_keeps_the_state_its_parties_gave_it() {
    let app = spawn_app().await;
    let mut record = example();
    let (task, _) = send_example(&app, &record).await;
    let r = set_status(&app, "lund-ehr", &task, |t| t["status"] = json!("completed")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    record["title"] = json!("Utskrivningsmeddelande (rättat)");
    send_example(&app, &record).await;
    let t = app.get(&format!("/fhir/Task/{task}")).await;
    assert_eq!(t.json["status"], "completed");
    assert_eq!(t.json["description"], "Utskrivningsmeddelande (rättat)");
}

#[tokio::test]
async fn a_region_creates_a_transfer_with_a_transaction_and_the_recipient_finds_it_in_its_inbox() {
    let app = spawn_app().await;
    let org = |hsa: &str, name: &str| json!({"resourceType": "Organization", "identifier": [{"system": "urn:oid:1.2.752.29.4.19", "value": hsa}], "name": name});
    let sender = app.create("Organization", &org("SE2321000255-AVD7", "Avdelning 7 (fiktiv)").to_string()).await;
    let recipient =
        app.create("Organization", &org("SE2120001231-HSL1", "Hemsjukvården Lund (fiktiv)").to_string()).await;
    let patient = app.create("Patient", &crate::helpers::patient_json("Tolvansson", "191212121212")).await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:6a3c3f1e-3a0e-4d7e-9d55-0d7a1f2b0001", "request": {"method": "POST", "url": "Binary"},
             "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "UGxhbmVyaW5nc3VuZGVybGFn"}},
            {"fullUrl": "urn:uuid:6a3c3f1e-3a0e-4d7e-9d55-0d7a1f2b0002", "request": {"method": "POST", "url": "DocumentReference"},
             "resource": {"resourceType": "DocumentReference", "status": "current",
                          "type": {"coding": [{"system": "https://nara-gateway.se/fhir/CodeSystem/document-type", "code": "planeringsunderlag"}]},
                          "subject": {"reference": format!("Patient/{patient}")},
                          "content": [{"attachment": {"contentType": "text/plain", "url": "urn:uuid:6a3c3f1e-3a0e-4d7e-9d55-0d7a1f2b0001"}}]}},
            {"fullUrl": "urn:uuid:6a3c3f1e-3a0e-4d7e-9d55-0d7a1f2b0003", "request": {"method": "POST", "url": "Task"},
             "resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                          "code": {"coding": [{"system": "https://nara-gateway.se/fhir/CodeSystem/task-type", "code": "transfer"}]},
                          "focus": {"reference": "urn:uuid:6a3c3f1e-3a0e-4d7e-9d55-0d7a1f2b0002"},
                          "for": {"reference": format!("Patient/{patient}")},
                          "requester": {"reference": format!("Organization/{sender}")},
                          "owner": {"reference": format!("Organization/{recipient}")}}}
        ]
    });
    let r = app.post("/fhir", &bundle.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let inbox = as_client(
        &app,
        "lund-ehr",
        Method::GET,
        &format!("/fhir/Task?owner=Organization/{recipient}&status=requested&_include=Task:focus"),
        None,
    )
    .await;
    assert_eq!(inbox.status, StatusCode::OK, "{}", inbox.text);
    let types: Vec<&str> = inbox.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Task", "DocumentReference"], "{}", inbox.text);
    // The Binary the document points at is the recipient's to fetch, and the fetch marks it received.
    let url = inbox.json["entry"][1]["resource"]["content"][0]["attachment"]["url"].as_str().unwrap().to_owned();
    let fetched = as_client(&app, "lund-ehr", Method::GET, &format!("/fhir/{url}"), None).await;
    assert_eq!(fetched.status, StatusCode::OK, "{}", fetched.text);
    let task = inbox.json["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/fhir/Task/{task}")).await.json["status"], "received");
    // Malmö sees no such inbox.
    let other = as_client(&app, "malmo-ehr", Method::GET, "/fhir/Task?status=requested", None).await;
    assert_eq!(other.json["entry"].as_array().map_or(0, Vec::len), 0, "{}", other.text);
}

#[tokio::test]
async fn overdue_lists_open_transfers_oldest_first_and_counts_duplicates() {
    let app = spawn_app().await;
    let old = example(); // createdAt 2025-11-20: long overdue
    let (first, _) = send_example(&app, &old).await;
    let mut same = old.clone();
    same["recordId"] = json!("mp-2025-778900");
    same["createdAt"] = json!("2025-11-21T08:00:00+01:00");
    let (second, _) = send_example(&app, &same).await;
    let dup = app.get(&format!("/fhir/Task/{second}")).await;
    assert_eq!(dup.json["businessStatus"]["coding"][0]["code"], "duplicate-content", "{}", dup.text);
    let mut other = old.clone();
    other["recordId"] = json!("mp-2025-778901");
    other["content"]["data"] = json!("T3ZyaWd0IGlubmVow6VsbA==");
    other["createdAt"] = json!(chrono::Utc::now().to_rfc3339());
    let (fresh, _) = send_example(&app, &other).await;

    let r = as_client(&app, "lund-ehr", Method::GET, "/api/transfers/overdue?hours=24", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let tasks: Vec<&str> =
        r.json["transfers"].as_array().unwrap().iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, [format!("Task/{first}"), format!("Task/{second}")], "{}", r.text);
    assert_eq!(r.json["duplicates"], 1);
    assert_eq!(r.json["transfers"][1]["duplicateOf"], format!("Task/{first}"));
    assert!(!tasks.contains(&format!("Task/{fresh}").as_str()));
    // Completed transfers are not overdue; other municipalities see none of these.
    set_status(&app, "lund-ehr", &first, |t| t["status"] = json!("completed")).await;
    let r = as_client(&app, "nara-admin", Method::GET, "/api/transfers/overdue?hours=24", None).await;
    assert_eq!(r.json["count"], 1, "{}", r.text);
    let r = as_client(&app, "malmo-ehr", Method::GET, "/api/transfers/overdue?hours=24", None).await;
    assert_eq!(r.json["count"], 0, "{}", r.text);
    let r = as_client(&app, "lund-ehr", Method::GET, "/api/transfers/overdue?hours=0", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json["issue"][0]["expression"][0], "hours");
}
