//! File access for everything that reads or writes a recording directory,
//! which another user may have been able to write into.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Replaces `path` with `bytes`, whole: a unique new file (`O_EXCL`, random
/// name, via `tempfile`) in the same directory is written, made 0600 and
/// renamed over `path`. Nothing already in the directory is followed or
/// written through: a symlink at `path` is replaced, not followed. Errors
/// name the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let annotate =
        |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| annotate(e, path))?;
    tmp.write_all(bytes).map_err(|e| annotate(e, tmp.path()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| annotate(e, tmp.path()))?;
    tmp.persist(path).map_err(|e| annotate(e.error, path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_a_symlink_instead_of_following_it() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = d.path().join("out.json");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        let md = std::fs::symlink_metadata(&out).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        // Nothing left behind but the two files.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
