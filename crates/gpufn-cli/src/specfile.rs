//! Reading a spec file the way the CLI sends it: relative `workdir` resolved against the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use gpufn_spec::RawSpec;

/// Reads and parses `file`, and makes its `workdir` absolute (relative to the file's directory),
/// since the server may run in another directory.
pub fn load(file: &Path) -> anyhow::Result<RawSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut raw = gpufn_spec::parse_yaml(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let workdir = base.join(raw.workdir.as_deref().unwrap_or("."));
    let workdir = workdir.canonicalize().unwrap_or(workdir);
    raw.workdir = Some(workdir.to_string_lossy().into_owned());
    Ok(raw)
}
