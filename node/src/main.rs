//! `fleetmesh-node`: the edge agent. Parsing, the clock and process
//! control live here; the work is in the library.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use fleetmesh_node::config::{BackendKind, NodeConfig, SlotsConfig};
use fleetmesh_node::mesh::{self, status::MeshStatus};
use fleetmesh_node::slots::{
    file::FileBackend, grub::GrubBackend, uboot::UbootBackend, SlotBackend,
};
use fleetmesh_node::updater::{Next, Status, Updater, VERDICT_FILE};
use fleetmesh_node::ChunkStore;
use fleetmesh_node::{cli, daemon, fsutil};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit code of `run --once` when the node must reboot now.
const EXIT_REBOOT: u8 = 75;
const INSTALL_REQUEST: &str = "install.request";

/// The fleetmesh edge agent.
#[derive(Debug, Parser)]
#[command(name = "fleetmesh-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    logging: cli::Logging,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a node directory: node key, root key, node.toml.
    Init {
        /// Node directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// The fleet's root public key(s), as in the seed's root.pub: HEX, or
        /// K:HEX,HEX,... for a k-of-n root.
        #[arg(long, value_name = "HEX")]
        root_key: String,
        /// This node's site label.
        #[arg(long)]
        site: String,
        /// A label, key=value (repeatable).
        #[arg(long = "label", value_name = "K=V", value_parser = cli::parse_label)]
        labels: Vec<(String, String)>,
        /// A peer to join through, with /p2p/<id> (repeatable).
        #[arg(long = "bootstrap", value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// An address to listen on (repeatable; default: all interfaces, QUIC and TCP).
        #[arg(long = "listen", value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// The node's platform.
        #[arg(long, default_value = "generic")]
        platform: String,
        /// Do not use mDNS to find LAN peers.
        #[arg(long)]
        no_mdns: bool,
    },
    /// Join the mesh, fetch and serve releases; resume and apply updates.
    Run {
        /// Node directory (node.toml, root.pub, trust.chain, store/).
        #[arg(long)]
        dir: PathBuf,
        /// Handle this boot's update only (no mesh); exit 0 when idle, 75
        /// when a reboot is due.
        #[arg(long)]
        once: bool,
        /// Listen here instead of mesh.listen (repeatable).
        #[arg(long = "listen", value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Serve `GET /status` and `/metrics` here instead of api.listen,
        /// for example 127.0.0.1:9180.
        #[arg(long, value_name = "ADDR:PORT")]
        api: Option<std::net::SocketAddr>,
        /// Fault injection for tests: serve corrupt chunks.
        #[arg(long, hide = true)]
        chaos_corrupt_uploads: bool,
        /// Fault injection for tests: hold every chunk response this many
        /// seconds (a peer that trickles its uploads).
        #[arg(long, hide = true, value_name = "SECS", default_value_t = 0)]
        chaos_upload_delay: u64,
        /// Fault injection for tests: gossip the announcements in this file
        /// (4-byte big-endian length, then the message; repeated).
        #[arg(long, hide = true, value_name = "FILE")]
        chaos_gossip: Option<PathBuf>,
    },
    /// Show the mesh, slot, version and update state.
    Status {
        /// Node directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the node to install a stored release now (operator, testing).
    Install {
        /// Node directory.
        #[arg(long)]
        dir: PathBuf,
        /// The release's version.
        #[arg(long, value_name = "X.Y.Z", value_parser = cli::parse_version)]
        version: semver::Version,
    },
    /// Verify and load a release bundle made by `fleetmesh-seed export`
    /// (for sites without a link to the mesh); the node then serves it to
    /// its site like any other release. Prints what it loaded as JSON.
    Import {
        /// Node directory.
        #[arg(long)]
        dir: PathBuf,
        /// The bundle file.
        file: PathBuf,
    },
    /// Report the trial boot healthy (for `update.health = "external"`).
    MarkGood {
        /// Node directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Report the trial boot unhealthy: it rolls back.
    MarkBad {
        /// Node directory.
        #[arg(long)]
        dir: PathBuf,
        /// Why, for the status report.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn main() -> ExitCode {
    let args: Cli = match cli::parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    cli::init_logging(args.logging.log_format);
    match run(args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Init {
            dir,
            root_key,
            site,
            labels,
            bootstrap,
            listen,
            platform,
            no_mdns,
        } => {
            let opts = daemon::InitOptions {
                root_key: root_key
                    .trim()
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--root-key: {e}"))?,
                site,
                labels: labels.into_iter().collect(),
                bootstrap,
                listen,
                platform,
                mdns: !no_mdns,
            };
            let id = daemon::init(&dir, &opts, &mut rand_core::OsRng)?;
            println!("{id}");
        }
        Cmd::Run {
            dir, once: true, ..
        } => {
            let store = ChunkStore::open(&dir.join("store"))?;
            if boot(&dir, &store, true)? == Next::Reboot {
                return Ok(ExitCode::from(EXIT_REBOOT));
            }
        }
        Cmd::Run {
            dir,
            listen,
            api,
            chaos_corrupt_uploads,
            chaos_upload_delay,
            chaos_gossip,
            ..
        } => {
            let mut chaos = Vec::new();
            if let Some(path) = chaos_gossip {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
                let mut rest = bytes.as_slice();
                while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                    let len = (u32::from_be_bytes(*len) as usize).min(tail.len());
                    chaos.push(tail[..len].to_vec());
                    rest = &tail[len..];
                }
            }
            let faults = (chaos_corrupt_uploads, chaos_upload_delay, chaos);
            if serve(&dir, &listen, api, faults)? == Next::Reboot {
                reboot(&dir)?;
            }
        }
        Cmd::Status { dir, json } => {
            let out = daemon::status_json(&dir, NodeConfig::load(&dir).ok().as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            if out.get("node_id").is_some() {
                let mesh: MeshStatus = serde_json::from_value(out.clone())?;
                print_mesh(&mesh);
            }
            if out.get("update").is_some() {
                let status: Status = serde_json::from_value(out.clone())?;
                println!("active slot     {}", status.active_slot);
                println!(
                    "booted version  {}",
                    status.booted_version.as_deref().unwrap_or("unknown")
                );
                println!("update          {}", status.update.state);
                if let Some(v) = &status.update.target_version {
                    println!("target version  {v}");
                }
                if let Some(r) = &status.update.reason {
                    println!("reason          {r}");
                }
            }
            if let Some(open) = out["window_open"].as_bool() {
                let window = if open { "open" } else { "closed" };
                println!("window          {window}");
            }
        }
        Cmd::Install { dir, version } => {
            NodeConfig::load(&dir)?;
            let run_dir = run_dir(&dir)?;
            fsutil::write_atomic(
                &run_dir.join(INSTALL_REQUEST),
                version.to_string().as_bytes(),
                0o644,
            )?;
            eprintln!("install of {version} requested; the node applies it at its next pass");
        }
        Cmd::Import { dir, file } => {
            let bar = cli::progress_bar(0, "importing", "{pos}/{len} chunks");
            let imported =
                fleetmesh_node::bundle::import(&dir, &file, cli::unix_now(), &|n, of| {
                    bar.set_length(of);
                    bar.set_position(n);
                })?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string(&imported)?);
        }
        Cmd::MarkGood { dir } => {
            fsutil::write_atomic(&run_dir(&dir)?.join(VERDICT_FILE), b"good\n", 0o644)?
        }
        Cmd::MarkBad { dir, reason } => {
            let text = if reason.is_empty() {
                "bad\n".to_owned()
            } else {
                format!("bad: {reason}\n")
            };
            fsutil::write_atomic(&run_dir(&dir)?.join(VERDICT_FILE), text.as_bytes(), 0o644)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).with_context(|| format!("create {}", run.display()))?;
    Ok(run)
}

fn print_mesh(m: &MeshStatus) {
    println!("node id         {}", m.node_id);
    println!("site            {}", m.site);
    println!("peers           {}", m.peers);
    for r in &m.releases {
        let state = if r.complete { "complete" } else { "fetching" };
        println!(
            "release {:<8} {state}: {}/{} chunks, {} B down ({} B same site), {} B up",
            r.version,
            r.chunks_have,
            r.chunks_total,
            r.bytes_down,
            r.bytes_down_same_site,
            r.bytes_up
        );
    }
    if let Some(s) = &m.store {
        println!(
            "store           {} of {} B, {} release(s) evicted",
            s.used_bytes, s.max_bytes, s.evicted
        );
        if let Some(why) = &s.waiting {
            println!("store waiting   {why}");
        }
    }
}

/// The daemon: the mesh on this thread's runtime, the updater on its own
/// thread. Returns when a signal asks it to stop or the updater needs a
/// reboot.
fn serve(
    dir: &Path,
    listen: &[String],
    api: Option<std::net::SocketAddr>,
    (corrupt, delay, gossip): (bool, u64, Vec<Vec<u8>>),
) -> anyhow::Result<Next> {
    let config = NodeConfig::load(dir)?;
    let store = Arc::new(ChunkStore::open(&dir.join("store"))?);
    let mut params = daemon::node_params(dir, &config, store.clone(), listen)?;
    params.chaos_corrupt_uploads = corrupt;
    params.chaos_upload_delay = Duration::from_secs(delay);
    params.chaos_gossip = gossip;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let _api = match api.or(config.api.listen) {
        Some(addr) => {
            let (status_dir, status_config) = (dir.to_owned(), config.clone());
            let api = fleetmesh_node::api::Api {
                status: Box::new(move || daemon::status_json(&status_dir, Some(&status_config))),
                metrics: params.metrics.clone(),
                pages: Vec::new(),
            };
            Some(fleetmesh_node::api::start(&runtime, addr, api)?)
        }
        None => None,
    };
    let (reboot_tx, reboot_rx) = tokio::sync::oneshot::channel();
    let updater_dir = dir.to_owned();
    std::thread::Builder::new()
        .name("updater".into())
        .spawn(move || {
            let next = loop {
                match boot(&updater_dir, &store, false) {
                    Ok(next) => break next,
                    Err(e) => {
                        tracing::error!("updater: {}", cli::error_line(e.as_ref()));
                        std::thread::sleep(Duration::from_secs(30));
                    }
                }
            };
            let _ = reboot_tx.send(next);
        })
        .context("start the updater thread")?;
    runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Next>(1);
        let stop = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                next = reboot_rx => { let _ = tx.send(next.unwrap_or(Next::Idle)).await; }
            }
        };
        mesh::run(params, stop).await?;
        Ok(rx.try_recv().unwrap_or(Next::Idle))
    })
}

/// One boot: resume the journal, then offer new releases (once, or every
/// few seconds until a reboot is due). The backend lives for the whole
/// boot, so the bootloader's decision is taken exactly once.
fn boot(dir: &Path, store: &ChunkStore, once: bool) -> anyhow::Result<Next> {
    let config = NodeConfig::load(dir)?;
    let trust = daemon::trust_state(dir)?;
    let run = run_dir(dir)?;
    let backend = backend(&config.slots);
    let mut updater = Updater::start(
        store,
        backend,
        trust,
        config.platform.clone(),
        config.update.clone(),
        run.clone(),
    )?;
    if updater.resume(cli::unix_now())? == Next::Reboot {
        return Ok(Next::Reboot);
    }
    let chain_path = dir.join("trust.chain");
    let policy_path = dir.join(daemon::POLICY_FILE);
    // None: load on the first pass too. The mesh may have saved a chain
    // between `Updater::start` and here, and that must not be missed.
    let mut chain_seen = None;
    let mut policy_seen = None;
    loop {
        // The mesh rewrites the chain and the policy when peers bring newer ones.
        let chain_now = fsutil::mtime(&chain_path);
        if chain_now != chain_seen {
            chain_seen = chain_now;
            updater.set_trust(daemon::trust_state(dir)?);
            policy_seen = None;
        }
        let policy_now = fsutil::mtime(&policy_path);
        if policy_now != policy_seen {
            policy_seen = policy_now;
            match daemon::policy_gate(dir, &config, cli::unix_now()) {
                Ok(gate) => updater.set_policy(gate),
                Err(e) => tracing::warn!("policy not used: {}", cli::error_line(e.as_ref())),
            }
        }
        let request = run.join(INSTALL_REQUEST);
        let forced = match std::fs::read_to_string(&request) {
            Ok(text) => Some(cli::parse_version(text.trim()).map_err(anyhow::Error::msg)?),
            Err(_) => None,
        };
        let next = updater.offer(cli::unix_now(), forced.as_ref())?;
        if forced.is_some() {
            std::fs::remove_file(&request)
                .with_context(|| format!("remove {}", request.display()))?;
        }
        if next == Next::Reboot || once {
            return Ok(next);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn backend(slots: &SlotsConfig) -> Box<dyn SlotBackend> {
    let (a, b) = (slots.slot_a.clone(), slots.slot_b.clone());
    match slots.backend {
        BackendKind::File => Box::new(FileBackend::new(a, b, slots.boot_state.clone())),
        BackendKind::Grub => Box::new(GrubBackend::new(
            a,
            b,
            slots.grubenv.clone(),
            slots.cmdline.clone(),
        )),
        BackendKind::Uboot => Box::new(UbootBackend::new(
            a,
            b,
            slots.fw_env_config.clone(),
            slots.cmdline.clone(),
        )),
    }
}

/// The file backend reboots by restarting this process; the others run the
/// configured reboot command.
fn reboot(dir: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(dir)?;
    if config.slots.backend == BackendKind::File {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("locate fleetmesh-node")?;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec();
        bail!("restart fleetmesh-node: {err}");
    }
    let (program, args) = config
        .update
        .reboot_command
        .split_first()
        .context("update.reboot_command is empty")?;
    let status = std::process::Command::new(program).args(args).status()?;
    if !status.success() {
        bail!("{program} exited with {status}");
    }
    std::thread::sleep(Duration::from_secs(600));
    bail!("still running 10 minutes after asking to reboot")
}
