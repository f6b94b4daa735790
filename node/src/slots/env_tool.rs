//! Running a bootloader-environment tool and reading `name=value` output.

use super::SlotError;
use std::collections::BTreeMap;
use std::process::Command;

/// Runs `cmd`; its stdout on success, its stderr's first line as the error.
pub fn run(mut cmd: Command) -> Result<String, SlotError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| SlotError::Tool {
        tool: tool.clone(),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr.lines().next().unwrap_or("failed").trim().to_owned();
        return Err(SlotError::Tool {
            tool,
            reason: format!("{reason} ({})", out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `name=value` lines.
pub fn parse_vars(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}
