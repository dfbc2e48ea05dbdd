//! Attaching to real node processes over the inspector.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use offheap_node::inspector::{self, Inspector, InspectorError};
use offheap_node::{AnalyzeOptions, snapshot_pid};

struct Target {
    child: Child,
    port: u16,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP server on 127.0.0.1 (port 0) holding 10-byte views of 1 MiB buffers.
/// `--inspect-port=0`: the inspector, once opened by SIGUSR1, takes a free port,
/// so parallel tests (and other users of 9229) do not collide.
fn server(extra_node_args: &[&str]) -> Target {
    let js = r#"
        global.headers = [];
        function keepHeader(i) { const packet = Buffer.alloc(1 << 20, i); headers.push(packet.subarray(0, 10)); }
        for (let i = 0; i < 8; i++) keepHeader(i);
        const srv = require('http').createServer((req, res) => res.end('ok ' + headers.length));
        srv.listen(0, '127.0.0.1', () => console.log('PORT ' + srv.address().port));
    "#;
    let mut child = Command::new("node")
        .args(extra_node_args)
        .arg("-e")
        .arg(js)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .expect("server port")
        .parse()
        .unwrap();
    Target { child, port }
}

fn http_ok(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn attach_snapshot_detach_leaves_server_serving() {
    let t = server(&["--inspect-port=0"]);
    let pid = t.child.id();
    assert_eq!(inspector::listening_ports(pid), vec![t.port]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.heapsnapshot");
    let live = snapshot_pid(pid, &out, &AnalyzeOptions::default()).unwrap();
    assert!(live.bytes > 100_000 && std::fs::metadata(&out).unwrap().len() == live.bytes);
    let text = live.report.to_text();
    // Hostages confirmed live with exact geometry: 1 MiB parents, 10-byte views.
    let g = live
        .report
        .hostage_buffers
        .iter()
        .find(|g| g.held_by.starts_with("headers["))
        .unwrap_or_else(|| panic!("no hostage held by headers[]:\n{text}"));
    assert!(g.confirmed, "{text}");
    assert_eq!(g.count, 8, "{text}");
    assert_eq!(g.parent_bytes, 8 << 20);
    assert_eq!(g.view_bytes, Some(80));
    assert_eq!(g.wasted_bytes, (8 << 20) - 80);
    let ex = &g.examples[0];
    assert_eq!(ex.parent_bytes, 1 << 20);
    assert_eq!(ex.views[0].byte_offset, Some(0));
    assert_eq!(ex.views[0].byte_length, Some(10));
    assert!(text.contains("CONFIRMED"), "{text}");
    // Still serving, and the inspector port offheap opened is closed again.
    assert!(http_ok(t.port).contains("ok 8"));
    assert_eq!(
        inspector::listening_ports(pid),
        vec![t.port],
        "inspector port left open"
    );
    // A second attach works too (the target is as it was).
    let mut insp = Inspector::open(pid, Duration::from_secs(10)).unwrap();
    assert!(insp.opened_by_us());
    let iport = insp.port();
    assert_ne!(iport, t.port);
    assert_eq!(
        insp.evaluate("require('v8').getHeapStatistics().total_heap_size > 0")
            .unwrap(),
        true
    );
    assert_eq!(insp.evaluate("1 + 2").unwrap(), 3);
    assert!(
        matches!(insp.evaluate("throw new Error('boom')"), Err(InspectorError::JsException(m)) if m.contains("boom"))
    );
    insp.close().unwrap();
    assert!(!inspector::port_open(iport));
    assert!(http_ok(t.port).contains("ok 8"));
}

#[test]
fn already_open_inspector_is_left_open() {
    let t = server(&["--inspect=127.0.0.1:0"]);
    let pid = t.child.id();
    let ports = inspector::listening_ports(pid);
    assert_eq!(ports.len(), 2, "{ports:?}");
    let insp = Inspector::open(pid, Duration::from_secs(10)).unwrap();
    assert!(!insp.opened_by_us());
    let iport = insp.port();
    insp.close().unwrap();
    assert!(
        inspector::port_open(iport),
        "an inspector offheap did not open stays open"
    );
    assert!(http_ok(t.port).contains("ok"));
    // Opened at run time by someone else (SIGUSR1 is then a no-op): found and left open.
    let t = server(&["--inspect-port=0"]);
    let pid = t.child.id();
    let other = Inspector::open(pid, Duration::from_secs(10)).unwrap();
    let port = other.port();
    std::mem::forget(other); // another tool that never closes
    let mut insp = Inspector::open(pid, Duration::from_secs(2)).unwrap();
    assert_eq!(insp.port(), port);
    assert!(!insp.opened_by_us(), "the inspector was already open");
    assert_eq!(insp.evaluate("40 + 2").unwrap(), 42);
    insp.close().unwrap();
    assert!(inspector::port_open(port));
    assert!(http_ok(t.port).contains("ok"));
}

#[test]
fn port_taken_is_a_clear_error() {
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().port();
    let t = server(&[&format!("--inspect-port={taken}")]);
    let e = Inspector::open(t.child.id(), Duration::from_secs(3)).unwrap_err();
    assert!(
        matches!(e, InspectorError::PortTaken { port, .. } if port == taken),
        "{e}"
    );
    assert!(e.to_string().contains("taken"), "{e}");
    assert!(http_ok(t.port).contains("ok"));
}

#[test]
fn not_node_and_not_running_are_clear_errors() {
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let e = Inspector::open(sleep.id(), Duration::from_secs(1)).unwrap_err();
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert!(matches!(e, InspectorError::NotNode { .. }), "{e}");
    assert!(e.to_string().contains("not Node.js"), "{e}");
    let e = snapshot_pid(
        sleep.id(),
        std::path::Path::new("/nonexistent/x"),
        &AnalyzeOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
    // A program called `node` that does not handle SIGUSR1: the signal would kill it, so
    // it is not sent (the process survives).
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("node");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut p = Command::new(&fake).arg("30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let e = Inspector::open(p.id(), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, InspectorError::NoSigusr1Handler { .. }), "{e}");
    assert!(p.try_wait().unwrap().is_none(), "the process must survive");
    let _ = p.kill();
    let _ = p.wait();
    // pid 1 belongs to root or is not node: either way a clear refusal, no signal sent.
    let e = Inspector::open(1, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(
            e,
            InspectorError::OtherUser { .. } | InspectorError::NotNode { .. }
        ),
        "{e}"
    );
}

#[test]
fn allocation_tracking_names_the_allocating_function() {
    let t = server(&["--inspect-port=0"]);
    let pid = t.child.id();
    let mut insp = Inspector::open(pid, Duration::from_secs(10)).unwrap();
    insp.start_allocation_tracking().unwrap();
    insp.evaluate(
        "class Session { constructor(i) { this.id = i; this.data = new Array(64).fill(i); } }
         globalThis.sessions = [];
         function rememberSession(i) { globalThis.sessions.push(new Session(i)); }
         for (let i = 0; i < 5000; i++) rememberSession(i); 0",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let live = offheap_node::snapshot_session(
        &mut insp,
        &dir.path().join("t.heapsnapshot"),
        &AnalyzeOptions::default(),
    )
    .unwrap();
    insp.stop_allocation_tracking().unwrap();
    insp.close().unwrap();
    let text = live.report.to_text();
    let r = live
        .report
        .top_retainers
        .iter()
        .find(|r| r.held_by == "sessions")
        .unwrap_or_else(|| panic!("no retainer held by `sessions`:\n{text}"));
    assert!(r.retained_size > 5000 * 64 * 8, "{text}");
    let snap = offheap_node::HeapSnapshot::from_path(&dir.path().join("t.heapsnapshot")).unwrap();
    let sessions = (0..snap.node_count() as u32)
        .filter(|&i| snap.node_name(i) == "Session" && snap.node_type_name(i) == "object")
        .collect::<Vec<_>>();
    assert_eq!(sessions.len(), 5000);
    let site = snap.allocation_site(sessions[0]).expect("allocation site");
    // The `new` site, or the constructor when V8 attributes it there.
    assert!(
        site.starts_with("rememberSession ") || site.starts_with("Session "),
        "{site}"
    );
    assert!(http_ok(t.port).contains("ok"));
}

#[test]
fn busy_target_is_snapshotted_and_left_without_inspector() {
    // The event loop never turns again: only interrupts reach the JS thread.
    let mut child = Command::new("node")
        .args([
            "--inspect-port=0",
            "-e",
            "global.x = []; console.log('ready'); setTimeout(() => { for (;;) { x.push(1); if (x.length > 1e5) x.length = 0; } }, 50)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id();
    let dir = tempfile::tempdir().unwrap();
    let r = snapshot_pid(
        pid,
        &dir.path().join("busy.heapsnapshot"),
        &AnalyzeOptions::default(),
    );
    let ports = inspector::listening_ports(pid);
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let live = r.unwrap();
    assert!(live.bytes > 100_000);
    assert!(alive, "the target must survive");
    assert!(ports.is_empty(), "inspector port left open: {ports:?}");
}
