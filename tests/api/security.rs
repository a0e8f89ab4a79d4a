//! Authentication, scopes, organisation binding and the audit trail, over real HTTP.

use nara_gateway::auth::ClientSigner;
use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, patient_json, spawn_app};

const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/certs-example/clients");

fn kid_of(client: &str) -> String {
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{CERTS}/{client}.jwks.json")).unwrap()).unwrap();
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

/// A signed client assertion of an example client, as its EHR system would make it.
fn assertion(app: &TestApp, client: &str) -> String {
    let signer =
        ClientSigner::from_pem(&std::fs::read_to_string(format!("{CERTS}/{client}.jwt.key")).unwrap()).unwrap();
    let token_url = app.state.auth.as_ref().unwrap().token_endpoint().to_owned();
    signer.assertion(&kid_of(client), client, &token_url, nara_gateway::auth::layer::unix_now()).unwrap()
}

async fn token_request(app: &TestApp, assertion: &str, scope: &str) -> crate::helpers::Resp {
    let form = format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}&scope={}",
        scope.replace(' ', "+").replace('/', "%2F")
    );
    app.send(Method::POST, "/auth/token", Some(&form), &[("content-type", "application/x-www-form-urlencoded")]).await
}

/// The `outcomeDesc` (status and reason) of every entry in the audit log.
pub async fn audit_outcomes(app: &TestApp) -> Vec<String> {
    let admin = app.token_for("nara-admin", None);
    let r = app
        .send(Method::GET, "/fhir/AuditEvent?_count=1000", None, &[("authorization", &format!("Bearer {admin}"))])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["entry"]
        .as_array()
        .map(|e| e.iter().map(|x| x["resource"]["outcomeDesc"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn missing_garbage_and_unsigned_tokens_get_401_and_are_audited() {
    let app = spawn_app().await;
    let none_alg = "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzdWIiOiJyZWdpb24tc2thbmUifQ.";
    for auth in ["", "Bearer garbage", &format!("Bearer {none_alg}")] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() { vec![] } else { vec![("authorization", auth)] };
        let r = app
            .client
            .get(format!("http://{}/fhir/Patient", app.addr))
            .headers(headers.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth}");
        assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer realm=\"nara-gateway\""));
    }
    let refusals = audit_outcomes(&app).await.into_iter().filter(|d| d.starts_with("401")).count();
    assert_eq!(refusals, 3, "every refusal is in the audit log");
    // Public endpoints need no token.
    let meta = app.client.get(format!("{}/metadata", app.base)).send().await.unwrap();
    assert_eq!(meta.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_signed_assertion_buys_a_token_once_and_the_token_works() {
    let app = spawn_app().await;
    let a = assertion(&app, "lund-ehr");
    let r = token_request(&app, &a, "system/Patient.rs nara/admin").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["token_type"], "bearer");
    assert_eq!(r.json["scope"], "system/Patient.rs", "nara/admin is not granted to a municipality");
    let token = r.json["access_token"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    let ok = app.send(Method::GET, "/fhir/Patient", None, &[("authorization", &auth)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let forbidden = app.send(Method::GET, "/fhir/Observation", None, &[("authorization", &auth)]).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "scope covers Patient only");
    let audit = app.send(Method::GET, "/fhir/AuditEvent", None, &[("authorization", &auth)]).await;
    assert_eq!(audit.status, StatusCode::FORBIDDEN, "the audit log needs nara/admin");

    let replay = token_request(&app, &a, "system/Patient.rs").await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.text);
    assert_eq!(replay.json["error"], "invalid_client");

    // RS384 for the region's key.
    let region = token_request(&app, &assertion(&app, "region-skane"), "system/*.rs").await;
    assert_eq!(region.status, StatusCode::OK, "{}", region.text);
    let grants = audit_outcomes(&app).await;
    assert!(grants.iter().any(|d| d.starts_with("401")), "the replay refusal is audited: {grants:?}");
}

#[tokio::test]
async fn a_municipality_sees_and_changes_only_its_own_data() {
    let app = spawn_app().await;
    let lund = format!("Bearer {}", app.token_for("lund-ehr", None));
    let malmo = format!("Bearer {}", app.token_for("malmo-ehr", None));
    let send = |m: Method, path: String, body: Option<String>, who: &str| {
        let auth = who.to_owned();
        let app = &app;
        async move { app.send(m, &path, body.as_deref(), &[("authorization", auth.as_str())]).await }
    };
    let p = send(Method::POST, "/fhir/Patient".into(), Some(patient_json("Lund", "191212121212")), &lund).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "municipal scopes are read-only for Patient: {}", p.text);
    // The region creates the patient; Lund documents an observation.
    let pid = app.create("Patient", &patient_json("Tolvansson", "191212121212")).await;
    let o = send(Method::POST, "/fhir/Task".into(), Some(task_json(&pid)), &lund).await;
    assert_eq!(o.status, StatusCode::CREATED, "{}", o.text);
    let tid = o.id();

    let mine = send(Method::GET, "/fhir/Task".into(), None, &lund).await;
    assert_eq!(mine.json["total"], 1, "{}", mine.text);
    let theirs = send(Method::GET, "/fhir/Task".into(), None, &malmo).await;
    assert_eq!(theirs.json["total"], 0, "{}", theirs.text);
    let read = send(Method::GET, format!("/fhir/Task/{tid}"), None, &malmo).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND);
    let mut changed: serde_json::Value = serde_json::from_str(&task_json(&pid)).unwrap();
    changed["id"] = tid.clone().into();
    let write = send(Method::PUT, format!("/fhir/Task/{tid}"), Some(changed.to_string()), &malmo).await;
    assert_eq!(write.status, StatusCode::FORBIDDEN, "{}", write.text);
    // The region reads across municipalities.
    assert_eq!(app.get("/fhir/Task").await.json["total"], 1);
    // The patient's log extract shows the accesses.
    let admin = format!("Bearer {}", app.token_for("nara-admin", None));
    let extract = send(Method::GET, format!("/fhir/AuditEvent?patient=Patient/{pid}"), None, &admin).await;
    assert_eq!(extract.status, StatusCode::OK, "{}", extract.text);
    assert!(extract.json["entry"].as_array().unwrap().len() >= 2, "{}", extract.text);
    let by_pnr = send(
        Method::GET,
        "/fhir/AuditEvent?patient:identifier=http://electronichealth.se/identifier/personnummer|191212121212".into(),
        None,
        &admin,
    )
    .await;
    assert_eq!(by_pnr.json["entry"].as_array().map(Vec::len), extract.json["entry"].as_array().map(Vec::len));
}

#[tokio::test]
async fn the_audit_log_cannot_be_written_over_the_api() {
    let app = spawn_app().await;
    let r = app.post("/fhir/AuditEvent", r#"{"resourceType":"AuditEvent"}"#).await;
    assert!(r.status == StatusCode::METHOD_NOT_ALLOWED || r.status == StatusCode::FORBIDDEN, "{}", r.text);
}

fn task_json(patient: &str) -> String {
    format!(
        r#"{{"resourceType":"Task","status":"requested","intent":"order","for":{{"reference":"Patient/{patient}"}},"description":"Hemgångsplanering"}}"#
    )
}
