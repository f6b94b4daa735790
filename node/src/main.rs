//! `fleetmesh-node`: the edge agent. Parsing, the clock and process
//! control live here; the work is in the library.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use fleetmesh_node::config::{BackendKind, NodeConfig, SlotsConfig};
use fleetmesh_node::slots::{
    file::FileBackend, grub::GrubBackend, uboot::UbootBackend, SlotBackend,
};
use fleetmesh_node::updater::{Next, Status, Updater, STATUS_FILE, VERDICT_FILE};
use fleetmesh_node::ChunkStore;
use fleetmesh_node::{cli, fsutil};
use fleetmesh_protocol::keys::{PublicKey, Root};
use fleetmesh_protocol::{codec, RoleKeys, TrustChain, TrustState};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
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
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot: resume any update from the journal, then install new releases.
    Run {
        /// Node directory (node.toml, root.pub, trust.chain, store/).
        #[arg(long)]
        dir: PathBuf,
        /// Handle this boot only; exit 0 when idle, 75 when a reboot is due.
        #[arg(long)]
        once: bool,
    },
    /// Show the slot, version and update state.
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
    cli::init_logging();
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
        Cmd::Run { dir, once } => match (boot(&dir, once)?, once) {
            (Next::Reboot, true) => return Ok(ExitCode::from(EXIT_REBOOT)),
            (Next::Reboot, false) => reboot(&dir)?,
            (Next::Idle, _) => {}
        },
        Cmd::Status { dir, json } => {
            let path = dir.join("run").join(STATUS_FILE);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "read {} (has `fleetmesh-node run` started?)",
                    path.display()
                )
            })?;
            let status: Status = serde_json::from_slice(&bytes)
                .with_context(|| format!("parse {}", path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
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

/// One boot: resume the journal, then offer new releases (once, or every
/// few seconds until a reboot is due). The store and the backend live for
/// the whole boot, so the bootloader's decision is taken exactly once.
fn boot(dir: &Path, once: bool) -> anyhow::Result<Next> {
    let config = NodeConfig::load(dir)?;
    let trust = load_trust(dir)?;
    let store = ChunkStore::open(&dir.join("store"))?;
    let run = run_dir(dir)?;
    let backend = backend(&config.slots);
    let mut updater = Updater::start(
        &store,
        backend,
        trust,
        config.platform.clone(),
        config.update.clone(),
        run.clone(),
    )?;
    if updater.resume(cli::unix_now())? == Next::Reboot {
        return Ok(Next::Reboot);
    }
    loop {
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

fn load_trust(dir: &Path) -> anyhow::Result<TrustState> {
    let root_path = dir.join("root.pub");
    let root: PublicKey<Root> = std::fs::read_to_string(&root_path)
        .with_context(|| format!("read {}", root_path.display()))?
        .parse()
        .with_context(|| format!("parse {}", root_path.display()))?;
    let chain_path = dir.join("trust.chain");
    let bytes =
        std::fs::read(&chain_path).with_context(|| format!("read {}", chain_path.display()))?;
    let chain: TrustChain =
        codec::decode(&bytes).with_context(|| format!("decode {}", chain_path.display()))?;
    Ok(TrustState::from_chain(RoleKeys::single(root), &chain)?)
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
