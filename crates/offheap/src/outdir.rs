//! The output directory: created 0700, never an existing non-empty one, and
//! never one that another user could tamper with.
//!
//! `run` writes the agents into the directory and the target loads them from
//! there, so whoever can replace a file in it (or rename the directory away
//! and put another in its place) runs code in the target. The rules:
//!
//! - a directory offheap creates is 0700, whatever the umask (the mode is set
//!   again after `mkdir`); missing parents are created the same way;
//! - an existing directory is opened without following a symlink, must be
//!   owned by the effective user, is made 0700 *first* and only then checked
//!   to be empty (so nothing can be added between the check and the use); a
//!   non-empty one is refused and gets its mode back;
//! - every ancestor must be writable by its owner only (or sticky, like
//!   `/tmp`) and owned by root or the effective user;
//! - files offheap puts there are created with `O_CREAT|O_EXCL|O_NOFOLLOW`.

use anyhow::Result;
use rustix::fs::{AtFlags, Dir, Mode, OFlags, Stat};
use std::ffi::OsStr;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A recording directory offheap may write into.
#[derive(Debug)]
pub struct OutDir {
    /// Absolute, with symlinks resolved.
    path: PathBuf,
    fd: OwnedFd,
    /// Directories offheap created for it, outermost first (the last one is
    /// `path` itself when it did not exist).
    created: Vec<PathBuf>,
    /// The mode an adopted directory had before offheap made it 0700.
    adopted_mode: Option<u32>,
    /// Files offheap created in it through [`OutDir::create_file`].
    files: Vec<String>,
}

impl OutDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `name` in the directory (never following or replacing
    /// anything already there), writes `bytes`, and leaves it with `mode`.
    pub fn create_file(&mut self, name: &str, mode: u32, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.path.join(name);
        let fail =
            |e: std::io::Error| crate::user_error(format!("cannot create {}: {e}", path.display()));
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| fail(e.into()))?;
        self.files.push(name.to_string());
        // The umask may have narrowed the mode: set it exactly.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| fail(e.into()))?;
        let mut file = fs::File::from(fd);
        file.write_all(bytes).map_err(fail)?;
        Ok(path)
    }

    /// Undoes what offheap did: removes the files it created in the
    /// directory, then the directories it created (only if they are empty).
    /// An adopted directory is left as it was found: empty, with its mode.
    pub fn remove_created(self) {
        for name in &self.files {
            let _ = rustix::fs::unlinkat(&self.fd, name.as_str(), AtFlags::empty());
        }
        if let Some(mode) = self.adopted_mode {
            let _ = rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode));
        }
        for dir in self.created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Creates (or adopts, if it exists, is ours and is empty) the recording directory.
pub fn create(out: Option<&Path>, program: &str) -> Result<OutDir> {
    match out {
        Some(dir) => open_or_create(dir),
        None => {
            let stamp = local_timestamp();
            let prog: String = program
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let base = format!("offheap-{prog}-{stamp}");
            let cwd = open_dir(Path::new("."), OFlags::empty()).map_err(|e| {
                crate::user_error(format!("cannot open the current directory: {e}"))
            })?;
            check_chain(cwd, true, Path::new("."))?;
            for n in 1..1000 {
                let name = if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                };
                match create_missing(Path::new("."), &[OsStr::new(&name)]) {
                    Ok(d) => return Ok(d),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => {
                        return Err(crate::user_error(format!(
                            "cannot create output directory {name}: {e}"
                        )));
                    }
                }
            }
            Err(crate::user_error(format!(
                "cannot find a free output directory name like {base}"
            )))
        }
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn open_dir(path: &Path, extra: OFlags) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )?)
}

fn open_or_create(dir: &Path) -> Result<OutDir> {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match open_dir(&abs, OFlags::NOFOLLOW) {
        Ok(fd) => adopt(dir, fd),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // The deepest ancestor that exists, and what is missing below it.
            let mut missing: Vec<&OsStr> = Vec::new();
            let mut base = abs.as_path();
            loop {
                match fs::symlink_metadata(base) {
                    Ok(_) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(crate::user_error(format!(
                            "cannot create output directory {}: {e}",
                            shown(dir)
                        )));
                    }
                }
                match (base.file_name(), base.parent()) {
                    (Some(name), Some(parent)) => {
                        missing.push(name);
                        base = parent;
                    }
                    _ => {
                        return Err(crate::user_error(format!(
                            "cannot create output directory {}",
                            shown(dir)
                        )));
                    }
                }
            }
            missing.reverse();
            if missing
                .iter()
                .any(|m| matches!(Path::new(m).components().next(), Some(Component::ParentDir)))
            {
                return Err(crate::user_error(format!(
                    "cannot create output directory {}: `..` below a missing directory",
                    shown(dir)
                )));
            }
            let base_fd = open_dir(base, OFlags::empty()).map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::ENOTDIR) {
                    format!("{} is not a directory", shown(base))
                } else {
                    e.to_string()
                };
                crate::user_error(format!(
                    "cannot create output directory {}: {why}",
                    shown(dir)
                ))
            })?;
            check_chain(base_fd, true, base)?;
            create_missing(base, &missing).map_err(|e| {
                crate::user_error(format!(
                    "cannot create output directory {}: {e}",
                    shown(dir)
                ))
            })
        }
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP)
                || fs::symlink_metadata(&abs).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            Err(crate::user_error(format!(
                "--out {}: is a symbolic link; offheap only writes into a real directory (give its target)",
                shown(dir)
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(crate::user_error(format!(
            "--out {}: exists and is not a directory",
            shown(dir)
        ))),
        Err(e) => Err(crate::user_error(format!(
            "cannot use output directory {}: {e}",
            shown(dir)
        ))),
    }
}

/// Takes over an existing directory: ours, safe ancestors, 0700, empty.
fn adopt(dir: &Path, fd: OwnedFd) -> Result<OutDir> {
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| crate::user_error(format!("cannot use {}: {e}", shown(dir))))?;
    if st.st_uid != euid() {
        return Err(crate::user_error(format!(
            "--out {}: belongs to another user (uid {}); offheap writes only into a directory of its own user (choose another --out)",
            shown(dir),
            st.st_uid
        )));
    }
    let parent = rustix::fs::openat(
        &fd,
        "..",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| crate::user_error(format!("cannot open the parent of {}: {e}", shown(dir))))?;
    check_chain(parent, true, dir.parent().unwrap_or(Path::new("..")))?;
    // Close the door first, then look inside: nothing can be added in between.
    let old_mode = st.st_mode & 0o7777;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
        .map_err(|e| crate::user_error(format!("cannot make {} private: {e}", shown(dir))))?;
    let empty =
        is_empty(&fd).map_err(|e| crate::user_error(format!("cannot list {}: {e}", shown(dir))))?;
    if !empty {
        let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(old_mode));
        return Err(crate::user_error(format!(
            "{} exists and is not empty; offheap never writes into it (choose another --out)",
            shown(dir)
        )));
    }
    let path = canonical_of(dir, &fd)?;
    Ok(OutDir {
        path,
        fd,
        created: Vec::new(),
        adopted_mode: Some(old_mode),
        files: Vec::new(),
    })
}

fn is_empty(fd: &OwnedFd) -> std::io::Result<bool> {
    let mut d = Dir::read_from(fd)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The directory's real path, checked to name the directory we hold open.
fn canonical_of(dir: &Path, fd: &OwnedFd) -> Result<PathBuf> {
    let path = fs::canonicalize(dir)
        .map_err(|e| crate::user_error(format!("cannot resolve {}: {e}", shown(dir))))?;
    let held = rustix::fs::fstat(fd)
        .map_err(|e| crate::user_error(format!("cannot use {}: {e}", shown(dir))))?;
    match rustix::fs::stat(&path) {
        Ok(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino => Ok(path),
        _ => Err(crate::user_error(format!(
            "{} was replaced while offheap was preparing it",
            shown(dir)
        ))),
    }
}

/// Creates `missing` (one level after the other) under `base`, each 0700.
fn create_missing(base: &Path, missing: &[&OsStr]) -> std::io::Result<OutDir> {
    let mut parent = open_dir(base, OFlags::empty())?;
    let mut path = fs::canonicalize(base)?;
    let mut created = Vec::new();
    let result = (|| {
        for name in missing {
            rustix::fs::mkdirat(&parent, *name, Mode::from_raw_mode(0o700))?;
            path.push(name);
            created.push(path.clone());
            let fd = rustix::fs::openat(
                &parent,
                *name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            // The umask applied to mkdir: set the mode exactly.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
            parent = fd;
        }
        Ok::<(), std::io::Error>(())
    })();
    if let Err(e) = result {
        for d in created.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        return Err(e);
    }
    Ok(OutDir {
        path,
        fd: parent,
        created,
        adopted_mode: None,
        files: Vec::new(),
    })
}

/// What makes a directory unsafe to keep a recording under, if anything.
fn unsafe_because(st: &Stat) -> Option<String> {
    let mode = st.st_mode & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Some(format!(
            "is writable by {} (mode {mode:04o}, no sticky bit)",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            }
        ));
    }
    if st.st_uid != 0 && st.st_uid != euid() {
        return Some(format!("belongs to another user (uid {})", st.st_uid));
    }
    None
}

/// Checks `start` (if `include_start`) and every directory above it, up to
/// the root, through `..` of the directories themselves (not their names).
fn check_chain(start: OwnedFd, include_start: bool, shown_as: &Path) -> Result<()> {
    let mut fd = start;
    let mut first = true;
    loop {
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| crate::user_error(format!("cannot check {}: {e}", shown(shown_as))))?;
        if (include_start || !first)
            && let Some(why) = unsafe_because(&st)
        {
            let name = where_is(&fd).unwrap_or_else(|| shown(shown_as));
            return Err(crate::user_error(format!(
                "cannot record under {name}: it {why}, so another user could replace or rename the recording \
                 and the agents the target loads from it (choose an --out below directories only you and root can write)"
            )));
        }
        first = false;
        let parent = rustix::fs::openat(
            &fd,
            "..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            crate::user_error(format!(
                "cannot check the parents of {}: {e}",
                shown(shown_as)
            ))
        })?;
        let pst = rustix::fs::fstat(&parent).map_err(|e| {
            crate::user_error(format!(
                "cannot check the parents of {}: {e}",
                shown(shown_as)
            ))
        })?;
        if pst.st_dev == st.st_dev && pst.st_ino == st.st_ino {
            return Ok(()); // the root
        }
        fd = parent;
    }
}

/// The path of an open directory, for messages.
fn where_is(fd: &impl AsFd) -> Option<String> {
    use std::os::fd::AsRawFd;
    let link = fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())).ok()?;
    Some(String::from_utf8_lossy(link.as_os_str().as_bytes()).into_owned())
}

/// `YYYYmmdd-HHMMSS` in local time.
pub fn local_timestamp() -> String {
    // SAFETY: time(NULL) has no preconditions; localtime_r writes only into
    // the tm we own and pass by pointer.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn refuses_non_empty_and_creates_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        create(Some(&d), "x").unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        fs::write(d.join("keep"), b"user data").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        let err = create(Some(&d), "x").unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(fs::read(d.join("keep")).unwrap(), b"user data");
        // Refused: its mode is given back.
        assert_eq!(mode(&d), 0o750);
    }

    #[test]
    fn created_files_never_follow_a_planted_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let mut out = create(Some(&tmp.path().join("rec")), "x").unwrap();
        std::os::unix::fs::symlink(&victim, out.path().join("agent.so")).unwrap();
        let err = out.create_file("agent.so", 0o500, b"payload").unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let p = out.create_file("other.js", 0o400, b"js").unwrap();
        assert_eq!(mode(&p), 0o400);
        assert_eq!(fs::read(&p).unwrap(), b"js");
    }

    #[test]
    fn remove_created_undoes_only_what_offheap_did() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = create(Some(&tmp.path().join("x/y/z")), "x").unwrap();
        out.create_file("a", 0o400, b"").unwrap();
        out.remove_created();
        assert!(!tmp.path().join("x").exists());
        // An adopted directory is emptied back to empty, and kept.
        let adopted = tmp.path().join("adopted");
        fs::create_dir(&adopted).unwrap();
        fs::set_permissions(&adopted, fs::Permissions::from_mode(0o755)).unwrap();
        let mut out = create(Some(&adopted), "x").unwrap();
        out.create_file("a", 0o400, b"").unwrap();
        out.remove_created();
        assert!(adopted.is_dir());
        assert_eq!(fs::read_dir(&adopted).unwrap().count(), 0);
        assert_eq!(mode(&adopted), 0o755);
    }
}
