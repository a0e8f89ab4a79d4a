//! Request metrics in Prometheus text format: counts by interaction and
//! status, and latency histograms by interaction.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::Response,
};

use crate::app::AppState;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Series {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// Collected request metrics.
#[derive(Default)]
pub struct Metrics {
    by_status: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Series>>,
}

impl Metrics {
    pub fn record(&self, interaction: &'static str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry((interaction, status)).or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let s = m.entry(interaction).or_default();
            s.count += 1;
            s.sum_seconds += secs;
            for (i, le) in BUCKETS.iter().enumerate() {
                if secs <= *le {
                    s.buckets[i] += 1;
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP nara_http_requests_total HTTP requests by interaction and status.\n");
        out.push_str("# TYPE nara_http_requests_total counter\n");
        if let Ok(m) = self.by_status.lock() {
            for ((interaction, status), n) in m.iter() {
                let _ =
                    writeln!(out, "nara_http_requests_total{{interaction=\"{interaction}\",status=\"{status}\"}} {n}");
            }
        }
        out.push_str("# HELP nara_http_request_duration_seconds Request latency by interaction.\n");
        out.push_str("# TYPE nara_http_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (interaction, s) in m.iter() {
                for (i, le) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "nara_http_request_duration_seconds_bucket{{interaction=\"{interaction}\",le=\"{le}\"}} {}",
                        s.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "nara_http_request_duration_seconds_bucket{{interaction=\"{interaction}\",le=\"+Inf\"}} {}",
                    s.count
                );
                let _ = writeln!(
                    out,
                    "nara_http_request_duration_seconds_sum{{interaction=\"{interaction}\"}} {}",
                    s.sum_seconds
                );
                let _ = writeln!(
                    out,
                    "nara_http_request_duration_seconds_count{{interaction=\"{interaction}\"}} {}",
                    s.count
                );
            }
        }
        out
    }
}

/// The FHIR interaction (or other endpoint) a route serves.
pub fn interaction(method: &Method, route: Option<&str>) -> &'static str {
    let m = method.as_str();
    match (m, route.unwrap_or("")) {
        (_, "/fhir/metadata") => "capabilities",
        ("POST", "/fhir" | "/fhir/") => "batch-transaction",
        (_, "/fhir/_history") => "history-system",
        ("GET" | "HEAD", "/fhir/{ty}") | (_, "/fhir/{ty}/_search") => "search-type",
        ("POST", "/fhir/{ty}") => "create",
        ("PUT", "/fhir/{ty}") => "conditional-update",
        ("DELETE", "/fhir/{ty}") => "conditional-delete",
        (_, "/fhir/{ty}/_history") => "history-type",
        ("GET" | "HEAD", "/fhir/{ty}/{id}") => "read",
        ("PUT", "/fhir/{ty}/{id}") => "update",
        ("DELETE", "/fhir/{ty}/{id}") => "delete",
        (_, "/fhir/{ty}/{id}/_history") => "history-instance",
        (_, "/fhir/{ty}/{id}/_history/{vid}") => "vread",
        (_, r) if r.starts_with("/health") => "health",
        (_, "/metrics") => "metrics",
        _ => "other",
    }
}

/// Middleware: times each request and logs it by route template (never the
/// query string or body, which may carry personal identity numbers).
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let name = interaction(&method, route.as_deref());
    st.metrics.record(name, resp.status().as_u16(), elapsed);
    tracing::debug!(
        http.method = %method,
        http.route = route.as_deref().unwrap_or("-"),
        http.status = resp.status().as_u16(),
        interaction = name,
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histograms() {
        let m = Metrics::default();
        m.record("read", 200, Duration::from_micros(700));
        m.record("read", 404, Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("nara_http_requests_total{interaction=\"read\",status=\"200\"} 1"));
        assert!(text.contains("nara_http_request_duration_seconds_bucket{interaction=\"read\",le=\"0.001\"} 1"));
        assert!(text.contains("nara_http_request_duration_seconds_count{interaction=\"read\"} 2"));
    }

    #[test]
    fn routes_map_to_interactions() {
        assert_eq!(interaction(&Method::GET, Some("/fhir/{ty}/{id}")), "read");
        assert_eq!(interaction(&Method::POST, Some("/fhir/{ty}")), "create");
        assert_eq!(interaction(&Method::GET, None), "other");
    }
}
