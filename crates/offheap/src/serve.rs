//! `--serve [ADDR:]PORT` (`run`, `attach`, `check`): live endpoints while
//! the target runs.
//!
//! - `/metrics`: `metrics.prom` as the collector last wrote it (telemetry,
//!   the live RSS ledger), then the analysed series of
//!   [`offheap_report::metrics`] (verdict, growth rates, top suspects);
//! - `/debug/pprof/heap`: the gzipped pprof profile, served as Go's
//!   net/http/pprof serves it;
//! - `/summary.json`: the verdict so far, the JSON of `summary.json`;
//! - `/`: the live report, `report.html` of the recording so far.
//!
//! Anything else is a 404, any method but GET and HEAD a 405. The server is
//! a few threads of offheap's own process (never the target's), started
//! after the listening socket was bound, before the target starts. It only
//! reads: the recording directory (which the analysis opens as `offheap
//! report` does, tolerating the tails being written) and, to symbolize, the
//! modules the recording names. It writes nothing and never holds the
//! recording loop: an analysis runs on a thread of its own (nice 10, so
//! that it yields to the target), one at a time, and its Model is kept for
//! a while (at least [`MIN_CACHE`], ten times what the last analysis
//! cost), so that scrapes side by side share it and analysing takes at
//! most about a tenth of the time however often they come.

use crate::user_error;
use anyhow::Result;
use offheap_analysis::Model;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response};

/// A Model is kept at least this long before a request asks for a new one.
pub const MIN_CACHE: Duration = Duration::from_secs(3);

/// Threads answering requests.
const WORKERS: usize = 4;

/// `metrics.prom` is read up to this size.
const MAX_METRICS_FILE: u64 = 4 << 20;

/// The endpoints, for the messages.
const ENDPOINTS: &str = "/, /metrics, /debug/pprof/heap, /summary.json";

/// `--serve`: `PORT`, `:PORT` or `localhost:PORT` listen on 127.0.0.1;
/// `ADDR:PORT` (an IPv4 address, or `[IPv6]:PORT`) listens on ADDR.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let loopback = |port: &str| {
        port.parse::<u16>()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            .map_err(|_| format!("{s:?}: not a port (0-65535)"))
    };
    if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() {
        return loopback(t);
    }
    if let Some(port) = t.strip_prefix(':') {
        return loopback(port);
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        return loopback(port);
    }
    t.parse::<SocketAddr>().map_err(|_| {
        format!(
            "{s:?}: give PORT (127.0.0.1:PORT), 127.0.0.1:PORT, [::1]:PORT, or another address \
             explicitly (0.0.0.0:PORT: every interface)"
        )
    })
}

/// What to say about listening on `at`: nothing on a loopback address.
fn warning(at: SocketAddr) -> Option<String> {
    (!at.ip().is_loopback()).then(|| {
        format!(
            "--serve {at} listens beyond this machine: whoever reaches it reads the target's \
             memory profile, function names, paths and command line (no authentication; prefer \
             127.0.0.1 behind a tunnel or an authenticating proxy)"
        )
    })
}

/// A listening socket, not yet served.
pub struct Bound {
    server: Arc<tiny_http::Server>,
}

/// Binds `addr` (so that a port in use is an error before the target
/// starts) and tells where: the URL unless `quiet`, a warning when the
/// address is not a loopback one.
pub fn bind(addr: SocketAddr, quiet: bool) -> Result<Bound> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| user_error(format!("--serve {addr}: cannot listen: {e}")))?;
    let at = server.server_addr().to_ip().unwrap_or(addr);
    if let Some(w) = warning(at) {
        eprintln!("offheap: warning: {w}");
    }
    if !quiet {
        eprintln!("offheap: serving http://{at}/ ({ENDPOINTS})");
    }
    Ok(Bound {
        server: Arc::new(server),
    })
}

impl Bound {
    /// Serves the recording in `dir` until the returned guard is dropped.
    pub fn start(self, dir: &Path, min_age_s: f64) -> Serving {
        let live = Arc::new(Live {
            dir: dir.to_path_buf(),
            min_age_s,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .filter_map(|i| {
                let (server, live, stop) = (self.server.clone(), live.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("offheap-serve-{i}"))
                    .spawn(move || {
                        loop {
                            match server.recv() {
                                Ok(req) => handle(&live, req),
                                Err(_) if stop.load(Ordering::Acquire) => break,
                                Err(_) => std::thread::sleep(Duration::from_millis(10)),
                            }
                        }
                    })
                    .ok()
            })
            .collect();
        Serving {
            server: self.server,
            stop,
            workers,
        }
    }
}

/// The running server; dropping it stops it (the requests being answered
/// are answered first).
pub struct Serving {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One analysis of the recording so far, and what was rendered from it.
struct Analysis {
    at: Instant,
    model: Result<Model, String>,
    pprof: OnceLock<Vec<u8>>,
    html: OnceLock<String>,
    summary: OnceLock<String>,
}

#[derive(Default)]
struct State {
    latest: Option<Arc<Analysis>>,
    running: bool,
    /// What the last analysis cost.
    cost: Duration,
}

struct Live {
    dir: PathBuf,
    min_age_s: f64,
    state: Mutex<State>,
    done: Condvar,
}

impl Live {
    /// The latest analysis. One older than its cache time starts a new
    /// one (unless one runs); `wait` waits for it, else the old one (or
    /// none) is returned at once.
    fn get(self: &Arc<Self>, wait: bool) -> Option<Arc<Analysis>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let keep = MIN_CACHE.max(st.cost * 10);
        let stale = st.latest.as_ref().is_none_or(|a| a.at.elapsed() >= keep);
        if stale && !st.running {
            st.running = true;
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("offheap-live-analysis".into())
                .spawn(move || {
                    // Below the target and the recording loop: the
                    // analysis' own worker threads inherit it.
                    // SAFETY: setpriority(2) on this thread's id; no memory involved.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                    }
                    me.refresh()
                });
            if spawned.is_err() {
                drop(st);
                self.refresh();
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
        if wait && stale {
            while st.running {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
        st.latest.clone()
    }

    fn refresh(&self) {
        let t = Instant::now();
        let model = crate::reporting::build_model(&self.dir, self.min_age_s)
            .map(|mut m| {
                m.notes.push(format!(
                    "live: the recording is still running; this is its analysis after {:.0} s",
                    m.recording_duration()
                ));
                m
            })
            .map_err(|e| e.to_string());
        let cost = t.elapsed();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.latest = Some(Arc::new(Analysis {
            at: Instant::now(),
            model,
            pprof: OnceLock::new(),
            html: OnceLock::new(),
            summary: OnceLock::new(),
        }));
        st.cost = cost;
        st.running = false;
        self.done.notify_all();
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn reply(req: Request, status: u16, content_type: &str, body: Vec<u8>, extra: &[(&str, &str)]) {
    let mut r = Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"));
    for (k, v) in extra {
        r.add_header(header(k, v));
    }
    // A client gone before the answer is not an error of ours.
    let _ = req.respond(r);
}

fn text(req: Request, status: u16, msg: &str, extra: &[(&str, &str)]) {
    reply(
        req,
        status,
        "text/plain; charset=utf-8",
        format!("{msg}\n").into_bytes(),
        extra,
    );
}

/// The Model of `a`, or a 503 sent (no samples yet, say).
fn model_or_503(req: Request, a: Option<&Analysis>) -> Option<(Request, &Model)> {
    match a.map(|a| &a.model) {
        Some(Ok(m)) => Some((req, m)),
        Some(Err(e)) => {
            text(
                req,
                503,
                &format!("no analysis yet: {e}"),
                &[("Retry-After", "1")],
            );
            None
        }
        None => {
            text(req, 503, "no analysis yet", &[("Retry-After", "1")]);
            None
        }
    }
}

/// A query parameter's value.
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn handle(live: &Arc<Live>, req: Request) {
    if !matches!(req.method(), Method::Get | Method::Head) {
        return text(req, 405, "only GET and HEAD", &[("Allow", "GET, HEAD")]);
    }
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    match path {
        "/metrics" => {
            let mut body = offheap_format::io::read_recording_file(
                &live.dir.join(crate::collect::METRICS),
                MAX_METRICS_FILE,
            )
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
            if !body.is_empty() && !body.ends_with('\n') {
                body.push('\n');
            }
            // The latest Model, however old (a scrape never waits for an
            // analysis; a stale one starts the next).
            if let Some(a) = live.get(false)
                && let Ok(m) = &a.model
            {
                body.push_str(&offheap_report::metrics::prometheus(m));
                body.push_str(&format!(
                    "# HELP offheap_analysis_age_seconds Age of the analysis the series above come from.\n\
                     # TYPE offheap_analysis_age_seconds gauge\n\
                     offheap_analysis_age_seconds {:.3}\n",
                    a.at.elapsed().as_secs_f64()
                ));
            }
            reply(
                req,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.into_bytes(),
                &[],
            );
        }
        "/debug/pprof/heap" => {
            if param(query, "seconds").is_some_and(|v| !v.is_empty() && v != "0") {
                return text(
                    req,
                    400,
                    "offheap serves the heap profile since the start: no delta profiles (seconds=)",
                    &[],
                );
            }
            if param(query, "debug").is_some_and(|v| !v.is_empty() && v != "0") {
                return text(
                    req,
                    400,
                    "offheap serves the heap profile as pprof only (debug=0): read it with go tool pprof",
                    &[],
                );
            }
            let a = live.get(true);
            let Some((req, m)) = model_or_503(req, a.as_deref()) else {
                return;
            };
            let a = a.as_deref().expect("a model");
            let body = a.pprof.get_or_init(|| offheap_report::pprof(m)).clone();
            reply(
                req,
                200,
                "application/octet-stream",
                body,
                &[
                    ("Content-Disposition", "attachment; filename=\"heap\""),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            );
        }
        "/summary.json" => {
            let a = live.get(true);
            let Some((req, m)) = model_or_503(req, a.as_deref()) else {
                return;
            };
            let a = a.as_deref().expect("a model");
            let body = a.summary.get_or_init(|| m.summary_json()).clone();
            reply(req, 200, "application/json", body.into_bytes(), &[]);
        }
        "/" => {
            let a = live.get(true);
            let Some((req, m)) = model_or_503(req, a.as_deref()) else {
                return;
            };
            let a = a.as_deref().expect("a model");
            let body = a
                .html
                .get_or_init(|| offheap_report::render_html(m))
                .clone();
            reply(req, 200, "text/html; charset=utf-8", body.into_bytes(), &[]);
        }
        _ => text(
            req,
            404,
            &format!("not found: offheap serves {ENDPOINTS}"),
            &[],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let lo = |p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p);
        assert_eq!(parse_addr("8080").unwrap(), lo(8080));
        assert_eq!(parse_addr(":8080").unwrap(), lo(8080));
        assert_eq!(parse_addr("localhost:8080").unwrap(), lo(8080));
        assert_eq!(parse_addr("127.0.0.1:8080").unwrap(), lo(8080));
        assert_eq!(parse_addr("0").unwrap(), lo(0));
        let v6 = parse_addr("[::1]:9000").unwrap();
        assert!(v6.ip().is_loopback() && v6.port() == 9000);
        // Every interface only when named.
        let any = parse_addr("0.0.0.0:8080").unwrap();
        assert!(any.ip().is_unspecified() && !any.ip().is_loopback());
        assert!(parse_addr("65536").is_err());
        assert!(parse_addr("").is_err());
        assert!(parse_addr("example.com:80").is_err());
        assert!(parse_addr("127.0.0.1").is_err());
        // A warning for anything but loopback.
        assert!(warning(lo(8080)).is_none());
        assert!(warning(v6).is_none());
        let w = warning(any).unwrap();
        assert!(
            w.contains("0.0.0.0:8080") && w.contains("no authentication"),
            "{w}"
        );
        assert!(warning("10.1.2.3:80".parse().unwrap()).is_some());
    }

    #[test]
    fn query_params() {
        assert_eq!(param("gc=1&seconds=30", "seconds"), Some("30"));
        assert_eq!(param("debug", "debug"), Some(""));
        assert_eq!(param("", "seconds"), None);
    }

    #[test]
    fn port_in_use_is_one_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = bind(addr, true).err().unwrap().to_string();
        assert!(
            e.contains("cannot listen") && e.contains(&addr.to_string()),
            "{e}"
        );
    }
}
