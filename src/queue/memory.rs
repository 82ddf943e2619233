//! In-memory twin of the Redis queue.
