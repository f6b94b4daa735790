use super::*;

fn pieces(n: usize) -> Vec<(ChunkId, u32)> {
    (0..n)
        .map(|i| (ChunkId::of(&(i as u64).to_le_bytes()), 1000))
        .collect()
}

fn info(site: &str, tag: u64) -> PeerInfo {
    PeerInfo {
        site: site.into(),
        seed: false,
        tag,
    }
}

fn seed_info() -> PeerInfo {
    PeerInfo {
        site: "seed".into(),
        seed: true,
        tag: 999,
    }
}

fn sched(site: &str, tag: u64, n: usize) -> Scheduler<u32> {
    Scheduler::new(Config::default(), info(site, tag), &pieces(n), |_| false)
}

const T0: Duration = Duration::ZERO;

#[test]
fn bits_round_trip_through_bytes() {
    let mut b = Bits::new(19);
    for i in [0, 3, 8, 18] {
        assert!(b.set(i));
    }
    assert!(!b.set(3));
    assert!(!b.set(19));
    let again = Bits::from_bytes(19, &b.to_bytes());
    assert_eq!(again, b);
    assert_eq!(again.ones().collect::<Vec<_>>(), vec![0, 3, 8, 18]);
    assert_eq!(b.to_bytes().len(), 3);
}

#[test]
fn ones_lists_set_bits_across_word_edges() {
    let mut b = Bits::new(200);
    let set = [0, 1, 62, 63, 64, 65, 127, 128, 191, 192, 199];
    for i in set {
        b.set(i);
    }
    assert_eq!(b.ones().collect::<Vec<_>>(), set);
    b.clear(63);
    b.clear(199);
    let kept: Vec<usize> = set.into_iter().filter(|&i| i != 63 && i != 199).collect();
    assert_eq!(b.ones().collect::<Vec<_>>(), kept);
    assert_eq!(Bits::new(130).ones().count(), 0);
}

#[test]
fn same_site_peer_is_asked_before_the_seed() {
    let mut s = sched("a", 1, 8);
    s.add_peer(0, seed_info());
    s.add_peer(2, info("a", 2));
    s.peer_has(&0, 0..8);
    s.peer_has(&2, 0..8);
    let plan = s.plan(T0, u64::MAX);
    assert!(!plan.is_empty());
    assert!(plan.iter().all(|p| p.peer == 2), "{plan:?}");
    assert_eq!(plan.iter().map(|p| p.pieces.len()).sum::<usize>(), 8);
}

#[test]
fn site_members_split_wan_pieces_between_them() {
    let n = 400;
    let mut a = sched("a", 1, n);
    let mut b = sched("a", 2, n);
    for (s, other) in [(&mut a, 2), (&mut b, 1)] {
        s.add_peer(0, seed_info());
        s.add_peer(other, info("a", other.into()));
        s.peer_has(&0, 0..n as u32);
    }
    let take = |s: &mut Scheduler<u32>| {
        let mut got = std::collections::BTreeSet::new();
        loop {
            let plan = s.plan(T0, u64::MAX);
            if plan.is_empty() {
                return got;
            }
            for p in plan {
                assert_eq!(p.peer, 0);
                got.extend(p.pieces.iter().copied());
                s.finish(T0, p.id, &p.pieces, &[]);
            }
        }
    };
    let (from_a, from_b) = (take(&mut a), take(&mut b));
    assert!(from_a.is_disjoint(&from_b));
    assert_eq!(from_a.len() + from_b.len(), n);
    // Rendezvous hashing splits about evenly.
    assert!((120..=280).contains(&from_a.len()), "{}", from_a.len());
}

#[test]
fn a_piece_the_site_has_never_crosses_the_wan() {
    let mut s = sched("a", 1, 4);
    s.add_peer(0, seed_info());
    s.add_peer(2, info("a", 2));
    s.peer_has(&0, 0..4);
    s.peer_has(&2, [0, 1, 2, 3]);
    // Peer 2 is full of our requests: we wait rather than use the seed.
    let cfg = Config {
        per_peer_pieces: 1,
        ..Config::default()
    };
    let mut s2 = Scheduler::new(cfg, info("a", 1), &pieces(4), |_| false);
    s2.add_peer(0, seed_info());
    s2.add_peer(2, info("a", 2));
    s2.peer_has(&0, 0..4);
    s2.peer_has(&2, 0..4);
    let plan = s2.plan(T0, u64::MAX);
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].peer, 2);
    assert!(s.plan(T0, u64::MAX).iter().all(|p| p.peer == 2));
}

#[test]
fn rarest_piece_first() {
    let mut s = sched("a", 1, 3);
    s.cfg = Config {
        batch: 1,
        ..Config::default()
    };
    for peer in 10..13 {
        s.add_peer(peer, info("a", u64::from(peer)));
    }
    s.peer_has(&10, [0, 1, 2]);
    s.peer_has(&11, [0, 1]);
    s.peer_has(&12, [0]);
    let plan = s.plan(T0, 1000);
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].pieces, vec![2]);
    let plan = s.plan(T0, 1000);
    assert_eq!(plan[0].pieces, vec![1]);
}

#[test]
fn budget_and_per_peer_cap_bound_the_plan() {
    let mut s = sched("a", 1, 100);
    s.add_peer(2, info("a", 2));
    s.peer_has(&2, 0..100);
    let plan = s.plan(T0, 5500);
    assert_eq!(plan.iter().map(|p| p.bytes).sum::<u64>(), 5000);
    let plan = s.plan(T0, u64::MAX);
    let asked: usize = plan.iter().map(|p| p.pieces.len()).sum();
    assert_eq!(asked, Config::default().per_peer_pieces - 5);
    assert!(plan
        .iter()
        .all(|p| p.pieces.len() <= Config::default().batch));
    assert!(s.plan(T0, u64::MAX).is_empty());
}

#[test]
fn timed_out_pieces_go_to_another_peer() {
    let mut s = sched("a", 1, 1);
    s.cfg.endgame_pieces = 0;
    s.add_peer(2, info("a", 2));
    s.add_peer(3, info("a", 3));
    s.peer_has(&2, [0]);
    s.peer_has(&3, [0]);
    let first = s.plan(T0, u64::MAX);
    assert_eq!(first.len(), 1);
    assert!(
        s.plan(T0, u64::MAX).is_empty(),
        "no duplicate before endgame"
    );
    assert!(s.expire(Duration::from_secs(1)).is_empty());
    let late = s.expire(Duration::from_secs(11));
    assert_eq!(late, vec![(first[0].id, first[0].peer)]);
    let retry = s.plan(Duration::from_secs(11), u64::MAX);
    assert_eq!(retry.len(), 1);
    assert_ne!(
        retry[0].peer, first[0].peer,
        "halved rate prefers the other"
    );
    // A late response to the expired request still delivers the piece;
    // the retry's response then brings nothing new.
    assert_eq!(
        s.finish(Duration::from_secs(12), first[0].id, &[0], &[]),
        vec![0]
    );
    assert!(s.is_complete());
    assert!(s
        .finish(Duration::from_secs(13), retry[0].id, &[0], &[])
        .is_empty());
}

#[test]
fn a_request_to_a_peer_that_keeps_failing_still_times_out_within_max_timeout() {
    let mut s = sched("a", 1, 1);
    s.add_peer(2, info("a", 2));
    s.peer_has(&2, [0]);
    // Lost responses halve the peer's rate estimate each time, until the
    // rate alone would predict a deadline of days.
    let mut now = T0;
    for _ in 0..40 {
        let sent = s.plan(now, u64::MAX);
        assert_eq!(sent.len(), 1, "at {now:?}");
        let deadline = s.next_deadline().expect("in flight");
        assert!(
            deadline <= now + s.cfg.max_timeout,
            "{deadline:?} at {now:?}"
        );
        now = deadline;
        assert_eq!(s.expire(now), vec![(sent[0].id, 2)]);
    }
}

#[test]
fn a_banned_peer_is_never_asked_again() {
    let mut s = sched("a", 1, 20);
    s.add_peer(2, info("a", 2));
    s.add_peer(3, info("a", 3));
    s.peer_has(&2, 0..20);
    s.peer_has(&3, 0..20);
    let plan = s.plan(T0, u64::MAX);
    assert!(plan.iter().any(|p| p.peer == 2));
    s.ban(T0, &2);
    assert!(s.is_banned(T0, &2));
    let mut left = 20;
    let mut now = T0;
    while left > 0 {
        now += Duration::from_secs(11);
        s.expire(now);
        for p in s.plan(now, u64::MAX) {
            assert_eq!(p.peer, 3);
            left -= s.finish(now, p.id, &p.pieces, &[]).len();
        }
    }
    assert!(s.is_complete());
}

#[test]
fn lacking_pieces_are_asked_elsewhere() {
    let mut s = sched("a", 1, 2);
    s.add_peer(2, info("a", 2));
    s.add_peer(3, info("b", 3));
    s.peer_has(&2, [0, 1]);
    s.peer_has(&3, [0, 1]);
    let plan = s.plan(T0, u64::MAX);
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].peer, 2);
    let new = s.finish(T0, plan[0].id, &[0], &[1]);
    assert_eq!(new, vec![0]);
    // Peer 2 lacks piece 1 after all; no same-site source is left, and
    // with one member this node owns every piece.
    let plan = s.plan(T0, u64::MAX);
    assert_eq!(plan.len(), 1);
    assert_eq!((plan[0].peer, plan[0].pieces.clone()), (3, vec![1]));
}

#[test]
fn endgame_duplicates_only_the_last_pieces() {
    let mut s = sched("a", 1, 20);
    s.add_peer(2, info("a", 2));
    s.add_peer(3, info("a", 3));
    s.peer_has(&2, 0..20);
    s.peer_has(&3, 0..20);
    let plan = s.plan(T0, u64::MAX);
    assert_eq!(plan.iter().map(|p| p.pieces.len()).sum::<usize>(), 20);
    assert!(
        s.plan(T0, u64::MAX).is_empty(),
        "20 left is not the endgame"
    );
    // Deliver all but three pieces.
    for p in &plan {
        let keep: Vec<u32> = p.pieces.iter().copied().filter(|&i| i >= 3).collect();
        s.finish(T0, p.id, &keep, &[]);
    }
    let dup = s.plan(T0, u64::MAX);
    let mut pieces: Vec<u32> = dup.iter().flat_map(|p| p.pieces.clone()).collect();
    pieces.sort();
    assert_eq!(pieces, vec![0, 1, 2]);
}

#[test]
fn a_stalled_site_falls_back_to_the_wan() {
    let n = 50;
    let mut s = sched("a", 1, n);
    s.add_peer(0, seed_info());
    s.add_peer(2, info("a", 2));
    s.peer_has(&0, 0..n as u32);
    let mut now = T0;
    let mut fetched = 0;
    for _ in 0..3 {
        for p in s.plan(now, u64::MAX) {
            fetched += s.finish(now, p.id, &p.pieces, &[]).len();
        }
    }
    assert!(fetched < n, "peer 2 owns some pieces");
    assert!(s.plan(now, u64::MAX).is_empty());
    now += Duration::from_secs(11);
    for p in s.plan(now, u64::MAX) {
        fetched += s.finish(now, p.id, &p.pieces, &[]).len();
    }
    assert_eq!(fetched, n);
}

/// A round-based simulation: a seed and sites of nodes, full mesh, each
/// peer serving a few pieces per round. Checks that everyone completes and
/// that each site's WAN link and the seed carry each piece about once.
fn simulate(sites: &[usize], n: usize) -> (usize, Vec<usize>, usize) {
    let mut infos = vec![seed_info()];
    for (s, &count) in sites.iter().enumerate() {
        for k in 0..count {
            infos.push(info(&format!("s{s}"), mix((s * 100 + k) as u64)));
        }
    }
    let all = pieces(n);
    let mut nodes: Vec<Option<Scheduler<usize>>> = vec![None];
    for (i, me) in infos.iter().enumerate().skip(1) {
        let mut s = Scheduler::new(Config::default(), me.clone(), &all, |_| false);
        for (j, other) in infos.iter().enumerate() {
            if i != j {
                s.add_peer(j, other.clone());
            }
        }
        s.peer_has(&0, 0..n as u32);
        nodes.push(Some(s));
    }
    let per_round = 8;
    let mut wan = vec![0; sites.len()];
    let mut seed_egress = 0;
    let mut now = T0;
    for round in 0..10_000 {
        if nodes.iter().flatten().all(|s| s.is_complete()) {
            eprintln!("sim {sites:?} n={n}: rounds {round} wan {wan:?} seed {seed_egress}");
            return (round, wan, seed_egress);
        }
        now += Duration::from_secs(1);
        let have_at_start: Vec<Option<Bits>> = nodes
            .iter()
            .map(|s| s.as_ref().map(|s| s.have().clone()))
            .collect();
        let mut served = vec![0; infos.len()];
        let mut gained: Vec<Vec<u32>> = vec![Vec::new(); infos.len()];
        for i in 1..infos.len() {
            let s = nodes[i].as_mut().expect("node");
            s.expire(now);
            for p in s.plan(now, u64::MAX) {
                if served[p.peer] >= per_round {
                    s.failed(p.id);
                    continue;
                }
                served[p.peer] += 1;
                let has = |k: u32| {
                    have_at_start[p.peer]
                        .as_ref()
                        .is_none_or(|b| b.get(k as usize))
                };
                let (got, lacks): (Vec<u32>, Vec<u32>) = p.pieces.iter().partition(|&&k| has(k));
                if p.peer == 0 {
                    seed_egress += got.len();
                }
                if infos[p.peer].site != infos[i].site {
                    let site: usize = infos[i].site[1..].parse().expect("site");
                    wan[site] += got.len();
                }
                gained[i].extend(s.finish(now, p.id, &got, &lacks));
            }
        }
        for (i, new) in gained.iter().enumerate() {
            for (j, node) in nodes.iter_mut().enumerate() {
                if let (Some(s), true) = (node.as_mut(), i != j) {
                    s.peer_has(&i, new.iter().copied());
                }
            }
        }
    }
    panic!("did not complete in 10000 rounds");
}

#[test]
fn simulated_sites_carry_each_piece_about_once() {
    let n = 600;
    let (rounds, wan, seed) = simulate(&[3, 3], n);
    for (site, &w) in wan.iter().enumerate() {
        assert!(
            w <= n * 12 / 10,
            "site {site} pulled {w} pieces over its WAN"
        );
    }
    assert!(seed <= n * 11 / 10, "seed sent {seed}");
    assert!(rounds < 200, "{rounds} rounds");
}

#[test]
fn simulated_four_sites_with_uneven_sizes() {
    let n = 400;
    let (_, wan, seed) = simulate(&[1, 5, 2, 4], n);
    for (site, &w) in wan.iter().enumerate() {
        assert!(w <= n * 11 / 10, "site {site} pulled {w}");
    }
    assert!(seed <= n * 11 / 10, "seed sent {seed}");
}

/// Pieces node (`site`, `tag`) asks the seed for when it sees only the seed
/// and its own site's `members`, knowing of `sites` from status reports.
fn seed_fetches(site: &str, tag: u64, members: &[u64], sites: &[&str], n: usize) -> Vec<u32> {
    let mut s = sched(site, tag, n);
    s.add_peer(0, seed_info());
    s.peer_has(&0, 0..n as u32);
    for &m in members.iter().filter(|&&m| m != tag) {
        s.add_peer(m as u32, info(site, m));
    }
    for other in sites {
        s.add_site(other);
    }
    let mut got: Vec<u32> = s
        .plan(T0, u64::MAX)
        .into_iter()
        .flat_map(|p| p.pieces)
        .collect();
    got.sort_unstable();
    got
}

#[test]
fn sites_known_from_reports_split_the_seed_without_seeing_their_nodes() {
    // Few enough pieces that no plan hits the per-peer cap.
    let n = 100;
    let sites = ["a", "b", "c"];
    let members = [[1, 2], [3, 4], [5, 6]];
    let mut from_seed = vec![0; n];
    for (site, tags) in sites.iter().zip(members) {
        for tag in tags {
            for i in seed_fetches(site, tag, &tags, &sites, n) {
                from_seed[i as usize] += 1;
            }
        }
    }
    assert!(
        from_seed.iter().all(|&c| c == 1),
        "each piece leaves the seed once: {from_seed:?}"
    );
    // Without the reports each site believes it is alone and takes it all.
    let alone =
        seed_fetches("a", 1, &[1, 2], &[], n).len() + seed_fetches("a", 2, &[1, 2], &[], n).len();
    assert_eq!(alone, n);
}

#[test]
fn wan_requests_are_capped_by_recent_wan_throughput() {
    // 1000-byte pieces; a floor of 8 pieces, a queue of one second.
    let mut s = sched("a", 1, 400);
    s.cfg.wan_floor = 8000;
    s.add_peer(2, info("b", 2));
    s.peer_has(&2, 0..400);
    let asked = |plan: &[Planned<u32>]| plan.iter().map(|p| p.pieces.len()).sum::<usize>();
    let mut out = s.plan(T0, u64::MAX);
    assert_eq!(asked(&out), 8, "the floor bounds a start");
    assert!(
        s.plan(T0, u64::MAX).is_empty(),
        "nothing more until some land"
    );
    // Responses come back within a quarter of a second: the link has room,
    // so the cap grows with what arrives, and never runs ahead of it.
    let mut now = T0;
    for _ in 0..12 {
        now += Duration::from_millis(250);
        for p in std::mem::take(&mut out) {
            s.finish(now, p.id, &p.pieces, &[]);
        }
        out = s.plan(now, u64::MAX);
        let cap = (s.wan_rate as u64).max(8000);
        assert!(
            s.bytes_in_flight() <= cap,
            "{} > {cap} at {now:?}",
            s.bytes_in_flight()
        );
    }
    assert!(
        s.bytes_in_flight() >= 16_000,
        "{} in flight",
        s.bytes_in_flight()
    );
}

/// The most WAN bytes in flight over the last 10 of 40 s on a link that
/// delivers 1,000 bytes a second, in request order, to a node with eight
/// remote peers.
fn in_flight_on_a_thin_link(cfg: Config) -> u64 {
    let mut s = sched("a", 1, 1000);
    s.cfg = cfg;
    for tag in 2..10u32 {
        s.add_peer(tag, info("b", u64::from(tag)));
        s.peer_has(&tag, 0..1000);
    }
    let mut link = std::collections::VecDeque::<Planned<u32>>::new();
    let (mut credit, mut most) = (0, 0);
    for tick in 0..160u32 {
        let now = Duration::from_millis(250) * tick;
        while let Some(p) = link
            .front()
            .filter(|p| p.pieces.len() as u64 * 1000 <= credit)
        {
            credit -= p.pieces.len() as u64 * 1000;
            s.finish(now, p.id, &p.pieces, &[]);
            link.pop_front();
        }
        link.extend(s.plan(now, u64::MAX));
        if tick >= 120 {
            most = most.max(s.bytes_in_flight());
        }
        credit += 250;
    }
    most
}

#[test]
fn the_wan_floor_follows_a_thin_links_rate() {
    // A piece a request, so the link delivers evenly.
    let cfg = || Config {
        batch: 1,
        wan_floor: 8000,
        wan_floor_min: 2000,
        ..Config::default()
    };
    let fixed = in_flight_on_a_thin_link(Config {
        wan_floor_min: 8000,
        ..cfg()
    });
    let follows = in_flight_on_a_thin_link(cfg());
    assert!(fixed >= 6000, "a fixed floor keeps ~8 s queued: {fixed}");
    // Two seconds at 1,000 B/s, with a request's worth of slack.
    assert!((1000..=3000).contains(&follows), "{follows} in flight");
}

#[test]
fn same_site_requests_are_not_capped_by_the_wan() {
    let mut s = sched("a", 1, 100);
    s.cfg.wan_floor = 4000;
    s.add_peer(2, info("a", 2));
    s.peer_has(&2, 0..100);
    let asked: usize = s.plan(T0, u64::MAX).iter().map(|p| p.pieces.len()).sum();
    assert_eq!(asked, Config::default().per_peer_pieces);
}

#[test]
fn an_overdue_wan_request_is_doubled_in_the_endgame() {
    // One piece, owned by this node (alone in its site), held by two
    // remote peers: asked from one, then from the other once overdue.
    let mut s = sched("a", 1, 1);
    s.add_peer(2, info("b", 2));
    s.add_peer(3, info("b", 3));
    s.peer_has(&2, [0]);
    s.peer_has(&3, [0]);
    let first = s.plan(T0, u64::MAX);
    assert_eq!(first.len(), 1);
    assert!(s.plan(Duration::from_secs(1), u64::MAX).is_empty());
    let second = s.plan(OVERDUE_MIN, u64::MAX);
    assert_eq!(second.len(), 1, "overdue after {OVERDUE_MIN:?}");
    assert_ne!(second[0].peer, first[0].peer);
    assert!(
        s.plan(OVERDUE_MIN * 2, u64::MAX).is_empty(),
        "never a third"
    );
}

/// Alone in site a with sites b and c known: this node fetches about a
/// third of `n` pieces (its share) from the seed; site b holds the rest.
fn seed_phase(cross: u64, n: usize) -> (Scheduler<u32>, Vec<u32>) {
    let cfg = Config {
        seed_first_cross: cross,
        ..Config::default()
    };
    let mut s = Scheduler::new(cfg, info("a", 1), &pieces(n), |_| false);
    s.add_site("c");
    s.add_peer(0, seed_info());
    s.add_peer(2, info("b", 2));
    s.peer_has(&0, 0..n as u32);
    assert!(s.plan(T0, 0).is_empty());
    let share: Vec<u32> = s
        .mine
        .as_ref()
        .expect("owners")
        .1
        .ones()
        .map(|i| i as u32)
        .collect();
    assert!((n / 6..=n / 2).contains(&share.len()), "{}", share.len());
    s.peer_has(&2, (0..n as u32).filter(|i| !share.contains(i)));
    (s, share)
}

#[test]
fn the_seed_share_crosses_the_wan_before_other_sites_are_asked() {
    // Without a cross-site allowance nothing is asked of site b until the
    // seed has delivered the share.
    let n = 90;
    let (mut s, share) = seed_phase(0, n);
    let plan = s.plan(T0, u64::MAX);
    assert!(plan.iter().all(|p| p.peer == 0), "only the seed first");
    let mut asked: Vec<u32> = plan.iter().flat_map(|p| p.pieces.clone()).collect();
    asked.sort();
    assert_eq!(asked, share);
    let now = Duration::from_secs(1);
    for p in &plan {
        s.finish(now, p.id, &p.pieces, &[]);
    }
    let next = s.plan(now, u64::MAX);
    assert!(
        !next.is_empty() && next.iter().all(|p| p.peer == 2),
        "then site b"
    );

    // A seed that delivers nothing for `wan_fallback_after` ends the phase.
    let (mut s, _) = seed_phase(0, n);
    assert!(s.plan(T0, u64::MAX).iter().all(|p| p.peer == 0));
    let later = Duration::from_secs(11);
    assert!(s.plan(later, u64::MAX).iter().any(|p| p.peer == 2));
}

#[test]
fn the_seed_phase_asks_other_sites_only_within_its_allowance() {
    // 1000-byte pieces and room for 5 of them in flight to site b.
    let n = 300;
    let (mut s, share) = seed_phase(5000, n);
    let to = |peer: u32, plan: &[Planned<u32>]| -> Vec<u32> {
        plan.iter()
            .filter(|p| p.peer == peer)
            .flat_map(|p| p.pieces.clone())
            .collect()
    };
    let cross = |plan: &[Planned<u32>]| to(2, plan);
    let plan = s.plan(T0, u64::MAX);
    let from_seed = to(0, &plan);
    assert!(
        from_seed.iter().all(|i| share.contains(i)),
        "the seed is asked only for the share"
    );
    let first = cross(&plan);
    assert_eq!(first.len(), 5, "the allowance fills: {first:?}");
    assert!(first.iter().all(|i| !share.contains(i)));
    // Full: nothing more of site b until a response comes back.
    assert!(cross(&s.plan(T0, u64::MAX)).is_empty());
    let done = plan.iter().find(|p| p.peer == 2).expect("a request to b");
    let now = Duration::from_millis(100);
    s.finish(now, done.id, &done.pieces, &[]);
    let again = cross(&s.plan(now, u64::MAX));
    assert_eq!(
        again.len(),
        done.pieces.len(),
        "what came back is asked again"
    );

    // The allowance is spent in whole requests: a response that frees
    // less than half of it waits for company.
    let (mut s, _) = seed_phase(5000, n);
    s.cfg.batch = 2;
    let plan = s.plan(T0, u64::MAX);
    let mut to_b: Vec<&Planned<u32>> = plan.iter().filter(|p| p.peer == 2).collect();
    to_b.sort_by_key(|p| p.pieces.len());
    let sizes: Vec<usize> = to_b.iter().map(|p| p.pieces.len()).collect();
    assert_eq!(sizes, vec![1, 2, 2]);
    s.finish(now, to_b[0].id, &to_b[0].pieces, &[]);
    assert!(
        cross(&s.plan(now, u64::MAX)).is_empty(),
        "1000 of 5000 free"
    );
    s.finish(now, to_b[1].id, &to_b[1].pieces, &[]);
    assert_eq!(cross(&s.plan(now, u64::MAX)).len(), 3, "3000 of 5000 free");
}

#[test]
fn a_plan_fills_one_wan_request_before_starting_another() {
    // Room for 16 pieces over the WAN, four remote peers with everything:
    // one full request, not four of four.
    let mut s = sched("a", 1, 100);
    s.cfg.wan_floor = 16_000;
    for peer in 2..6 {
        s.add_peer(peer, info("b", u64::from(peer)));
        s.peer_has(&peer, 0..100);
    }
    let plan = s.plan(T0, u64::MAX);
    let sizes: Vec<usize> = plan.iter().map(|p| p.pieces.len()).collect();
    assert_eq!(sizes, vec![Config::default().batch], "{plan:?}");
}

#[test]
fn a_busy_remote_peer_waits_for_room_for_half_a_batch() {
    // A same-site peer with nothing yet: its free slots must not make up
    // the remote peer's batch.
    let mut s = sched("a", 1, 200);
    s.cfg.per_peer_pieces = 20;
    s.add_peer(2, info("b", 2));
    s.peer_has(&2, 0..200);
    s.add_peer(3, info("a", 3));
    let plan = s.plan(T0, u64::MAX);
    let sizes: Vec<usize> = plan.iter().map(|p| p.pieces.len()).collect();
    assert_eq!(sizes, vec![16, 4]);
    let now = Duration::from_millis(100);
    s.finish(now, plan[1].id, &plan[1].pieces, &[]);
    assert!(
        s.plan(now, u64::MAX).is_empty(),
        "4 free slots wait while 16 pieces are in flight"
    );
    s.finish(now, plan[0].id, &plan[0].pieces, &[]);
    let next: usize = s.plan(now, u64::MAX).iter().map(|p| p.pieces.len()).sum();
    assert_eq!(next, 20);
}

#[test]
fn the_seed_holds_less_in_flight_than_a_remote_peer() {
    // 100 kB pieces: a peer at the initial 1 MB/s gets a second of it in
    // flight (10 pieces, also rule 8's 1 MiB budget), the seed 0.4 s (4).
    let pieces: Vec<(ChunkId, u32)> = (0..40u64)
        .map(|i| (ChunkId::of(&i.to_le_bytes()), 100_000))
        .collect();
    let asked = |seed: bool| -> usize {
        let mut s = Scheduler::new(Config::default(), info("a", 1), &pieces, |_| false);
        let peer = if seed { seed_info() } else { info("b", 2) };
        s.add_peer(2, peer);
        s.peer_has(&2, 0..40);
        s.plan(T0, u64::MAX).iter().map(|p| p.pieces.len()).sum()
    };
    assert_eq!(asked(false), 10);
    assert_eq!(asked(true), 4);
}
