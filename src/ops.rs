//! The operator's views (`coexist queues`, `coexist dlq list`): fetched once into typed rows,
//! then rendered as a table for people or JSON for scripts. Rendering is pure and tested here.

use crate::backend::Backend;
use crate::channel::ChannelKind;
use crate::config::Config;
use crate::outbound::queue::{OutQueueBackend, OutStats};
use crate::outbound::{OutboxBackend, RateBackend};
use crate::queue::QueueBackend;
use crate::queue::{DeadLetter, PartitionStats, QueueError};
use serde::Serialize;
use std::fmt::Write as _;

/// One partition of one channel, with its channel's health and outbound side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionRow {
    pub channel: String,
    pub kind: ChannelKind,
    pub partition: u32,
    #[serde(flatten)]
    pub stats: PartitionStats,
    /// `ok`, or why the channel's credentials were refused (Graph 190, WAHA 401).
    pub health: String,
    pub outbound: OutStats,
    /// Meta's messaging limit in force (customers reached outside a window per 24 h): the one
    /// a `phone_number_quality_update` announced, else `messaging_limit_per_day`; `null` = none.
    pub messaging_limit: Option<u32>,
}

/// What `coexist queues` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueuesReport {
    pub partitions: Vec<PartitionRow>,
    /// Each channel's outbound side and messaging limit, once.
    pub outbound: Vec<(String, OutStats, Option<u32>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("outbound queue: {0}")]
    Outbound(String),
    #[error("outbox: {0}")]
    Outbox(String),
}

/// Reads every configured channel's partitions, health and outbound side.
pub async fn queues_report(
    config: &Config,
    backend: &Backend,
    now_ms: i64,
) -> Result<QueuesReport, OpsError> {
    // Channel health lives in the workers' outbox (e.g. "unhealthy" after Graph error 190).
    let outbox = backend.shared_outbox();
    let out = crate::runtime::out_queue(config, backend);
    let rate = backend.rate_limiter();
    let queue = backend.queue();
    let mut report = QueuesReport::default();
    for channel in &config.channels {
        let health = match &outbox {
            Some(o) => o
                .health(&channel.id, now_ms)
                .await
                .map_err(|e| OpsError::Outbox(e.to_string()))?
                .unwrap_or_else(|| "ok".into()),
            None => "ok".into(),
        };
        let outbound = match &out {
            Some(o) => o
                .stats(&channel.id, now_ms)
                .await
                .map_err(|e| OpsError::Outbound(e.to_string()))?,
            None => OutStats::default(),
        };
        let announced = rate
            .announced_limit(&channel.id, channel.portfolio.as_deref())
            .await
            .map_err(|e| OpsError::Outbound(e.to_string()))?;
        let messaging_limit = match (channel.kind, announced) {
            (ChannelKind::Personal, _) => None,
            (_, Some(n)) => (n > 0).then_some(n),
            (_, None) => {
                (channel.messaging_limit_per_day > 0).then_some(channel.messaging_limit_per_day)
            }
        };
        for partition in 0..channel.partitions {
            report.partitions.push(PartitionRow {
                channel: channel.id.clone(),
                kind: channel.kind,
                partition,
                stats: queue.partition_stats(&channel.id, partition).await?,
                health: health.clone(),
                outbound: outbound.clone(),
                messaging_limit,
            });
        }
        report
            .outbound
            .push((channel.id.clone(), outbound, messaging_limit));
    }
    Ok(report)
}

impl QueuesReport {
    /// `coexist queues --json`: one object per partition.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.partitions).unwrap_or_default()
    }

    /// `coexist queues`: the partitions table, then the outbound table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:>4} {:>8} {:>8} {:>8} {:>6} {:>7}  {:<24} health",
            "channel", "kind", "part", "length", "pending", "lag", "dead", "timers", "lease owner"
        );
        for r in &self.partitions {
            let s = &r.stats;
            let _ = writeln!(
                out,
                "{:<20} {:<9} {:>4} {:>8} {:>8} {:>8} {:>6} {:>7}  {:<24} {}",
                r.channel,
                r.kind.to_string(),
                r.partition,
                s.length,
                s.pending,
                s.lag,
                s.dead,
                s.timers,
                s.lease_owner.as_deref().unwrap_or("-"),
                r.health
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>6} {:>6} {:>10} {:>9}  waiting",
            "outbound", "backlog", "ready", "busy", "oldest", "limit/24h"
        );
        for (channel, o, limit) in &self.outbound {
            let waiting: Vec<String> = o
                .waiting
                .iter()
                .map(|(why, n)| format!("{why}={n}"))
                .collect();
            let _ = writeln!(
                out,
                "{:<20} {:>8} {:>6} {:>6} {:>9.1}s {:>9}  {}",
                channel,
                o.backlog,
                o.lanes_ready,
                o.lanes_busy,
                o.oldest_ms as f64 / 1000.0,
                limit.map_or("-".to_string(), |n| n.to_string()),
                if waiting.is_empty() {
                    "-".to_string()
                } else {
                    waiting.join(" ")
                }
            );
        }
        out
    }
}

/// `coexist dlq list`: one line per dead letter, for people.
pub fn render_dead_letters(dead: &[DeadLetter]) -> String {
    let mut out = String::new();
    for d in dead {
        let _ = writeln!(
            out,
            "{}  partition {}  {}  error: {}",
            d.id, d.partition, d.conversation, d.error
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> QueuesReport {
        let outbound = OutStats {
            backlog: 3,
            lanes_ready: 1,
            lanes_busy: 1,
            waiting: [("pair_gap".to_string(), 2)].into_iter().collect(),
            oldest_ms: 1500,
        };
        QueuesReport {
            partitions: vec![PartitionRow {
                channel: "shop-waba".into(),
                kind: ChannelKind::Waba,
                partition: 2,
                stats: PartitionStats {
                    length: 7,
                    pending: 2,
                    lag: 5,
                    dead: 1,
                    lease_owner: Some("host-1-ab12".into()),
                    timers: 4,
                },
                health: "ok".into(),
                outbound: outbound.clone(),
                messaging_limit: Some(2000),
            }],
            outbound: vec![("shop-waba".into(), outbound, Some(2000))],
        }
    }

    #[test]
    fn the_table_shows_every_column() {
        let text = report().render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("channel "), "{text}");
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "shop-waba",
                "waba",
                "2",
                "7",
                "2",
                "5",
                "1",
                "4",
                "host-1-ab12",
                "ok"
            ]
        );
        let outbound: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            outbound,
            ["shop-waba", "3", "1", "1", "1.5s", "2000", "pair_gap=2"]
        );
    }

    #[test]
    fn json_keeps_the_fields_scripts_read() {
        let v = report().to_json();
        let row = &v[0];
        for (k, want) in [
            ("channel", serde_json::json!("shop-waba")),
            ("kind", serde_json::json!("waba")),
            ("partition", serde_json::json!(2)),
            ("length", serde_json::json!(7)),
            ("pending", serde_json::json!(2)),
            ("lag", serde_json::json!(5)),
            ("dead", serde_json::json!(1)),
            ("lease_owner", serde_json::json!("host-1-ab12")),
            ("timers", serde_json::json!(4)),
            ("health", serde_json::json!("ok")),
            ("messaging_limit", serde_json::json!(2000)),
        ] {
            assert_eq!(row[k], want, "{k}: {row}");
        }
        assert_eq!(row["outbound"]["waiting"]["pair_gap"], 2);
    }
}
