//! The router: a [`Bot`] made of handlers registered by event type, each behind a [`Filter`].
//!
//! For each event the handlers are tried in registration order; the first whose event type
//! and filter match runs, and handling stops there unless it returns [`Flow::Continue`]
//! (then the next matching handler runs). `observe` handlers run for every matching event and
//! never stop handling (logging, metrics, audit).
//!
//! [`RouterBuilder::build`] checks every registration before the first event: invalid regexes,
//! empty ids, filters that can never match what the handler receives (a button filter on
//! `on_status`, a Personal-only filter on a window timer), and handlers that can never run
//! because an earlier one takes all their events (anything after `on_any(Filter::any(), …)`).
//!
//! Handlers are `async fn(&mut Context) -> Result<(), HandlerError>` (or `-> Result<Flow, _>`),
//! or closures written with [`handler!`](crate::handler):
//!
//! ```
//! use coexist::bot::{handler, Context, Filter, Flow, HandlerError, Router};
//!
//! async fn menu(ctx: &mut Context) -> Result<(), HandlerError> {
//!     ctx.send_buttons("What do you need?", &[("order", "My order"), ("human", "A person")])?;
//!     Ok(())
//! }
//!
//! let bot = Router::builder()
//!     .observe(Filter::any(), handler!(|ctx| async move {
//!         tracing::debug!(event = %ctx.event.id, "seen");
//!         Ok(Flow::Continue)
//!     }))
//!     .on_text(Filter::text_ignore_case("menu") & Filter::waba(), menu)
//!     .build()
//!     .unwrap();
//! # let _ = bot;
//! ```

use super::filter::{Class, Classes};
use super::{Bot, BoxFuture, Context, Filter, HandlerError};
use crate::channel::ChannelKind;
use crate::event::EventType;
use std::fmt;
use std::future::Future;

/// What happens after a handler ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flow {
    /// The event is handled: no further handler sees it (the default; `Ok(())` means this).
    #[default]
    Stop,
    /// Let the next matching handler handle it too.
    Continue,
}

impl From<()> for Flow {
    fn from(_: ()) -> Flow {
        Flow::Stop
    }
}

/// What a handler returns.
pub type HandlerResult = Result<Flow, HandlerError>;

/// A handler, object-safe. Implemented for every `async fn(&mut Context) -> Result<T, HandlerError>`
/// with `T` = `()` or [`Flow`], and for closures passed through [`handler_fn`] / [`handler!`](crate::handler).
pub trait Handler: Send + Sync + 'static {
    fn call<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, HandlerResult>;
}

/// An async function of a `&mut Context` (the bound behind [`Handler`]'s blanket impl).
pub trait HandlerFn<'a>: Send + Sync {
    type Output: Into<Flow>;
    type Future: Future<Output = Result<Self::Output, HandlerError>> + Send + 'a;
    fn call(&self, ctx: &'a mut Context) -> Self::Future;
}

impl<'a, F, Fut, O> HandlerFn<'a> for F
where
    F: Fn(&'a mut Context) -> Fut + Send + Sync,
    Fut: Future<Output = Result<O, HandlerError>> + Send + 'a,
    O: Into<Flow>,
{
    type Output = O;
    type Future = Fut;
    fn call(&self, ctx: &'a mut Context) -> Fut {
        self(ctx)
    }
}

impl<F> Handler for F
where
    F: for<'a> HandlerFn<'a> + 'static,
{
    fn call<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, HandlerResult> {
        let fut = HandlerFn::call(self, ctx);
        Box::pin(async move { fut.await.map(Into::into) })
    }
}

/// Gives a closure the signature a handler needs (`for<'a> Fn(&'a mut Context) -> BoxFuture<'a, …>`),
/// which Rust cannot infer for a closure by itself. [`handler!`](crate::handler) writes this for you.
pub fn handler_fn<F, O>(f: F) -> F
where
    F: for<'a> Fn(&'a mut Context) -> BoxFuture<'a, Result<O, HandlerError>>
        + Send
        + Sync
        + 'static,
    O: Into<Flow>,
{
    f
}

/// A closure handler: `handler!(|ctx| async move { ctx.reply("hi")?; Ok(()) })`.
///
/// The closure is `move`: clone what it captures (e.g. an `Arc`) outside the closure, and again
/// inside it before the `async move` block if the block needs its own copy.
#[macro_export]
macro_rules! handler {
    (|$ctx:ident| $body:expr) => {
        $crate::bot::handler_fn(move |$ctx: &mut $crate::bot::Context| {
            ::std::boxed::Box::pin($body)
        })
    };
}

/// Which registration method a handler came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    Message,
    Text,
    Button,
    Status,
    Echo,
    Handover,
    WindowExpiring,
    WindowClosed,
    Session,
    OutboundFailed,
    Call,
    Story,
    Any,
    Observe,
}

impl On {
    fn name(self) -> &'static str {
        match self {
            On::Message => "on_message",
            On::Text => "on_text",
            On::Button => "on_button",
            On::Status => "on_status",
            On::Echo => "on_echo",
            On::Handover => "on_handover",
            On::WindowExpiring => "on_window_expiring",
            On::WindowClosed => "on_window_closed",
            On::Session => "on_session",
            On::OutboundFailed => "on_outbound_failed",
            On::Call => "on_call",
            On::Story => "on_story",
            On::Any => "on_any",
            On::Observe => "observe",
        }
    }

    /// The events the registration can receive, and those it receives whatever they carry.
    fn domain(self) -> (Classes, Classes) {
        let all = Classes::ALL;
        match self {
            On::Message => (
                Classes::event(EventType::Message),
                Classes::event(EventType::Message),
            ),
            // Not every message has text, not every message is a tapped button.
            On::Text => (Classes::event(EventType::Message), Classes::NONE),
            On::Button => (
                Classes::class(Class::Message).of_kind(ChannelKind::Waba),
                Classes::NONE,
            ),
            On::Status => (
                Classes::event(EventType::Status),
                Classes::event(EventType::Status),
            ),
            On::Echo => (
                Classes::event(EventType::Echo),
                Classes::event(EventType::Echo),
            ),
            On::Handover => (
                Classes::class(Class::EchoHandover),
                Classes::class(Class::EchoHandover),
            ),
            On::WindowExpiring => (
                Classes::class(Class::TimerExpiring),
                Classes::class(Class::TimerExpiring),
            ),
            On::WindowClosed => (
                Classes::class(Class::TimerClosed),
                Classes::class(Class::TimerClosed),
            ),
            On::Session => (
                Classes::event(EventType::Session),
                Classes::event(EventType::Session),
            ),
            On::OutboundFailed => (
                Classes::event(EventType::OutboundFailed),
                Classes::event(EventType::OutboundFailed),
            ),
            On::Call => (
                Classes::event(EventType::Call),
                Classes::event(EventType::Call),
            ),
            On::Story => (
                Classes::event(EventType::Story),
                Classes::event(EventType::Story),
            ),
            On::Any | On::Observe => (all, all),
        }
    }

    /// What the event must carry beyond its class.
    fn accepts(self, ctx: &Context) -> bool {
        match self {
            On::Text => ctx.text().is_some(),
            On::Button => ctx.button_id().is_some(),
            _ => true,
        }
    }
}

impl fmt::Display for On {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A registration that would fail at the first event (or never run): reported by `build()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("handler #{index} ({on}, filter {filter}): {problem}")]
    InvalidFilter {
        index: usize,
        on: On,
        filter: String,
        problem: String,
    },
    #[error("handler #{index} ({on}, filter {filter}) can never run: no event {on} receives passes that filter")]
    NeverMatches {
        index: usize,
        on: On,
        filter: String,
    },
    #[error("handler #{index} ({on}, filter {filter}) can never run: handler #{shadowed_by} ({by_on}, filter {by_filter}) takes every event it would get first; register it before #{shadowed_by}, or register #{shadowed_by} with `observe` if it should let events through")]
    Unreachable {
        index: usize,
        on: On,
        filter: String,
        shadowed_by: usize,
        by_on: On,
        by_filter: String,
    },
    #[error("the router has no handler")]
    Empty,
}

struct Route {
    on: On,
    filter: Filter,
    handler: Box<dyn Handler>,
}

/// Registers handlers; [`RouterBuilder::build`] checks them and makes the [`Router`].
#[must_use = "call .build() to get the bot"]
#[derive(Default)]
pub struct RouterBuilder {
    routes: Vec<Route>,
}

/// A bot made of filtered handlers. Build it with [`Router::builder`].
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// How many handlers are registered.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Runs the matching handlers for the event in `ctx` (first match wins unless it returns
    /// `Flow::Continue`); `Ok(false)` when none matched.
    pub async fn dispatch(&self, ctx: &mut Context) -> Result<bool, HandlerError> {
        let class = Classes::of(ctx);
        let mut matched = false;
        for route in &self.routes {
            let (domain, _) = route.on.domain();
            if !domain.covers(class) || !route.on.accepts(ctx) || !route.filter.matches(ctx) {
                continue;
            }
            matched = true;
            let flow = route.handler.call(ctx).await?;
            if route.on != On::Observe && flow == Flow::Stop {
                break;
            }
        }
        Ok(matched)
    }
}

impl Bot for Router {
    fn handle<'a>(&'a self, ctx: &'a mut Context) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { self.dispatch(ctx).await.map(|_| ()) })
    }
}

macro_rules! register {
    ($(#[$doc:meta])* $name:ident => $on:expr) => {
        $(#[$doc])*
        pub fn $name(self, filter: Filter, handler: impl Handler) -> Self {
            self.register($on, filter, handler)
        }
    };
}

impl RouterBuilder {
    fn register(mut self, on: On, filter: Filter, handler: impl Handler) -> Self {
        self.routes.push(Route {
            on,
            filter,
            handler: Box::new(handler),
        });
        self
    }

    register!(
        /// Every message a customer sends (any type).
        on_message => On::Message
    );
    register!(
        /// Messages that show text (a text body, a caption, a button title).
        on_text => On::Text
    );
    register!(
        /// A tapped reply button or list row, or a template quick-reply button (WABA): match the
        /// id with [`Filter::button`] / [`Filter::button_prefix`]; [`Context::button_id`] has it.
        on_button => On::Button
    );
    register!(
        /// Delivery statuses of messages the business sent.
        on_status => On::Status
    );
    register!(
        /// Messages the business sent from the phone (coexistence echoes, WAHA `fromMe`).
        on_echo => On::Echo
    );
    register!(
        /// An echo of a person answering from the phone, which paused the bot for the
        /// conversation: customer messages do not reach the bot until the handover ends.
        on_handover => On::Handover
    );
    register!(
        /// The WABA service window closes soon (`[worker] window_expiring_minutes`):
        /// [`Context::timer`] says how soon. The last chance for a free-form follow-up.
        on_window_expiring => On::WindowExpiring
    );
    register!(
        /// The WABA service window has closed: only templates reach the customer now.
        on_window_closed => On::WindowClosed
    );
    register!(
        /// Personal gateway session status changes (WAHA `session.status`).
        on_session => On::Session
    );
    register!(
        /// A message the bot (or the API) queued was given up at send time: the window closed
        /// while it waited (send a template instead), Meta said 131047, the number cannot
        /// receive it, … [`Context::outbound_failure`] has the message and the error.
        on_outbound_failed => On::OutboundFailed
    );
    register!(
        /// A call with the business (Meta's `calls` field, WAHA's `call.*` events):
        /// [`Context::event`]`.call` says which call and what happened. A customer's call opens
        /// the WABA service window, so a free-form follow-up is allowed.
        on_call => On::Call
    );
    register!(
        /// A contact's Story (WAHA `status@broadcast`): `ctx.event.contact` is the author. It
        /// has no conversation, so it cannot be answered in one; it never reaches `on_message`.
        on_story => On::Story
    );
    register!(
        /// Any event. With `Filter::any()` it is a catch-all: register it last.
        on_any => On::Any
    );
    register!(
        /// Runs for every event its filter matches, before or between the others, and never
        /// stops handling whatever it returns (logging, metrics, audit).
        observe => On::Observe
    );

    /// Checks every registration and makes the router.
    pub fn build(self) -> Result<Router, BuildError> {
        if self.routes.is_empty() {
            return Err(BuildError::Empty);
        }
        // (may match, surely takes) per registration.
        let mut seen: Vec<(Classes, Classes)> = Vec::with_capacity(self.routes.len());
        for (index, route) in self.routes.iter().enumerate() {
            let (on, filter) = (route.on, route.filter.to_string());
            if let Some(problem) = route.filter.problems().into_iter().next() {
                return Err(BuildError::InvalidFilter {
                    index,
                    on,
                    filter,
                    problem,
                });
            }
            let (domain_may, domain_must) = on.domain();
            let (filter_may, filter_must) = route.filter.classes();
            let may = domain_may.and(filter_may);
            let must = domain_must.and(filter_must);
            if may.is_empty() {
                return Err(BuildError::NeverMatches { index, on, filter });
            }
            if let Some(shadowed_by) = seen.iter().position(|(_, taken)| taken.covers(may)) {
                let by = &self.routes[shadowed_by];
                return Err(BuildError::Unreachable {
                    index,
                    on,
                    filter,
                    shadowed_by,
                    by_on: by.on,
                    by_filter: by.filter.to_string(),
                });
            }
            // Observers let every event through: they shadow nothing.
            let taken = if on == On::Observe {
                Classes::NONE
            } else {
                must
            };
            seen.push((may, taken));
        }
        Ok(Router {
            routes: self.routes,
        })
    }
}
