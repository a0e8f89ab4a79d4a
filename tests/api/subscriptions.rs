//! Rest-hook Subscriptions with a real receiver on port 0: retries after
//! refusals, at-least-once without duplicates after success, error and
//! recovery, binding, and delivery after kill -9.

use std::{
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, http::HeaderMap, response::IntoResponse, routing::any};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{TestApp, spawn_app_with};

#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    headers: HeaderMap,
    body: String,
    answered: u16,
}

/// A notification receiver: refuses the first `refuse` requests with 503, then answers 200.
#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    refuse: Arc<AtomicUsize>,
    url: String,
}

async fn receiver_on(listener: tokio::net::TcpListener, refuse: usize) -> Receiver {
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let r = Receiver { seen: Arc::default(), refuse: Arc::new(AtomicUsize::new(refuse)), url };
    let state = r.clone();
    let app = Router::new().fallback(any(
        move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let refuse = state.refuse.load(Ordering::SeqCst) > 0;
                if refuse {
                    state.refuse.fetch_sub(1, Ordering::SeqCst);
                }
                let answered = if refuse { 503 } else { 200 };
                state.seen.lock().unwrap().push(Received {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    answered,
                });
                if refuse {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response()
                } else {
                    axum::http::StatusCode::OK.into_response()
                }
            }
        },
    ));
    tokio::spawn(async move { axum::serve(listener, app).await });
    r
}

async fn receiver(refuse: usize) -> Receiver {
    receiver_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), refuse).await
}

impl Receiver {
    fn delivered(&self) -> Vec<Received> {
        self.seen.lock().unwrap().iter().filter(|r| r.answered == 200).cloned().collect()
    }

    async fn wait_for_delivery(&self, n: usize) -> Vec<Received> {
        for _ in 0..300 {
            if self.delivered().len() >= n {
                return self.delivered();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no delivery in time; seen {:?}", self.seen.lock().unwrap());
    }
}

fn dokument(record_id: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/dokument-utskrivning.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["recordId"] = json!(record_id);
    v
}

async fn as_client(
    app: &TestApp,
    client: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> crate::helpers::Resp {
    let token = format!("Bearer {}", app.token_for(client, None));
    let text = body.map(Value::to_string);
    app.send(method, path, text.as_deref(), &[("authorization", &token)]).await
}

/// Pushes a transfer to Hemsjukvården Lund; returns (Task id, owner reference).
async fn send_transfer(app: &TestApp, record_id: &str) -> (String, String) {
    let r = as_client(app, "region-skane", Method::POST, "/ingest/dokument", Some(&dokument(record_id))).await;
    assert!(r.status.is_success(), "{}", r.text);
    let task = r.json["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v.as_str().unwrap().strip_prefix("Task/"))
        .unwrap()
        .to_owned();
    let t = app.get(&format!("/fhir/Task/{task}")).await;
    (task, t.json["owner"]["reference"].as_str().unwrap().to_owned())
}

fn subscription(criteria: &str, endpoint: &str, payload: bool) -> Value {
    let mut channel =
        json!({"type": "rest-hook", "endpoint": endpoint, "header": ["Authorization: Bearer receiver-secret"]});
    if payload {
        channel["payload"] = json!("application/fhir+json");
    }
    json!({"resourceType": "Subscription", "status": "requested", "reason": "Inkorg för överföringar", "criteria": criteria, "channel": channel})
}

fn fast() -> Vec<(&'static str, &'static str)> {
    vec![("NARA_SUBSCRIPTIONS__RETRY_BASE_MS", "40"), ("NARA_SUBSCRIPTIONS__POLL_MS", "20")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_arrives_after_refusals_once_and_only_to_the_recipients_subscription() {
    let app = spawn_app_with(&fast()).await;
    let hook = receiver(2).await;
    let other = receiver(0).await;
    let (_, owner) = send_transfer(&app, "mp-1").await;
    let criteria = format!("Task?owner={owner}&status=requested");
    let created = as_client(
        &app,
        "lund-ehr",
        Method::POST,
        "/fhir/Subscription",
        Some(&subscription(&criteria, &hook.url, true)),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["status"], "active");
    // Malmö subscribes to the same criteria: it may not see Lund's transfers.
    let malmo = as_client(
        &app,
        "malmo-ehr",
        Method::POST,
        "/fhir/Subscription",
        Some(&subscription(&criteria, &other.url, false)),
    )
    .await;
    assert_eq!(malmo.status, StatusCode::CREATED, "{}", malmo.text);

    let (task, _) = send_transfer(&app, "mp-2").await;
    let delivered = hook.wait_for_delivery(1).await;
    let n = &delivered[0];
    assert_eq!((n.method.as_str(), n.path.as_str()), ("PUT", format!("/hook/Task/{task}").as_str()));
    assert_eq!(n.headers["authorization"], "Bearer receiver-secret");
    assert_eq!(n.headers["x-nara-subscription"], format!("Subscription/{}", created.json["id"].as_str().unwrap()));
    let body: Value = serde_json::from_str(&n.body).unwrap();
    assert_eq!(body["id"], task.as_str());
    let event = n.headers["x-nara-event-id"].to_str().unwrap().to_owned();
    // The two refusals were the same event; nothing more arrives after success.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let all: Vec<String> =
        hook.seen.lock().unwrap().iter().map(|r| r.headers["x-nara-event-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(all, vec![event.clone(), event.clone(), event], "two refusals, one success, no duplicate");
    assert!(other.seen.lock().unwrap().is_empty(), "Malmö's subscription got nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_puts_the_subscription_in_error_and_recovery_back_to_active() {
    let mut cfg = fast();
    cfg.push(("NARA_SUBSCRIPTIONS__ERROR_AFTER_SECS", "0"));
    let app = spawn_app_with(&cfg).await;
    let hook = receiver(3).await;
    let created = as_client(
        &app,
        "region-skane",
        Method::POST,
        "/fhir/Subscription",
        Some(&subscription("Task?status=requested", &hook.url, false)),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    send_transfer(&app, "mp-3").await;
    let mut statuses = Vec::new();
    for _ in 0..300 {
        let s = app.get(&format!("/fhir/Subscription/{id}")).await;
        let status = s.json["status"].as_str().unwrap().to_owned();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if statuses.ends_with(&["error".to_owned(), "active".to_owned()]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Created active; the first failure may come before the first look.
    let expected: &[&[&str]] = &[&["active", "error", "active"], &["error", "active"]];
    assert!(expected.contains(&statuses.iter().map(String::as_str).collect::<Vec<_>>().as_slice()), "{statuses:?}");
    let delivered = hook.wait_for_delivery(1).await;
    assert_eq!((delivered[0].method.as_str(), delivered[0].body.as_str()), ("POST", ""), "an empty notification");
}

#[tokio::test]
async fn subscriptions_are_checked() {
    let app = spawn_app_with(&fast()).await;
    let cases = [
        (
            subscription("Task?owner=Organization/1", "http://mottagare.example/hook", false),
            "Subscription.channel.endpoint",
        ),
        (subscription("Observation?code=x", "https://mottagare.example/hook", false), "Subscription.criteria"),
        (subscription("Task?nosuch=1", "https://mottagare.example/hook", false), "Subscription.criteria"),
    ];
    for (body, at) in cases {
        let r = as_client(&app, "region-skane", Method::POST, "/fhir/Subscription", Some(&body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{at}: {}", r.text);
        assert_eq!(r.json["issue"][0]["expression"][0], at);
    }
    let mut websocket = subscription("Task?status=requested", "https://mottagare.example/hook", false);
    websocket["channel"]["type"] = json!("websocket");
    let r = as_client(&app, "region-skane", Method::POST, "/fhir/Subscription", Some(&websocket)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_survives_kill_9_while_the_receiver_is_down() {
    let test_db = nara_gateway::test_support::TestDb::new().await.unwrap();
    let db = test_db.url.clone();
    // The receiver's address, with nobody listening yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}/hook");
    let start = || async {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nara-gateway"))
            .arg("serve")
            .env("NARA_SERVER__LISTEN", "127.0.0.1:0")
            .env("NARA_DATABASE__URL", &db)
            .env("NARA_SERVER__TLS__ENABLED", "false")
            .env("NARA_SUBSCRIPTIONS__RETRY_BASE_MS", "100")
            .env("NARA_SUBSCRIPTIONS__POLL_MS", "20")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
        (child, format!("http://{}", line.strip_prefix("listening on http://").unwrap()))
    };
    let (mut child, base) = start().await;
    let region = crate::crash::client_with(&crate::crash::cli_token("region-skane"));
    let sub = region
        .post(format!("{base}/fhir/Subscription"))
        .header("content-type", "application/fhir+json")
        .body(subscription("Task?status=requested", &endpoint, false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), StatusCode::CREATED);
    let pushed = region
        .post(format!("{base}/ingest/dokument"))
        .header("content-type", "application/json")
        .body(dokument("mp-kill").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::CREATED);
    // Let a delivery fail (connection refused), then kill -9.
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let hook = receiver_on(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap(), 0).await;
    let (_child, _base) = start().await;
    let delivered = hook.wait_for_delivery(1).await;
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].headers.contains_key("x-nara-event-id"));
}
