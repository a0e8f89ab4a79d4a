//! Two real gateway processes on one PostgreSQL database behave as one:
//! conditional creates, ingest idempotency, optimistic locking, the audit
//! chain, cache invalidation and assertion replay hold across them.
//!
//! Needs PostgreSQL: `.ci/run` runs it with `NARA_TEST_POSTGRES_URL` set and
//! `--include-ignored`; on SQLite (one process per file) it does not apply.

use std::time::{Duration, Instant};

use futures::future::join_all;
use nara_gateway::{auth::ClientSigner, test_support::TestDb};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    crash::{cli_token_with, client_with, start},
    helpers::patient_json,
};

const PUBLIC_BASE: &str = "https://gateway.example";

fn example(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata").join(name);
    serde_json::from_slice(&std::fs::read(path).expect("testdata")).expect("json")
}

/// A client's access token from `nara-gateway token issue`, for the replicas' public address.
fn cli_token(client: &str) -> String {
    cli_token_with(client, &[("NARA_SERVER__PUBLIC_BASE_URL", PUBLIC_BASE)])
}

/// Asserts a 2xx (or the expected 412 of a stale `If-Match`), never a 5xx.
fn no_server_error(status: StatusCode, what: &str, body: &str) {
    assert!(!status.is_server_error(), "{what}: {status} {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set NARA_TEST_POSTGRES_URL and pass --include-ignored"]
async fn two_replicas_on_one_database_behave_as_one() {
    let db = TestDb::new().await.unwrap();
    assert!(db.is_postgres(), "two replicas need a shared server database: set NARA_TEST_POSTGRES_URL");
    let env = [("NARA_SERVER__PUBLIC_BASE_URL", PUBLIC_BASE), ("NARA_SUBSCRIPTIONS__POLL_MS", "50")];
    // Both start together: migrations and reference data are applied once.
    let ((_a, a), (_b, b)) = tokio::join!(start(&db.url, &env), start(&db.url, &env));
    let replicas = [a.clone(), b.clone()];
    let region = client_with(&cli_token("region-skane"));

    // Conditional creates of one patient, half to each replica: one Patient.
    let creates = (0..20).map(|i| {
        let (url, region) = (replicas[i % 2].clone(), region.clone());
        async move {
            let r = region
                .post(format!("{url}/fhir/Patient"))
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=http://electronichealth.se/identifier/personnummer|191212121212")
                .body(patient_json("Replika", "191212121212"))
                .send()
                .await
                .unwrap();
            let status = r.status();
            no_server_error(status, "conditional create", &r.text().await.unwrap());
            assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status}");
        }
    });
    join_all(creates).await;
    let found: Value = region
        .get(format!("{a}/fhir/Patient?identifier=191212121212&_summary=count"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["total"], 1, "one patient however many replicas were asked: {found}");

    // The same municipal record pushed to both replicas at once: written once.
    let lund = client_with(&cli_token("lund-ehr"));
    let record = example("funktionsstatus-padl.json").to_string();
    let pushes = (0..10).map(|i| {
        let (url, lund, record) = (replicas[i % 2].clone(), lund.clone(), record.clone());
        async move {
            let r = lund
                .post(format!("{url}/ingest/funktionsstatus"))
                .header("content-type", "application/json")
                .body(record)
                .send()
                .await
                .unwrap();
            let status = r.status();
            no_server_error(status, "ingest", &r.text().await.unwrap());
            assert!(status.is_success(), "{status}");
        }
    });
    join_all(pushes).await;
    let observations: Value =
        region.get(format!("{b}/fhir/Observation?_summary=count")).send().await.unwrap().json().await.unwrap();
    assert_eq!(observations["total"], 1, "one Observation for one record: {observations}");

    // Read-modify-write with If-Match from eight writers on both replicas: no lost update.
    let created: Value = region
        .post(format!("{a}/fhir/Patient"))
        .header("content-type", "application/fhir+json")
        .body(patient_json("Uppdatering", "191111111111"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let writers = (0..8).map(|w| {
        let (url, region, id) = (replicas[w % 2].clone(), region.clone(), id.clone());
        async move {
            loop {
                let r = region.get(format!("{url}/fhir/Patient/{id}")).send().await.unwrap();
                let etag = r.headers()["etag"].to_str().unwrap().to_owned();
                let mut p: Value = r.json().await.unwrap();
                p["identifier"].as_array_mut().unwrap().push(json!({"system": "urn:writer", "value": format!("w{w}")}));
                let put = region
                    .put(format!("{url}/fhir/Patient/{id}"))
                    .header("content-type", "application/fhir+json")
                    .header("if-match", etag)
                    .body(p.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = put.status();
                no_server_error(status, "update", &put.text().await.unwrap());
                match status {
                    StatusCode::OK => return,
                    // Someone else's write came first (or this replica's cache
                    // was a moment behind): read again and retry.
                    StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => continue,
                    other => panic!("update answered {other}"),
                }
            }
        }
    });
    join_all(writers).await;
    let last: Value = region.get(format!("{b}/fhir/Patient/{id}")).send().await.unwrap().json().await.unwrap();
    let mut writers: Vec<&str> = last["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["system"] == "urn:writer")
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    writers.sort_unstable();
    assert_eq!(writers, ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"], "every writer's change is there");
    assert_eq!(last["meta"]["versionId"], "9");

    // A version cached by replica B is replaced soon after replica A's write.
    let _ = region.get(format!("{b}/fhir/Patient/{id}")).send().await.unwrap();
    let mut p = last.clone();
    p["active"] = json!(false);
    let put = region
        .put(format!("{a}/fhir/Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let written = Instant::now();
    loop {
        let seen: Value = region.get(format!("{b}/fhir/Patient/{id}")).send().await.unwrap().json().await.unwrap();
        if seen["meta"]["versionId"] == "10" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "replica B still serves version {}",
            seen["meta"]["versionId"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // One client assertion buys one token, whichever replica it is sent to.
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/certs-example/clients");
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{certs}/lund-ehr.jwks.json")).unwrap()).unwrap();
    let signer =
        ClientSigner::from_pem(&std::fs::read_to_string(format!("{certs}/lund-ehr.jwt.key")).unwrap()).unwrap();
    let assertion = signer
        .assertion(
            jwks["keys"][0]["kid"].as_str().unwrap(),
            "lund-ehr",
            &format!("{PUBLIC_BASE}/auth/token"),
            nara_gateway::auth::layer::unix_now(),
        )
        .unwrap();
    let form = format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
    );
    let http = reqwest::Client::new();
    let token_at = |url: &str| {
        http.post(format!("{url}/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
    };
    assert_eq!(token_at(&a).await.unwrap().status(), StatusCode::OK);
    assert_eq!(token_at(&b).await.unwrap().status(), StatusCode::UNAUTHORIZED, "the replay at the other replica");

    // Everything both replicas audited is one chain that verifies.
    crate::crash::assert_audit_verifies(&db.url);
}
