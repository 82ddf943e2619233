//! What bot authors touch: the [`Bot`] trait, the per-event [`Context`], and the handler
//! results that tell the worker to retry or give up.
//!
//! Two bots ship with coexist: [`echo::EchoBot`] (the quick start) and
//! [`forward::ForwardBot`] (POSTs each event to any HTTP endpoint, in any language).

pub mod context;
pub mod echo;
pub mod forward;

pub use context::{Context, HandoverRequest, SendRuleError};

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so [`Bot`] stays object-safe (`Arc<dyn Bot>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a handler failed. The worker retries `Retry` with backoff while the partition waits
/// (order is kept) and dead-letters the event after the configured attempts; `GiveUp` goes to
/// the dead-letter stream at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    #[error("{0} (will retry)")]
    Retry(String),
    #[error("{0} (gave up)")]
    GiveUp(String),
}

impl HandlerError {
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        HandlerError::Retry(reason.to_string())
    }
    pub fn give_up(reason: impl std::fmt::Display) -> Self {
        HandlerError::GiveUp(reason.to_string())
    }
}

/// A bot: called once per event of a conversation, in order, one event at a time.
pub trait Bot: Send + Sync + 'static {
    fn handle<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// A bot that does nothing: state and windows are still kept (`[bot] mode = "none"`).
pub struct NoBot;

impl Bot for NoBot {
    fn handle<'a>(&'a self, _ctx: &'a mut Context) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}
