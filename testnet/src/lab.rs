//! A local lab of real processes on 127.0.0.1: one `fleetmesh-seed run`
//! and any number of `fleetmesh-node run`, each in its own directory under
//! the lab directory, logging to `<name>.log`. Nodes bootstrap to the seed
//! and find each other through Kademlia (mDNS is off: the lab touches no
//! interface but loopback). Dropping the lab kills every process it started.
//!
//! With a [`Net`] (`--netns`), each process instead runs in its own network
//! namespace and listens on that namespace's address, and nodes find their
//! site's peers by mDNS on the site LAN as well.

use crate::netns::Net;
use anyhow::{bail, Context, Result};
use fleetmesh_node::mesh::status::{MeshStatus, MESH_STATUS_FILE};
use fleetmesh_node::updater::{Status, STATUS_FILE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Loopback listen addresses: QUIC and TCP on ephemeral ports.
const LISTEN: [&str; 2] = ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"];

/// One node of the lab.
#[derive(Debug)]
pub struct LabNode {
    /// Its directory.
    pub dir: PathBuf,
    /// Its site label.
    pub site: String,
    /// Its peer id.
    pub peer_id: String,
    child: Option<Child>,
}

/// The lab.
#[derive(Debug)]
pub struct Lab {
    /// The lab directory.
    pub dir: PathBuf,
    seed_bin: PathBuf,
    node_bin: PathBuf,
    /// The seed's directory.
    pub seed_dir: PathBuf,
    seed: Option<Child>,
    /// The seed's dialable address (with `/p2p/`), once it runs.
    pub seed_addr: Option<String>,
    /// The nodes, in the order added.
    pub nodes: Vec<LabNode>,
    /// The namespaces, for `--netns`; dropped (deleted) after the processes.
    pub net: Option<Net>,
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Runs `cmd`; its stdout, or an error with its stderr.
pub(crate) fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn read_status(path: &Path) -> Option<MeshStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl Lab {
    /// A lab in `dir` (which must not exist or be empty) with a fresh seed.
    pub fn new(dir: &Path, seed_bin: &Path, node_bin: &Path) -> Result<Lab> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let seed_dir = dir.join("seed");
        run_ok(Command::new(seed_bin).args(["init", "--dir", path_str(&seed_dir)?]))?;
        let config = seed_dir.join("config.toml");
        let text = std::fs::read_to_string(&config)?;
        std::fs::write(&config, text.replace("mdns = true", "mdns = false"))?;
        Ok(Lab {
            dir: dir.to_owned(),
            seed_bin: seed_bin.to_owned(),
            node_bin: node_bin.to_owned(),
            seed_dir,
            seed: None,
            seed_addr: None,
            nodes: Vec::new(),
            net: None,
        })
    }

    /// Publishes `image` as `version`; returns publish's JSON summary.
    pub fn publish(&self, image: &Path, version: &str) -> Result<serde_json::Value> {
        let out = run_ok(Command::new(&self.seed_bin).args([
            "publish",
            "--dir",
            path_str(&self.seed_dir)?,
            "--image",
            path_str(image)?,
            "--version",
            version,
        ]))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Runs `fleetmesh-seed ARGS --dir SEED`; returns its stdout.
    pub fn seed_cmd(&self, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new(&self.seed_bin)
                .args(args)
                .args(["--dir", path_str(&self.seed_dir)?]),
        )
    }

    /// Runs `fleetmesh-node ARGS --dir NODE_DIR` for node `i`; returns stdout.
    pub fn node_cmd(&self, i: usize, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new(&self.node_bin)
                .args(args)
                .args(["--dir", path_str(&self.nodes[i].dir)?]),
        )
    }

    /// Starts `bin ARGS`, in namespace `ns` if given (`ip netns exec`
    /// execs the binary, so the child's PID is the process's own).
    fn spawn(&self, ns: Option<&str>, bin: &Path, args: &[String], log: &str) -> Result<Child> {
        let log_path = self.dir.join(log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .env(
                "FLEETMESH_LOG",
                std::env::var("FLEETMESH_LAB_LOG").unwrap_or("info,libp2p_kad=error".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))
    }

    /// Starts the seed and waits until it listens.
    pub fn start_seed(&mut self) -> Result<()> {
        self.start_seed_with(&[])
    }

    /// Starts the seed with extra `run` arguments and waits until it listens.
    pub fn start_seed_with(&mut self, extra: &[&str]) -> Result<()> {
        let status = self.seed_dir.join("run").join(MESH_STATUS_FILE);
        let _ = std::fs::remove_file(&status);
        let mut args = vec![
            "run".into(),
            "--dir".into(),
            path_str(&self.seed_dir)?.into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        for l in self.listen(None) {
            args.extend(["--listen".into(), l]);
        }
        let ns = self.net.as_ref().map(|n| n.seed.ns.as_str());
        self.seed = Some(self.spawn(ns, &self.seed_bin, &args, "seed.log")?);
        let found = wait_until(Duration::from_secs(30), || {
            read_status(&status).and_then(|s| {
                s.listen
                    .iter()
                    .find(|a| a.contains("/quic-v1"))
                    .or(s.listen.first())
                    .cloned()
            })
        });
        self.seed_addr = Some(found.context("the seed did not start listening within 30 s")?);
        Ok(())
    }

    /// Kills the seed (SIGKILL).
    pub fn kill_seed(&mut self) {
        if let Some(mut c) = self.seed.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Listen addresses of the seed (`None`) or node `i`.
    fn listen(&self, node: Option<usize>) -> Vec<String> {
        match (&self.net, node) {
            (Some(net), None) => net.seed.listen(),
            (Some(net), Some(i)) => net.nodes.get(i).map_or_else(Vec::new, |h| h.listen()),
            (None, _) => LISTEN.iter().map(|l| l.to_string()).collect(),
        }
    }

    /// Creates a node in `site` bootstrapping to the seed; returns its index.
    /// With a [`Net`], node `i` is the net's node `i`.
    pub fn add_node(&mut self, site: &str, toml_extra: &str) -> Result<usize> {
        let addr = self.seed_addr.clone().context("start the seed first")?;
        let i = self.nodes.len();
        let listen = self.listen(Some(i));
        if listen.is_empty() {
            bail!("the network has no place for node {i}");
        }
        let dir = self.dir.join(format!("node{i:02}"));
        let root = std::fs::read_to_string(self.seed_dir.join("root.pub"))?;
        let mut cmd = Command::new(&self.node_bin);
        cmd.args(["init", "--dir", path_str(&dir)?, "--root-key", root.trim()])
            .args(["--site", site, "--bootstrap", &addr]);
        if self.net.is_none() {
            cmd.arg("--no-mdns");
        }
        for l in &listen {
            cmd.args(["--listen", l]);
        }
        let peer_id = run_ok(&mut cmd)?;
        let credential = dir.join("member.cred");
        self.seed_cmd(&[
            "enroll",
            "--node-key",
            &peer_id,
            "--site",
            site,
            "--out",
            path_str(&credential)?,
        ])?;
        if !toml_extra.is_empty() {
            let path = dir.join("node.toml");
            let text = std::fs::read_to_string(&path)?;
            std::fs::write(&path, patch_toml(&text, toml_extra))?;
        }
        self.nodes.push(LabNode {
            dir,
            site: site.into(),
            peer_id,
            child: None,
        });
        Ok(i)
    }

    /// Starts node `i` with extra `run` arguments.
    pub fn start_node(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let node = &self.nodes[i];
        let mut args = vec!["run".into(), "--dir".into(), path_str(&node.dir)?.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let ns = self.net.as_ref().map(|n| n.nodes[i].ns.as_str());
        let child = self.spawn(ns, &self.node_bin, &args, &format!("node{i:02}.log"))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Node `i`'s peak resident memory (VmHWM) so far, in KiB, while it runs.
    pub fn node_peak_rss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.nodes[i].child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// When node `i` first logged that `version` was announced to it.
    pub fn node_announced_at(&self, i: usize, version: &str) -> Option<jiff::Timestamp> {
        let log = std::fs::read_to_string(self.dir.join(format!("node{i:02}.log"))).ok()?;
        let needle = format!("release announced version={version} ");
        log.lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
    }

    /// Node `i`'s latest status.
    pub fn node_status(&self, i: usize) -> Option<MeshStatus> {
        read_status(&self.nodes[i].dir.join("run").join(MESH_STATUS_FILE))
    }

    /// Node `i`'s latest updater status (slot, booted version, update).
    pub fn node_update(&self, i: usize) -> Option<Status> {
        let path = self.nodes[i].dir.join("run").join(STATUS_FILE);
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// The seed's latest status.
    pub fn seed_status(&self) -> Option<MeshStatus> {
        read_status(&self.seed_dir.join("run").join(MESH_STATUS_FILE))
    }

    /// True if node `i` has release `version` complete.
    pub fn node_complete(&self, i: usize, version: &str) -> bool {
        self.node_status(i).is_some_and(|s| {
            s.releases
                .iter()
                .any(|r| r.version == version && r.complete)
        })
    }

    /// Waits until every running node is connected to every other and to
    /// the seed (as far as `mesh.max_peers` allows).
    pub fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let want = self.nodes.len();
        let ok = wait_until(timeout, || {
            (0..self.nodes.len())
                .filter(|&i| self.nodes[i].child.is_some())
                .all(|i| self.node_status(i).is_some_and(|s| s.peers >= want.min(64)))
                .then_some(())
        });
        ok.with_context(|| format!("nodes did not all connect within {timeout:?}"))
    }

    /// Waits until every node in `which` has `version` complete.
    pub fn wait_complete(
        &self,
        which: &[usize],
        version: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        let done = wait_until(timeout, || {
            which
                .iter()
                .all(|&i| self.node_complete(i, version))
                .then_some(())
        });
        if done.is_none() {
            let behind: Vec<String> = which
                .iter()
                .filter(|&&i| !self.node_complete(i, version))
                .map(|&i| format!("node{i:02}"))
                .collect();
            bail!(
                "{} did not complete {version} within {timeout:?}",
                behind.join(", ")
            );
        }
        Ok(start.elapsed())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_seed();
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// The workspace binary `name` built next to `exe` (a test uses its
/// `CARGO_BIN_EXE_fleetmesh-testnet`).
pub fn binary_next_to(exe: &str, name: &str) -> Result<PathBuf> {
    let path = Path::new(exe).with_file_name(name);
    if !path.is_file() {
        bail!("{} missing: run `cargo test --workspace`", path.display());
    }
    Ok(path)
}

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// From now on SIGINT and SIGTERM only set a flag, so that the lab can
/// stop its processes and delete what it made: waits end early and
/// [`check_interrupted`] errors.
pub fn catch_interrupts() -> Result<()> {
    let flag = INTERRUPTED.get_or_init(Arc::default);
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag)).context("install signal handler")?;
    }
    Ok(())
}

/// Errors once SIGINT or SIGTERM arrived (after [`catch_interrupts`]).
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
        bail!("interrupted");
    }
    Ok(())
}

/// Polls `f` every 50 ms until it returns `Some`, `timeout` passes or the
/// run is interrupted.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout || check_interrupted().is_err() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` from a daemon's local API (`run --api` / `--http`): the
/// status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .with_context(|| format!("read {path} from {addr}"))?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}{path}: no HTTP response"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{addr}{path}: bad status line"))?;
    Ok((code, body.to_owned()))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sets `section.key = value` lines in a node.toml written by `init`:
/// replaces the key where its section has it, else adds it to the section.
fn patch_toml(text: &str, extra: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let Some((full_key, value)) = line.split_once('=') else {
            continue;
        };
        let (section, key) = full_key
            .trim()
            .split_once('.')
            .unwrap_or(("", full_key.trim()));
        let new_line = format!("{key} = {}", value.trim());
        let mut current = String::new();
        let mut header = None;
        let mut replaced = false;
        for (n, l) in lines.iter_mut().enumerate() {
            if l.starts_with('[') {
                current = l.trim_matches(['[', ']']).to_owned();
                if current == section {
                    header = Some(n);
                }
            } else if current == section && l.split('=').next().map(str::trim) == Some(key) {
                *l = new_line.clone();
                replaced = true;
                break;
            }
        }
        match (replaced, header) {
            (true, _) => {}
            (false, Some(h)) => lines.insert(h + 1, new_line),
            (false, None) if section.is_empty() => lines.insert(0, new_line),
            (false, None) => lines.extend([format!("[{section}]"), new_line]),
        }
    }
    lines.join("\n") + "\n"
}

/// A node's name in tables and reports.
pub fn node_name(i: usize) -> String {
    format!("node{i:02}")
}

/// True if the seed's policy shows `version`'s rollout halted.
pub fn rollout_halted(lab: &Lab, version: &str) -> bool {
    let Ok(out) = lab.seed_cmd(&["policy", "show", "--json"]) else {
        return false;
    };
    let Ok(p) = serde_json::from_str::<serde_json::Value>(&out) else {
        return false;
    };
    p["rollouts"].as_array().is_some_and(|rs| {
        rs.iter()
            .any(|r| r["version"] == version && r["state"].get("halted").is_some())
    })
}

/// A node's update state as its status file shows it.
#[derive(Debug)]
pub struct View {
    /// `nodeNN`.
    pub name: String,
    /// Its site.
    pub site: String,
    /// The active slot.
    pub slot: String,
    /// The running release's version.
    pub booted: Option<String>,
    /// The updater's state.
    pub state: String,
    /// The release being (or last) applied.
    pub target: Option<String>,
}

impl View {
    pub fn committed(&self, version: &str) -> bool {
        self.booted.as_deref() == Some(version) && self.state == "committed"
    }

    /// Tried `version`, failed its health check and rolled back.
    pub fn rolled_back(&self, version: &str) -> bool {
        self.target.as_deref() == Some(version) && self.state == "rolled_back"
    }

    /// Not in the middle of an update.
    pub fn settled(&self) -> bool {
        matches!(
            self.state.as_str(),
            "idle" | "staged" | "waiting_for_window" | "committed" | "rolled_back" | "failed"
        )
    }

    /// A short cell for a progress table.
    pub fn short(&self) -> String {
        let state = match self.state.as_str() {
            "waiting_for_window" => "wait",
            "committed" => "ok",
            "rolled_back" => "rolledback",
            "installing" => "install",
            "rebooting" => "reboot",
            s => s,
        };
        format!(
            "{}:{}",
            self.booted.as_deref().unwrap_or("-"),
            state.chars().take(10).collect::<String>()
        )
    }
}

/// Every node's update state.
pub fn fleet(lab: &Lab) -> Vec<View> {
    (0..lab.nodes.len())
        .map(|i| {
            let s = lab.node_update(i);
            View {
                name: node_name(i),
                site: lab.nodes[i].site.clone(),
                slot: s
                    .as_ref()
                    .map_or("?".into(), |s| format!("{:?}", s.active_slot)),
                booted: s.as_ref().and_then(|s| s.booted_version.clone()),
                state: s
                    .as_ref()
                    .map_or("starting".into(), |s| s.update.state.clone()),
                target: s.and_then(|s| s.update.target_version),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::patch_toml;

    #[test]
    fn patch_replaces_or_adds_keys_in_their_section() {
        let text = "platform = \"x\"\n[mesh]\nsite = \"a\"\nmdns = false\n[update]\ninstall_when_staged = false\n";
        let out = patch_toml(
            text,
            "mesh.download_bytes_per_sec = 100\nupdate.install_when_staged = true",
        );
        assert!(
            out.contains("[mesh]\ndownload_bytes_per_sec = 100\nsite"),
            "{out}"
        );
        let again = patch_toml(&out, "mesh.download_bytes_per_sec = 7");
        assert_eq!(
            again.matches("download_bytes_per_sec").count(),
            1,
            "{again}"
        );
        assert!(out.contains("install_when_staged = true"), "{out}");
        assert!(!out.contains("install_when_staged = false"), "{out}");
    }
}
