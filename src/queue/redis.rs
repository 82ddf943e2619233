//! Redis Streams queue.
