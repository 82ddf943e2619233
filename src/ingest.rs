//! The ingress pipeline without HTTP: verify → parse → route → enqueue.
//!
//! `ingress` (actix-web) only turns requests into calls here and errors into status codes,
//! so every rule of accepting a webhook is testable without a server.

use crate::config::{Config, Secret};
use crate::event::Event;
use crate::event::EventType;
use crate::metrics::{Metric, Metrics};
use crate::outbound::{Outbox, OutboxBackend};
use crate::queue::QueueBackend;
use crate::queue::{Enqueued, NewEvent, Queue, QueueError};
use crate::routing::{Route, Router};
use crate::verify::{self, SignatureError};
use crate::wire::{self, ParseError};
use std::collections::HashMap;
use std::time::Instant;

/// Why a webhook was not accepted. Each maps to one HTTP status in `ingress`.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// 401 (missing) or 403 (wrong): nothing enqueued.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// 400: signed correctly but not a webhook we can read.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// 404: `/webhooks/personal/{channel}` names no configured personal channel.
    #[error("no personal channel named {0:?}")]
    UnknownChannel(String),
    /// 503: the queue did not confirm; the sender must retry.
    #[error("queue unavailable: {0}")]
    Unavailable(#[from] QueueError),
}

/// What a webhook turned into.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub enqueued: usize,
    pub duplicates: usize,
    pub unrouted: usize,
}

/// Everything ingress needs, shared by all HTTP workers.
#[derive(Clone)]
pub struct Ingest {
    router: Router,
    queue: Queue,
    meta_secrets: Vec<Secret>,
    verify_token: Option<Secret>,
    personal_secrets: HashMap<String, Vec<Secret>>,
    metrics: Metrics,
    /// Where statuses of our own sends are recorded as soon as they arrive (see `enqueue`).
    outbox: Option<Outbox>,
}

pub use crate::clock::now_ms;

impl Ingest {
    pub fn new(config: &Config, queue: Queue, metrics: Metrics) -> Self {
        Ingest {
            router: Router::new(config),
            queue,
            meta_secrets: config.meta.app_secrets.clone(),
            verify_token: config.meta.verify_token.clone(),
            personal_secrets: config
                .channels
                .iter()
                .map(|c| (c.id.clone(), c.webhook_secrets.clone()))
                .collect(),
            metrics,
            outbox: None,
        }
    }

    /// Records statuses that carry our outbox key (`biz_opaque_callback_data`) in `outbox` as
    /// they arrive. A worker recovering an in-flight send after a crash waits for exactly this
    /// signal; the status event itself sits behind the blocked event in the partition, so
    /// ingress is the only place that can give it in time.
    pub fn with_outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Meta's subscription handshake: the challenge to echo, or `None` (answer 403).
    pub fn handshake(
        &self,
        mode: Option<&str>,
        token: Option<&str>,
        challenge: Option<&str>,
    ) -> Option<String> {
        let expected = self.verify_token.as_ref()?;
        let token = token?;
        if mode != Some("subscribe")
            || !verify::constant_time_eq(token.as_bytes(), expected.expose().as_bytes())
        {
            return None;
        }
        Some(challenge.unwrap_or_default().to_string())
    }

    /// A `POST /webhooks/meta`: `signature` is the `X-Hub-Signature-256` header value.
    pub async fn accept_meta(
        &self,
        signature: Option<&[u8]>,
        body: &[u8],
    ) -> Result<Accepted, IngestError> {
        verify::verify_meta(signature, body, &self.meta_secrets).inspect_err(|_| {
            self.metrics
                .inc(Metric::SignatureFailures, &[("route", "meta")]);
        })?;
        let mut events = wire::meta::parse(body)?;
        let routes: Vec<Route> = events
            .iter_mut()
            .map(|e| self.router.route_meta(e))
            .collect();
        self.enqueue(events, routes).await
    }

    /// A `POST /webhooks/personal/{channel}`: `hmac`/`algorithm` are WAHA's `X-Webhook-Hmac`
    /// and `X-Webhook-Hmac-Algorithm` header values.
    pub async fn accept_personal(
        &self,
        channel: &str,
        hmac: Option<&[u8]>,
        algorithm: Option<&[u8]>,
        body: &[u8],
    ) -> Result<Accepted, IngestError> {
        let secrets = self
            .personal_secrets
            .get(channel)
            .filter(|_| {
                self.router
                    .channel(channel)
                    .is_some_and(|r| r.kind == crate::ChannelKind::Personal)
            })
            .ok_or_else(|| IngestError::UnknownChannel(channel.to_string()))?;
        verify::verify_waha(hmac, algorithm, body, secrets).inspect_err(|_| {
            self.metrics
                .inc(Metric::SignatureFailures, &[("route", "personal")]);
        })?;
        let mut events = wire::waha::parse(body)?;
        let mut routes = Vec::with_capacity(events.len());
        for e in events.iter_mut() {
            routes.push(
                self.router
                    .route_personal(channel, e)
                    .ok_or_else(|| IngestError::UnknownChannel(channel.to_string()))?,
            );
        }
        self.enqueue(events, routes).await
    }

    async fn enqueue(
        &self,
        mut events: Vec<Event>,
        routes: Vec<Route>,
    ) -> Result<Accepted, IngestError> {
        let received_at = now_ms();
        let batch: Vec<NewEvent> = events
            .iter_mut()
            .zip(&routes)
            .map(|(e, r)| to_new_event(e, r, received_at))
            .collect();
        let started = Instant::now();
        let outcomes = self.queue.enqueue_owned(batch).await?;
        self.metrics
            .observe_seconds(Metric::EnqueueSeconds, &[], started.elapsed().as_secs_f64());
        let mut accepted = Accepted::default();
        for ((outcome, event), route) in outcomes.iter().zip(&events).zip(&routes) {
            match outcome {
                Enqueued::Added { .. } => {
                    accepted.enqueued += 1;
                    self.metrics.inc(
                        Metric::EventsEnqueued,
                        &[
                            ("channel", &route.channel),
                            ("type", event.event_type.as_str()),
                        ],
                    );
                    if !route.routed {
                        accepted.unrouted += 1;
                        self.metrics.inc(Metric::EventsUnrouted, &[]);
                    }
                }
                Enqueued::Duplicate => {
                    accepted.duplicates += 1;
                    self.metrics
                        .inc(Metric::EventsDuplicate, &[("channel", &route.channel)]);
                }
            }
        }
        self.record_own_statuses(&events, &routes, received_at)
            .await;
        Ok(accepted)
    }
}

impl Ingest {
    async fn record_own_statuses(&self, events: &[Event], routes: &[Route], now_ms: i64) {
        let Some(outbox) = &self.outbox else { return };
        for (event, route) in events.iter().zip(routes) {
            let Some(status) = event
                .status
                .as_ref()
                .filter(|_| event.event_type == EventType::Status)
            else {
                continue;
            };
            let Some(key) = &status.biz_opaque_callback_data else {
                continue;
            };
            // Best effort: the event is durably queued already; without this mark a recovering
            // worker only waits its bounded time before resending.
            if let Err(e) = outbox
                .mark_status_seen(&route.channel, key, &status.message_id, now_ms)
                .await
            {
                tracing::warn!(channel = %route.channel, error = %e, "could not record a status in the outbox");
            }
        }
    }
}

/// The queue's view of a routed event: its JSON, with `received_at` stamped.
pub fn to_new_event(event: &mut Event, route: &Route, received_at: i64) -> NewEvent {
    event.received_at = Some(received_at);
    NewEvent {
        channel: route.channel.clone(),
        partitions: route.partitions,
        id: event.id.clone(),
        payload: event.to_json(),
        contact_ids: contact_ids(event),
    }
}

/// Ids that name the customer, preferred first; the conversation alone when the payload has
/// no structured contact; none for events the parser put in no conversation (account-level
/// events, a contact's Story, a Channel post: their author must not pull them into the
/// author's own chat).
pub fn contact_ids(event: &Event) -> Vec<String> {
    if event.conversation.is_empty() {
        return Vec::new();
    }
    let mut ids: Vec<String> = event.contact.ids().map(str::to_string).collect();
    // The conversation key chosen by the parser goes first.
    match ids.iter().position(|i| *i == event.conversation) {
        Some(pos) => {
            let conv = ids.remove(pos);
            ids.insert(0, conv);
        }
        None if !event.conversation.is_empty() => ids.insert(0, event.conversation.clone()),
        None => {}
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelKind;
    use crate::event::{Contact, EventType};

    fn ev(conv: &str, contact: Contact) -> Event {
        Event {
            id: "x".into(),
            channel: "c".into(),
            kind: ChannelKind::Waba,
            conversation: conv.into(),
            event_type: EventType::Message,
            at: 0,
            received_at: None,
            contact,
            message: None,
            status: None,
            field: None,
            timer: None,
            outbound: None,
            call: None,
            raw: serde_json::Value::Null,
        }
    }

    #[test]
    fn contact_ids_put_the_conversation_first() {
        let c = Contact {
            wa_id: Some("1555".into()),
            user_id: Some("US.9".into()),
            ..Default::default()
        };
        assert_eq!(contact_ids(&ev("1555", c.clone())), vec!["1555", "US.9"]);
        assert_eq!(contact_ids(&ev("US.9", c)), vec!["US.9", "1555"]);
        assert_eq!(
            contact_ids(&ev("chat@s.whatsapp.net", Contact::default())),
            vec!["chat@s.whatsapp.net"]
        );
        assert!(contact_ids(&ev("", Contact::default())).is_empty());
        let author = Contact {
            phone_jid: Some("1555@s.whatsapp.net".into()),
            ..Default::default()
        };
        assert!(
            contact_ids(&ev("", author)).is_empty(),
            "no conversation: the author does not make one"
        );
    }
}
