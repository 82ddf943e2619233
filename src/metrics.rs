//! A small Prometheus text registry: labelled counters and histograms, rendered on `/metrics`.
//!
//! Hand-rolled (a few dozen lines) instead of a metrics crate. The hot path allocates nothing:
//! a series is found by a 64-bit FNV hash of its name and labels (one read lock, one map
//! lookup, one atomic add); its text form is built once, when the series is first seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Help text of every metric coexist exports; a series whose name is not here still renders.
const HELP: &[(&str, &str, &str)] = &[
    (
        "coexist_http_requests_total",
        "counter",
        "HTTP requests by route and outcome.",
    ),
    (
        "coexist_signature_failures_total",
        "counter",
        "Webhooks refused for a missing or wrong signature.",
    ),
    (
        "coexist_events_enqueued_total",
        "counter",
        "Events durably enqueued, by channel and type.",
    ),
    (
        "coexist_events_duplicate_total",
        "counter",
        "Events dropped as duplicates (already enqueued), by channel.",
    ),
    (
        "coexist_events_unrouted_total",
        "counter",
        "Events for a number no channel claims (kept on the unrouted stream).",
    ),
    (
        "coexist_enqueue_seconds",
        "histogram",
        "Time to enqueue all events of one webhook in Redis.",
    ),
    (
        "coexist_events_handled_total",
        "counter",
        "Events handled by workers, by channel, type and outcome.",
    ),
    (
        "coexist_handler_seconds",
        "histogram",
        "Handler latency per event.",
    ),
    (
        "coexist_handler_retries_total",
        "counter",
        "Handler attempts that failed and were retried.",
    ),
    (
        "coexist_dead_letters_total",
        "counter",
        "Events moved to a dead-letter stream.",
    ),
    (
        "coexist_leases_held",
        "gauge",
        "Partition leases held by this process.",
    ),
    (
        "coexist_timers_fired_total",
        "counter",
        "Window timers promoted into partition streams.",
    ),
    (
        "coexist_messages_sent_total",
        "counter",
        "Outbound messages by channel and outcome.",
    ),
    (
        "coexist_channel_unhealthy",
        "gauge",
        "1 when a channel's credentials were refused (e.g. Graph error 190).",
    ),
    (
        "coexist_webhook_to_handler_seconds",
        "histogram",
        "From ingress accepting a webhook to a worker handling its event.",
    ),
    (
        "coexist_outbound_queued_total",
        "counter",
        "Outbound messages committed to the outbound queue, by channel.",
    ),
    (
        "coexist_outbound_queue_age_seconds",
        "histogram",
        "Time an outbound message waited in its lane before it was sent.",
    ),
    (
        "coexist_outbound_send_seconds",
        "histogram",
        "Time of one send attempt (rate slot, claim, HTTP request).",
    ),
    (
        "coexist_outbound_lane_waits_total",
        "counter",
        "Lanes set aside until later, by channel and reason (pair_gap, rate, backoff, in_flight).",
    ),
];

/// Upper bounds of histogram buckets, in seconds.
const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    15.0, 60.0, 300.0,
];

/// Counts per bucket are stored non-cumulatively (one atomic add per observation) and summed
/// when rendered.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds, to stay integral and atomic.
    sum_nanos: AtomicU64,
}

#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Series by hash: the rendered `name{labels}` and the value.
type Series<T> = RwLock<HashMap<u64, (String, Arc<T>)>>;

#[derive(Default)]
struct Inner {
    counters: Series<AtomicU64>,
    gauges: Series<AtomicU64>,
    histograms: Series<Histogram>,
}

/// FNV-1a over the name and labels, with separators so ("ab","c") ≠ ("a","bc").
fn series_hash(name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8], sep: u8| {
        for b in bytes.iter().chain(std::iter::once(&sep)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(name.as_bytes(), 0xff);
    for (k, v) in labels {
        eat(k.as_bytes(), 0xfe);
        eat(v.as_bytes(), 0xfd);
    }
    h
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(name.len() + 32);
    s.push_str(name);
    if !labels.is_empty() {
        s.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => s.push_str("\\\\"),
                    '"' => s.push_str("\\\""),
                    '\n' => s.push_str("\\n"),
                    c => s.push(c),
                }
            }
            s.push('"');
        }
        s.push('}');
    }
    s
}

fn get_or_insert<T: Default>(map: &Series<T>, name: &str, labels: &[(&str, &str)]) -> Arc<T> {
    let hash = series_hash(name, labels);
    if let Some((_, v)) = map.read().unwrap_or_else(|e| e.into_inner()).get(&hash) {
        return v.clone();
    }
    map.write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(hash)
        .or_insert_with(|| (series(name, labels), Arc::default()))
        .1
        .clone()
}

/// The series sorted by their text, for a stable exposition.
fn sorted<T>(map: &Series<T>) -> BTreeMap<String, Arc<T>> {
    map.read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &str, labels: &[(&str, &str)], n: u64) {
        get_or_insert(&self.inner.counters, name, labels).fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_gauge(&self, name: &str, labels: &[(&str, &str)], value: u64) {
        get_or_insert(&self.inner.gauges, name, labels).store(value, Ordering::Relaxed);
    }

    pub fn observe_seconds(&self, name: &str, labels: &[(&str, &str)], seconds: f64) {
        let h = get_or_insert(&self.inner.histograms, name, labels);
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Current value of a counter series (tests and `queues` use it).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.inner
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&series_hash(name, labels))
            .map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut described = std::collections::HashSet::new();
        let mut describe = |out: &mut String, series_key: &str| {
            let name = series_key.split('{').next().unwrap_or(series_key);
            if described.insert(name.to_string()) {
                if let Some((_, kind, help)) = HELP.iter().find(|(n, _, _)| *n == name) {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                }
            }
        };
        for (k, v) in sorted(&self.inner.counters).iter() {
            describe(&mut out, k);
            let _ = writeln!(out, "{k} {}", v.load(Ordering::Relaxed));
        }
        for (k, v) in sorted(&self.inner.gauges).iter() {
            describe(&mut out, k);
            let _ = writeln!(out, "{k} {}", v.load(Ordering::Relaxed));
        }
        for (k, h) in sorted(&self.inner.histograms).iter() {
            describe(&mut out, k);
            let (name, labels) = match k.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}').to_string()),
                None => (k.as_str(), String::new()),
            };
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
            let braces = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(
                out,
                "{name}_sum{braces} {}",
                h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(out, "{name}_count{braces} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.inc(
            "coexist_http_requests_total",
            &[("route", "meta"), ("outcome", "ok")],
        );
        m.inc(
            "coexist_http_requests_total",
            &[("route", "meta"), ("outcome", "ok")],
        );
        m.observe_seconds("coexist_enqueue_seconds", &[], 0.0003);
        let text = m.render();
        assert!(
            text.contains("# TYPE coexist_http_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("coexist_http_requests_total{route=\"meta\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("coexist_enqueue_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("coexist_enqueue_seconds_bucket{le=\"0.00025\"} 0"),
            "{text}"
        );
        assert!(text.contains("coexist_enqueue_seconds_count 1"), "{text}");
        assert_eq!(
            m.counter(
                "coexist_http_requests_total",
                &[("route", "meta"), ("outcome", "ok")]
            ),
            2
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(series("x", &[("a", "q\"b")]), "x{a=\"q\\\"b\"}");
    }
}
