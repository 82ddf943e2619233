//! A small Prometheus text registry: labelled counters and histograms, rendered on `/metrics`.
//!
//! Hand-rolled (a few dozen lines) instead of a metrics crate. The hot path allocates nothing:
//! a series is found by a 64-bit FNV hash of its name and labels (one read lock, one map
//! lookup, one atomic add); its text form is built once, when the series is first seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Every metric coexist exports: its name, type and help, in one typed table, so no series
/// can be exported without `# HELP` and `# TYPE`.
macro_rules! metrics {
    ($($variant:ident => $name:literal, $kind:ident, $help:literal;)*) => {
        /// A metric coexist exports.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Metric {
            $(#[doc = $help] $variant,)*
        }

        impl Metric {
            /// Every metric, in the table's order.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];

            /// The exported name (`coexist_…`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }

            pub fn kind(self) -> Kind {
                match self {
                    $(Metric::$variant => Kind::$kind,)*
                }
            }

            pub fn help(self) -> &'static str {
                match self {
                    $(Metric::$variant => $help,)*
                }
            }
        }
    };
}

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

metrics! {
    HttpRequests => "coexist_http_requests_total", Counter, "HTTP requests by route and outcome.";
    SignatureFailures => "coexist_signature_failures_total", Counter, "Webhooks refused for a missing or wrong signature.";
    EventsEnqueued => "coexist_events_enqueued_total", Counter, "Events durably enqueued, by channel and type.";
    EventsDuplicate => "coexist_events_duplicate_total", Counter, "Events dropped as duplicates (already enqueued), by channel.";
    EventsUnrouted => "coexist_events_unrouted_total", Counter, "Events for a number no channel claims (kept on the unrouted stream).";
    EnqueueSeconds => "coexist_enqueue_seconds", Histogram, "Time to enqueue all events of one webhook in Redis.";
    EventsHandled => "coexist_events_handled_total", Counter, "Events handled by workers, by channel, type and outcome.";
    HandlerSeconds => "coexist_handler_seconds", Histogram, "Handler latency per event.";
    HandlerRetries => "coexist_handler_retries_total", Counter, "Handler attempts that failed and were retried.";
    MediaStored => "coexist_media_stored_total", Counter, "Inbound media files handled with `[media] store` on, by outcome (`kept`, or the error code when no copy was made).";
    DeadLetters => "coexist_dead_letters_total", Counter, "Events moved to a dead-letter stream.";
    LeasesHeld => "coexist_leases_held", Gauge, "Partition leases held by this process.";
    TimersFired => "coexist_timers_fired_total", Counter, "Window timers promoted into partition streams.";
    MessagesSent => "coexist_messages_sent_total", Counter, "Outbound messages by channel and outcome.";
    ChannelUnhealthy => "coexist_channel_unhealthy", Gauge, "1 when a channel's credentials were refused (e.g. Graph error 190).";
    WebhookToHandlerSeconds => "coexist_webhook_to_handler_seconds", Histogram, "From ingress accepting a webhook to a worker handling its event.";
    OutboundQueued => "coexist_outbound_queued_total", Counter, "Outbound messages committed to the outbound queue, by channel.";
    OutboundQueueAgeSeconds => "coexist_outbound_queue_age_seconds", Histogram, "Time an outbound message waited in its lane before it was sent.";
    OutboundSendSeconds => "coexist_outbound_send_seconds", Histogram, "Time of one send attempt (rate slot, claim, HTTP request).";
    OutboundLaneWaits => "coexist_outbound_lane_waits_total", Counter, "Lanes set aside until later, by channel and reason (pair_gap, rate, backoff, in_flight).";
}

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
    let mut h = crate::clock::Fnv64::default();
    h.write(name.as_bytes()).write(&[0xff]);
    for (k, v) in labels {
        h.write(k.as_bytes()).write(&[0xfe]);
        h.write(v.as_bytes()).write(&[0xfd]);
    }
    h.finish()
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

    pub fn inc(&self, metric: Metric, labels: &[(&str, &str)]) {
        self.add(metric, labels, 1);
    }

    pub fn add(&self, metric: Metric, labels: &[(&str, &str)], n: u64) {
        debug_assert_eq!(metric.kind(), Kind::Counter, "{metric:?}");
        get_or_insert(&self.inner.counters, metric.name(), labels).fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_gauge(&self, metric: Metric, labels: &[(&str, &str)], value: u64) {
        debug_assert_eq!(metric.kind(), Kind::Gauge, "{metric:?}");
        get_or_insert(&self.inner.gauges, metric.name(), labels).store(value, Ordering::Relaxed);
    }

    pub fn observe_seconds(&self, metric: Metric, labels: &[(&str, &str)], seconds: f64) {
        debug_assert_eq!(metric.kind(), Kind::Histogram, "{metric:?}");
        let h = get_or_insert(&self.inner.histograms, metric.name(), labels);
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Current value of a counter series (tests and `queues` use it).
    pub fn counter(&self, metric: Metric, labels: &[(&str, &str)]) -> u64 {
        self.inner
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&series_hash(metric.name(), labels))
            .map_or(0, |(_, c)| c.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut described = std::collections::HashSet::new();
        let mut describe = |out: &mut String, series_key: &str| {
            let name = series_key.split('{').next().unwrap_or(series_key);
            if described.insert(name.to_string()) {
                if let Some(m) = Metric::ALL.iter().find(|m| m.name() == name) {
                    let (help, kind) = (m.help(), m.kind().as_str());
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
            Metric::HttpRequests,
            &[("route", "meta"), ("outcome", "ok")],
        );
        m.inc(
            Metric::HttpRequests,
            &[("route", "meta"), ("outcome", "ok")],
        );
        m.observe_seconds(Metric::EnqueueSeconds, &[], 0.0003);
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
                Metric::HttpRequests,
                &[("route", "meta"), ("outcome", "ok")]
            ),
            2
        );
    }

    /// Every metric, exported once, comes with `# HELP` and `# TYPE` of its kind and parses
    /// with a Prometheus text-format parser (`prometheus-parse`), labels and values intact.
    #[test]
    fn every_metric_exports_help_and_type_and_parses() {
        let m = Metrics::new();
        for (i, metric) in Metric::ALL.iter().enumerate() {
            // (prometheus-parse keeps escapes in label values as written: plain ones here;
            // `label_values_are_escaped` covers escaping.)
            let labels = [("channel", "shop-A"), ("n", "1")];
            match metric.kind() {
                Kind::Counter => m.add(*metric, &labels, i as u64 + 1),
                Kind::Gauge => m.set_gauge(*metric, &labels, i as u64 + 1),
                Kind::Histogram => m.observe_seconds(*metric, &labels, 0.002),
            }
        }
        let text = m.render();
        let names: std::collections::HashSet<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len(), "names are unique");
        for metric in Metric::ALL {
            let name = metric.name();
            assert!(
                text.contains(&format!("# HELP {name} {}\n", metric.help())),
                "{name}: no HELP\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} {}\n", metric.kind().as_str())),
                "{name}: no TYPE\n{text}"
            );
        }
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        for (i, metric) in Metric::ALL.iter().enumerate() {
            let samples: Vec<_> = scrape
                .samples
                .iter()
                .filter(|s| s.metric == metric.name())
                .collect();
            assert!(!samples.is_empty(), "{metric:?} not parsed back");
            assert_eq!(samples[0].labels.get("channel"), Some("shop-A"));
            match (&samples[0].value, metric.kind()) {
                (prometheus_parse::Value::Counter(v), Kind::Counter)
                | (prometheus_parse::Value::Gauge(v), Kind::Gauge) => {
                    assert_eq!(*v, i as f64 + 1.0, "{metric:?}")
                }
                (prometheus_parse::Value::Histogram(buckets), Kind::Histogram) => {
                    let le_0025 = buckets.iter().find(|b| b.less_than == 0.0025).unwrap();
                    assert_eq!(le_0025.count, 1.0, "{metric:?}");
                }
                (v, k) => panic!("{metric:?}: parsed as {v:?}, declared {k:?}"),
            }
            assert_eq!(
                scrape.docs.get(metric.name()).map(String::as_str),
                Some(metric.help())
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(series("x", &[("a", "q\"b")]), "x{a=\"q\\\"b\"}");
    }
}
