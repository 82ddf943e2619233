//! The outbox in memory: the Redis backend's twin for the single-process mode and the tests.
//! Its keys and values are the strings Redis would hold; each step decides what the matching
//! `lua/outbox_*.lua` script decides, directly in [`OutboxState`]s, and never fails.
//!
//! Time: values expire against the `now_ms` the caller passes. One `std::sync::Mutex` guards
//! the state; it is never held across an `.await`.

use super::{
    audit_entry, in_flight, message_reference, new_marker, sent_ref, sent_value, unhealthy_value,
    OutboxBackend, OutboxError, OutboxOptions, OutboxState, SentRef,
};
use crate::keys::Keys;
use crate::outbound::message::{OutgoingMessage, Sent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The in-memory outbox. Cloning shares the state.
#[derive(Clone)]
pub struct MemoryOutbox {
    pub(super) keys: Keys,
    options: OutboxOptions,
    state: Arc<Mutex<MemoryState>>,
}

/// The twin's data, keyed by the same strings as the Redis keys.
#[derive(Debug, Default)]
struct MemoryState {
    /// key → (value, expires at ms)
    values: HashMap<String, (String, i64)>,
    /// audit stream key → entries
    logs: HashMap<String, Vec<Vec<(String, String)>>>,
    sweep: crate::clock::SweepSchedule,
}

impl MemoryState {
    fn get(&self, key: &str, now_ms: i64) -> Option<&str> {
        self.values
            .get(key)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(v, _)| v.as_str())
    }

    /// Deletes `key` if it holds our claim's `marker`; whether it did.
    fn remove_own(&mut self, key: &str, marker: &str, now_ms: i64) -> bool {
        let ours = self.get(key, now_ms) == Some(marker);
        if ours {
            self.values.remove(key);
        }
        ours
    }

    fn set(&mut self, key: String, value: String, ttl_ms: u64, now_ms: i64) {
        if self.sweep.due(self.values.len(), 4096) {
            self.values.retain(|_, (_, exp)| *exp > now_ms);
            self.sweep.swept(self.values.len());
        }
        let exp = now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        self.values.insert(key, (value, exp));
    }

    fn log(&mut self, key: String, entry: Vec<(String, String)>, maxlen: u64) {
        let log = self.logs.entry(key).or_default();
        log.push(entry);
        let max = usize::try_from(maxlen).unwrap_or(usize::MAX);
        if max > 0 && log.len() > max {
            let extra = log.len() - max;
            log.drain(..extra);
        }
    }
}

/// What a claim finds in an outbox key's value it does not take (`outbox_claim.lua`'s
/// `{"sent", id}`, `{"failed", code}` and `{"pending", value}`).
fn standing(value: &str) -> OutboxState {
    if let Some(message_id) = value.strip_prefix("sent:") {
        OutboxState::AlreadySent(message_id.to_string())
    } else if let Some(code) = value.strip_prefix("failed:") {
        OutboxState::GivenUp(code.to_string())
    } else {
        in_flight(value.to_string())
    }
}

impl MemoryOutbox {
    pub fn new(keys: Keys, options: OutboxOptions) -> Self {
        MemoryOutbox {
            keys,
            options,
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The audit entries of a channel (the Redis backend: `XRANGE keys.outbox(ch)`).
    pub fn log(&self, channel: &str) -> Vec<Vec<(String, String)>> {
        self.state()
            .logs
            .get(&self.keys.outbox(channel))
            .cloned()
            .unwrap_or_default()
    }

    /// `outbox_claim.lua`: the key is ours when free or still holding `expected` (a marker
    /// seen before, to take over; empty to claim only a free key).
    fn claim(&self, msg: &OutgoingMessage, expected: &str, now_ms: i64) -> OutboxState {
        let key = self.keys.sent(&msg.channel, &msg.outbox_key);
        let mut st = self.state();
        match st.get(&key, now_ms).map(standing) {
            Some(OutboxState::InFlight { marker, .. }) if marker == expected => {}
            Some(found) => return found,
            None => {}
        }
        let marker = new_marker(now_ms);
        st.set(key, marker.clone(), self.options.sent_ttl_ms, now_ms);
        OutboxState::Claimed { marker }
    }

    fn get_key(&self, key: &str, now_ms: i64) -> Option<String> {
        self.state().get(key, now_ms).map(str::to_owned)
    }
}

impl OutboxBackend for MemoryOutbox {
    async fn record(&self, msg: &OutgoingMessage, now_ms: i64) -> Result<OutboxState, OutboxError> {
        Ok(self.claim(msg, "", now_ms))
    }

    async fn take_over(
        &self,
        msg: &OutgoingMessage,
        seen_marker: &str,
        now_ms: i64,
    ) -> Result<OutboxState, OutboxError> {
        Ok(self.claim(msg, seen_marker, now_ms))
    }

    /// `outbox_sent.lua`.
    async fn mark_sent(
        &self,
        msg: &OutgoingMessage,
        sent: &Sent,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let ttl = self.options.sent_ttl_ms;
        let reference = message_reference(msg);
        let entry = audit_entry(msg, "sent", &sent.message_id, "", now_ms);
        let mut st = self.state();
        st.set(
            self.keys.sent(&msg.channel, &msg.outbox_key),
            sent_value(&sent.message_id),
            ttl,
            now_ms,
        );
        if !reference.is_empty() {
            let message_key = self.keys.sent_message(&msg.channel, &sent.message_id);
            st.set(message_key, reference, ttl, now_ms);
        }
        st.log(
            self.keys.outbox(&msg.channel),
            entry,
            self.options.audit_maxlen,
        );
        Ok(())
    }

    async fn log_outcome(
        &self,
        msg: &OutgoingMessage,
        outcome: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let entry = audit_entry(msg, outcome, "", error, now_ms);
        self.state().log(
            self.keys.outbox(&msg.channel),
            entry,
            self.options.audit_maxlen,
        );
        Ok(())
    }

    /// `outbox_give_up.lua`.
    async fn give_up(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        code: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let key = self.keys.sent(&msg.channel, &msg.outbox_key);
        let mut st = self.state();
        let ours = st.remove_own(&key, marker, now_ms);
        if ours {
            let ttl = self.options.sent_ttl_ms;
            st.set(key, format!("failed:{code}"), ttl, now_ms);
        }
        Ok(ours)
    }

    /// `outbox_release.lua`.
    async fn release(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let key = self.keys.sent(&msg.channel, &msg.outbox_key);
        Ok(self.state().remove_own(&key, marker, now_ms))
    }

    /// `outbox_status.lua`.
    async fn mark_status_seen(
        &self,
        channel: &str,
        outbox_key: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let key = self.keys.sent(channel, outbox_key);
        let mut st = self.state();
        if st.get(&key, now_ms).is_some_and(|v| v.starts_with("sent:")) {
            return Ok(false);
        }
        st.set(
            key,
            sent_value(message_id),
            self.options.sent_ttl_ms,
            now_ms,
        );
        Ok(true)
    }

    async fn get(
        &self,
        channel: &str,
        outbox_key: &str,
        now_ms: i64,
    ) -> Result<Option<String>, OutboxError> {
        Ok(self.get_key(&self.keys.sent(channel, outbox_key), now_ms))
    }

    async fn lookup_message(
        &self,
        channel: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<Option<SentRef>, OutboxError> {
        let key = self.keys.sent_message(channel, message_id);
        Ok(sent_ref(self.get_key(&key, now_ms)))
    }

    async fn set_unhealthy(
        &self,
        channel: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let value = unhealthy_value(reason, now_ms);
        self.state()
            .set(self.keys.health(channel), value, u64::MAX / 4, now_ms);
        Ok(())
    }

    async fn clear_health(&self, channel: &str) -> Result<(), OutboxError> {
        self.state().values.remove(&self.keys.health(channel));
        Ok(())
    }

    async fn health(&self, channel: &str, now_ms: i64) -> Result<Option<String>, OutboxError> {
        Ok(self.get_key(&self.keys.health(channel), now_ms))
    }
}
