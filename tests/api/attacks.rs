//! The attacks docs/SECURITY.md lists, each over real HTTP: forged and
//! replayed assertions, forged and expired access tokens, scope and binding
//! violations, mutual TLS with the wrong or no certificate, and what the logs
//! must never show.

use std::{process::Stdio, time::Duration};

use base64::Engine;
use nara_gateway::auth::ClientSigner;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::helpers::{Resp, TestApp, patient_json, spawn_app, spawn_app_with};

const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/certs-example");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn kid_of(client: &str) -> String {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{CERTS}/clients/{client}.jwks.json")).unwrap()).unwrap();
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

fn signer(client: &str) -> ClientSigner {
    ClientSigner::from_pem(&std::fs::read_to_string(format!("{CERTS}/clients/{client}.jwt.key")).unwrap()).unwrap()
}

fn now() -> u64 {
    nara_gateway::auth::layer::unix_now()
}

fn token_url(app: &TestApp) -> String {
    app.state.auth.as_ref().unwrap().token_endpoint().to_owned()
}

fn claims(app: &TestApp, client: &str) -> Value {
    json!({"iss": client, "sub": client, "aud": token_url(app), "exp": now() + 240, "iat": now(), "jti": uuid::Uuid::new_v4().to_string()})
}

async fn token_request(app: &TestApp, assertion: &str) -> Resp {
    let form = format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}&scope=system%2F*.rs"
    );
    app.send(Method::POST, "/auth/token", Some(&form), &[("content-type", "application/x-www-form-urlencoded")]).await
}

fn assert_refused(r: &Resp, what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
    assert_eq!(r.json["error"], "invalid_client", "{what}: {}", r.text);
    assert!(r.json.get("access_token").is_none(), "{what}");
}

#[tokio::test]
async fn forged_expired_misaddressed_and_unknown_assertions_buy_no_token() {
    let app = spawn_app().await;
    let kid = kid_of("lund-ehr");
    // alg none: no signature at all.
    let header = b64(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string().as_bytes());
    let body = b64(claims(&app, "lund-ehr").to_string().as_bytes());
    assert_refused(&token_request(&app, &format!("{header}.{body}.")).await, "alg none");
    // HS256 keyed with the client's public key (algorithm confusion).
    let public_jwks = std::fs::read(format!("{CERTS}/clients/lund-ehr.jwks.json")).unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let confused =
        jsonwebtoken::encode(&hs, &claims(&app, "lund-ehr"), &jsonwebtoken::EncodingKey::from_secret(&public_jwks))
            .unwrap();
    assert_refused(&token_request(&app, &confused).await, "HS256 with the public key");
    // Malmö's key, claiming to be Lund (with Lund's kid, and with its own).
    let malmo = signer("malmo-ehr");
    assert_refused(
        &token_request(&app, &malmo.sign(&kid, &claims(&app, "lund-ehr")).unwrap()).await,
        "wrong key, lund kid",
    );
    assert_refused(
        &token_request(&app, &malmo.sign(&kid_of("malmo-ehr"), &claims(&app, "lund-ehr")).unwrap()).await,
        "wrong key, own kid",
    );
    let lund = signer("lund-ehr");
    // Expired beyond the 60 s skew.
    let mut expired = claims(&app, "lund-ehr");
    expired["iat"] = json!(now() - 600);
    expired["exp"] = json!(now() - 120);
    assert_refused(&token_request(&app, &lund.sign(&kid, &expired).unwrap()).await, "expired");
    // Addressed to another token endpoint.
    let mut elsewhere = claims(&app, "lund-ehr");
    elsewhere["aud"] = json!("https://idp.example/token");
    assert_refused(&token_request(&app, &lund.sign(&kid, &elsewhere).unwrap()).await, "wrong aud");
    // iss and sub disagree.
    let mut mixed = claims(&app, "lund-ehr");
    mixed["sub"] = json!("malmo-ehr");
    assert_refused(&token_request(&app, &lund.sign(&kid, &mixed).unwrap()).await, "iss != sub");
    // A client nobody registered.
    assert_refused(&token_request(&app, &lund.sign(&kid, &claims(&app, "stranger")).unwrap()).await, "unknown client");
    // And the real thing still works.
    let ok = token_request(&app, &lund.sign(&kid, &claims(&app, "lund-ehr")).unwrap()).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    // Every refusal is in the audit trail, with its reason.
    let outcomes = crate::security::audit_outcomes(&app).await;
    let refused: Vec<&String> = outcomes.iter().filter(|d| d.starts_with("401")).collect();
    assert_eq!(refused.len(), 8, "{outcomes:?}");
    assert!(refused.iter().any(|d| d.contains("alg none")), "{refused:?}");
    assert!(refused.iter().any(|d| d.contains("expired")), "{refused:?}");
}

#[tokio::test]
async fn forged_and_expired_access_tokens_are_refused() {
    let app = spawn_app().await;
    let valid = app.token_for("region-skane", None);
    let parts: Vec<&str> = valid.split('.').collect();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    // The same claims signed with a client's key under the gateway's kid.
    let forged = signer("lund-ehr").sign(header["kid"].as_str().unwrap(), &claims).unwrap();
    // Claims changed after signing (more scopes, another organisation).
    let mut widened = claims.clone();
    widened["scope"] = json!("system/*.cruds nara/admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(widened.to_string().as_bytes()), parts[2]);
    // Expired: issued 20 minutes ago with a 5-minute life.
    let expired = app.state.auth.as_ref().unwrap().issue_for("region-skane", None, now() - 1200).unwrap().access_token;
    for (what, token) in [("client-signed", forged), ("tampered", tampered), ("expired", expired)] {
        let r = app.send(Method::GET, "/fhir/Patient", None, &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
        assert!(r.header("www-authenticate").unwrap().contains("invalid_token"), "{what}");
    }
    let r = app.get("/fhir/Patient").await;
    assert_eq!(r.status, StatusCode::OK, "the real token works");
    let refused = crate::security::audit_outcomes(&app).await.into_iter().filter(|d| d.starts_with("401")).count();
    assert_eq!(refused, 3, "every refused token is in the audit trail");
}

#[tokio::test]
async fn read_only_clients_cannot_write_and_municipalities_cannot_reach_each_other() {
    let app = spawn_app().await;
    let admin = format!("Bearer {}", app.token_for("nara-admin", None));
    let r = app
        .send(
            Method::POST,
            "/fhir/Patient",
            Some(&patient_json("Tolvansson", "191212121212")),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // A Malmö observation is invisible and unchangeable for Lund.
    let malmo = format!("Bearer {}", app.token_for("malmo-ehr", None));
    let lund = format!("Bearer {}", app.token_for("lund-ehr", None));
    let patient = app.create("Patient", &patient_json("Tolvansson", "191212121212")).await;
    let obs = crate::helpers::observation_json(&patient, "survey", "d510", "2025-11-21T10:15:00+01:00");
    let created = app.send(Method::POST, "/fhir/Observation", Some(&obs), &[("authorization", &malmo)]).await;
    assert_eq!(created.status, StatusCode::FORBIDDEN, "Malmö's token has read and Task scopes only: {}", created.text);
    let created = app.post("/fhir/Observation", &obs).await;
    let id = created.id();
    // Written by the region: Lund sees nothing of it, Malmö neither.
    for who in [&lund, &malmo] {
        let r = app.send(Method::GET, &format!("/fhir/Observation/{id}"), None, &[("authorization", who)]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    }
    let search = app.send(Method::GET, "/fhir/Observation", None, &[("authorization", &lund)]).await;
    assert_eq!(search.json["entry"].as_array().map_or(0, Vec::len), 0, "{}", search.text);
    // The refused writes and the reads that found nothing are audited.
    let outcomes = crate::security::audit_outcomes(&app).await;
    assert_eq!(outcomes.iter().filter(|d| d.starts_with("403")).count(), 2, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|d| d.starts_with("404")).count(), 2, "{outcomes:?}");
}

/// A reqwest client trusting the development CA, optionally presenting an example client certificate.
fn tls_client(cert_of: Option<&str>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(format!("{CERTS}/ca.pem")).unwrap()).unwrap();
    let mut b = reqwest::Client::builder().add_root_certificate(ca);
    if let Some(client) = cert_of {
        let mut pem = std::fs::read(format!("{CERTS}/clients/{client}.pem")).unwrap();
        pem.extend(std::fs::read(format!("{CERTS}/clients/{client}.key")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn with_mutual_tls_required_the_certificate_must_match_the_token() {
    let app =
        spawn_app_with(&[("NARA_SERVER__TLS__ENABLED", "true"), ("NARA_SERVER__TLS__CLIENT_AUTH", "required")]).await;
    let url = format!("https://localhost:{}/fhir/Patient", app.addr.port());
    let lund = app.token_for("lund-ehr", None);
    let malmo = app.token_for("malmo-ehr", None);
    // No certificate: the handshake fails, nothing reaches HTTP.
    let none = tls_client(None).get(&url).bearer_auth(&lund).send().await;
    assert!(none.is_err(), "a connection without a client certificate is refused: {none:?}");
    // Lund's certificate with Malmö's token.
    let r = tls_client(Some("lund-ehr")).get(&url).bearer_auth(&malmo).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Certificate and token of the same organisation.
    let r = tls_client(Some("lund-ehr")).get(&url).bearer_auth(&lund).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_identity_numbers_names_or_tokens_and_a_read_is_audited_across_kill_9() {
    let test_db = nara_gateway::test_support::TestDb::new().await.unwrap();
    let db = test_db.url.clone();
    let start = || {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
            .arg("serve")
            .env("NARA_SERVER__LISTEN", "127.0.0.1:0")
            .env("NARA_DATABASE__URL", &db)
            .env("NARA_SERVER__TLS__ENABLED", "false")
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        (child, stdout)
    };
    let (mut child, stdout) = start();
    // Read the logs while the gateway runs: a full pipe would stall it.
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        stderr.read_to_string(&mut logs).await.unwrap();
        logs
    });
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let base = format!("http://{}", line.strip_prefix("listening on http://").unwrap());
    let token = crate::crash::cli_token("region-skane");
    let http = crate::crash::client_with(&token);
    let patient: Value = http
        .post(format!("{base}/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .body(patient_json("Tolvansson", "191212121212"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = patient["id"].as_str().unwrap().to_owned();
    let read = http.get(format!("{base}/fhir/Patient/{id}")).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let search = http.get(format!("{base}/fhir/Patient?identifier=191212121212&name=Tolvansson")).send().await.unwrap();
    assert_eq!(search.status(), StatusCode::OK);
    // A refused request with a token in it, and an ingest with a personnummer.
    let bad = reqwest::Client::new()
        .get(format!("{base}/fhir/Patient"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    // The read was answered: its audit entry is on disk. kill -9 now.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let logs = logs.await.unwrap();
    assert!(logs.len() > 200, "trace logging produced output: {logs}");
    for secret in ["191212121212", "Tolvansson", token.as_str(), &token[token.len() - 40..]] {
        assert!(!logs.contains(secret), "the logs contain `{}`", &secret[..secret.len().min(24)]);
    }
    // Restarted on the same file: the read is in the audit trail, and the chain verifies.
    let (mut child, stdout) = start();
    let mut stderr = child.stderr.take().unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let base = format!("http://{}", line.strip_prefix("listening on http://").unwrap());
    let admin = crate::crash::client_with(&crate::crash::cli_token("nara-admin"));
    let audit: Value = admin
        .get(format!("{base}/fhir/AuditEvent?patient=Patient/{id}&_count=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reads =
        audit["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["subtype"][0]["code"] == "read").count();
    assert_eq!(reads, 1, "{audit}");
    crate::crash::assert_audit_verifies(&db);
}
