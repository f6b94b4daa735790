//! What the `fleetmesh-*` binaries share: argument errors on one line,
//! logging, the clock, error messages without repeated causes.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Parses the command line; on a usage error prints clap's first line (it
/// names the argument and the problem) and gives exit code 2.
pub fn parse_args<C: Parser>() -> Result<C, ExitCode> {
    match C::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let rendered = e.render().to_string();
            eprintln!(
                "{}",
                rendered.lines().next().unwrap_or("error: bad arguments")
            );
            Err(ExitCode::from(2))
        }
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text for people, coloured on a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The logging options every binary takes.
#[derive(Debug, clap::Args)]
pub struct Logging {
    /// Log lines as text or as JSON objects.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "FLEETMESH_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Logs to stderr, filtered by `FLEETMESH_LOG` (default `warn`, Kademlia
/// `error`); human lines are coloured only on a terminal.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEETMESH_LOG")
        // Kademlia warns when a lone seed has no one to bootstrap from.
        .unwrap_or_else(|_| "warn,libp2p_kad=error".into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (our I/O errors name their cause themselves).
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Now, from the system clock: the only place the binaries read it.
pub fn unix_now() -> fleetmesh_protocol::UnixTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    fleetmesh_protocol::UnixTime(secs)
}

/// Parses a semantic version for `--version` arguments.
pub fn parse_version(s: &str) -> Result<semver::Version, String> {
    semver::Version::parse(s).map_err(|e| format!("not a semantic version X.Y.Z: {e}"))
}

/// Parses a `--label key=value` argument.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// A progress bar on a terminal; nothing when stderr is piped.
pub fn progress_bar(len: u64, what: &str, counts: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:40}}] {counts}"
    ));
    if let Ok(style) = style {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner broke")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner broke")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] Inner);

    #[test]
    fn causes_are_added_once() {
        assert_eq!(error_line(&Outer(Inner)), "outer: inner broke");
        assert_eq!(error_line(&Wrapper(Inner)), "wrapper: inner broke");
    }
}
