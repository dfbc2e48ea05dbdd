//! The output directory: created 0700, never an existing non-empty one.

use anyhow::Result;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Creates (or adopts, if it exists and is empty) the recording directory.
pub fn create(out: Option<&Path>, program: &str) -> Result<PathBuf> {
    match out {
        Some(dir) => {
            prepare(dir)?;
            Ok(absolute(dir))
        }
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
            for n in 1..1000 {
                let name = if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                };
                let dir = PathBuf::from(&name);
                match fs::DirBuilder::new().mode(0o700).create(&dir) {
                    Ok(()) => return Ok(absolute(&dir)),
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

fn prepare(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(crate::user_error(format!(
                    "{} exists and is not empty; offheap never writes into it (choose another --out)",
                    dir.display()
                )));
            }
            // Empty and ours to use: make sure we can write there.
            let probe = dir.join(".offheap-probe");
            fs::write(&probe, b"").map_err(|e| {
                crate::user_error(format!("cannot write into {}: {e}", dir.display()))
            })?;
            let _ = fs::remove_file(probe);
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| {
                        crate::user_error(format!(
                            "cannot create output directory {}: {e}",
                            dir.display()
                        ))
                    })?;
            }
            fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| {
                crate::user_error(format!(
                    "cannot create output directory {}: {e}",
                    dir.display()
                ))
            })
        }
        Err(e) if e.kind() == ErrorKind::NotADirectory => Err(crate::user_error(format!(
            "--out {}: exists and is not a directory",
            dir.display()
        ))),
        Err(e) => Err(crate::user_error(format!(
            "cannot use output directory {}: {e}",
            dir.display()
        ))),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
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

    #[test]
    fn refuses_non_empty_and_creates_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        create(Some(&d), "x").unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::write(d.join("keep"), b"user data").unwrap();
        let err = create(Some(&d), "x").unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(fs::read(d.join("keep")).unwrap(), b"user data");
    }
}
