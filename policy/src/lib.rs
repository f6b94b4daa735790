//! Policy: when and which nodes may install a release, as pure functions of
//! `now` and the node's labels.
//!
//! Goals: maintenance windows in named time zones that are right across DST
//! changes and month ends; deterministic rollout waves. Non-goals: reading
//! the clock, files or the network — the node and the seed pass `now` in,
//! and the time-zone rules are compiled in, so every node decides the same.

pub mod cron;
pub mod doc;
pub mod group;
pub mod rollout;
pub mod window;
