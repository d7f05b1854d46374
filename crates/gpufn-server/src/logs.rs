//! Instance logs bounded on disk and read from the end: an instance writes its log through an
//! `O_APPEND` descriptor gpufn does not hold, so a log over `--log-max-mb` is rotated by copying it
//! to `.1` (older ones shift to `.2`…, `--log-keep` are kept) and truncating it in place — the
//! instance's next write lands at the start of the emptied file. A tail is read backwards from the
//! end in blocks, never the whole file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Most bytes a tail reads from one file.
pub(crate) const MAX_TAIL_BYTES: u64 = 8 << 20;
/// Most lines a tail returns.
pub(crate) const MAX_TAIL_LINES: usize = 10_000;
const BLOCK: u64 = 64 * 1024;

/// `path` with `.n` appended (`x.log` → `x.log.1`).
pub(crate) fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Rotates `path` if it is over `max_bytes`, keeping `keep` older files (0: the excess is
/// dropped). True if it rotated.
pub(crate) fn rotate(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        for n in (1..keep).rev() {
            let from = rotated(path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(path, n + 1))?;
            }
        }
        // Copied under a temporary name and renamed once the live file is cut: `.1` appears
        // whole, and only when the rotation is done.
        let partial = rotated(path, 0);
        std::fs::copy(path, &partial)?;
        OpenOptions::new().write(true).open(path)?.set_len(0)?;
        std::fs::rename(&partial, rotated(path, 1))?;
        return Ok(true);
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The last `lines` lines of `path` (at most [`MAX_TAIL_BYTES`] read), and whether the file
/// holds more before them.
pub(crate) fn tail(path: &Path, lines: usize) -> std::io::Result<(Vec<String>, bool)> {
    let mut f = File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    let floor = len.saturating_sub(MAX_TAIL_BYTES);
    let mut pos = len;
    // Blocks from the end backwards; each read and counted once, joined once.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0;
    // Newlines after the last line's end are not counted (a log ends with one).
    let wanted = lines + 1;
    while pos > floor && newlines <= wanted {
        let start = pos.saturating_sub(BLOCK).max(floor);
        let mut block = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        newlines += block.iter().filter(|b| **b == b'\n').count();
        blocks.push(block);
        pos = start;
    }
    let buf: Vec<u8> = blocks.into_iter().rev().flatten().collect();
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    // A first line cut by the block start is partial: dropped unless the file starts there.
    let all = if pos > 0 && !all.is_empty() {
        &all[1..]
    } else {
        &all[..]
    };
    let from = all.len().saturating_sub(lines);
    let more = from > 0 || pos > 0;
    Ok((all[from..].iter().map(|l| l.to_string()).collect(), more))
}

/// The last `lines` lines of an instance's log, reaching into the newest rotated file when the
/// current one has fewer.
pub(crate) fn instance_tail(path: &Path, lines: usize) -> std::io::Result<Vec<String>> {
    let lines = lines.min(MAX_TAIL_LINES);
    let (mut out, more) = tail(path, lines)?;
    if out.len() < lines && !more {
        if let Ok((mut older, _)) = tail(&rotated(path, 1), lines - out.len()) {
            older.append(&mut out);
            out = older;
        }
    }
    Ok(out)
}

/// Appends gpufn's own word on an instance (how it ended, why a start or a hook failed) to the
/// instance's log, where its user looks first: `gpufn logs` then shows an OOM kill or a crash
/// next to the app's last lines.
pub(crate) fn note_in_log(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "[gpufn] {text}");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write_lines(path: &Path, from: usize, to: usize) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        for i in from..to {
            writeln!(f, "line {i}").expect("write");
        }
    }

    #[test]
    fn a_tail_is_read_from_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.log");
        // About 650 KB: ten blocks.
        write_lines(&path, 0, 60_000);
        let (last, more) = tail(&path, 3).expect("tail");
        assert_eq!(last, ["line 59997", "line 59998", "line 59999"]);
        assert!(more);
        let (all, more) = tail(&path, 100_000).expect("tail");
        assert_eq!(all.len(), 60_000);
        assert_eq!(all[0], "line 0");
        assert!(!more);
        // A line that straddles a block boundary comes out whole.
        let (some, _) = tail(&path, 5_000).expect("tail");
        assert_eq!(some.first().map(String::as_str), Some("line 55000"));
    }

    #[test]
    fn a_tail_reads_at_most_its_byte_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.log");
        // One 10 MiB line then a short one: only the budget is read.
        std::fs::write(&path, [vec![b'x'; 10 << 20], b"\nend\n".to_vec()].concat()).expect("write");
        let (last, more) = tail(&path, 10).expect("tail");
        assert_eq!(last, ["end"], "the cut first line is dropped");
        assert!(more);
    }

    #[test]
    fn a_log_over_the_limit_is_rotated_and_old_ones_shift() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.log");
        write_lines(&path, 0, 10);
        assert!(
            !rotate(&path, 1 << 20, 2).expect("rotate"),
            "under the limit"
        );
        for round in 0..3 {
            write_lines(&path, round * 100, round * 100 + 100);
            assert!(rotate(&path, 100, 2).expect("rotate"));
            assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
        }
        let newest = std::fs::read_to_string(rotated(&path, 1)).expect("read");
        assert!(newest.starts_with("line 200\n"), "{newest:.20}");
        let older = std::fs::read_to_string(rotated(&path, 2)).expect("read");
        assert!(older.starts_with("line 100\n"), "{older:.20}");
        assert!(!rotated(&path, 3).exists(), "keep 2");
        // The tail reaches into the rotated file while the current one is short.
        write_lines(&path, 300, 302);
        let lines = instance_tail(&path, 3).expect("tail");
        assert_eq!(lines, ["line 299", "line 300", "line 301"]);
    }

    #[test]
    fn an_appending_writer_continues_at_the_start_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open");
        writer.write_all(&[b'a'; 1000]).expect("write");
        assert!(rotate(&path, 10, 1).expect("rotate"));
        writer.write_all(b"after\n").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"after\n");
    }
}
