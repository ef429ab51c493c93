//! Request metrics and their Prometheus text rendering, written by hand.
//!
//! The hot path ([`Metrics::record`]) touches only relaxed atomics in fixed
//! arrays indexed by [`Route`] and a status slot: no lock, no allocation, no
//! map lookup. Rendering (`GET /metrics`) walks the arrays and appends the
//! engine's own statistics, gathered by the caller.
//!
//! **Invariant:** latency histogram buckets are stored non-cumulatively and
//! summed at render time, so one observation is one `fetch_add`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The routes requests are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    Blob,
    TrackCreate,
    TrackFind,
    TrackGet,
    TrackDelete,
    TrackStream,
    Admin,
    Plays,
    ChartsTop,
    /// `GET /v1/genres`, `/v1/genres/{g}/tracks`, `/v1/artists[/{id}]`,
    /// `/v1/albums/{id}`.
    Catalog,
    Search,
    /// The web player's page and embedded assets.
    Web,
    Unmatched,
}

impl Route {
    const ALL: [Route; 16] = [
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Blob,
        Route::TrackCreate,
        Route::TrackFind,
        Route::TrackGet,
        Route::TrackDelete,
        Route::TrackStream,
        Route::Admin,
        Route::Plays,
        Route::ChartsTop,
        Route::Catalog,
        Route::Search,
        Route::Web,
        Route::Unmatched,
    ];

    /// The `route` label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Blob => "/v1/blobs/{id}",
            Route::TrackCreate => "POST /v1/tracks",
            Route::TrackFind => "GET /v1/tracks",
            Route::TrackGet => "GET /v1/tracks/{id}",
            Route::TrackDelete => "DELETE /v1/tracks/{id}",
            Route::TrackStream => "/v1/tracks/{id}/stream",
            Route::Admin => "/v1/admin/*",
            Route::Plays => "POST /v1/plays",
            Route::ChartsTop => "GET /v1/charts/top",
            Route::Catalog => "GET /v1/{genres,artists,albums}/*",
            Route::Search => "GET /v1/search",
            Route::Web => "web player",
            Route::Unmatched => "unmatched",
        }
    }
}

/// Status codes with their own counter; anything else counts as `other`.
const STATUSES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 400, 401, 403, 404, 405, 408, 409, 411, 412, 413,
    415, 416, 431, 500, 503,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Upper bounds of the latency buckets, in seconds (`+Inf` is implicit).
const LATENCY_BOUNDS_S: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];
const LATENCY_SLOTS: usize = LATENCY_BOUNDS_S.len() + 1;

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len())
}

#[derive(Default)]
struct RouteStats {
    by_status: [AtomicU64; STATUS_SLOTS],
    latency: [AtomicU64; LATENCY_SLOTS],
    latency_sum_us: AtomicU64,
}

/// All counters of one server.
#[derive(Default)]
pub struct Metrics {
    routes: [RouteStats; Route::ALL.len()],
    /// Response body bytes announced (Content-Length of responses).
    pub bytes_served: AtomicU64,
    /// Uploads answered 202.
    pub uploads_accepted: AtomicU64,
    /// Uploads that failed (cut off, too large, timed out, storage error).
    pub uploads_failed: AtomicU64,
    /// Bytes of accepted uploads.
    pub upload_bytes: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts one request of `route` answered with `status` after `elapsed`,
    /// announcing `body_bytes` of body.
    pub fn record(&self, route: Route, status: u16, elapsed: Duration, body_bytes: u64) {
        let r = &self.routes[route as usize];
        r.by_status[status_slot(status)].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let slot = LATENCY_BOUNDS_S
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        r.latency[slot].fetch_add(1, Ordering::Relaxed);
        r.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        if body_bytes > 0 {
            self.bytes_served.fetch_add(body_bytes, Ordering::Relaxed);
        }
    }

    /// Requests of `route` answered with `status` so far.
    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.routes[route as usize].by_status[status_slot(status)].load(Ordering::Relaxed)
    }

    /// Appends the request, upload and connection metrics to `out`.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP spindle_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE spindle_http_requests_total counter\n");
        for route in Route::ALL {
            let r = &self.routes[route as usize];
            for (slot, counter) in r.by_status.iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(slot)
                    .map_or_else(|| "other".to_owned(), |s| s.to_string());
                let _ = writeln!(
                    out,
                    "spindle_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    route.label()
                );
            }
        }
        out.push_str(
            "# HELP spindle_http_request_duration_seconds Time to the response head, by route.\n",
        );
        out.push_str("# TYPE spindle_http_request_duration_seconds histogram\n");
        for route in Route::ALL {
            let r = &self.routes[route as usize];
            let label = route.label();
            if r.latency.iter().all(|c| c.load(Ordering::Relaxed) == 0) {
                continue;
            }
            let mut cumulative = 0u64;
            for (slot, counter) in r.latency.iter().enumerate() {
                cumulative += counter.load(Ordering::Relaxed);
                let le = LATENCY_BOUNDS_S
                    .get(slot)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "spindle_http_request_duration_seconds_bucket{{route=\"{label}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum_s = r.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "spindle_http_request_duration_seconds_sum{{route=\"{label}\"}} {sum_s}"
            );
            let _ = writeln!(
                out,
                "spindle_http_request_duration_seconds_count{{route=\"{label}\"}} {cumulative}"
            );
        }
        let counters: [(&str, &str, u64); 6] = [
            (
                "spindle_http_response_body_bytes_total",
                "Response body bytes sent (as announced by Content-Length).",
                self.bytes_served.load(Ordering::Relaxed),
            ),
            (
                "spindle_http_sendfile_bytes_total",
                "Body bytes handed to the kernel with sendfile instead of copied.",
                crate::http::sendfile::SENDFILE_BYTES_TOTAL.load(Ordering::Relaxed),
            ),
            (
                "spindle_uploads_accepted_total",
                "Uploads answered 202 Accepted.",
                self.uploads_accepted.load(Ordering::Relaxed),
            ),
            (
                "spindle_uploads_failed_total",
                "Uploads that stored no track (cut off, too large, timed out, failed).",
                self.uploads_failed.load(Ordering::Relaxed),
            ),
            (
                "spindle_upload_bytes_total",
                "Bytes of accepted uploads.",
                self.upload_bytes.load(Ordering::Relaxed),
            ),
            (
                "spindle_connections_accepted_total",
                "Connections accepted.",
                self.connections_accepted.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            counter(out, name, help, value);
        }
        gauge(
            out,
            "spindle_connections_open",
            "Connections open now.",
            self.connections_open.load(Ordering::Relaxed) as f64,
        );
    }
}

/// Appends one counter with its HELP and TYPE lines.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Appends one gauge with its HELP and TYPE lines.
pub fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// Appends one gauge family with one sample per `(label value, value)`,
/// labelled `label`; nothing when there are no samples.
pub fn labelled_gauges(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(String, f64)],
) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (label_value, value) in samples {
        let _ = writeln!(
            out,
            "{name}{{{label}=\"{}\"}} {value}",
            escape_label(label_value)
        );
    }
}

/// A label value as the text format wants it: backslash, double quote and
/// newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_gauges_escape_their_label_values() {
        let mut out = String::new();
        labelled_gauges(&mut out, "g", "A gauge.", "consumer", &[]);
        assert_eq!(out, "");
        let samples = [("plain".to_owned(), 3.0), ("a\"b\\c\nd".to_owned(), 0.5)];
        labelled_gauges(&mut out, "g", "A gauge.", "consumer", &samples);
        assert_eq!(
            out,
            "# HELP g A gauge.\n# TYPE g gauge\ng{consumer=\"plain\"} 3\ng{consumer=\"a\\\"b\\\\c\\nd\"} 0.5\n"
        );
    }

    #[test]
    fn records_render_as_prometheus_text() {
        let m = Metrics::default();
        m.record(Route::Blob, 206, Duration::from_micros(300), 1024);
        m.record(Route::Blob, 206, Duration::from_millis(3), 1024);
        m.record(Route::Blob, 299, Duration::from_secs(100), 0);
        m.record(Route::Unmatched, 404, Duration::from_micros(10), 0);
        assert_eq!(m.requests(Route::Blob, 206), 2);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out
            .contains("spindle_http_requests_total{route=\"/v1/blobs/{id}\",status=\"206\"} 2\n"));
        assert!(out.contains(
            "spindle_http_requests_total{route=\"/v1/blobs/{id}\",status=\"other\"} 1\n"
        ));
        assert!(out.contains("spindle_http_requests_total{route=\"unmatched\",status=\"404\"} 1\n"));
        assert!(out.contains(
            "spindle_http_request_duration_seconds_bucket{route=\"/v1/blobs/{id}\",le=\"0.0005\"} 1\n"
        ));
        assert!(out.contains(
            "spindle_http_request_duration_seconds_bucket{route=\"/v1/blobs/{id}\",le=\"0.005\"} 2\n"
        ));
        assert!(out.contains(
            "spindle_http_request_duration_seconds_bucket{route=\"/v1/blobs/{id}\",le=\"+Inf\"} 3\n"
        ));
        assert!(out
            .contains("spindle_http_request_duration_seconds_count{route=\"/v1/blobs/{id}\"} 3\n"));
        assert!(out.contains("spindle_http_response_body_bytes_total 2048\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }
}
