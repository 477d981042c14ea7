//! Prometheus metrics at `/metrics`: requests, latency histograms, upstream
//! errors, refusals by reason, usage queue depth, key-cache lookups, Redis
//! fallback.

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder (once, from `serve`).
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ];
    let built = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .and_then(|b| b.install_recorder());
    match built {
        Ok(handle) => {
            let _ = HANDLE.set(handle);
            describe();
        }
        Err(e) => tracing::warn!(error = %e, "metrics recorder not installed"),
    }
}

fn describe() {
    metrics::describe_counter!(
        "bursar_requests_total",
        "Requests that reached a key, by provider, endpoint and status"
    );
    metrics::describe_histogram!(
        "bursar_request_duration_seconds",
        "Time from request to the end of the answer (streams included)"
    );
    metrics::describe_counter!(
        "bursar_refusals_total",
        "Requests refused by the gateway, by reason (the contract's error type)"
    );
    metrics::describe_counter!(
        "bursar_upstream_errors_total",
        "Provider failures (connection, timeout, 5xx), by provider"
    );
    metrics::describe_counter!(
        "bursar_tokens_total",
        "Tokens metered, by kind (prompt, completion)"
    );
    metrics::describe_counter!(
        "bursar_cost_microusd_total",
        "Cost metered, in millionths of a USD"
    );
    metrics::describe_gauge!(
        "bursar_usage_queue_depth",
        "Usage rows waiting for the batching writer"
    );
    metrics::describe_counter!(
        "bursar_key_cache_lookups_total",
        "Key lookups in the in-memory cache, by result"
    );
    metrics::describe_gauge!(
        "bursar_counters_degraded",
        "1 while Redis is unreachable and limits are per replica"
    );
    metrics::describe_counter!(
        "bursar_usage_spooled_rows_total",
        "Usage rows written to the local spool while the database was down"
    );
}

pub async fn render() -> impl IntoResponse {
    match HANDLE.get() {
        Some(h) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            h.render(),
        ),
        None => (
            StatusCode::NOT_FOUND,
            [("content-type", "text/plain")],
            "metrics are not enabled\n".to_string(),
        ),
    }
}
