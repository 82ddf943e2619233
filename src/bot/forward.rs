//! The forward bot: the plug for any chatbot framework, in any language.
//!
//! Each event is POSTed as the bare normalized event JSON with
//! `X-Coexist-Signature: sha256=<hex HMAC-SHA256 of the body>` and `X-Coexist-Event-Id`.
//! A 2xx answer may carry `{"replies":[…], "state": <json>, "handover": {"seconds": N} | "resume"}`
//! (an empty body or `{}`: nothing to do). Replies go through the same sending rules as a
//! Rust bot's. Non-2xx or timeout: the worker retries (the partition waits), then dead-letters.

use super::{Bot, BoxFuture, Context, HandlerError};
use crate::config::Secret;
use crate::outbound::Reply;
use crate::verify::{header_value, Algorithm};
use serde::Deserialize;
use std::time::Duration;

pub struct ForwardBot {
    url: String,
    secret: Secret,
    worker_id: String,
    http: reqwest::Client,
    limits: AnswerLimits,
}

/// The body a forward endpoint may answer with.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ForwardResponse {
    pub replies: Vec<Reply>,
    /// Replaces the conversation's bot state (any JSON); `null` clears it: `None` when the key
    /// is absent, `Some(Value::Null)` for an explicit `null` (a plain `Option<Value>` would
    /// read both as `None`, and `"state": null` would never clear anything).
    #[serde(default, deserialize_with = "deserialize_present")]
    pub state: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "deserialize_handover")]
    pub handover: Option<HandoverAnswer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverAnswer {
    Pause(Duration),
    Resume,
}

fn deserialize_present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

fn deserialize_handover<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<HandoverAnswer>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Word(String),
        Pause { seconds: u64 },
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::Word(w)) if w == "resume" => Some(HandoverAnswer::Resume),
        Some(Raw::Word(w)) => {
            return Err(serde::de::Error::custom(format!(
                "unknown handover {w:?} (expected \"resume\" or {{\"seconds\": N}})"
            )))
        }
        Some(Raw::Pause { seconds }) => Some(HandoverAnswer::Pause(Duration::from_secs(seconds))),
    })
}

/// What a forward bot's answer may be at most: a broken or hostile bot answering 1 GB, or
/// 10,000 replies to one customer, is refused (the event is dead-lettered with the reason and
/// nothing is sent) instead of taking the worker down or flooding the customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerLimits {
    pub max_bytes: usize,
    pub max_replies: usize,
}

impl Default for AnswerLimits {
    fn default() -> Self {
        AnswerLimits {
            max_bytes: crate::config::defaults::MAX_ANSWER_BYTES,
            max_replies: crate::config::defaults::MAX_REPLIES,
        }
    }
}

impl AnswerLimits {
    /// Refuses an answer with more replies than allowed.
    pub fn check(&self, answer: &ForwardResponse) -> Result<(), String> {
        if answer.replies.len() > self.max_replies {
            return Err(format!(
                "forward answer asks for {} replies to one event; at most {} ([bot] max_replies)",
                answer.replies.len(),
                self.max_replies
            ));
        }
        Ok(())
    }
}

impl ForwardBot {
    /// The answer limits in force (`[bot] max_answer_bytes`, `max_replies`).
    pub fn with_limits(mut self, limits: AnswerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads a 2xx body, refusing it as soon as it passes `max_bytes` (declared or streamed).
    async fn read_answer(&self, mut response: reqwest::Response) -> Result<Vec<u8>, HandlerError> {
        let max = self.limits.max_bytes;
        let too_large = || {
            HandlerError::give_up(format!(
                "forward answer larger than {max} bytes ([bot] max_answer_bytes)"
            ))
        };
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| HandlerError::retry(format!("reading forward answer: {}", describe(e))))?
        {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    pub fn new(url: String, secret: Secret, timeout: Duration, worker_id: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .expect("a plain HTTP client always builds");
        ForwardBot {
            url,
            secret,
            worker_id,
            http,
            limits: AnswerLimits::default(),
        }
    }
}

impl Bot for ForwardBot {
    fn handle<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let body = ctx.event.to_json();
            let signature = header_value(
                Algorithm::Sha256,
                self.secret.expose().as_bytes(),
                body.as_bytes(),
            );
            let response = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-coexist-signature", signature)
                .header("x-coexist-event-id", &ctx.event.id)
                .header("x-coexist-worker", &self.worker_id)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    HandlerError::retry(format!("forward to {}: {}", self.url, describe(e)))
                })?;
            let status = response.status();
            if !status.is_success() {
                return Err(HandlerError::retry(format!(
                    "forward endpoint answered {status}"
                )));
            }
            let bytes = self.read_answer(response).await?;
            let answer = parse_answer(&bytes)
                .map_err(|e| HandlerError::give_up(format!("forward answer is not valid: {e}")))?;
            self.limits.check(&answer).map_err(HandlerError::give_up)?;
            apply_answer(ctx, answer);
            Ok(())
        })
    }
}

/// A short reason for a failed request (reqwest's Display repeats the URL, which we name already).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.without_url().to_string()
    }
}

/// Parses a forward endpoint's 2xx body; empty means "nothing to do".
pub fn parse_answer(body: &[u8]) -> Result<ForwardResponse, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ForwardResponse::default());
    }
    serde_json::from_slice(body)
}

/// Applies an answer through the context, so its replies meet the same rules as a Rust bot's.
/// A reply the rules refuse is logged and skipped: retrying would not make it allowed.
pub fn apply_answer(ctx: &mut Context, answer: ForwardResponse) {
    if let Some(state) = answer.state {
        if state.is_null() {
            ctx.clear_state();
        } else if let Err(e) = ctx.set_state(&state) {
            tracing::warn!(error = %e, "forward answer: state not stored");
        }
    }
    match answer.handover {
        Some(HandoverAnswer::Pause(d)) => ctx.handover(d),
        Some(HandoverAnswer::Resume) => ctx.resume(),
        None => {}
    }
    for reply in answer.replies {
        if let Err(e) = ctx.send(reply) {
            tracing::warn!(channel = ctx.channel_id(), event = %ctx.event.id, error = %e, "forward answer: reply refused by the sending rules");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_replies_than_allowed_are_refused_whole() {
        let limits = AnswerLimits {
            max_bytes: 1024,
            max_replies: 2,
        };
        let two =
            parse_answer(br#"{"replies":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#)
                .unwrap();
        assert_eq!(limits.check(&two), Ok(()));
        let three = parse_answer(br#"{"replies":[{"type":"text","text":"a"},{"type":"text","text":"b"},{"type":"text","text":"c"}]}"#).unwrap();
        let e = limits.check(&three).unwrap_err();
        assert!(e.contains("3 replies") && e.contains("at most 2"), "{e}");
    }

    #[test]
    fn state_null_is_not_state_absent() {
        assert_eq!(
            parse_answer(br#"{"state":null}"#).unwrap().state,
            Some(serde_json::Value::Null)
        );
        assert_eq!(parse_answer(br#"{"replies":[]}"#).unwrap().state, None);
        assert_eq!(parse_answer(b"").unwrap().state, None);
        assert_eq!(
            parse_answer(br#"{"state":{"step":1}}"#).unwrap().state,
            Some(serde_json::json!({"step":1}))
        );
    }
}
