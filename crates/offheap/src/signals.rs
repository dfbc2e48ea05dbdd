//! SIGINT/SIGTERM/SIGHUP handling through a self-pipe, so the main loop can
//! forward them to the target. A signal that came from the terminal already
//! reached the target (same process group) and is not sent twice.

use std::sync::atomic::{AtomicI32, Ordering};

static PIPE_WR: AtomicI32 = AtomicI32::new(-1);

/// A received signal.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub signo: i32,
    /// True if the kernel sent it on behalf of the terminal (Ctrl-C), so the
    /// whole foreground process group, the target included, got it too.
    pub from_terminal: bool,
}

pub struct Signals {
    rd: i32,
}

extern "C" fn on_signal(signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: only async-signal-safe calls (read of si_code, write(2)); the
    // errno of the interrupted code is saved and restored.
    unsafe {
        let errno = *libc::__errno_location();
        let code = if info.is_null() { 0 } else { (*info).si_code };
        let from_terminal = code == libc::SI_KERNEL;
        let buf = [signo as u8, from_terminal as u8];
        let fd = PIPE_WR.load(Ordering::Relaxed);
        if fd >= 0 {
            libc::write(fd, buf.as_ptr().cast(), 2);
        }
        *libc::__errno_location() = errno;
    }
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into our array; sigaction gets a fully
        // initialised struct whose handler has the SA_SIGINFO signature.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            PIPE_WR.store(fds[1], Ordering::Relaxed);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        Ok(Signals { rd: fds[0] })
    }

    /// The signals received since the last call.
    pub fn drain(&self) -> Vec<Received> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a stack buffer of the given length from our own non-blocking fd.
            let n = unsafe { libc::read(self.rd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            for pair in buf[..n as usize].chunks_exact(2) {
                out.push(Received {
                    signo: pair[0] as i32,
                    from_terminal: pair[1] != 0,
                });
            }
        }
        out
    }
}
