//! Routing: which configured channel an event belongs to, and which partition of it.
//! Pure functions over the config; no I/O.

use crate::channel::{ChannelKind, UNROUTED_CHANNEL};
use crate::config::{ChannelConfig, Config};
use crate::event::Event;
use std::collections::HashMap;

/// A stable 64-bit FNV-1a hash ([`crate::clock::Fnv64`]): every ingress process must send one
/// conversation to the same partition.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    crate::clock::Fnv64::default().write(bytes).finish()
}

/// The partition of a conversation in a channel with `partitions` partitions.
pub fn partition_of(conversation: &str, partitions: u32) -> u32 {
    (fnv1a64(conversation.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// Where an event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub channel: String,
    pub kind: ChannelKind,
    pub partitions: u32,
    pub routed: bool,
}

/// Maps payload addresses (Meta `phone_number_id`, WAHA session or path) to channels.
#[derive(Clone, Debug, Default)]
pub struct Router {
    by_phone_number_id: HashMap<String, Route>,
    by_id: HashMap<String, Route>,
    /// Account-level Meta changes name a WABA, not a number: they go to the first WABA channel.
    first_waba: Option<Route>,
    /// WAHA session name → its Personal channel, and the first Personal channel.
    by_session: HashMap<String, Route>,
    first_personal: Option<Route>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut r = Router::default();
        for c in &config.channels {
            let route = route_of(c);
            if let Some(pid) = &c.phone_number_id {
                r.by_phone_number_id.insert(pid.clone(), route.clone());
            }
            if c.kind == ChannelKind::Waba && r.first_waba.is_none() {
                r.first_waba = Some(route.clone());
            }
            if c.kind == ChannelKind::Personal {
                if let Some(session) = &c.session {
                    r.by_session.entry(session.clone()).or_insert(route.clone());
                }
                if r.first_personal.is_none() {
                    r.first_personal = Some(route.clone());
                }
            }
            r.by_id.insert(c.id.clone(), route);
        }
        r
    }

    /// The route of a configured channel id (WAHA posts name it in the path).
    pub fn channel(&self, id: &str) -> Option<&Route> {
        self.by_id.get(id)
    }

    /// Routes an event parsed from a Meta webhook, rewriting its `channel` to the configured id.
    /// A number no channel claims goes to the unrouted stream, never nowhere.
    pub fn route_meta(&self, event: &mut Event) -> Route {
        let route = if let Some(route) = self.by_phone_number_id.get(&event.channel) {
            route.clone()
        } else if event.channel.starts_with("waba:") && self.first_waba.is_some() {
            self.first_waba.clone().unwrap()
        } else {
            unrouted(event.kind)
        };
        event.channel = route.channel.clone();
        route
    }

    /// Routes an event parsed from a personal gateway webhook posted to `/webhooks/personal/{channel}`.
    pub fn route_personal(&self, channel: &str, event: &mut Event) -> Option<Route> {
        let route = self
            .by_id
            .get(channel)
            .filter(|r| r.kind == ChannelKind::Personal)?
            .clone();
        event.channel = route.channel.clone();
        Some(route)
    }
}

impl Router {
    /// Routes a WAHA event by its session name (what the parser leaves in `channel` when no
    /// route path named the channel: `coexist parse --config`, the test kit): the Personal
    /// channel of that session, else the first Personal channel; `None` without one.
    pub fn route_waha_session(&self, event: &mut Event) -> Option<Route> {
        let route = self
            .by_session
            .get(&event.channel)
            .or(self.first_personal.as_ref())?
            .clone();
        event.channel = route.channel.clone();
        Some(route)
    }
}

fn route_of(c: &ChannelConfig) -> Route {
    Route {
        channel: c.id.clone(),
        kind: c.kind,
        partitions: c.partitions,
        routed: true,
    }
}

fn unrouted(kind: ChannelKind) -> Route {
    Route {
        channel: UNROUTED_CHANNEL.to_string(),
        kind,
        partitions: 1,
        routed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        // Known FNV-1a 64 answers: these must never change, or partitions move.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn partitions_spread_and_stay_in_range() {
        let mut seen = [0u32; 4];
        for i in 0..1000 {
            let p = partition_of(&format!("1555{i:07}"), 4);
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
        assert_eq!(partition_of("x", 1), 0);
    }
}
