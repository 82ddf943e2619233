//! What bot authors touch: the [`Bot`] trait, the per-event [`Context`], and the handler
//! results that tell the worker to retry or give up.
//!
//! Two bots ship with coexist: [`echo::EchoBot`] (the quick start) and
//! [`forward::ForwardBot`] (POSTs each event to any HTTP endpoint, in any language).
//!
//! Your own bot is a [`Router`]: handlers registered by event type, each behind a composable
//! [`Filter`], checked when the router is built ("fail at start-up, not at the first event"),
//! and unit-tested without Redis or network with [`testkit::TestKit`]:
//!
//! ```
//! use coexist::bot::{handler, Filter, Router};
//!
//! let bot = Router::builder()
//!     .on_text(Filter::regex("(?i)^(hi|hello)\\b"), handler!(|ctx| async move {
//!         ctx.reply("Hello! Type *menu* to see what I can do.")?;
//!         Ok(())
//!     }))
//!     .on_button(Filter::button("talk-to-human"), handler!(|ctx| async move {
//!         ctx.reply("A person will answer shortly.")?;
//!         ctx.handover(std::time::Duration::from_secs(3600));
//!         Ok(())
//!     }))
//!     .build()
//!     .expect("handlers are valid");
//! # let _ = bot;
//! ```

pub mod context;
pub mod echo;
pub mod filter;
pub mod forward;
pub mod router;
pub mod testkit;

pub use crate::handler;
pub use context::{Context, SendRuleError};
pub use filter::Filter;
pub use router::{
    handler_fn, BuildError, Flow, Handler, HandlerFn, HandlerResult, On, Router, RouterBuilder,
};

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

/// A reply the sending rules refused: retrying cannot make it allowed, so `?` gives up on the
/// event (it is dead-lettered with the reason). Match the error instead to recover, e.g. send
/// a template when the window is closed.
impl From<SendRuleError> for HandlerError {
    fn from(e: SendRuleError) -> Self {
        HandlerError::GiveUp(format!("reply refused: {e}"))
    }
}

/// Bot state that does not serialize will not serialize on a retry either.
impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        HandlerError::GiveUp(format!("bot state: {e}"))
    }
}

/// A media download or upload that failed: a network error or 5xx is worth another try,
/// an expired or refused media is not.
impl From<crate::media::MediaError> for HandlerError {
    fn from(e: crate::media::MediaError) -> Self {
        if e.is_retryable() {
            HandlerError::Retry(format!("media: {e}"))
        } else {
            HandlerError::GiveUp(format!("media: {e}"))
        }
    }
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
