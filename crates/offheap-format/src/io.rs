//! File access for everything that reads or writes a recording directory,
//! which another user may have been able to write into, and for the module
//! files a recording names.
//!
//! Reading: a recording file is opened only when it is a regular file, never
//! through a symlink ([`open_recording_file`]); a module file may be reached
//! through symlinks (real libraries often are) but must end at a regular file
//! ([`open_module_file`]). Both open with `O_NONBLOCK`, so a FIFO or a device
//! put in their place can never block, and both check with `fstat` what was
//! opened. Reads are bounded ([`MAX_LINE`], [`MAX_STREAM`], [`MAX_JSON`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Longest JSON line a stream reader accepts (longer ones are skipped).
pub const MAX_LINE: usize = 16 << 20;
/// Most bytes read of one stream (JSON lines, native stream, perf map); the
/// rest is skipped with a note.
pub const MAX_STREAM: u64 = 4 << 30;
/// Largest single-object JSON file read (`recording.json`, `end.json`,
/// `summary.json`).
pub const MAX_JSON: u64 = 64 << 20;

/// What a file type is called in messages ("a FIFO", "a directory"...).
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link (not followed)"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

fn not_regular(ft: std::fs::FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file: {}", kind_of(ft)),
    )
}

/// Opens `path` read-only with `O_NONBLOCK` (and `O_NOFOLLOW` unless
/// `follow`), after a first look (stat or lstat), and keeps it only if
/// `fstat` says it is a regular file; `O_NONBLOCK` is cleared again before
/// returning.
fn open_regular(path: &Path, follow: bool) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    // Look first, so that a device node is not even opened.
    let md = if follow {
        std::fs::metadata(path)?
    } else {
        std::fs::symlink_metadata(path)?
    };
    if !md.file_type().is_file() {
        return Err(not_regular(md.file_type()));
    }
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP && !follow {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file: a symbolic link (not followed)",
            )
        } else {
            io::Error::from(e)
        }
    })?;
    let file = File::from(fd);
    // What was opened, not what the name pointed at a moment ago.
    let md = file.metadata()?;
    if !md.file_type().is_file() {
        return Err(not_regular(md.file_type()));
    }
    let fl = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, fl - OFlags::NONBLOCK)?;
    Ok(file)
}

/// Opens a file of a recording: a regular file only, never through a
/// symlink, never blocking on a FIFO.
pub fn open_recording_file(path: &Path) -> io::Result<File> {
    open_regular(path, false)
}

/// Opens a module file named by a recording (an executable or a shared
/// library): symlinks are followed, but what they lead to must be a regular
/// file, opened without blocking.
pub fn open_module_file(path: &Path) -> io::Result<File> {
    open_regular(path, true)
}

/// Reads a recording file ([`open_recording_file`]) up to `max` bytes.
/// Returns the bytes and, when the file was longer, its full size.
pub fn read_recording_file(path: &Path, max: u64) -> io::Result<(Vec<u8>, Option<u64>)> {
    let file = open_recording_file(path)?;
    let size = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(size.min(max).min(1 << 30) as usize);
    file.take(max).read_to_end(&mut bytes)?;
    Ok((bytes, (size > max).then_some(size)))
}

/// `4 GiB`, `64 MiB`: a bound for messages (see [`crate::units::bound`]).
pub fn human_size(b: u64) -> String {
    crate::units::bound(b)
}

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

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn only_regular_files_are_opened() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        let err = open_recording_file(&fifo).unwrap_err().to_string();
        assert!(err.contains("a FIFO"), "{err}");
        let err = open_module_file(&fifo).unwrap_err().to_string();
        assert!(err.contains("a FIFO"), "{err}");
        let zero = d.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = open_recording_file(&zero).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let err = open_module_file(&zero).unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        let err = open_recording_file(d.path()).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
        // A symlink to a regular file: fine for a module, not in a recording.
        let real = d.path().join("real");
        std::fs::write(&real, b"0123456789").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(open_module_file(&link).is_ok());
        assert!(open_recording_file(&link).is_err());
        let (bytes, cut) = read_recording_file(&real, 4).unwrap();
        assert_eq!((bytes.as_slice(), cut), (&b"0123"[..], Some(10)));
        let (bytes, cut) = read_recording_file(&real, 100).unwrap();
        assert_eq!((bytes.len(), cut), (10, None));
        assert_eq!(human_size(MAX_STREAM), "4 GiB");
        assert_eq!(human_size(MAX_LINE as u64), "16 MiB");
    }
}
