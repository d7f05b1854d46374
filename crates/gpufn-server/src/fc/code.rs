//! FC function code: `code.zipFile` (base64) unpacked into `<data>/fc-code/<name>/<digest>`,
//! within the function's `diskSize` (512 MB when it names none): a small zip that unpacks to
//! gigabytes is refused while it is being written, and a failed unpack leaves nothing behind.

use std::io::{Read, Write};
use std::path::Path;

use axum::http::StatusCode;
use base64::Engine;
use serde_json::Value;
use sha2::Digest;

use super::{FcError, err};
use crate::error::ApiError;
use crate::platform::Platform;

/// The unpacked size when the document names no `diskSize`, MB (FC's default disk).
const DEFAULT_DISK_MB: u64 = 512;

/// Unpacks `fc`'s `code.zipFile`, if any, on a blocking thread; returns the directory. `disk_mb`:
/// the function's `diskSize`.
pub(super) async fn unpack(
    p: &Platform,
    name: &str,
    fc: &Value,
    disk_mb: Option<i64>,
) -> Result<Option<String>, FcError> {
    let Some(b64) = fc
        .get("code")
        .and_then(|c| c.get("zipFile"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| invalid(format!("code.zipFile is not base64: {e}")))?;
    let digest = hex::encode(sha2::Sha256::digest(&bytes));
    let dir = p.data_dir().join("fc-code").join(name).join(&digest[..16]);
    let limit = disk_mb
        .and_then(|mb| u64::try_from(mb).ok())
        .filter(|mb| *mb > 0)
        .unwrap_or(DEFAULT_DISK_MB)
        .saturating_mul(1 << 20);
    let target = dir.clone();
    tokio::task::spawn_blocking(move || {
        if target.is_dir() {
            return Ok(());
        }
        unpack_zip(&bytes, &target, limit)
    })
    .await
    .map_err(|e| ApiError::internal("storing function code", e))??;
    Ok(Some(dir.display().to_string()))
}

/// Removes everything unpacked for `name` (a function that was not created).
pub(super) async fn forget(p: &Platform, name: &str) {
    let dir = p.data_dir().join("fc-code").join(name);
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

fn invalid(message: String) -> FcError {
    err(StatusCode::BAD_REQUEST, "InvalidArgument", message)
}

/// Unpacks `zip` into `dir` (through `dir.partial`, removed on any failure), writing at most
/// `limit` bytes in all.
pub(super) fn unpack_zip(zip: &[u8], dir: &Path, limit: u64) -> Result<(), FcError> {
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let result = extract(zip, &partial, limit).and_then(|()| {
        // Function code runs as an unprivileged user: whatever modes the zip carried (Python's
        // zipfile writes 0600), the code must be readable by it.
        readable_by_all(&partial).map_err(|e| ApiError::internal("storing function code", e).into())
    });
    let result = result.and_then(|()| {
        std::fs::rename(&partial, dir)
            .map_err(|e| ApiError::internal("storing function code", e).into())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

fn extract(zip: &[u8], into: &Path, limit: u64) -> Result<(), FcError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip))
        .map_err(|e| invalid(format!("code.zipFile is not a zip: {e}")))?;
    let internal =
        |e: std::io::Error| FcError::from(ApiError::internal("storing function code", e));
    std::fs::create_dir_all(into).map_err(internal)?;
    let mut written: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| invalid(format!("code.zipFile: {e}")))?;
        // Entries that would leave the directory (`../x`, absolute paths) are refused.
        let Some(rel) = entry.enclosed_name() else {
            return Err(invalid(format!(
                "code.zipFile: entry {:?} would be written outside the code directory",
                entry.name()
            )));
        };
        let path = into.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(internal)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(internal)?;
        }
        let mut out = std::fs::File::create(&path).map_err(internal)?;
        // The sizes a zip declares may lie: what is written is counted.
        let room = limit - written;
        let mut buf = [0u8; 64 * 1024];
        let mut this = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| invalid(format!("code.zipFile: {e}")))?;
            if n == 0 {
                break;
            }
            this += n as u64;
            if this > room {
                return Err(invalid(format!(
                    "code.zipFile unpacks to more than diskSize ({} MB)",
                    limit >> 20
                )));
            }
            out.write_all(&buf[..n]).map_err(internal)?;
        }
        written += this;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777));
        }
    }
    Ok(())
}

/// Directories 0755, files 0644 (0755 if any execute bit was set), under `root`.
fn readable_by_all(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(root)? {
            readable_by_all(&e?.path())?;
        }
    } else {
        let m = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in files {
            w.start_file(*name, opts).expect("start");
            w.write_all(data).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    #[test]
    fn code_within_the_disk_size_is_unpacked_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zip = zip_of(&[
            ("app.py", b"print(1)\n".to_vec()),
            ("lib/m.py", b"x = 1\n".to_vec()),
        ]);
        let target = dir.path().join("code");
        assert!(unpack_zip(&zip, &target, 1 << 20).is_ok());
        assert_eq!(
            std::fs::read(target.join("lib/m.py")).expect("read"),
            b"x = 1\n"
        );
        assert!(!target.with_extension("partial").exists());
    }

    #[test]
    fn a_zip_bomb_is_cut_at_the_disk_size_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 4 MiB of zeros compress to a few KiB.
        let zip = zip_of(&[("a.bin", vec![0u8; 2 << 20]), ("b.bin", vec![0u8; 2 << 20])]);
        assert!(zip.len() < 64 * 1024, "{}", zip.len());
        let target = dir.path().join("code");
        let e = unpack_zip(&zip, &target, 3 << 20).expect_err("refused");
        assert!(e.message.contains("diskSize"), "{}", e.message);
        assert!(!target.exists());
        assert!(!target.with_extension("partial").exists(), "cleaned up");
    }

    #[test]
    fn entries_that_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zip = zip_of(&[("../evil.py", b"x".to_vec())]);
        let target = dir.path().join("code");
        assert!(unpack_zip(&zip, &target, 1 << 20).is_err());
        assert!(!dir.path().join("evil.py").exists());
        assert!(!target.with_extension("partial").exists());
    }
}
