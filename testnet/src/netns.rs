//! `--netns`: the lab on real kernel links. Every node and the seed get a
//! network namespace of their own; each site gets a router namespace whose
//! bridge is the site LAN and whose WAN link to a core router namespace is
//! shaped with `tc tbf` both ways; the seed's uplink into the core is shaped
//! too. Nothing is connected to the host's namespace, so no route leads out,
//! and every address is one this module gave to a namespace it made.
//!
//! ```text
//!  seed ──(seed uplink, tbf)── core ──(WAN, tbf each way)── router s ── bridge ── nodes of site s
//!  10.200.0.2                  10.200.0.1 / 10.201.s.1      10.201.s.2   10.(s+1).0.1  10.(s+1).0.(10+k)
//! ```
//!
//! Byte counts come from the interfaces' counters: what the core sent into
//! a site's WAN link, what the seed's uplink sent. Those links send one
//! datagram per frame, as a real WAN does ([`wan_link`]), so the counters
//! count every datagram's headers. Dropping a [`Net`] deletes
//! its namespaces (with the links in them). Names carry the creating
//! process's id, so namespaces left by a killed run are found and removed
//! by the next one ([`remove_stale`]).

use crate::lab::run_ok;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;

/// Prefix of every namespace this module creates.
const PREFIX: &str = "fmlab";

/// Most sites and nodes per site the address plan holds.
pub const MAX_SITES: usize = 64;
/// Most nodes in one site.
pub const MAX_SITE_NODES: usize = 200;

/// Port every process listens on (QUIC and TCP), on its namespace's address.
pub const PORT: u16 = 7000;

/// Link rates of the topology, in bits per second.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The seed's uplink.
    pub seed_bps: u64,
    /// Each node's LAN link, both ways (0: unshaped).
    pub lan_bps: u64,
    /// Per site: its name, node count and WAN rate (each way).
    pub sites: Vec<(String, usize, u64)>,
}

/// One namespace made for a process: its name and address.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace (`ip netns exec NAME`).
    pub ns: String,
    /// Its address on its link.
    pub ip: Ipv4Addr,
}

impl Host {
    /// libp2p listen addresses on the host's address.
    pub fn listen(&self) -> Vec<String> {
        vec![
            format!("/ip4/{}/udp/{PORT}/quic-v1", self.ip),
            format!("/ip4/{}/tcp/{PORT}", self.ip),
        ]
    }
}

/// Bytes through one interface since the namespace was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Received.
    pub rx: u64,
    /// Sent.
    pub tx: u64,
    /// Packets its shaper dropped on the way out (queue full).
    pub drops: u64,
    /// For a site's WAN link: packets the site router's shaper dropped on
    /// the way out of the site.
    pub out_drops: u64,
}

/// The namespaces and links of one lab.
#[derive(Debug)]
pub struct Net {
    tag: String,
    /// Created, in order; deleted in reverse.
    created: Vec<String>,
    /// The seed.
    pub seed: Host,
    /// Nodes, site by site, in the order of [`Topology::sites`].
    pub nodes: Vec<Host>,
    sites: usize,
}

/// Runs `ip ARGS` (iproute2); returns its stdout.
fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args))
}

/// Runs a command inside namespace `ns`.
fn in_ns(ns: &str, cmd: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args).map(drop)
}

/// A token bucket on `dev`'s egress at `bps`: bursts of about 20 ms (at
/// least 64 KiB, so that a segmentation-offloaded packet passes whole) and
/// up to 100 ms of queue.
fn shape(ns: &str, dev: &str, bps: u64) -> Result<()> {
    if bps == 0 {
        return Ok(());
    }
    let burst = (bps / 8 / 50).max(64 << 10);
    in_ns(
        ns,
        &[
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{bps}bit"),
            "burst",
            &burst.to_string(),
            "latency",
            "100ms",
        ],
    )
}

/// A WAN link's end: shaped to `bps`, and one datagram per frame. A
/// sender hands the kernel up to 64 KiB at once (UDP and TCP segmentation
/// offload), which a veth passes on whole and counts with one set of
/// Ethernet, IP and UDP headers: 2.5% fewer bytes than a real link carries
/// for a QUIC transfer. The shaper already charged each datagram's headers;
/// with one segment per frame the device splits the batch after the shaper,
/// and its counters see what a wire would.
fn wan_link(ns: &str, dev: &str, bps: u64) -> Result<()> {
    shape(ns, dev, bps)?;
    ip(&["-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"]).map(drop)
}

/// Errors unless this process runs as root (namespaces and tc need it).
pub fn require_root() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("--netns needs root (it creates network namespaces and tc qdiscs); run it as root or drop --netns to use 127.0.0.1");
    }
    Ok(())
}

/// Deletes namespaces that an earlier lab left behind when it was killed
/// before it could clean up: ones whose creating process is gone. Ends the
/// processes still inside them (the lab's own seed and nodes). Returns
/// their names.
pub fn remove_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for line in ip(&["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_ns(name)?;
        removed.push(name.to_owned());
    }
    Ok(removed)
}

/// Ends the processes inside namespace `ns` (the lab's own) and deletes it
/// with its links.
fn delete_ns(ns: &str) -> Result<()> {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for p in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", p]).status();
        }
    }
    ip(&["netns", "del", ns]).map(drop)
}

/// Byte counters and shaper drops of every interface in namespace `ns`,
/// by name: one `ip` and one `tc` call.
fn counters(ns: &str) -> Result<BTreeMap<String, Counters>> {
    let parse = |out: String, what: &str| -> Result<Vec<serde_json::Value>> {
        serde_json::from_str(&out).with_context(|| format!("{what} -j output"))
    };
    let mut all = BTreeMap::new();
    for link in parse(ip(&["-n", ns, "-s", "-j", "link", "show"])?, "ip")? {
        let stats = &link["stats64"];
        if let (Some(dev), Some(rx), Some(tx)) = (
            link["ifname"].as_str(),
            stats["rx"]["bytes"].as_u64(),
            stats["tx"]["bytes"].as_u64(),
        ) {
            all.insert(
                dev.to_owned(),
                Counters {
                    rx,
                    tx,
                    ..Counters::default()
                },
            );
        }
    }
    let qdiscs = ip(&["netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show"])?;
    for q in parse(qdiscs, "tc")? {
        if let (Some(c), Some(drops)) = (
            q["dev"].as_str().and_then(|d| all.get_mut(d)),
            q["drops"].as_u64(),
        ) {
            c.drops += drops;
        }
    }
    Ok(all)
}

impl Net {
    /// Builds the topology. On error, whatever was made is deleted.
    pub fn create(topo: &Topology) -> Result<Net> {
        if topo.sites.is_empty() || topo.sites.len() > MAX_SITES {
            bail!("--netns holds 1-{MAX_SITES} sites");
        }
        if let Some((name, n, _)) = topo.sites.iter().find(|s| s.1 > MAX_SITE_NODES) {
            bail!("site {name}: {n} nodes; --netns holds at most {MAX_SITE_NODES} per site");
        }
        let tag = format!("{PREFIX}{}", std::process::id());
        let mut net = Net {
            seed: Host {
                ns: format!("{tag}-seed"),
                ip: Ipv4Addr::new(10, 200, 0, 2),
            },
            tag,
            created: Vec::new(),
            nodes: Vec::new(),
            sites: topo.sites.len(),
        };
        net.build(topo)?;
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn core(&self) -> String {
        format!("{}-core", self.tag)
    }

    fn router(&self, s: usize) -> String {
        format!("{}-r{s}", self.tag)
    }

    fn build(&mut self, topo: &Topology) -> Result<()> {
        let core = self.core();
        self.add_ns(&core)?;
        in_ns(&core, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // The seed and its shaped uplink.
        let seed_ns = self.seed.ns.clone();
        self.add_ns(&seed_ns)?;
        ip(&[
            "link", "add", "eth0", "netns", &seed_ns, "type", "veth", "peer", "name", "seed",
            "netns", &core,
        ])?;
        ip(&["-n", &core, "addr", "add", "10.200.0.1/30", "dev", "seed"])?;
        ip(&["-n", &core, "link", "set", "seed", "up"])?;
        ip(&[
            "-n",
            &seed_ns,
            "addr",
            "add",
            "10.200.0.2/30",
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &seed_ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &seed_ns,
            "route",
            "add",
            "default",
            "via",
            "10.200.0.1",
        ])?;
        wan_link(&seed_ns, "eth0", topo.seed_bps)?;
        for (s, (_, count, wan_bps)) in topo.sites.iter().enumerate() {
            let router = self.router(s);
            self.add_ns(&router)?;
            in_ns(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let wan_dev = format!("s{s}");
            ip(&[
                "link", "add", "wan", "netns", &router, "type", "veth", "peer", "name", &wan_dev,
                "netns", &core,
            ])?;
            let core_ip = format!("10.201.{s}.1");
            ip(&[
                "-n",
                &core,
                "addr",
                "add",
                &format!("{core_ip}/30"),
                "dev",
                &wan_dev,
            ])?;
            ip(&["-n", &core, "link", "set", &wan_dev, "up"])?;
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("10.201.{s}.2/30"),
                "dev",
                "wan",
            ])?;
            ip(&["-n", &router, "link", "set", "wan", "up"])?;
            ip(&["-n", &router, "route", "add", "default", "via", &core_ip])?;
            let lan = format!("10.{}.0.0/24", s + 1);
            ip(&[
                "-n",
                &core,
                "route",
                "add",
                &lan,
                "via",
                &format!("10.201.{s}.2"),
            ])?;
            // Download into the site leaves the core; upload leaves the router.
            wan_link(&core, &wan_dev, *wan_bps)?;
            wan_link(&router, "wan", *wan_bps)?;
            // The LAN: a bridge in the router, multicast flooded so that
            // mDNS works without a querier.
            ip(&["-n", &router, "link", "add", "lan", "type", "bridge"])?;
            ip(&[
                "-n",
                &router,
                "link",
                "set",
                "lan",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])?;
            let gw = Ipv4Addr::new(10, s as u8 + 1, 0, 1);
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{gw}/24"),
                "dev",
                "lan",
            ])?;
            ip(&["-n", &router, "link", "set", "lan", "up"])?;
            for k in 0..*count {
                let ns = format!("{}-n{}", self.tag, self.nodes.len());
                self.add_ns(&ns)?;
                let port = format!("n{k}");
                ip(&[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &router,
                ])?;
                ip(&["-n", &router, "link", "set", &port, "master", "lan", "up"])?;
                let addr = Ipv4Addr::new(10, s as u8 + 1, 0, 10 + k as u8);
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
                shape(&ns, "eth0", topo.lan_bps)?;
                shape(&router, &port, topo.lan_bps)?;
                self.nodes.push(Host { ns, ip: addr });
            }
        }
        Ok(())
    }

    /// The seed's uplink (`tx` is everything the seed sent) and each
    /// site's WAN link as the core sees it (`tx` went into the site, `rx`
    /// came out of it).
    pub fn links(&self) -> Result<(Counters, Vec<Counters>)> {
        let missing = |dev: &str, ns: &str| anyhow::anyhow!("no counters for {dev} in {ns}");
        let seed = counters(&self.seed.ns)?
            .remove("eth0")
            .ok_or_else(|| missing("eth0", &self.seed.ns))?;
        let core = self.core();
        let mut wan = counters(&core)?;
        let sites = (0..self.sites)
            .map(|s| {
                let dev = format!("s{s}");
                let mut link = wan.remove(&dev).ok_or_else(|| missing(&dev, &core))?;
                let router = self.router(s);
                link.out_drops = counters(&router)?
                    .remove("wan")
                    .ok_or_else(|| missing("wan", &router))?
                    .drops;
                Ok(link)
            })
            .collect::<Result<_>>()?;
        Ok((seed, sites))
    }

    /// Cuts site `s` off from the core and the other sites (its LAN keeps
    /// working), by blackholing the routes both ways; `heal` restores them.
    pub fn partition(&self, s: usize, cut: bool) -> Result<()> {
        if s >= self.sites {
            bail!("no site {s}");
        }
        let lan = format!("10.{}.0.0/24", s + 1);
        let (core_route, router_route): (Vec<String>, Vec<String>) = if cut {
            (
                vec!["blackhole".into(), lan],
                vec!["blackhole".into(), "default".into()],
            )
        } else {
            (
                vec![lan, "via".into(), format!("10.201.{s}.2")],
                vec!["default".into(), "via".into(), format!("10.201.{s}.1")],
            )
        };
        for (ns, route) in [(self.core(), core_route), (self.router(s), router_route)] {
            let mut args = vec!["-n", &ns, "route", "replace"];
            args.extend(route.iter().map(String::as_str));
            ip(&args)?;
        }
        Ok(())
    }

    /// The namespaces this lab made (for a test to check teardown).
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = delete_ns(ns) {
                eprintln!("warning: {e}");
            }
        }
    }
}
