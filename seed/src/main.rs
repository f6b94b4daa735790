//! `fleetmesh-seed`: the operator's command line. Parsing, the clock,
//! randomness and printing live here; the work is in the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleetmesh_node::mesh::{
    self,
    status::{MeshStatus, MESH_STATUS_FILE},
};
use fleetmesh_node::{api, cli};
use fleetmesh_seed::dashboard::{self, History};
use fleetmesh_seed::inbox::{Inbox, Outcome};
use fleetmesh_seed::layout::Seed;
use fleetmesh_seed::publish::{publish, PublishRequest};
use fleetmesh_seed::{export, fleet, init, members, policy, rotate, serve, verify};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// The fleetmesh seed: publishes signed OS releases to the fleet.
#[derive(Debug, Parser)]
#[command(name = "fleetmesh-seed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    logging: cli::Logging,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create keys, the first trust document and a config in DIR; print the
    /// root public key nodes are provisioned with.
    Init {
        /// Seed directory (created if absent; must be empty).
        #[arg(long)]
        dir: PathBuf,
        /// Use a non-empty DIR; an existing seed there is replaced.
        #[arg(long)]
        force: bool,
        /// Root keys to make (keys/root.key, keys/root-2.key, ...), to keep
        /// offline apart; 1-16.
        #[arg(long, default_value_t = 1, value_name = "N")]
        root_keys: usize,
        /// How many root keys must sign each trust document [default: a
        /// majority of --root-keys].
        #[arg(long, value_name = "K")]
        root_threshold: Option<u8>,
        /// Release keys to make (keys/release.key, release-2.key, ...); the
        /// seed signs with every one it holds; 1-16.
        #[arg(long, default_value_t = 1, value_name = "N")]
        release_keys: usize,
        /// How many release keys must sign each manifest and announcement
        /// [default: a majority of --release-keys].
        #[arg(long, value_name = "K")]
        release_threshold: Option<u8>,
    },
    /// Chunk, compress, store and sign an image as a new release; print its
    /// summary as JSON.
    Publish {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// The OS image.
        #[arg(long)]
        image: PathBuf,
        /// Release version (semver), greater than the newest in the channel.
        #[arg(long, value_name = "X.Y.Z", value_parser = cli::parse_version)]
        version: semver::Version,
        /// Release channel [default: the config's default_channel].
        #[arg(long)]
        channel: Option<String>,
        /// A platform the image runs on; repeat for several [default: the config's].
        #[arg(long = "platform", value_name = "NAME")]
        platforms: Vec<String>,
    },
    /// Write a release as one bundle file for a site without a link to the
    /// mesh (`fleetmesh-node import` loads it); print a summary as JSON.
    Export {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// The release's version.
        #[arg(long, value_name = "X.Y.Z", value_parser = cli::parse_version)]
        version: semver::Version,
        /// Its channel, if the version is in several.
        #[arg(long)]
        channel: Option<String>,
        /// Leave out the chunks of this earlier version (a delta for sites
        /// that run it).
        #[arg(long, value_name = "X.Y.Z", value_parser = cli::parse_version)]
        from: Option<semver::Version>,
        /// The bundle file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Enroll a node in the fleet: sign a membership credential for its
    /// key and site; copy the file it writes to the node as `member.cred`.
    /// Prints a summary as JSON.
    Enroll {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// The node's key: its peer id (what `fleetmesh-node init` prints)
        /// or its public key in hex.
        #[arg(long, value_name = "KEY")]
        node_key: String,
        /// The node's site.
        #[arg(long)]
        site: String,
        /// A label, key=value (repeatable).
        #[arg(long = "label", value_name = "K=V", value_parser = cli::parse_label)]
        labels: Vec<(String, String)>,
        /// Days the credential is valid (re-enroll before then).
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Also write the credential here [default: DIR/members/<peer id>.cred].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the nodes enrolled (and expired or revoked) by site.
    Members {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from the fleet: sign a policy version that revokes
    /// its credentials; the running seed gossips it and every peer drops
    /// the node within seconds.
    Revoke {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// The node's peer id or public key in hex.
        #[arg(long, value_name = "KEY")]
        node_key: String,
    },
    /// Replace the release or policy key with a new one, delegated by the
    /// next trust document (signed with the root key), and sign again what
    /// the old key signed. Stop `run` before and start it after. Prints a
    /// summary as JSON.
    RotateKey {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// The key to replace.
        #[arg(long, value_enum)]
        role: rotate::Rotate,
        /// A root key file, if it is not in DIR/keys (kept offline);
        /// repeat for a root with a threshold.
        #[arg(long = "root-key", value_name = "FILE")]
        root_keys: Vec<PathBuf>,
    },
    /// List releases.
    Releases {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Serve the mesh: announce every release (and new publishes at once),
    /// serve chunks, collect node reports. Stops on SIGINT/SIGTERM.
    Run {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// Listen here instead of the config's mesh.listen (repeatable).
        #[arg(long = "listen", value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Serve the web dashboard (`/`), `GET /status` (JSON, as `status
        /// --json`), `/history` and `/metrics` (Prometheus) on this
        /// address, for example 127.0.0.1:9181 [default: the config's
        /// http.listen].
        #[arg(long, value_name = "ADDR:PORT")]
        http: Option<std::net::SocketAddr>,
    },
    /// Show what the running seed serves: per release, egress bytes; the
    /// nodes' latest reports.
    Status {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign and show the policy: windows, groups, rollouts, pins.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Start, pause, resume or abort the rollout of a version (each signs a
    /// new policy version).
    Rollout {
        /// What to do.
        #[arg(value_enum)]
        action: RolloutAction,
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// The release's version.
        #[arg(long, value_name = "X.Y.Z", value_parser = cli::parse_version)]
        version: semver::Version,
    },
    /// Re-read and re-hash every chunk and check every signature; exit 1 and
    /// name the bad chunks if anything is wrong.
    Verify {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// Only this release.
        #[arg(long, value_name = "X.Y.Z", value_parser = cli::parse_version)]
        version: Option<semver::Version>,
        /// Print the findings as a JSON array (the exit status still says
        /// whether every release verified).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Validate FILE.toml, sign it as the next policy version, install it
    /// (a running seed gossips it at once).
    Apply {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// The policy file (see docs/policy.md).
        file: PathBuf,
    },
    /// Print the policy in force.
    Show {
        /// Seed directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RolloutAction {
    Start,
    Pause,
    Resume,
    Abort,
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

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init {
            dir,
            force,
            root_keys,
            root_threshold,
            release_keys,
            release_threshold,
        } => {
            let count = |n: usize, k: Option<u8>| init::KeyCount {
                n,
                threshold: k.unwrap_or((n / 2 + 1).min(255) as u8),
            };
            let keys = init::Keys {
                root: count(root_keys, root_threshold),
                release: count(release_keys, release_threshold),
            };
            let root = init::init(&dir, force, keys, cli::unix_now(), &mut rand_core::OsRng)?;
            println!("{root}");
            eprintln!(
                "initialised seed in {}; provision nodes with the root key(s) above (root.pub)",
                dir.display()
            );
        }
        Command::Publish {
            dir,
            image,
            version,
            channel,
            platforms,
        } => {
            let seed = Seed::open(&dir)?;
            let req = PublishRequest {
                image,
                version,
                channel,
                platforms,
            };
            let len = std::fs::metadata(&req.image).map_or(0, |m| m.len());
            let bar = cli::progress_bar(
                len,
                "publishing",
                "{bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            );
            let info = publish(&seed, &req, cli::unix_now(), &|done| bar.set_position(done))?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string(&info)?);
        }
        Command::Export {
            dir,
            version,
            channel,
            from,
            out,
        } => {
            let req = export::ExportRequest {
                version,
                channel,
                from,
                out,
            };
            let bar = cli::progress_bar(0, "exporting", "{pos}/{len} chunks");
            let done = export::export(&Seed::open(&dir)?, &req, cli::unix_now(), &|n, of| {
                bar.set_length(of);
                bar.set_position(n);
            })?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string(&done)?);
        }
        Command::Enroll {
            dir,
            node_key,
            site,
            labels,
            days,
            out,
        } => {
            let seed = Seed::open(&dir)?;
            let done = members::enroll(
                &seed,
                members::parse_node_key(&node_key)?,
                &site,
                labels.into_iter().collect(),
                days,
                out.as_deref(),
                cli::unix_now(),
            )?;
            println!("{}", serde_json::to_string(&done)?);
        }
        Command::Members { dir, json } => {
            let list = members::list(&Seed::open(&dir)?, cli::unix_now())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{:<16} {:<9} {:<11} NODE", "SITE", "STATUS", "EXPIRES")
                    .context("write to stdout")?;
                for m in &list {
                    let expires = jiff::Timestamp::from_second(m.expires_at.0 as i64).map_or_else(
                        |_| m.expires_at.to_string(),
                        |t| t.strftime("%Y-%m-%d").to_string(),
                    );
                    writeln!(
                        out,
                        "{:<16} {:<9} {:<11} {}",
                        m.site, m.status, expires, m.node_id
                    )
                    .context("write to stdout")?;
                }
            }
        }
        Command::Revoke { dir, node_key } => {
            let seed = Seed::open(&dir)?;
            let key = members::parse_node_key(&node_key)?;
            let version = members::revoke(&seed, key, cli::unix_now())?;
            println!(
                "{}",
                serde_json::json!({ "node_id": members::peer_id(&key), "policy_version": version })
            );
        }
        Command::RotateKey {
            dir,
            role,
            root_keys,
        } => {
            let seed = Seed::open(&dir)?;
            let done = rotate::rotate(
                &seed,
                role,
                &root_keys,
                cli::unix_now(),
                &mut rand_core::OsRng,
            )?;
            println!("{}", serde_json::to_string(&done)?);
            eprintln!("restart `fleetmesh-seed run` to serve the new trust chain and key");
        }
        Command::Releases { dir, json } => {
            let mut releases = Seed::open(&dir)?.store()?.releases()?;
            releases.sort_by(|a, b| {
                let key = |r: &fleetmesh_node::ReleaseInfo| {
                    (r.channel.clone(), semver::Version::parse(&r.version).ok())
                };
                key(a).cmp(&key(b))
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&releases)?);
            } else {
                print_releases(&releases)?;
            }
        }
        Command::Run { dir, listen, http } => {
            let seed = Seed::open(&dir)?;
            let params = serve::params(&seed, &listen, &mut rand_core::OsRng)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let _api = match http.or(seed.config.http.listen) {
                Some(addr) => {
                    let history = spawn_history_sampler(seed.clone());
                    let status_seed = seed.clone();
                    let api = api::Api {
                        status: Box::new(move || status_json(&status_seed)),
                        metrics: params.metrics.clone(),
                        pages: dashboard_pages(history),
                    };
                    Some(api::start(&runtime, addr, api)?)
                }
                None => None,
            };
            spawn_rollout_stepper(dir.clone());
            spawn_credential_renewer(seed.clone());
            if let Some(inbox) = &seed.config.inbox.dir {
                spawn_inbox(seed.clone(), dir.join(inbox))?;
            }
            runtime.block_on(async {
                let stop = async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("install SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                };
                mesh::run(params, stop).await
            })?;
        }
        Command::Status { dir, json } => {
            let seed = Seed::open(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&seed)?)?);
            } else {
                let status = read_status(&seed)?;
                print_status(&status, &fleet_view(&seed, &status)?);
            }
        }
        Command::Policy {
            command: PolicyCmd::Apply { dir, file },
        } => {
            let doc = policy::apply(&Seed::open(&dir)?, &file, cli::unix_now())?;
            eprintln!("policy version {} signed and installed", doc.version);
        }
        Command::Policy {
            command: PolicyCmd::Show { dir, json },
        } => match policy::current(&Seed::open(&dir)?)? {
            None => anyhow::bail!("no policy yet: run `fleetmesh-seed policy apply` first"),
            Some((doc, _)) if json => println!("{}", serde_json::to_string_pretty(&doc)?),
            Some((doc, _)) => print_policy(&doc),
        },
        Command::Rollout {
            action,
            dir,
            version,
        } => {
            let cmd = match action {
                RolloutAction::Start => policy::RolloutCommand::Start,
                RolloutAction::Pause => policy::RolloutCommand::Pause,
                RolloutAction::Resume => policy::RolloutCommand::Resume,
                RolloutAction::Abort => policy::RolloutCommand::Abort,
            };
            let doc = policy::rollout(&Seed::open(&dir)?, &version, cmd, cli::unix_now())?;
            eprintln!(
                "rollout of {version}: {action:?}; policy version {}",
                doc.version
            );
        }
        Command::Verify { dir, version, json } => {
            let checks = verify::verify(&Seed::open(&dir)?, version.as_ref(), cli::unix_now())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
                if checks.iter().all(|c| c.ok()) {
                    return Ok(ExitCode::SUCCESS);
                }
                eprintln!("error: verification failed");
                return Ok(ExitCode::FAILURE);
            }
            return Ok(print_checks(&checks));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_status(seed: &Seed) -> anyhow::Result<MeshStatus> {
    let path = seed.layout.run().join(MESH_STATUS_FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "read {} (has `fleetmesh-seed run` started?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

/// The fleet as the policy and the nodes' reports show it.
fn fleet_view(seed: &Seed, status: &MeshStatus) -> anyhow::Result<fleet::FleetView> {
    let policy = policy::current(seed)?.map(|(d, _)| d);
    Ok(fleet::view(
        &status.nodes,
        policy.as_ref(),
        cli::unix_now(),
        seed.config.mesh.report_stale_after_secs,
    ))
}

/// `status --json` and the API's `/status`: the mesh status with the fleet.
fn status_json(seed: &Seed) -> anyhow::Result<serde_json::Value> {
    let status = read_status(seed)?;
    let mut out = serde_json::to_value(&status)?;
    out["fleet"] = serde_json::to_value(fleet_view(seed, &status)?)?;
    Ok(out)
}

/// The dashboard's page, script, style and history.
fn dashboard_pages(history: Arc<Mutex<History>>) -> Vec<api::Page> {
    vec![
        api::Page::fixed("/", "text/html; charset=utf-8", dashboard::HTML),
        api::Page::fixed(
            "/app.js",
            "text/javascript; charset=utf-8",
            dashboard::SCRIPT,
        ),
        api::Page::fixed("/app.css", "text/css; charset=utf-8", dashboard::STYLE),
        api::Page {
            path: "/history",
            kind: api::JSON,
            body: Box::new(move || {
                let h = history.lock().unwrap_or_else(|e| e.into_inner());
                Ok(serde_json::to_string(&*h)?)
            }),
        },
    ]
}

/// Every second, samples the fleet's progress from the nodes' reports
/// into a bounded history (an hour at one sample a second, then thinned).
fn spawn_history_sampler(seed: Seed) -> Arc<Mutex<History>> {
    let history = Arc::new(Mutex::new(History::new(1, 3600)));
    let shared = history.clone();
    std::thread::spawn(move || loop {
        // No status before the mesh has written one: nothing to sample.
        if let Ok(status) = read_status(&seed) {
            let sample = dashboard::Sample::of(cli::unix_now().0, &status.nodes);
            shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sample);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    });
    history
}

/// Publishes what is dropped into the inbox, every `inbox.scan_secs`.
fn spawn_inbox(seed: Seed, dir: PathBuf) -> anyhow::Result<()> {
    let mut inbox = Inbox::new(dir.clone())?;
    let every = std::time::Duration::from_secs(seed.config.inbox.scan_secs);
    tracing::info!("publishing images dropped into {}", dir.display());
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        match inbox.scan(&seed, cli::unix_now()) {
            Ok(outcomes) => {
                for o in outcomes {
                    match o {
                        Outcome::Published(info) => tracing::info!(
                            "inbox: published {} ({}) as release {}",
                            info.version,
                            info.channel,
                            info.release_id
                        ),
                        Outcome::Failed { image, reason } => {
                            tracing::warn!("inbox: {image} refused, moved to failed/: {reason}")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("inbox {}: {}", dir.display(), cli::error_line(&e)),
        }
    });
    Ok(())
}

/// Every hour, renews the seed's own membership credential when half its
/// life is gone (the mesh re-reads the file).
fn spawn_credential_renewer(seed: Seed) {
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        let renewed = serve::own_node_key(&seed)
            .and_then(|key| members::renew_own(&seed, key, cli::unix_now()));
        if let Err(e) = renewed {
            tracing::error!("renewing the seed's credential: {}", cli::error_line(&e));
        }
    });
}

/// Every 5 s, advances or halts rollouts from the nodes' reports (each
/// decision signs a new policy, which the running mesh gossips).
fn spawn_rollout_stepper(dir: PathBuf) {
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        let stepped = Seed::open(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|seed| {
                let status = read_status(&seed)?;
                let published: Vec<String> =
                    status.releases.iter().map(|r| r.version.clone()).collect();
                Ok(fleet::step_rollouts(
                    &seed,
                    &status.nodes,
                    &published,
                    cli::unix_now(),
                )?)
            });
        if let Err(e) = stepped {
            tracing::warn!("rollout step: {}", cli::error_line(e.as_ref()));
        }
    });
}

fn print_status(status: &MeshStatus, fleet: &fleet::FleetView) {
    println!("seed {} at {}", status.node_id, status.listen.join(" "));
    println!("peers {} {:?}", status.peers, status.peer_sites);
    for r in &status.releases {
        println!("release {:<10} egress {} B", r.version, r.egress_bytes);
    }
    println!(
        "nodes {} ({} stale); by version {:?}; by state {:?}; by site {:?}",
        fleet.nodes.len(),
        fleet.stale,
        fleet.by_version,
        fleet.by_state,
        fleet.by_site
    );
    for r in &fleet.rollouts {
        println!("rollout {} {:?}", r.version, r.state);
        for w in &r.waves {
            println!(
                "  wave {:<12} {} members {:>4} committed {:>4} failed {:>4}",
                w.name,
                if w.open { "open  " } else { "closed" },
                w.members,
                w.succeeded,
                w.failed
            );
        }
    }
    for n in &fleet.nodes {
        println!(
            "  {} {:<10} {:<8} {:<20} slot {:<2} last {}{} {}",
            n.node_id,
            n.site,
            n.version.as_deref().unwrap_or("?"),
            n.state,
            n.slot.as_deref().unwrap_or("?"),
            n.last_report,
            if n.stale { " STALE" } else { "" },
            n.reason.as_deref().unwrap_or("")
        );
    }
}

fn print_policy(doc: &fleetmesh_policy::doc::PolicyDoc) {
    println!(
        "policy version {} (expires {})",
        doc.version, doc.expires_at
    );
    for g in &doc.groups {
        println!("group   {:<16} {:?}", g.name, g.selector);
    }
    for w in &doc.windows {
        let when = match (&w.cron, w.start, w.end) {
            (Some(c), _, _) => format!("cron {c:?} for {} min", w.duration_secs / 60),
            (None, Some(s), Some(e)) => format!("once {s}..{e}"),
            _ => "?".into(),
        };
        println!(
            "window  {:<16} {} {when} groups {:?}",
            w.name, w.tz, w.groups
        );
    }
    for r in &doc.rollouts {
        println!(
            "rollout {:<16} {:?}, wave {} of {}",
            r.version,
            r.state,
            r.wave + 1,
            r.waves.len()
        );
    }
    for p in &doc.pins {
        println!("pin     {:<16} {}", p.group, p.version);
    }
    for p in &doc.rollback {
        println!("rollback {:<15} {}", p.group, p.version);
    }
}

fn print_releases(releases: &[fleetmesh_node::ReleaseInfo]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<12} {:<10} {:>14} {:>8} {:>10}  RELEASE ID",
        "VERSION", "CHANNEL", "IMAGE BYTES", "CHUNKS", "NEW"
    )
    .context("write to stdout")?;
    for r in releases {
        writeln!(
            out,
            "{:<12} {:<10} {:>14} {:>8} {:>10}  {}",
            r.version, r.channel, r.image_bytes, r.chunks, r.new_chunks, r.release_id
        )
        .context("write to stdout")?;
    }
    Ok(())
}

fn print_checks(checks: &[verify::ReleaseCheck]) -> ExitCode {
    let mut bad = false;
    for check in checks {
        if check.ok() {
            println!(
                "ok   {} ({}) {}",
                check.version, check.channel, check.release_id
            );
            continue;
        }
        bad = true;
        println!(
            "BAD  {} ({}) {}",
            check.version, check.channel, check.release_id
        );
        for problem in &check.problems {
            println!("     {problem}");
        }
        for (id, reason) in &check.bad_chunks {
            println!("     bad chunk {id}: {reason}");
        }
    }
    if bad {
        eprintln!("error: verification failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
