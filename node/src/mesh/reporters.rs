//! The fleet's size as a node sees it: the nodes whose status reports it
//! has heard lately. It spaces out the node's own unchanged reports
//! ([`report_every_secs`]), so it has to shrink when the fleet does:
//! a node not heard from for [`FORGET_AFTER`] repeats is no longer counted.

use fleetmesh_protocol::mesh::report_every_secs;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Most nodes counted.
pub const MAX_REPORTERS: usize = 100_000;
/// Repeats a node may miss before it is no longer counted (the seed marks
/// it stale after as many).
const FORGET_AFTER: u32 = 3;
/// How often the count is checked for nodes to forget (a pass is O(n)).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Reporters by id, with when each was last heard.
#[derive(Debug)]
pub struct Reporters<K> {
    seen: HashMap<K, Instant>,
    pruned: Instant,
}

impl<K: Eq + Hash> Reporters<K> {
    /// None heard yet.
    pub fn new(now: Instant) -> Self {
        Reporters {
            seen: HashMap::new(),
            pruned: now,
        }
    }

    /// A report from `node` was taken at `now`.
    pub fn heard(&mut self, node: K, now: Instant) {
        if self.seen.len() < MAX_REPORTERS || self.seen.contains_key(&node) {
            self.seen.insert(node, now);
        }
    }

    /// How often this node repeats an unchanged report: the fleet's rate
    /// over the nodes counted and this one. Forgets, at most once every
    /// [`PRUNE_EVERY`], the nodes silent for [`FORGET_AFTER`] such repeats.
    pub fn every(&mut self, now: Instant) -> Duration {
        let every = |n: usize| Duration::from_secs(report_every_secs(n + 1));
        if now.saturating_duration_since(self.pruned) >= PRUNE_EVERY {
            self.pruned = now;
            let forget = every(self.seen.len()) * FORGET_AFTER;
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < forget);
        }
        every(self.seen.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shrinking_fleet_repeats_sooner_once_the_silent_are_forgotten() {
        let t0 = Instant::now();
        let mut r = Reporters::new(t0);
        for k in 0..300u32 {
            r.heard(k, t0);
        }
        // 301 nodes at 0.5 reports a second: every 602 s.
        assert_eq!(r.every(t0), Duration::from_secs(602));
        // Ten keep reporting; the rest fall silent. Within three repeats
        // they still count...
        let mut now = t0;
        while now < t0 + Duration::from_secs(3 * 602 - 60) {
            now += Duration::from_secs(60);
            for k in 0..10 {
                r.heard(k, now);
            }
            assert_eq!(r.every(now), Duration::from_secs(602), "{:?}", now - t0);
        }
        // ...and past them they do not: 11 nodes, every 22 s.
        now += Duration::from_secs(120);
        for k in 0..10 {
            r.heard(k, now);
        }
        assert_eq!(r.every(now), Duration::from_secs(22));
        assert_eq!(r.seen.len(), 10);
    }

    #[test]
    fn the_count_is_bounded() {
        let t0 = Instant::now();
        let mut r = Reporters::new(t0);
        for k in 0..MAX_REPORTERS as u32 + 10 {
            r.heard(k, t0);
        }
        assert_eq!(r.seen.len(), MAX_REPORTERS);
        // One already counted is still refreshed.
        r.heard(0, t0 + Duration::from_secs(1));
        assert_eq!(r.seen[&0], t0 + Duration::from_secs(1));
    }
}
