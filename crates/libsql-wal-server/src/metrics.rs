//! `GET /metrics`: the Prometheus text format, rendered in process by
//! `metrics-exporter-prometheus`'s recorder (installed once per process, at the first
//! [`crate::Server::bind`]); and [`track`], the middleware that counts every request by route
//! and status, times it, and runs it in a `tracing` span.
//!
//! What it renders: the library's metrics (`libsql_wal::metrics`: commits, frames, syncs,
//! checkpoints, uploads, open and idle logs, durable frame_no and lag per open namespace),
//! replication lag on either side (`crate::lag`), and the server's own:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `libsql_wal_http_requests_total` | counter | `route`, `status` | requests answered |
//! | `libsql_wal_http_request_duration_seconds` | histogram | `route` | time to the response's head |
//! | `libsql_wal_open_batons` | gauge | | open streams, as `--max-batons` counts them |
//!
//! Bounded series: `route` is the matched route's template (`/dev/{namespace}/v2/pipeline`,
//! never the request's path, so no namespace and no query), or `unmatched`; `status` is one
//! of the few codes the server answers. Neither the middleware nor the span ever reads a
//! header, a query or a body, so a token (`Authorization`) or a baton never reaches a metric
//! or a log line. Gauges not refreshed by a scrape are dropped at the next one (the
//! exporter's idle timeout), so the namespace series of a log closed since are gone.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ::metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tracing::Instrument as _;

use crate::server::Shared;

/// Counter, labels `route` and `status`: HTTP requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "libsql_wal_http_requests_total";
/// Histogram (seconds), label `route`: from the request's arrival to its response's head (a
/// cursor's streamed body is not included).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "libsql_wal_http_request_duration_seconds";
/// Gauge: open streams, as `--max-batons` counts them (kept behind a baton, or running a
/// request that will keep them).
pub const OPEN_BATONS: &str = "libsql_wal_open_batons";
/// The `route` label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// Histogram buckets, in seconds: 0.5 ms to 30 s.
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A gauge not refreshed for this long is dropped at the next scrape. Every gauge here is
/// refreshed right before each scrape, so only those of closed logs go.
const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Histograms are drained into their buckets this often between scrapes, so their samples
/// never pile up.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// The exporter's handle, if its recorder is the process's (`None`: another recorder was
/// installed first, by the program embedding the server).
static EXPORTER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's, once; later calls do nothing. Call it
/// before any database is opened (the library takes its handles at their first use).
pub fn install() {
    EXPORTER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT))
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .map(PrometheusBuilder::build_recorder);
        let recorder = match recorder {
            Ok(recorder) => recorder,
            Err(e) => {
                tracing::warn!("cannot build the metrics recorder: {e}; GET /metrics answers 503");
                return None;
            }
        };
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed in this process; GET /metrics answers 503");
            return None;
        }
        libsql_wal::metrics::describe();
        describe();
        crate::lag::describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("libsql-wal-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_PERIOD);
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the metrics upkeep thread: {e}; histograms are drained at each scrape only");
        }
        Some(handle)
    });
}

fn describe() {
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered, by route template and status.");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a request's arrival to its response's head, by route template."
    );
    describe_gauge!(OPEN_BATONS, "Open streams, as --max-batons counts them.");
}

/// `GET /metrics`: refreshes the gauges, then renders everything.
pub async fn render(State(shared): State<Arc<Shared>>) -> Response {
    let Some(handle) = EXPORTER.get().and_then(Option::as_ref).cloned() else {
        let why = "metrics are not available: another metrics recorder is installed in this process\n";
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    // The registry's lock can be held across a log's recovery: off the async threads.
    let rendered = tokio::task::spawn_blocking(move || {
        gauge!(OPEN_BATONS).set(shared.batons.open() as f64);
        shared.lag.update_gauges();
        libsql_wal::metrics::update_gauges();
        handle.render()
    })
    .await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the metrics failed: {e}\n")).into_response(),
    }
}

/// The middleware on every route: a `request` span (method and route template), then the
/// request counted by route and status and timed by route.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_owned();
    let span =
        tracing::info_span!("request", method = %request.method(), route = %route, status = tracing::field::Empty);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    span.in_scope(|| tracing::debug!(elapsed_ms = elapsed.as_secs_f64() * 1000.0, "answered"));
    counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "status" => status.as_str().to_owned()).increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route).record(elapsed.as_secs_f64());
    response
}
