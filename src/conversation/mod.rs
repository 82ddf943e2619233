//! Conversations: the state kept per (channel, contact), the pure service-window rules and the
//! fenced store.
//!
//! A conversation never spans channels: the same phone number on a WABA channel and on a
//! Personal channel is two conversations with two states, because every key and every store
//! call carries the channel.
//!
//! The worker's loop for one event: `store.load` (absent = new conversation, start from
//! `ConversationState::default()` but save only if `apply_event` says `changed`), `apply_event`,
//! `store.save` with the partition's fence, and when `window_changed`, re-arm `timers_for`.

pub mod state;
pub mod store;
pub mod window;

pub use state::{ConversationState, DeliveryStatus, StatusLog};
pub use store::{
    ConversationBackend, ConversationStore, MemoryConversationStore, MemoryLeases,
    RedisConversationStore, SaveOutcome, StoreError,
};
pub use window::{
    apply_event, end_handover, free_entry_point, handover_active, is_timer_current,
    leads_from_minutes, mark_window_closed, record_outbound, start_handover, timers_for, window,
    Effects, PlannedTimer, StatusUpdate, Window, WindowRules, FREE_ENTRY_POINT_MS,
    SERVICE_WINDOW_MS, WINDOW_CLOSED, WINDOW_EXPIRING,
};
