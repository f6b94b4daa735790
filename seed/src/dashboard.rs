//! The seed's read-only web dashboard: a page, its script and style
//! (compiled into the binary), and the distribution history its chart
//! draws. The page reads `/status` (the fleet view) and `/history`.

use fleetmesh_protocol::mesh::Report;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// The page.
pub const HTML: &str = include_str!("dashboard/index.html");
/// Its script.
pub const SCRIPT: &str = include_str!("dashboard/app.js");
/// Its style.
pub const STYLE: &str = include_str!("dashboard/app.css");

/// The fleet's progress on one release at one time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Chunks held, summed over the nodes that report the release.
    pub held: u64,
    /// Chunks of the release, summed over the same nodes.
    pub total: u64,
    /// Nodes holding every chunk.
    pub complete: u64,
    /// Nodes reporting the release.
    pub nodes: u64,
}

/// One sample of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Unix time.
    pub at: u64,
    /// Progress by release version.
    pub releases: BTreeMap<String, Progress>,
}

impl Sample {
    /// The progress in `reports` at `at`.
    pub fn of(at: u64, reports: &BTreeMap<String, Report>) -> Sample {
        let mut releases: BTreeMap<String, Progress> = BTreeMap::new();
        for r in reports.values().flat_map(|rep| &rep.releases) {
            let p = releases.entry(r.version.clone()).or_insert(Progress {
                held: 0,
                total: 0,
                complete: 0,
                nodes: 0,
            });
            p.held += r.held.min(r.total);
            p.total += r.total;
            p.complete += u64::from(r.total > 0 && r.held >= r.total);
            p.nodes += 1;
        }
        Sample { at, releases }
    }
}

/// Samples at least `every` seconds apart, at most `capacity` of them.
/// When full, every other sample is dropped and the spacing doubles: the
/// history always spans the whole run, ever more coarsely.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    /// Current spacing, seconds.
    pub every: u64,
    /// Most samples kept.
    pub capacity: usize,
    /// Oldest first.
    pub samples: VecDeque<Sample>,
}

impl History {
    /// An empty history (`capacity` at least 2).
    pub fn new(every: u64, capacity: usize) -> History {
        History {
            every: every.max(1),
            capacity: capacity.max(2),
            samples: VecDeque::new(),
        }
    }

    /// Adds `s` unless the last sample is less than `every` seconds older;
    /// a sample equal to the last but for its time only moves the last
    /// one's time when the two before it are equal too (a flat stretch
    /// keeps its two ends).
    pub fn push(&mut self, s: Sample) {
        if let Some(last) = self.samples.back() {
            if s.at < last.at + self.every {
                return;
            }
        }
        let n = self.samples.len();
        if n >= 2
            && self.samples[n - 1].releases == s.releases
            && self.samples[n - 2].releases == s.releases
        {
            self.samples[n - 1].at = s.at;
            return;
        }
        if n >= self.capacity {
            let mut keep = false;
            self.samples.retain(|_| {
                keep = !keep;
                keep
            });
            self.every *= 2;
        }
        self.samples.push_back(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_protocol::mesh::ReleaseProgress;
    use fleetmesh_protocol::UnixTime;

    fn report(site: &str, held: u64, same_site: u64, wan: u64) -> Report {
        Report {
            node_id: format!("n-{site}-{held}-{same_site}"),
            at: UnixTime(100),
            labels: [("site".to_owned(), site.to_owned())].into(),
            booted_version: Some("1.0.0".into()),
            slot: Some("a".into()),
            state: "idle".into(),
            target_version: None,
            reason: None,
            releases: vec![ReleaseProgress {
                version: "1.0.0".into(),
                held,
                total: 10,
                bytes_same_site: same_site,
                bytes_wan: wan,
            }],
        }
    }

    fn reports(list: Vec<Report>) -> BTreeMap<String, Report> {
        list.into_iter().map(|r| (r.node_id.clone(), r)).collect()
    }

    #[test]
    fn a_sample_sums_the_reports_and_the_fleet_view_sums_sites() {
        let reps = reports(vec![
            report("east", 10, 0, 1000),
            report("east", 4, 300, 100),
            report("west", 10, 0, 1000),
        ]);
        let s = Sample::of(5, &reps);
        assert_eq!(
            s.releases["1.0.0"],
            Progress {
                held: 24,
                total: 30,
                complete: 2,
                nodes: 3
            }
        );
        let v = crate::fleet::view(&reps, None, UnixTime(100), 60);
        let east = v.sites.iter().find(|t| t.site == "east").expect("east");
        assert_eq!(
            (east.nodes, east.bytes_same_site, east.bytes_wan),
            (2, 300, 1100)
        );
        assert_eq!(v.sites.len(), 2);
    }

    #[test]
    fn the_history_thins_itself_and_keeps_flat_stretches_short() {
        let mut h = History::new(1, 8);
        for t in 0..100u64 {
            let reps = reports(vec![report("x", t.min(10), 0, 0)]);
            h.push(Sample::of(t, &reps));
        }
        assert!(h.samples.len() <= 8, "{}", h.samples.len());
        assert!(h.every > 1);
        let first = h.samples.front().expect("first");
        let last = h.samples.back().expect("last");
        assert_eq!(first.at, 0, "the start stays");
        assert!(last.at >= 99 - h.every, "the end is recent: {}", last.at);
        assert_eq!(last.releases["1.0.0"].complete, 1);
        let times: Vec<u64> = h.samples.iter().map(|s| s.at).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

        // A flat stretch keeps only its two ends.
        let mut flat = History::new(1, 100);
        for t in 0..50u64 {
            flat.push(Sample::of(t, &reports(vec![report("x", 3, 0, 0)])));
        }
        assert_eq!(flat.samples.len(), 2);
        assert_eq!(flat.samples[1].at, 49);
    }
}
