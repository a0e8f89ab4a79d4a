//! FHIR R4 Subscriptions with channel `rest-hook`, delivered through a
//! durable outbox.
//!
//! A Subscription's criteria (`Task?owner=Organization/123`) are matched
//! against every Task written, inside the writing transaction: a matching
//! change and its outbox row commit together, so an acknowledged change is
//! always notified and a rolled-back one never is. A worker leases due rows
//! (several workers, or replicas, never deliver one row at the same time),
//! delivers them with reqwest and records the outcome: delivered, or retried
//! on a schedule with jitter (honouring `Retry-After`). After
//! `subscriptions.error_after_secs` of failures in a row the Subscription
//! goes to status `error`; the next success puts it back to `active`.
//!
//! R4 rest-hook: without `channel.payload` the notification is a POST with
//! no body to the endpoint; with a payload the resource is sent with PUT to
//! `[endpoint]/Task/[id]`. Every notification carries `X-Nara-Event-Id`
//! (the same on every retry: receivers deduplicate on it) and
//! `X-Nara-Subscription`.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use axum::http::StatusCode;

use crate::{
    access::Actor,
    config::SubscriptionsConfig,
    error::{ApiError, Issue},
    json::Value,
    store::{Filter, Notification, Store, StoreTx, SubscriptionRow, plan::Atom},
};

/// Retry delays as multiples of `subscriptions.retry_base_ms`; the last repeats.
const SCHEDULE: &[u64] = &[1, 5, 30, 120, 600];
/// Notifications one worker round leases.
const BATCH: usize = 16;

fn invalid(at: &str, message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(vec![Issue::error("business-rule", message).at(at.to_owned())])
}

/// Whether `endpoint` is an acceptable notification address.
fn check_endpoint(endpoint: &str, cfg: &SubscriptionsConfig) -> Result<(), ApiError> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|_| invalid("Subscription.channel.endpoint", "the endpoint is an absolute URL"))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1"));
    match url.scheme() {
        "https" => Ok(()),
        "http" if cfg.allow_http || (loopback && cfg.allow_loopback_http) => Ok(()),
        "http" => Err(invalid(
            "Subscription.channel.endpoint",
            "notification endpoints are https (http is allowed only for loopback addresses, or with subscriptions.allow_http)",
        )),
        _ => Err(invalid("Subscription.channel.endpoint", "the endpoint is an https URL")),
    }
}

/// Checks a Subscription before it is stored and sets its status: a new or
/// requested one becomes `active` (the gateway accepts it), `off` stays off.
pub fn prepare(body: &mut Value, cfg: &SubscriptionsConfig, fhir: &crate::config::FhirConfig) -> Result<(), ApiError> {
    let channel = body.get("channel").ok_or_else(|| invalid("Subscription.channel", "a channel is required"))?;
    if channel.get("type").and_then(Value::as_str) != Some("rest-hook") {
        return Err(invalid("Subscription.channel.type", "the gateway delivers channel type rest-hook only"));
    }
    let endpoint = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("Subscription.channel.endpoint", "a rest-hook needs an endpoint"))?;
    check_endpoint(endpoint, cfg)?;
    if let Some(p) = channel.get("payload").and_then(Value::as_str)
        && !matches!(p, "application/fhir+json" | "application/json")
    {
        return Err(invalid(
            "Subscription.channel.payload",
            "payload is application/fhir+json (or absent for empty notifications)",
        ));
    }
    for (i, h) in channel.get("header").and_then(Value::as_array).unwrap_or_default().iter().enumerate() {
        let ok = h.as_str().and_then(|h| h.split_once(':')).is_some_and(|(name, value)| {
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(value.trim()).is_ok()
        });
        if !ok {
            return Err(invalid(&format!("Subscription.channel.header[{i}]"), "a header is `Name: value`"));
        }
    }
    let criteria = body.get("criteria").and_then(Value::as_str).unwrap_or("");
    let Some(query) = criteria.strip_prefix("Task?") else {
        return Err(invalid("Subscription.criteria", "criteria are a Task search, e.g. Task?owner=Organization/123"));
    };
    crate::fhir::search::parse_conditional("Task", query, fhir, "").map_err(|e| {
        invalid("Subscription.criteria", format!("the criteria are not a supported Task search: {}", first_message(&e)))
    })?;
    if let Some(o) = body.as_object_mut() {
        let status = o.get("status").and_then(Value::as_str).unwrap_or("requested");
        if status != "off" {
            o.insert("status", "active".into());
            o.remove("error");
        }
    }
    Ok(())
}

fn first_message(e: &ApiError) -> String {
    e.issues().first().map_or_else(String::new, |i| i.diagnostics.clone())
}

/// Keeps the matching row of a Subscription just written by `actor` in step.
pub async fn register(tx: &mut dyn StoreTx, actor: &Actor, id: &str, body: &Value) -> Result<(), ApiError> {
    let channel = body.get("channel");
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let row = SubscriptionRow {
        sub_id: id.to_owned(),
        owner_key: actor.bound_to().unwrap_or("").to_owned(),
        criteria: text(body.get("criteria")).unwrap_or_default(),
        endpoint: text(channel.and_then(|c| c.get("endpoint"))).unwrap_or_default(),
        payload: text(channel.and_then(|c| c.get("payload"))),
        headers: channel
            .and_then(|c| c.get("header"))
            .and_then(Value::as_array)
            .map(|h| h.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        status: text(body.get("status")).unwrap_or_else(|| "active".into()),
        failing_since: None,
    };
    tx.put_subscription(&row).await?;
    Ok(())
}

/// After a Task version is written (in the same transaction): an outbox row
/// for every live Subscription whose owner may see the Task and whose criteria match it.
pub async fn on_task_written(tx: &mut dyn StoreTx, task_id: &str, version: i64, access: &str) -> Result<(), ApiError> {
    let subs = tx.live_subscriptions().await?;
    if subs.is_empty() {
        return Ok(());
    }
    let fhir = crate::config::FhirConfig::default();
    let now = crate::fhir::interactions::now_ms();
    for s in subs {
        if !s.owner_key.is_empty() && !crate::store::access_contains(access, &s.owner_key) {
            continue;
        }
        let Some(query) = s.criteria.strip_prefix("Task?") else { continue };
        let Ok(mut plan) = crate::fhir::search::parse_conditional("Task", query, &fhir, "") else { continue };
        plan.filters.push(Filter::Any(vec![Atom::Id(task_id.to_owned())]));
        plan.count = 1;
        if tx.find_ids(&plan).await?.is_empty() {
            continue;
        }
        let n = Notification {
            event_id: uuid::Uuid::now_v7().to_string(),
            sub_id: s.sub_id.clone(),
            resource: format!("Task/{task_id}"),
            version,
            created_ms: now,
            attempts: 0,
        };
        tx.add_notification(&n, now).await?;
    }
    Ok(())
}

/// Starts the delivery worker; it stops when the store is dropped.
pub fn spawn_worker(store: &Arc<dyn Store>, cfg: SubscriptionsConfig) {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(cfg.timeout_secs.min(10)))
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the notification client; no Subscription is delivered");
                return;
            }
        };
        loop {
            match round(&weak, &client, &cfg).await {
                Some(0) => tokio::time::sleep(Duration::from_millis(cfg.poll_ms)).await,
                Some(_) => {}
                None => return,
            }
        }
    });
}

/// One worker round: lease, deliver, record. `None` when the store is gone.
async fn round(weak: &Weak<dyn Store>, client: &reqwest::Client, cfg: &SubscriptionsConfig) -> Option<usize> {
    let store = weak.upgrade()?;
    match deliver_due(&store, client, cfg).await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "notification round failed; retrying");
            Some(0)
        }
    }
}

struct Attempt {
    n: Notification,
    sub: SubscriptionRow,
    outcome: Result<(), (String, Option<i64>)>,
}

async fn deliver_due(
    store: &Arc<dyn Store>,
    client: &reqwest::Client,
    cfg: &SubscriptionsConfig,
) -> Result<usize, ApiError> {
    let now = crate::fhir::interactions::now_ms();
    let lease = now + i64::try_from(cfg.timeout_secs * 3_000).unwrap_or(60_000);
    let mut tx = store.begin().await?;
    let claimed = tx.claim_notifications(now, lease, BATCH).await?;
    if claimed.is_empty() {
        drop(tx);
        return Ok(0);
    }
    let subs = tx.live_subscriptions().await?;
    let mut work = Vec::new();
    for n in claimed {
        let Some(sub) = subs.iter().find(|s| s.sub_id == n.sub_id).cloned() else { continue };
        let body = match &sub.payload {
            Some(_) => tx.current_body("Task", n.resource.trim_start_matches("Task/")).await?,
            None => None,
        };
        work.push((n, sub, body));
    }
    tx.commit().await?;
    let mut set = tokio::task::JoinSet::new();
    for (n, sub, body) in work {
        let client = client.clone();
        set.spawn(async move {
            let outcome = send(&client, &n, &sub, body).await;
            Attempt { n, sub, outcome }
        });
    }
    let mut attempts = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(a) = done {
            attempts.push(a);
        }
    }
    let count = attempts.len();
    record(store, cfg, attempts).await?;
    Ok(count)
}

async fn send(
    client: &reqwest::Client,
    n: &Notification,
    sub: &SubscriptionRow,
    body: Option<String>,
) -> Result<(), (String, Option<i64>)> {
    let mut req = match (&sub.payload, body) {
        (Some(mime), Some(body)) => {
            let url = format!("{}/{}", sub.endpoint.trim_end_matches('/'), n.resource);
            client.put(url).header(reqwest::header::CONTENT_TYPE, mime.as_str()).body(body)
        }
        _ => client.post(&sub.endpoint),
    };
    for h in &sub.headers {
        if let Some((name, value)) = h.split_once(':') {
            req = req.header(name.trim(), value.trim());
        }
    }
    req = req
        .header("X-Nara-Event-Id", &n.event_id)
        .header("X-Nara-Subscription", format!("Subscription/{}", sub.sub_id));
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let retry_after =
                r.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after_ms);
            Err((format!("the endpoint answered {}", r.status().as_u16()), retry_after))
        }
        Err(e) => Err((
            format!(
                "delivery failed: {}",
                if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request error"
                }
            ),
            None,
        )),
    }
}

/// `Retry-After`: seconds or an HTTP date → a delay in ms (at most an hour).
fn retry_after_ms(v: &str) -> Option<i64> {
    let ms = match v.trim().parse::<i64>() {
        Ok(secs) => secs * 1000,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
            at.timestamp_millis() - chrono::Utc::now().timestamp_millis()
        }
    };
    Some(ms.clamp(0, 3_600_000))
}

/// The delay before attempt `attempts + 1`, with ±20 % jitter.
fn backoff_ms(attempts: i64, cfg: &SubscriptionsConfig) -> i64 {
    let step = SCHEDULE[usize::try_from(attempts - 1).unwrap_or(0).min(SCHEDULE.len() - 1)];
    let base = i64::try_from(step * cfg.retry_base_ms).unwrap_or(i64::MAX / 2);
    let jitter = i64::try_from(uuid::Uuid::new_v4().as_u128() % 401).unwrap_or(200) - 200; // -200..=200 per mille
    base + base * jitter / 1000
}

async fn record(store: &Arc<dyn Store>, cfg: &SubscriptionsConfig, attempts: Vec<Attempt>) -> Result<(), ApiError> {
    let now = crate::fhir::interactions::now_ms();
    let mut tx = store.begin().await?;
    let mut changed: Vec<(SubscriptionRow, Option<String>)> = Vec::new();
    for a in attempts {
        let mut sub = changed.iter().find(|(s, _)| s.sub_id == a.sub.sub_id).map_or(a.sub.clone(), |(s, _)| s.clone());
        match a.outcome {
            Ok(()) => {
                tx.delivered(&a.n.event_id, now).await?;
                tracing::info!(subscription = %sub.sub_id, attempts = a.n.attempts, "notification delivered");
                if sub.failing_since.is_some() || sub.status == "error" {
                    sub.failing_since = None;
                    let was_error = sub.status == "error";
                    sub.status = "active".into();
                    upsert(&mut changed, sub, was_error.then(String::new));
                }
            }
            Err((error, retry_after)) => {
                let delay =
                    retry_after.unwrap_or_else(|| backoff_ms(a.n.attempts, cfg)).max(backoff_ms(a.n.attempts, cfg) / 4);
                tx.retry_notification(&a.n.event_id, now + delay, &error).await?;
                tracing::info!(subscription = %sub.sub_id, attempts = a.n.attempts, delay_ms = delay, reason = %error, "notification not delivered; will retry");
                let since = *sub.failing_since.get_or_insert(now);
                let to_error = sub.status == "active"
                    && now - since >= i64::try_from(cfg.error_after_secs * 1000).unwrap_or(i64::MAX);
                if to_error {
                    sub.status = "error".into();
                }
                upsert(&mut changed, sub, to_error.then_some(error));
            }
        }
    }
    for (sub, status_change) in &changed {
        tx.put_subscription(sub).await?;
        if let Some(error) = status_change {
            set_resource_status(tx.as_mut(), &sub.sub_id, &sub.status, error).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

fn upsert(changed: &mut Vec<(SubscriptionRow, Option<String>)>, sub: SubscriptionRow, status_change: Option<String>) {
    match changed.iter_mut().find(|(s, _)| s.sub_id == sub.sub_id) {
        Some(slot) => {
            let keep = slot.1.take().or(status_change);
            *slot = (sub, keep);
        }
        None => changed.push((sub, status_change)),
    }
}

/// Writes a new version of the Subscription resource with `status` (and `error`, when failing).
async fn set_resource_status(tx: &mut dyn StoreTx, id: &str, status: &str, error: &str) -> Result<(), ApiError> {
    let (Some(text), Some(current)) =
        (tx.current_body("Subscription", id).await?, tx.current("Subscription", id).await?)
    else {
        return Ok(());
    };
    let mut body = crate::json::parse(text.as_bytes()).map_err(|e| ApiError::Internal(e.message))?;
    if let Some(o) = body.as_object_mut() {
        o.insert("status", status.into());
        if error.is_empty() {
            o.remove("error");
        } else {
            o.insert("error", error.into());
        }
    }
    crate::fhir::interactions::put_with_access(
        tx,
        "Subscription",
        id,
        current.version + 1,
        "PUT",
        body,
        StatusCode::OK,
        &current.access,
    )
    .await?;
    tracing::warn!(subscription = %id, status, "Subscription status changed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SubscriptionsConfig {
        SubscriptionsConfig::default()
    }

    #[test]
    fn endpoints_are_https_except_loopback() {
        assert!(check_endpoint("https://mottagare.example/hook", &cfg()).is_ok());
        assert!(check_endpoint("http://127.0.0.1:9000/hook", &cfg()).is_ok());
        assert!(check_endpoint("http://mottagare.example/hook", &cfg()).is_err());
        assert!(check_endpoint("ftp://x.example/", &cfg()).is_err());
        let mut c = cfg();
        c.allow_loopback_http = false;
        assert!(check_endpoint("http://localhost/hook", &c).is_err());
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after_ms("3"), Some(3000));
        assert_eq!(retry_after_ms("999999"), Some(3_600_000));
        assert!(retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        assert_eq!(retry_after_ms("soon"), None);
    }

    #[test]
    fn backoff_follows_the_schedule_with_jitter() {
        let c = cfg();
        for (attempts, base) in [(1, 1000), (2, 5000), (3, 30_000), (9, 600_000)] {
            let d = backoff_ms(attempts, &c);
            assert!((base * 8 / 10..=base * 12 / 10).contains(&d), "{attempts}: {d}");
        }
    }

    #[test]
    fn subscriptions_are_checked_and_activated() {
        let fhir = crate::config::FhirConfig::default();
        let mut ok = crate::json::parse(
            br#"{"resourceType":"Subscription","status":"requested","reason":"inkorg","criteria":"Task?owner=Organization/1",
                "channel":{"type":"rest-hook","endpoint":"https://x.example/hook","payload":"application/fhir+json","header":["Authorization: Bearer abc"]}}"#,
        )
        .unwrap();
        prepare(&mut ok, &cfg(), &fhir).unwrap();
        assert_eq!(ok.get("status").unwrap().as_str(), Some("active"));
        for (body, at) in [
            (r#"{"criteria":"Task?owner=Organization/1","channel":{"type":"websocket"}}"#, "Subscription.channel.type"),
            (
                r#"{"criteria":"Patient?name=x","channel":{"type":"rest-hook","endpoint":"https://x.example"}}"#,
                "Subscription.criteria",
            ),
            (
                r#"{"criteria":"Task?nosuch=1","channel":{"type":"rest-hook","endpoint":"https://x.example"}}"#,
                "Subscription.criteria",
            ),
            (
                r#"{"criteria":"Task?owner=Organization/1","channel":{"type":"rest-hook","endpoint":"http://x.example"}}"#,
                "Subscription.channel.endpoint",
            ),
            (
                r#"{"criteria":"Task?owner=Organization/1","channel":{"type":"rest-hook","endpoint":"https://x.example","header":["nocolon"]}}"#,
                "Subscription.channel.header[0]",
            ),
        ] {
            let mut v = crate::json::parse(body.as_bytes()).unwrap();
            let e = prepare(&mut v, &cfg(), &fhir).unwrap_err();
            assert_eq!(e.issues()[0].expression.as_deref(), Some(at), "{body}");
        }
    }
}
