//! A blocking Chrome DevTools Protocol client for Node's inspector.
//!
//! `Inspector::open(pid)` activates the inspector of a running Node process
//! with SIGUSR1, finds the port it listens on from `/proc/PID/net/tcp{,6}`
//! (the LISTEN sockets whose inodes are among the process's file
//! descriptors), reads `/json/list` and connects the WebSocket. Only
//! processes of the same user are accepted, and only 127.0.0.1 is dialled.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::analysis::ViewGeometry;

/// Errors of the inspector client.
#[derive(Debug)]
pub enum InspectorError {
    /// No process with this pid.
    NotRunning(u32),
    /// The process belongs to another user.
    OtherUser {
        pid: u32,
        uid: u32,
        our_uid: u32,
    },
    /// The process is not Node.js.
    NotNode {
        pid: u32,
        exe: String,
    },
    /// SIGUSR1 did not open an inspector port before the timeout.
    InspectorDisabled {
        pid: u32,
        waited: Duration,
    },
    /// The default inspector port is held by another process, so the target could not listen.
    PortTaken {
        pid: u32,
        port: u16,
    },
    /// The inspector listens somewhere offheap will not connect to (not 127.0.0.1).
    NotLoopback {
        pid: u32,
        detail: String,
    },
    /// The process is in another network namespace (a container): its 127.0.0.1 is not ours.
    OtherNetNamespace {
        pid: u32,
    },
    /// Nothing answers as a Node inspector on this port.
    NoInspector {
        port: u16,
        detail: String,
    },
    /// The process neither catches nor ignores SIGUSR1: sending it would terminate it.
    NoSigusr1Handler {
        pid: u32,
    },
    /// Sending the signal failed.
    Signal {
        pid: u32,
        err: std::io::Error,
    },
    Io(std::io::Error),
    WebSocket(String),
    /// The protocol returned an error for a command.
    Protocol {
        method: String,
        code: i64,
        message: String,
    },
    /// Evaluated JavaScript threw.
    JsException(String),
    /// No reply within the time limit.
    Timeout {
        method: String,
        waited: Duration,
    },
    /// The connection closed.
    Closed,
}

impl fmt::Display for InspectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InspectorError::*;
        match self {
            NotRunning(p) => write!(f, "process {p} is not running"),
            OtherUser { pid, uid, our_uid } => write!(
                f,
                "process {pid} belongs to uid {uid}, not to you (uid {our_uid}); offheap attaches only to your own processes"
            ),
            NotNode { pid, exe } => write!(f, "process {pid} is not Node.js (executable: {exe})"),
            InspectorDisabled { pid, waited } => write!(
                f,
                "process {pid} did not open its inspector within {:.1}s after SIGUSR1 \
                 (inspector disabled, e.g. built without it, --disable-sigusr1, or a user SIGUSR1 handler)",
                waited.as_secs_f64()
            ),
            PortTaken { pid, port } => write!(
                f,
                "process {pid} could not open its inspector: 127.0.0.1:{port} is taken by another process \
                 (start the target with --inspect-port=0 or another free port, or stop what holds {port})"
            ),
            NotLoopback { pid, detail } => write!(
                f,
                "process {pid}'s inspector is not reachable on 127.0.0.1 ({detail}); offheap connects only to 127.0.0.1"
            ),
            OtherNetNamespace { pid } => write!(
                f,
                "process {pid} runs in another network namespace (a container?): its inspector on 127.0.0.1 \
                 is not reachable from here; run offheap inside the same namespace"
            ),
            NoInspector { port, detail } => {
                write!(f, "no Node inspector answers on 127.0.0.1:{port}: {detail}")
            }
            NoSigusr1Handler { pid } => write!(
                f,
                "process {pid} has no SIGUSR1 handler (Node built without the inspector, or the handler was \
                 removed), so SIGUSR1 would terminate it; not sent. Start it with --inspect=127.0.0.1:0 instead"
            ),
            Signal { pid, err } => write!(f, "cannot send SIGUSR1 to process {pid}: {err}"),
            Io(e) => write!(f, "inspector I/O error: {e}"),
            WebSocket(e) => write!(f, "inspector WebSocket error: {e}"),
            Protocol {
                method,
                code,
                message,
            } => {
                write!(f, "inspector command {method} failed ({code}): {message}")
            }
            JsException(e) => write!(f, "JavaScript exception in the target: {e}"),
            Timeout { method, waited } => {
                write!(
                    f,
                    "no reply to {method} within {:.1}s",
                    waited.as_secs_f64()
                )
            }
            Closed => write!(f, "the inspector connection closed"),
        }
    }
}

impl std::error::Error for InspectorError {}

impl From<std::io::Error> for InspectorError {
    fn from(e: std::io::Error) -> Self {
        InspectorError::Io(e)
    }
}

impl From<tungstenite::Error> for InspectorError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                InspectorError::Closed
            }
            tungstenite::Error::Io(e) => InspectorError::Io(e),
            e => InspectorError::WebSocket(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, InspectorError>;

/// Default inspector port.
pub const DEFAULT_PORT: u16 = 9229;

/// A CDP session with one Node process.
pub struct Inspector {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    port: u16,
    pid: Option<u32>,
    opened_by_us: bool,
    closed: bool,
    events: VecDeque<(String, Value)>,
    /// Time limit for ordinary commands.
    pub call_timeout: Duration,
}

impl fmt::Debug for Inspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspector")
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("opened_by_us", &self.opened_by_us)
            .finish()
    }
}

const MAX_QUEUED_EVENTS: usize = 10_000;

fn our_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Check that `pid` is a running Node.js process of the same user.
pub fn check_target(pid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let md = std::fs::metadata(&proc).map_err(|_| InspectorError::NotRunning(pid))?;
    let uid = md.uid();
    if uid != our_uid() {
        return Err(InspectorError::OtherUser {
            pid,
            uid,
            our_uid: our_uid(),
        });
    }
    // A zombie has no exe/cmdline.
    let exe = std::fs::read_link(proc.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
    let argv0 = String::from_utf8_lossy(argv0).into_owned();
    let base = |s: &str| {
        s.rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(" (deleted)")
            .to_string()
    };
    let is_node =
        |b: &str| b == "node" || b == "nodejs" || b.starts_with("node-") || b.starts_with("node2");
    if exe.is_empty() && argv0.is_empty() {
        return Err(InspectorError::NotRunning(pid));
    }
    if is_node(&base(&exe)) || is_node(&base(&argv0)) {
        Ok(())
    } else {
        Err(InspectorError::NotNode {
            pid,
            exe: if exe.is_empty() { argv0 } else { exe },
        })
    }
}

/// Whether the process catches or ignores SIGUSR1 (`SigCgt`/`SigIgn` in /proc/PID/status).
fn sigusr1_handled(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64 << (libc::SIGUSR1 - 1);
    (mask("SigCgt:") | mask("SigIgn:")) & bit != 0
}

/// A listening TCP socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Listen {
    ip: String,
    v6: bool,
    port: u16,
    inode: u64,
}

/// Listening TCP sockets in the network namespace of `pid`.
fn listening_sockets(pid: u32) -> Vec<Listen> {
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((ip, port)) = f[1].split_once(':') else {
                continue;
            };
            let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), f[9].parse::<u64>()) else {
                continue;
            };
            out.push(Listen {
                ip: ip.to_string(),
                v6,
                port,
                inode,
            });
        }
    }
    out
}

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut s = HashSet::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(l) = std::fs::read_link(e.path()) {
                let l = l.to_string_lossy();
                if let Some(x) = l.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']'))
                    && let Ok(i) = x.parse()
                {
                    s.insert(i);
                }
            }
        }
    }
    s
}

/// Whether a listening address accepts connections to 127.0.0.1.
fn reachable_on_loopback(l: &Listen) -> bool {
    if l.v6 {
        // :: (any) accepts IPv4-mapped connections unless v6only; ::ffff:127.0.0.1 too.
        l.ip == "00000000000000000000000000000000" || l.ip == "0000000000000000FFFF00000100007F"
    } else {
        // Little-endian hex: 0100007F = 127.0.0.1, 00000000 = 0.0.0.0.
        l.ip == "0100007F" || l.ip == "00000000"
    }
}

/// TCP ports the process listens on.
fn pid_listening(pid: u32) -> Vec<Listen> {
    let inodes = socket_inodes(pid);
    listening_sockets(pid)
        .into_iter()
        .filter(|l| inodes.contains(&l.inode))
        .collect()
}

/// TCP ports process `pid` listens on (from /proc/PID/net/tcp{,6} and its fds).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut v: Vec<u16> = pid_listening(pid).into_iter().map(|l| l.port).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The port the target's inspector will use: `--inspect-port`/`--inspect`/`--debug-port`
/// on its command line or in NODE_OPTIONS, else 9229 (0 = a random port).
pub fn expected_port(pid: u32) -> u16 {
    inspect_settings(pid).0
}

/// (inspector port, whether the inspector was activated at startup by `--inspect*`).
fn inspect_settings(pid: u32) -> (u16, bool) {
    let split = |b: Vec<u8>| -> Vec<String> {
        b.split(|&c| c == 0)
            .filter(|x| !x.is_empty())
            .map(|x| String::from_utf8_lossy(x).into_owned())
            .collect()
    };
    let cmdline = split(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default());
    let mut node_options = Vec::new();
    for e in split(std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default()) {
        if let Some(v) = e.strip_prefix("NODE_OPTIONS=") {
            node_options.extend(v.split_whitespace().map(str::to_string));
        }
    }
    let mut port = DEFAULT_PORT;
    let mut active = false;
    // NODE_OPTIONS first: the command line overrides it.
    for (args, skip_argv0) in [(&node_options, false), (&cmdline, true)] {
        let mut i = usize::from(skip_argv0);
        while i < args.len() {
            let a = &args[i];
            if !a.starts_with('-') || a == "--" {
                break; // the script and its arguments
            }
            for flag in [
                "--inspect-port",
                "--debug-port",
                "--inspect-brk",
                "--inspect-wait",
                "--inspect",
            ] {
                let takes_value = flag == "--inspect-port" || flag == "--debug-port";
                let val = if let Some(v) = a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
                    Some(v.to_string())
                } else if a == flag && takes_value {
                    i += 1;
                    args.get(i).cloned()
                } else {
                    None
                };
                if !takes_value && (a == flag || a.starts_with(&format!("{flag}="))) {
                    active = true;
                }
                if let Some(v) = val {
                    if let Ok(p) = v.rsplit(':').next().unwrap_or("").parse::<u16>() {
                        port = p;
                    }
                    break;
                }
            }
            if a == "-e"
                || a == "--eval"
                || a == "-p"
                || a == "--print"
                || a == "-r"
                || a == "--require"
            {
                i += 1; // skip the option's value
            }
            i += 1;
        }
    }
    (port, active)
}

/// One `/json/list` target.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub title: String,
    pub url: String,
    pub ws_path: String,
}

/// `GET path` on 127.0.0.1:port; honours Content-Length (node keeps the connection open).
fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end;
    loop {
        let k = s.read(&mut tmp)?;
        if k == 0 {
            return Err(InspectorError::NoInspector {
                port,
                detail: "connection closed before the HTTP headers".into(),
            });
        }
        buf.extend_from_slice(&tmp[..k]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            header_end = p + 4;
            break;
        }
        if buf.len() > 64 * 1024 {
            return Err(InspectorError::NoInspector {
                port,
                detail: "HTTP headers too long".into(),
            });
        }
    }
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| InspectorError::NoInspector {
            port,
            detail: "not an HTTP reply".into(),
        })?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = buf[header_end..].to_vec();
    match len {
        Some(len) => {
            if len > 16 << 20 {
                return Err(InspectorError::NoInspector {
                    port,
                    detail: "reply too large".into(),
                });
            }
            while body.len() < len {
                let k = s.read(&mut tmp)?;
                if k == 0 {
                    break;
                }
                body.extend_from_slice(&tmp[..k]);
            }
            body.truncate(len);
        }
        None => {
            // No length: read until close (bounded).
            while let Ok(k) = s.read(&mut tmp) {
                if k == 0 || body.len() > 16 << 20 {
                    break;
                }
                body.extend_from_slice(&tmp[..k]);
            }
        }
    }
    Ok((status, body))
}

/// Read the targets of an inspector on 127.0.0.1:port.
pub fn list_targets(port: u16, timeout: Duration) -> Result<Vec<Target>> {
    let (status, body) = http_get(port, "/json/list", timeout)?;
    if status != 200 {
        return Err(InspectorError::NoInspector {
            port,
            detail: format!("GET /json/list returned HTTP {status}"),
        });
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| InspectorError::NoInspector {
        port,
        detail: format!("/json/list is not JSON: {e}"),
    })?;
    let arr = v.as_array().ok_or_else(|| InspectorError::NoInspector {
        port,
        detail: "/json/list is not an array".into(),
    })?;
    let mut out = Vec::new();
    for t in arr {
        let Some(ws) = t.get("webSocketDebuggerUrl").and_then(Value::as_str) else {
            continue;
        };
        // ws://HOST:PORT/PATH — only the path is used; the host is always 127.0.0.1.
        let rest = ws.strip_prefix("ws://").unwrap_or(ws);
        let path = rest.find('/').map(|p| &rest[p..]).unwrap_or("/");
        out.push(Target {
            id: t
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            title: t
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            url: t
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ws_path: path.to_string(),
        });
    }
    if out.is_empty() {
        return Err(InspectorError::NoInspector {
            port,
            detail: "no debuggable target in /json/list".into(),
        });
    }
    Ok(out)
}

/// Whether something accepts TCP connections on 127.0.0.1:port.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

impl Inspector {
    /// Connect to an inspector that is already listening on 127.0.0.1:port.
    /// offheap did not open it, so `close()` leaves it open.
    pub fn connect(port: u16) -> Result<Inspector> {
        Self::connect_inner(port, None, false, Duration::from_secs(5))
    }

    fn connect_inner(
        port: u16,
        pid: Option<u32>,
        opened_by_us: bool,
        timeout: Duration,
    ) -> Result<Inspector> {
        let targets = list_targets(port, timeout)?;
        let t = &targets[0];
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let url = format!("ws://127.0.0.1:{port}{}", t.ws_path);
        let (ws, _resp) = tungstenite::client(url.as_str(), stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => {
                InspectorError::WebSocket(format!("handshake with {url}: {e}"))
            }
            tungstenite::HandshakeError::Interrupted(_) => {
                InspectorError::WebSocket(format!("handshake with {url} interrupted"))
            }
        })?;
        Ok(Inspector {
            ws,
            next_id: 1,
            port,
            pid,
            opened_by_us,
            closed: false,
            events: VecDeque::new(),
            call_timeout: Duration::from_secs(60),
        })
    }

    /// Open the inspector of a running Node process (SIGUSR1) and connect to it.
    pub fn open(pid: u32, timeout: Duration) -> Result<Inspector> {
        check_target(pid)?;
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).ok();
        if let (Some(a), Some(b)) = (ns("self"), ns(&pid.to_string()))
            && a != b
        {
            return Err(InspectorError::OtherNetNamespace { pid });
        }
        let (want, active) = inspect_settings(pid);
        let before = pid_listening(pid);
        // Probing sends `GET /json/list`: only to ports that may be the inspector's,
        // so the application's own ports are not disturbed.
        let probe_existing = |before: &[Listen]| -> Option<u16> {
            before
                .iter()
                .filter(|l| reachable_on_loopback(l) && (want == 0 || l.port == want))
                .map(|l| l.port)
                .find(|&p| list_targets(p, Duration::from_millis(500)).is_ok())
        };
        // Started with --inspect: use that inspector and leave it open.
        if active && let Some(p) = probe_existing(&before) {
            return Self::connect_inner(p, Some(pid), false, Duration::from_secs(5));
        }
        let before_set: HashSet<Listen> = before.into_iter().collect();
        // The default action of SIGUSR1 is to terminate: only send it when handled.
        if !sigusr1_handled(pid) {
            return Err(InspectorError::NoSigusr1Handler { pid });
        }
        // SAFETY: kill with a valid signal number; the pid was checked to be ours.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Err(InspectorError::NotRunning(pid));
            }
            return Err(InspectorError::Signal { pid, err });
        }
        let start = Instant::now();
        let mut non_loopback = None;
        loop {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(InspectorError::NotRunning(pid));
            }
            let now: Vec<Listen> = pid_listening(pid)
                .into_iter()
                .filter(|l| !before_set.contains(l))
                .collect();
            // The expected port first.
            let mut now = now;
            now.sort_by_key(|l| (l.port != want, l.port));
            for l in &now {
                if !reachable_on_loopback(l) {
                    non_loopback = Some(format!(
                        "listening on port {} of a non-loopback address",
                        l.port
                    ));
                    continue;
                }
                if list_targets(l.port, Duration::from_millis(1000)).is_ok() {
                    return Self::connect_inner(l.port, Some(pid), true, Duration::from_secs(5));
                }
            }
            if start.elapsed() >= timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(detail) = non_loopback {
            return Err(InspectorError::NotLoopback { pid, detail });
        }
        // SIGUSR1 is a no-op when the inspector was already opened at run time.
        if let Some(p) = probe_existing(&pid_listening(pid)) {
            return Self::connect_inner(p, Some(pid), false, Duration::from_secs(5));
        }
        // Is the port the target wants held by someone else?
        let ours = socket_inodes(pid);
        let taken = want != 0
            && listening_sockets(pid)
                .into_iter()
                .any(|l| l.port == want && !ours.contains(&l.inode));
        if taken {
            return Err(InspectorError::PortTaken { pid, port: want });
        }
        Err(InspectorError::InspectorDisabled {
            pid,
            waited: start.elapsed(),
        })
    }

    /// The inspector's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Whether this session activated the inspector (and so closes it on `close()`).
    pub fn opened_by_us(&self) -> bool {
        self.opened_by_us
    }
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn read_msg(&mut self, deadline: Instant, method: &str) -> Result<Option<Value>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(InspectorError::Timeout {
                    method: method.to_string(),
                    waited: self.call_timeout,
                });
            }
            self.ws
                .get_ref()
                .set_read_timeout(Some(left.min(Duration::from_secs(1))))?;
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).map_err(|e| {
                        InspectorError::WebSocket(format!("bad JSON from the inspector: {e}"))
                    })?;
                    return Ok(Some(v));
                }
                Ok(Message::Close(_)) => return Err(InspectorError::Closed),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn send(&mut self, method: &str, params: Value) -> Result<u64> {
        if self.closed {
            return Err(InspectorError::Closed);
        }
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string()))?;
        Ok(id)
    }

    /// Send a command and wait for its reply; events that arrive meanwhile go to `on_event`.
    /// `idle` bounds the time between two messages.
    pub fn call_with(
        &mut self,
        method: &str,
        params: Value,
        idle: Duration,
        on_event: &mut dyn FnMut(&str, &Value) -> Result<()>,
    ) -> Result<Value> {
        let id = self.send(method, params)?;
        let mut deadline = Instant::now() + idle;
        loop {
            let Some(v) = self.read_msg(deadline, method)? else {
                continue;
            };
            deadline = Instant::now() + idle;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(InspectorError::Protocol {
                        method: method.to_string(),
                        code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                        message: e
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    });
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
            if let Some(m) = v.get("method").and_then(Value::as_str) {
                let params = v.get("params").cloned().unwrap_or(Value::Null);
                on_event(m, &params)?;
            }
        }
    }

    /// Send a command and wait for its reply. Events received meanwhile are queued
    /// (see [`Inspector::next_event`]).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let mut q = std::mem::take(&mut self.events);
        let idle = self.call_timeout;
        let r = self.call_with(method, params, idle, &mut |m, p| {
            if q.len() < MAX_QUEUED_EVENTS {
                q.push_back((m.to_string(), p.clone()));
            }
            Ok(())
        });
        let mut newer = std::mem::replace(&mut self.events, q);
        self.events.append(&mut newer);
        r
    }

    /// The next event (queued, or read within `timeout`).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<(String, Value)>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_msg(deadline, "(event)") {
                Ok(Some(v)) => {
                    if let Some(m) = v.get("method").and_then(Value::as_str) {
                        return Ok(Some((
                            m.to_string(),
                            v.get("params").cloned().unwrap_or(Value::Null),
                        )));
                    }
                }
                Ok(None) => {}
                Err(InspectorError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Evaluate an expression in the target (`require` available) and return its value.
    /// Promises are awaited.
    pub fn evaluate(&mut self, expr: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "includeCommandLineAPI": true, "returnByValue": true,
                   "awaitPromise": true, "silent": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex
                .pointer("/exception/description")
                .and_then(Value::as_str)
                .or_else(|| ex.get("text").and_then(Value::as_str))
                .unwrap_or("exception");
            return Err(InspectorError::JsException(text.to_string()));
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// Take a heap snapshot and stream it into `out` chunk by chunk; `progress(done, total)`
    /// reports V8's progress. Returns the number of bytes written.
    pub fn take_heap_snapshot(
        &mut self,
        out: &mut impl Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        self.call("HeapProfiler.enable", json!({}))?;
        let mut written = 0u64;
        let mut werr: Option<std::io::Error> = None;
        let r = self.call_with(
            "HeapProfiler.takeHeapSnapshot",
            json!({"reportProgress": true, "captureNumericValue": false}),
            Duration::from_secs(600),
            &mut |m, p| {
                match m {
                    "HeapProfiler.addHeapSnapshotChunk" if werr.is_none() => {
                        let c = p.get("chunk").and_then(Value::as_str).unwrap_or("");
                        match out.write_all(c.as_bytes()) {
                            Ok(()) => written += c.len() as u64,
                            Err(e) => werr = Some(e),
                        }
                    }
                    "HeapProfiler.reportHeapSnapshotProgress" => {
                        let d = p.get("done").and_then(Value::as_u64).unwrap_or(0);
                        let t = p.get("total").and_then(Value::as_u64).unwrap_or(0);
                        progress(d, t);
                    }
                    _ => {}
                }
                Ok(())
            },
        );
        r?;
        if let Some(e) = werr {
            return Err(InspectorError::Io(e));
        }
        out.flush()?;
        Ok(written)
    }

    /// Record allocation stacks from now on (`HeapProfiler.startTrackingHeapObjects`
    /// with `trackAllocations`), so later snapshots name the allocating function
    /// of each object. Costs CPU and memory in the target while on.
    pub fn start_allocation_tracking(&mut self) -> Result<()> {
        self.call("HeapProfiler.enable", json!({}))?;
        self.call(
            "HeapProfiler.startTrackingHeapObjects",
            json!({"trackAllocations": true}),
        )?;
        Ok(())
    }

    /// Stop allocation tracking. V8 emits a snapshot when tracking stops; it is discarded.
    pub fn stop_allocation_tracking(&mut self) -> Result<()> {
        let idle = self.call_timeout;
        self.call_with(
            "HeapProfiler.stopTrackingHeapObjects",
            json!({"reportProgress": false}),
            idle,
            &mut |_, _| Ok(()),
        )?;
        Ok(())
    }

    /// Read `byteOffset`/`byteLength`/parent length of views by snapshot node id.
    /// Ids that are gone or not views are left out. The object group is released.
    pub fn query_view_geometry(
        &mut self,
        ids: &[u64],
    ) -> Result<std::collections::HashMap<u64, ViewGeometry>> {
        const GROUP: &str = "offheap-geometry";
        let mut out = std::collections::HashMap::new();
        self.call("HeapProfiler.enable", json!({}))?;
        let mut res = Ok(());
        for &id in ids {
            let obj = match self.call(
                "HeapProfiler.getObjectByHeapObjectId",
                json!({"objectId": id.to_string(), "objectGroup": GROUP}),
            ) {
                Ok(v) => v,
                Err(InspectorError::Protocol { .. }) => continue,
                Err(e) => {
                    res = Err(e);
                    break;
                }
            };
            let Some(oid) = obj.pointer("/result/objectId").and_then(Value::as_str) else {
                continue;
            };
            let r = self.call(
                "Runtime.callFunctionOn",
                json!({"objectId": oid, "returnByValue": true, "silent": true, "objectGroup": GROUP,
                       "functionDeclaration": "function(){ if (!ArrayBuffer.isView(this)) return null; \
                        return {off: this.byteOffset, len: this.byteLength, parent: this.buffer.byteLength}; }"}),
            );
            match r {
                Ok(v) => {
                    if let Some(g) = v.pointer("/result/value")
                        && let (Some(off), Some(len), Some(parent)) = (
                            g.get("off").and_then(Value::as_u64),
                            g.get("len").and_then(Value::as_u64),
                            g.get("parent").and_then(Value::as_u64),
                        )
                    {
                        out.insert(
                            id,
                            ViewGeometry {
                                byte_offset: off,
                                byte_length: len,
                                parent_bytes: parent,
                            },
                        );
                    }
                }
                Err(InspectorError::Protocol { .. }) => {}
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        let rel = self.call("Runtime.releaseObjectGroup", json!({"objectGroup": GROUP}));
        res?;
        rel?;
        Ok(out)
    }

    /// End the session. When offheap opened the inspector, close it in the target
    /// (`require('inspector').close()`) and wait until the port is closed.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let _ = self.call("HeapProfiler.disable", json!({}));
        let mut result = Ok(());
        if self.opened_by_us {
            // `inspector.close()` blocks the target's main thread until no
            // session is connected, and tearing a session down needs that
            // thread: it must never run while a session is open. So it is
            // scheduled on a short unref'd timer (with `require` resolved
            // now: the command-line API does not exist in the callback), and
            // we disconnect at once. Only a target whose event loop never
            // turns (busy JS) keeps the port open; for that one, a second,
            // short session closes it synchronously from an interrupt.
            let sent = self.send(
                "Runtime.evaluate",
                json!({"expression": "(function () { const i = require('inspector'); setTimeout(() => { try { i.close(); } catch (_) {} }, 200).unref(); return 0; })()",
                       "includeCommandLineAPI": true, "silent": true}),
            );
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Ok(id) = sent {
                if Instant::now() >= deadline {
                    break;
                }
                match self.read_msg(Instant::now() + Duration::from_millis(200), "close") {
                    Ok(Some(m)) if m.get("id").and_then(Value::as_u64) == Some(id) => break,
                    Ok(_) | Err(InspectorError::Timeout { .. }) => {}
                    Err(_) => break,
                }
            }
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
            let _ = self.ws.get_mut().shutdown(std::net::Shutdown::Both);
            // Watch the port passively (/proc): a probe connection would itself
            // be a connection that `inspector.close()` waits for.
            let (pid, port) = (self.pid, self.port);
            let still_open = || match pid {
                Some(pid) => listening_ports(pid).contains(&port),
                None => port_open(port),
            };
            let wait_closed = |secs: u64| {
                let deadline = Instant::now() + Duration::from_secs(secs);
                while still_open() {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                true
            };
            if !wait_closed(3) {
                if let Ok(mut again) = Self::connect_inner(port, pid, false, Duration::from_secs(2))
                {
                    let _ = again.send(
                        "Runtime.evaluate",
                        json!({"expression": "(function () { require('inspector').close(); return 0; })()",
                               "includeCommandLineAPI": true, "silent": true}),
                    );
                    let _ = again.ws.flush();
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = again.ws.get_mut().shutdown(std::net::Shutdown::Both);
                    again.closed = true;
                }
                if !wait_closed(5) {
                    result = Err(InspectorError::WebSocket(format!(
                        "the target's inspector port {port} is still open after close"
                    )));
                }
            }
        } else {
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
        }
        self.closed = true;
        result
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}
