//! The stream file `native-PID.bin` and the one descriptor the agent keeps
//! open on it.
//!
//! The target owns its descriptor table: a daemon may close every
//! descriptor (`close_range(3, ~0U, 0)`, a `closefrom` loop) and open its
//! own files, which then get the numbers the agent held; a program may
//! `dup2` its stderr over them. The agent must never write into what it
//! does not own, so:
//! - the descriptor is moved high (`F_DUPFD_CLOEXEC`), away from the low
//!   numbers a program's next `open` gets;
//! - before every write (and before the link and the close) it checks that
//!   the descriptor still refers to the file it created (device and inode
//!   from `fstat`);
//! - when it does not, the descriptor is forgotten, never closed (it is the
//!   program's now), and the stream is reopened by its name in the
//!   recording directory, checked to be the same file; the next snapshot
//!   carries a note. If that fails, the agent stops writing.

use crate::CONFIG;
use crate::PID;
use crate::sys::{self, Fmt};
use core::sync::atomic::Ordering;
use libc::c_int;

/// The agent's descriptor on its stream, or none.
pub struct Stream {
    fd: c_int,
    dev: u64,
    ino: u64,
    /// Which name the file was linked as (see [`path`]).
    attempt: u64,
    /// Times the descriptor was found taken over and the file reopened.
    pub reopened: u32,
}

impl Stream {
    pub const NONE: Stream = Stream {
        fd: -1,
        dev: 0,
        ino: 0,
        attempt: 0,
        reopened: 0,
    };

    /// True if `fd` still refers to the file this stream created.
    fn owns(&self) -> bool {
        self.fd >= 0 && identity(self.fd) == Some((self.dev, self.ino))
    }

    /// A descriptor the agent owns on its stream: the one it holds, or the
    /// file reopened by name when the program took that one over. False
    /// when neither is possible (the agent then stops writing).
    pub fn ensure(&mut self) -> bool {
        if self.owns() {
            return true;
        }
        // Not ours any more (closed, or reused by the program): forget it.
        self.fd = -1;
        let p = path(self.attempt);
        // SAFETY: a NUL-terminated path; flags are plain values.
        let fd = unsafe {
            libc::open(
                p.buf.as_ptr() as *const libc::c_char,
                libc::O_WRONLY | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return false;
        }
        if identity(fd) != Some((self.dev, self.ino)) {
            // Another file under our name: not ours to write.
            // SAFETY: closing the descriptor this function just opened.
            unsafe { libc::close(fd) };
            return false;
        }
        self.fd = move_high(fd);
        self.reopened += 1;
        true
    }

    /// Appends `buf` (call [`Stream::ensure`] first).
    pub fn append(&mut self, buf: &[u8]) -> bool {
        self.fd >= 0 && sys::write_all(self.fd, buf)
    }

    /// Closes the descriptor if it is still the agent's (a forked child's copy).
    pub fn close(&mut self) {
        if self.owns() {
            // SAFETY: closing a descriptor that refers to our own file.
            unsafe { libc::close(self.fd) };
        }
        *self = Stream {
            reopened: 0,
            ..Stream::NONE
        };
    }

    /// Creates the stream with its first snapshot, `buf`, in it; `None` if
    /// the directory is unusable.
    ///
    /// The file gets its name only once that snapshot is in it: it starts as
    /// an unnamed file in the recording directory (`O_TMPFILE`) and is linked
    /// as `native-PID.bin` after the write. A process that execs or is killed
    /// meanwhile (its other threads die wherever they are) leaves nothing
    /// rather than an empty stream that no reader can decode. Where the file
    /// system has no `O_TMPFILE`, or `/proc` is missing, the file is created by
    /// name first.
    pub fn create(buf: &[u8]) -> Option<Stream> {
        let cfg = CONFIG.get();
        let mut dir = Fmt::<4200>::new();
        dir.s(&cfg.dir[..cfg.dir_len]).s(b"\0");
        // SAFETY: a NUL-terminated path; flags and mode are plain values.
        let fd = unsafe {
            libc::open(
                dir.buf.as_ptr() as *const libc::c_char,
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd >= 0 {
            let mut s = Stream::adopt(fd)?;
            if !s.append(buf) {
                s.close();
                return None;
            }
            let mut proc_fd = Fmt::<64>::new();
            proc_fd.s(b"/proc/self/fd/").u(s.fd as u64).s(b"\0");
            for attempt in 0..16u64 {
                if !s.owns() {
                    // Taken over before it had a name: nothing to link,
                    // and the descriptor is the program's now.
                    return None;
                }
                let p = path(attempt);
                // SAFETY: NUL-terminated paths.
                let r = unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        proc_fd.buf.as_ptr() as *const libc::c_char,
                        libc::AT_FDCWD,
                        p.buf.as_ptr() as *const libc::c_char,
                        libc::AT_SYMLINK_FOLLOW,
                    )
                };
                if r == 0 {
                    s.attempt = attempt;
                    return Some(s);
                }
                if sys::errno() != libc::EEXIST {
                    break;
                }
            }
            // The unnamed file goes with its descriptor.
            s.close();
        }
        for attempt in 0..16u64 {
            let p = path(attempt);
            // SAFETY: p is NUL-terminated.
            let fd = unsafe {
                libc::open(
                    p.buf.as_ptr() as *const libc::c_char,
                    libc::O_WRONLY
                        | libc::O_APPEND
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd >= 0 {
                let mut s = Stream::adopt(fd)?;
                s.attempt = attempt;
                return s.append(buf).then_some(s);
            }
            if sys::errno() != libc::EEXIST {
                return None;
            }
        }
        None
    }

    /// A stream on `fd`, a descriptor just opened by the agent, moved high.
    fn adopt(fd: c_int) -> Option<Stream> {
        let Some((dev, ino)) = identity(fd) else {
            // SAFETY: closing the descriptor the caller just opened.
            unsafe { libc::close(fd) };
            return None;
        };
        Some(Stream {
            fd: move_high(fd),
            dev,
            ino,
            attempt: 0,
            reopened: 0,
        })
    }
}

/// Device and inode of what `fd` refers to.
fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: fstat writes only into the stat buffer we own.
    unsafe {
        let mut st: libc::stat = core::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
}

/// `fd` moved to a high number (its low number closed), or `fd` itself
/// where no high number is free.
fn move_high(fd: c_int) -> c_int {
    // SAFETY: getrlimit writes into the struct we own.
    let soft = unsafe {
        let mut r: libc::rlimit = core::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur
        } else {
            0
        }
    };
    // Out of the way of the numbers a program's next open gets, below
    // the usual 1024 soft limit.
    let floor = (soft.min(1024) as c_int).saturating_sub(64).max(0);
    if floor <= fd {
        return fd;
    }
    // SAFETY: duplicating a descriptor this agent owns; the copy is
    // close-on-exec like the original.
    let hi = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
    if hi < 0 {
        return fd;
    }
    // SAFETY: closing the low copy, which the agent opened.
    unsafe { libc::close(fd) };
    hi
}

/// The path of this process's stream: `native-PID.bin`, or
/// `native-PID-N.bin` for attempt N (an earlier image of this pid, before
/// an exec, has the first name), NUL-terminated.
fn path(attempt: u64) -> Fmt<4200> {
    let cfg = CONFIG.get();
    let mut p = Fmt::<4200>::new();
    p.s(&cfg.dir[..cfg.dir_len])
        .s(b"/native-")
        .u(PID.load(Ordering::Relaxed) as u64);
    if attempt > 0 {
        p.s(b"-").u(attempt);
    }
    p.s(b".bin\0");
    p
}
