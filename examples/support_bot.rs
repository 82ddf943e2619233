//! A support bot: a menu, a typed dialogue, a follow-up before the 24 h window closes, a
//! template after it has closed, silence while a person answers from the phone, and a plain
//! numbered menu on WhatsApp Personal (no buttons there). Media both ways: "photo" gets a
//! picture of the product; a photo from the customer is downloaded and its caption echoed.
//!
//! ```sh
//! cargo run --example support_bot -- --config examples/coexist.toml         # ingress + worker
//! cargo run --example support_bot -- --config examples/coexist-redis.toml   # a worker on Redis
//! ```
//!
//! `tests/bot_framework.rs` drives this bot through `coexist::bot::testkit::TestKit`.

use clap::Parser;
use coexist::bot::{handler, BuildError, Context, Filter, HandlerError, Router};
use coexist::config::Config;
use coexist::media::MediaError;
use coexist::outbound::message::MediaSource;
use coexist::outbound::Reply;
use coexist::ChannelKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a conversation is. Stored as JSON with the conversation (`ctx.state` / `ctx.set_state`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Dialogue {
    /// Nothing asked yet.
    #[default]
    Start,
    /// The menu is shown; waiting for a choice.
    Menu,
    /// Asked for an order number.
    AwaitingOrder,
    /// The window was about to close and we asked whether the customer is still there.
    Reminded,
    /// The window closed before the customer answered; a template invited them back.
    Invited,
}

/// Template sent when the window has closed (must be approved in WhatsApp Manager).
pub const COME_BACK_TEMPLATE: &str = "support_come_back";
/// The product picture sent when a customer asks for a photo (any public HTTPS link works; an
/// id from `ctx.upload` or `POST /v1/channels/{channel}/media` too).
pub const PRODUCT_PHOTO_URL: &str = "https://example.com/img/blue-mug.jpg";

/// How long a person's answer from the phone, or "talk to a person", pauses the bot.
pub const HANDOVER: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    Order,
    Hours,
    Human,
}

const CHOICES: [(Choice, &str, &str); 3] = [
    (Choice::Order, "menu:order", "Where is my order?"),
    (Choice::Hours, "menu:hours", "Opening hours"),
    (Choice::Human, "menu:human", "Talk to a person"),
];

fn dialogue(ctx: &Context) -> Dialogue {
    ctx.state().unwrap_or_default()
}

/// Buttons on WABA; a numbered text menu on Personal, which has no buttons.
async fn show_menu(ctx: &mut Context) -> Result<(), HandlerError> {
    let greeting = match ctx.contact_name() {
        Some(name) => format!("Hi {name}! How can we help?"),
        None => "Hi! How can we help?".to_owned(),
    };
    match ctx.kind() {
        ChannelKind::Waba => {
            let buttons: Vec<(&str, &str)> =
                CHOICES.iter().map(|(_, id, title)| (*id, *title)).collect();
            ctx.send_buttons(greeting, &buttons)?;
        }
        ChannelKind::Personal => {
            let mut text = greeting;
            for (n, (_, _, title)) in CHOICES.iter().enumerate() {
                text.push_str(&format!("\n{}. {title}", n + 1));
            }
            text.push_str("\nReply with a number.");
            ctx.reply(text)?;
        }
    }
    ctx.set_state(&Dialogue::Menu)?;
    Ok(())
}

async fn choose(ctx: &mut Context, choice: Choice) -> Result<(), HandlerError> {
    match choice {
        Choice::Order => {
            ctx.reply("Please send your order number (e.g. 12345).")?;
            ctx.set_state(&Dialogue::AwaitingOrder)?;
        }
        Choice::Hours => {
            ctx.reply("We are open Monday to Saturday, 9:00 to 18:00.")?;
            ctx.set_state(&Dialogue::Start)?;
        }
        Choice::Human => {
            ctx.reply("A colleague will answer you here shortly.")?;
            ctx.set_state(&Dialogue::Start)?;
            ctx.handover(HANDOVER);
        }
    }
    Ok(())
}

/// "Can I see a photo?": the product picture, by link, with a caption.
async fn send_product_photo(ctx: &mut Context) -> Result<(), HandlerError> {
    ctx.send(Reply::Image {
        media: MediaSource::link(PRODUCT_PHOTO_URL),
        caption: Some("Our blue mug, 350 ml".into()),
    })?;
    Ok(())
}

/// A photo from the customer: downloaded (with the channel's credentials, through coexist),
/// then acknowledged with its size and caption. An expired photo is said so, not retried.
async fn echo_photo_caption(ctx: &mut Context) -> Result<(), HandlerError> {
    let caption = ctx.text().unwrap_or("").to_owned();
    match ctx.media().await {
        Ok(photo) => {
            let kb = photo.bytes.len().div_ceil(1024);
            let said = if caption.is_empty() {
                "no caption".to_string()
            } else {
                format!("your caption: {caption}")
            };
            ctx.reply(format!("Got your photo ({kb} KB), {said}"))?;
        }
        Err(MediaError::NotFound { .. }) => {
            ctx.reply("That photo has expired before I could open it; please send it again.")?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The bot. Every registration is checked here, before the first event.
pub fn support_bot() -> Result<Router, BuildError> {
    let awaiting_order = Filter::custom("awaiting order", |ctx| {
        matches!(dialogue(ctx), Dialogue::AwaitingOrder | Dialogue::Reminded)
    });
    let in_menu = Filter::custom("menu shown", |ctx| {
        matches!(dialogue(ctx), Dialogue::Menu | Dialogue::Reminded)
    });

    Router::builder()
        // A person answered from the phone: the bot is paused for this conversation; say nothing.
        .on_handover(
            Filter::any(),
            handler!(|ctx| async move {
                tracing::info!(conversation = ctx.conversation(), "a person took over; the bot stays quiet");
                ctx.set_state(&Dialogue::Start)?;
                Ok(())
            }),
        )
        // The last chance for a free-form message: ask once whether the customer is still there.
        .on_window_expiring(
            Filter::any(),
            handler!(|ctx| async move {
                if matches!(dialogue(ctx), Dialogue::Menu | Dialogue::AwaitingOrder) {
                    let minutes = ctx.timer().and_then(|t| t.lead_ms).unwrap_or(0) / 60_000;
                    ctx.reply(format!(
                        "Are you still there? This chat closes in {minutes} minutes; just answer to keep it open."
                    ))?;
                    ctx.set_state(&Dialogue::Reminded)?;
                }
                Ok(())
            }),
        )
        // Free-form is over: only an approved template reaches the customer now.
        .on_window_closed(
            Filter::any(),
            handler!(|ctx| async move {
                if matches!(dialogue(ctx), Dialogue::Menu | Dialogue::AwaitingOrder | Dialogue::Reminded) {
                    ctx.send_template(COME_BACK_TEMPLATE, "en_US", Vec::new())?;
                    ctx.set_state(&Dialogue::Invited)?;
                }
                Ok(())
            }),
        )
        .on_button(
            Filter::button_prefix("menu:"),
            handler!(|ctx| async move {
                let id = ctx.button_id().unwrap_or_default().to_owned();
                match CHOICES.iter().find(|(_, choice_id, _)| *choice_id == id) {
                    Some((choice, _, _)) => choose(ctx, *choice).await,
                    None => show_menu(ctx).await,
                }
            }),
        )
        // Before the text handlers: a photo's caption is text too.
        .on_message(Filter::message_type("image"), echo_photo_caption)
        .on_text(
            awaiting_order & Filter::regex(r"^\s*#?(\d{4,})\s*$"),
            handler!(|ctx| async move {
                let order: String = ctx.text().unwrap_or_default().chars().filter(char::is_ascii_digit).collect();
                ctx.reply(format!("Order #{order} is on its way and should arrive tomorrow."))?;
                ctx.set_state(&Dialogue::Start)?;
                Ok(())
            }),
        )
        // Personal has no buttons: the menu is numbered.
        .on_text(
            Filter::personal() & in_menu & Filter::regex(r"^\s*[1-3]\s*$"),
            handler!(|ctx| async move {
                let n: usize = ctx.text().unwrap_or_default().trim().parse().unwrap_or(1);
                choose(ctx, CHOICES[n - 1].0).await
            }),
        )
        .on_text(Filter::regex(r"(?i)\b(photo|picture|pic)\b"), send_product_photo)
        .on_text(Filter::any(), show_menu)
        .on_session(
            Filter::any(),
            handler!(|ctx| async move {
                tracing::info!(channel = ctx.channel_id(), raw = %ctx.event.raw, "gateway session changed");
                Ok(())
            }),
        )
        .build()
}

#[derive(Parser)]
#[command(about = "coexist support bot example")]
struct Args {
    #[arg(long)]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    coexist::runtime::init_logging();
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    coexist::runtime::run_bot(&config, Arc::new(support_bot()?))
}
