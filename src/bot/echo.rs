//! The quick start's bot: answers every text message with the same text.

use super::{Bot, BoxFuture, Context, HandlerError};
use crate::event::EventType;

pub struct EchoBot;

impl Bot for EchoBot {
    fn handle<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if ctx.event_type() != EventType::Message {
                return Ok(());
            }
            if let Some(text) = ctx.text().map(str::to_owned) {
                if let Err(e) = ctx.reply(text) {
                    tracing::info!(channel = ctx.channel_id(), error = %e, "echo bot: reply not allowed");
                }
            }
            Ok(())
        })
    }
}
