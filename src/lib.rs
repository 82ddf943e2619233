//! coexist: WhatsApp Business API and WhatsApp Personal channels side by side.
//!
//! Data flows one way: `ingress → wire → event → queue → worker → bot → outbound`.
//! `wire`, `routing`, `verify` and the window rules never do I/O; `ingress` is the only module
//! that knows HTTP servers exist.

pub mod backend;
pub mod channel;
pub mod clock;
pub mod config;
pub mod conversation;
pub mod event;
pub mod failpoint;
pub mod keys;
pub mod queue;
pub mod redis_conn;
pub mod routing;
pub mod verify;
pub mod wire;

pub use channel::ChannelKind;
pub use config::Config;
pub use event::{Event, EventType};
pub mod api;
pub mod bot;
pub mod ingest;
pub mod ingress;
pub mod media;
pub mod metrics;
pub mod ops;
pub mod outbound;
pub mod runtime;
pub mod worker;
