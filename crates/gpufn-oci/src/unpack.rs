//! Applying image layers to a root filesystem, OCI whiteouts honoured.
//!
//! Layers are applied in manifest order into one directory. A `.wh.NAME` entry deletes `NAME` from
//! the layers below; `.wh..wh..opq` empties its directory of what the layers below put there (but
//! not of what this same layer adds, whatever order the entries come in). Paths that would leave
//! the root (`..`, absolute, through a symlink) are refused by the `tar` crate's `unpack_in`.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A layer's compression, told from its first bytes (registries and tools disagree on media
/// types; the bytes do not lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (`tar+gzip`).
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
}

impl Compression {
    /// Sniffs the compression from the first bytes of a blob.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Applies one layer (compressed or not) from `blob` onto `root`.
pub fn apply_layer(blob: impl Read, root: &Path) -> io::Result<()> {
    let mut buffered = BufReader::with_capacity(256 * 1024, blob);
    let compression = Compression::sniff(buffered.fill_buf()?);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    };
    apply_tar(reader, root)
}

fn apply_tar(reader: impl Read, root: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Paths (relative to root) this layer has put in place: an opaque marker must not remove them.
    let mut added: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(rel) = clean_path(&entry.path()?) else {
            continue;
        };
        let Some(name) = rel.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            empty_dir_except(&root.join(&parent), &parent, &added)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            remove_any(&root.join(&parent).join(hidden))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            // Device nodes come from the runtime's /dev, never from an image.
            continue;
        }
        let target = root.join(&rel);
        // A path may change type between layers (a directory becomes a symlink, a file becomes a
        // directory); the old one must go first, except that a directory over a directory merges.
        if let Ok(old) = fs::symlink_metadata(&target) {
            if !(old.is_dir() && kind.is_dir()) {
                remove_any(&target)?;
            }
        }
        entry.unpack_in(root)?;
        added.insert(rel);
    }
    Ok(())
}

/// The entry's path made relative and normal; `None` for the root itself or a path with `..`.
fn clean_path(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn empty_dir_except(dir: &Path, rel: &Path, keep: &HashSet<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        if keep.contains(&child) {
            // Added by this layer: keep it, but a directory may still hold lower-layer files.
            if entry.file_type()?.is_dir() {
                empty_dir_except(&entry.path(), &child, keep)?;
            }
            continue;
        }
        remove_any(&entry.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Link(&'a str, &'a str),
    }

    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = hdr();
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).expect("dir");
                }
                E::File(p, body) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(body.len() as u64);
                    b.append_data(&mut h, p, body.as_bytes()).expect("file");
                }
                E::Link(p, to) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, to).expect("link");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    fn hdr() -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn read(root: &Path, p: &str) -> Option<String> {
        fs::read_to_string(root.join(p)).ok()
    }

    #[test]
    fn layers_stack_and_whiteouts_remove_lower_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let base = layer(&[
            E::Dir("etc"),
            E::File("etc/a", "a1"),
            E::File("etc/b", "b1"),
            E::Dir("opt/x"),
            E::File("opt/x/old", "old"),
            E::File("keep", "k"),
        ]);
        apply_layer(gzip(&base).as_slice(), root).expect("base");
        let top = layer(&[
            E::File("etc/a", "a2"),
            E::File("etc/.wh.b", ""),
            // The opaque marker after a file of the same layer must not remove that file.
            E::File("opt/x/new", "new"),
            E::File("opt/x/.wh..wh..opq", ""),
        ]);
        let top = zstd::encode_all(top.as_slice(), 1).expect("zstd");
        apply_layer(top.as_slice(), root).expect("top");
        assert_eq!(read(root, "etc/a").as_deref(), Some("a2"));
        assert_eq!(read(root, "etc/b"), None);
        assert_eq!(read(root, "opt/x/old"), None);
        assert_eq!(read(root, "opt/x/new").as_deref(), Some("new"));
        assert_eq!(read(root, "keep").as_deref(), Some("k"));
        assert!(!root.join("etc/.wh.b").exists());
    }

    #[test]
    fn a_path_may_change_type_between_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        apply_layer(
            layer(&[E::Dir("lib"), E::File("lib/x", "1"), E::File("conf", "c")]).as_slice(),
            root,
        )
        .expect("base");
        apply_layer(
            layer(&[
                E::Dir("usr/lib"),
                E::Link("lib", "usr/lib"),
                E::Dir("conf"),
                E::File("conf/d", "d"),
            ])
            .as_slice(),
            root,
        )
        .expect("top");
        assert!(
            fs::symlink_metadata(root.join("lib"))
                .expect("lib")
                .file_type()
                .is_symlink()
        );
        assert_eq!(read(root, "conf/d").as_deref(), Some("d"));
    }

    #[test]
    fn entries_that_escape_the_root_are_not_written() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("root");
        fs::create_dir(&root).expect("root");
        // A symlink pointing out of the root, then a file written "through" it.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = hdr();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "out", outer.path()).expect("link");
        let mut h = hdr();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "out/pwned", &b"x"[..]).expect("file");
        let data = b.into_inner().expect("tar");
        let _ = apply_layer(data.as_slice(), &root);
        assert!(!outer.path().join("pwned").exists());
    }

    #[test]
    fn compression_is_told_from_the_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }
}
