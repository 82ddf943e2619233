//! The echo bot, written with the router: every text message comes back as it was sent.
//!
//! ```sh
//! # one process: webhooks on [server] listen + worker + (dry-run) sender, in-memory queue
//! cargo run --example echo_bot -- --config examples/coexist.toml
//! # with Redis it is a worker; run `coexist serve` for the ingress, and as many of these as you like
//! cargo run --example echo_bot -- --config examples/coexist-redis.toml
//! ```

use clap::Parser;
use coexist::bot::{handler, BuildError, Filter, Router, SendRuleError};
use coexist::config::Config;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(about = "coexist echo bot (built with the router)")]
struct Args {
    #[arg(long)]
    config: PathBuf,
}

/// Echoes text; a reply the rules refuse (the WABA window is closed) is logged, not retried.
pub fn echo_bot() -> Result<Router, BuildError> {
    Router::builder()
        .on_text(
            Filter::any(),
            handler!(|ctx| async move {
                let text = ctx.text().unwrap_or_default().to_owned();
                match ctx.reply(text) {
                    Ok(()) => {}
                    Err(e @ SendRuleError::Rule(_)) => {
                        tracing::info!(channel = ctx.channel_id(), error = %e, "echo bot: reply not allowed")
                    }
                    Err(e) => return Err(e.into()),
                }
                Ok(())
            }),
        )
        .build()
}

fn main() -> anyhow::Result<()> {
    coexist::runtime::init_logging();
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    coexist::runtime::run_bot(&config, Arc::new(echo_bot()?))
}
