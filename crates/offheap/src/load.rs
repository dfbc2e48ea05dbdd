//! `check --load URL`: an HTTP/1.1 keep-alive load on the target, from
//! offheap's own process (ureq, loopback only). It waits until the server
//! listens, sends the requests over `concurrency` connections, writes what
//! it did into the recording (`load.json`), then asks the session to stop
//! the target as `--duration` does. The growth gates judge the run up to
//! that moment (`end.json` `stop_ms`), so the load's end and the shutdown
//! stay out of the figures; the load's own cost is offheap's, not the
//! target's (it runs in offheap's process, which is not recorded).

use anyhow::{Result, bail};
use offheap_analysis::check::LoadStats;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long to wait for the server to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// `--load` and its options (`run` and `check`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LoadOpts {
    /// Put the command, a server, under HTTP/1.1 keep-alive load once it listens on URL (loopback
    /// only), then stop it (SIGINT, then SIGTERM, then SIGKILL) and judge the run up to the stop.
    /// With check: per-request limits, --max-growth native=2KiB/request.
    #[arg(long, value_name = "URL")]
    pub load: Option<String>,
    /// With --load: how many requests in all.
    #[arg(long, default_value_t = 5000, value_name = "N", requires = "load")]
    pub load_requests: u64,
    /// With --load: connections sending requests at once.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "load",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub load_concurrency: u32,
    /// With --load: stop the load after this long even if requests are left (e.g. 30s).
    #[arg(long, value_name = "DURATION", requires = "load", value_parser = crate::cli::parse_stop_after)]
    pub load_duration: Option<Duration>,
    /// With --load: requests per second in all, spread evenly over time (an open load, as
    /// production traffic arrives; default: as fast as the connections go).
    #[arg(long, value_name = "N", requires = "load", value_parser = parse_rate)]
    pub load_rate: Option<f64>,
    /// With --load: the request method.
    #[arg(long, default_value = "GET", value_name = "METHOD", requires = "load")]
    pub load_method: String,
    /// With --load: the request body.
    #[arg(long, value_name = "TEXT", requires = "load")]
    pub load_body: Option<String>,
    /// With --load: a request header, 'Name: value' (repeatable).
    #[arg(long, value_name = "HEADER", requires = "load", value_parser = parse_header)]
    pub load_header: Vec<(String, String)>,
}

impl LoadOpts {
    /// The load to send and where, if `--load` was given; an error for a
    /// URL that is not loopback http or a method that is not one.
    pub fn spec(&self) -> Result<Option<(LoadSpec, SocketAddr)>> {
        let Some(url) = &self.load else {
            return Ok(None);
        };
        let addr = loopback_addr(url)?;
        if ureq::http::Method::from_bytes(self.load_method.as_bytes()).is_err() {
            bail!("--load-method {:?}: not an HTTP method", self.load_method);
        }
        Ok(Some((
            LoadSpec {
                url: url.clone(),
                requests: self.load_requests,
                concurrency: self.load_concurrency,
                duration: self.load_duration,
                rate: self.load_rate,
                method: self.load_method.to_ascii_uppercase(),
                body: self.load_body.clone(),
                headers: self.load_header.clone(),
            },
            addr,
        )))
    }
}

/// The hooks that run the load beside the target: started with it, joined
/// when it ends (before the analysis, which reads `load.json`).
pub fn hooks(spec: LoadSpec, addr: SocketAddr) -> (crate::run::OnStart, Box<dyn FnOnce()>) {
    let done = Arc::new(AtomicBool::new(false));
    let handle = Arc::new(std::sync::Mutex::new(None));
    let (d, h) = (done.clone(), handle.clone());
    let on_start: crate::run::OnStart = Box::new(move |dir: &std::path::Path| {
        let t = start(spec, addr, dir.to_path_buf(), d);
        if let Ok(mut slot) = h.lock() {
            *slot = Some(t);
        }
    });
    let on_end = Box::new(move || {
        done.store(true, Ordering::Release);
        if let Some(t) = handle.lock().ok().and_then(|mut s| s.take()) {
            let _ = t.join();
        }
    });
    (on_start, on_end)
}

/// One line for `run`'s notes: what the load did.
pub fn note(dir: &std::path::Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(offheap_format::layout::LOAD)).ok()?;
    let l: LoadStats = serde_json::from_slice(&bytes).ok()?;
    Some(match &l.error {
        Some(e) => format!("--load {}: the load did not run: {e}", l.url),
        None => format!(
            "--load: {} {} requests to {} answered in {:.1} s ({:.0}/s{} over {} connections){}; the analysis ends where the load did",
            l.requests,
            l.method,
            l.url,
            (l.end_ms - l.start_ms) / 1000.0,
            l.rate(),
            l.rate_limit
                .map(|r| format!(", limited to {r}/s"))
                .unwrap_or_default(),
            l.concurrency,
            if l.errors > 0 {
                format!(", {} failed", l.errors)
            } else {
                String::new()
            }
        ),
    })
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub url: String,
    pub requests: u64,
    pub concurrency: u32,
    pub duration: Option<Duration>,
    /// Requests per second in all, if limited.
    pub rate: Option<f64>,
    pub method: String,
    pub body: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// The loopback address of an `http://` URL, or why it is refused.
pub fn loopback_addr(url: &str) -> Result<SocketAddr> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--load {url:?}: not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--load {url:?}: only http:// URLs (the load stays on this machine's loopback)");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("--load {url:?}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--load {url:?}: cannot resolve {host}: {e}"))?
        .collect();
    match addrs.iter().find(|a| a.ip().is_loopback()) {
        Some(a) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*a),
        _ => bail!(
            "--load {url:?}: {host} is not a loopback address; the load generator only drives this machine's loopback (127.0.0.1, ::1, localhost)"
        ),
    }
}

/// Parses `--load-rate N`: a positive number of requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim().trim_end_matches("/s");
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e7 => Ok(r),
        _ => Err(format!(
            "{s:?}: expected requests per second, a positive number (e.g. 200)"
        )),
    }
}

/// Parses `--load-header 'Name: value'`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected 'Name: value'"))?;
    let k = k.trim();
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{s:?}: not a header name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// Runs the load on its own thread; `finished` tells it the target ended.
pub fn start(
    spec: LoadSpec,
    addr: SocketAddr,
    dir: PathBuf,
    finished: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stats = run(&spec, addr, &finished);
        let _ = offheap_format::write_atomic(
            &dir.join(offheap_format::layout::LOAD),
            &serde_json::to_vec_pretty(&stats).unwrap_or_default(),
        );
        crate::session::STOP_REQUESTED.store(true, Ordering::Release);
    })
}

fn run(spec: &LoadSpec, addr: SocketAddr, finished: &AtomicBool) -> LoadStats {
    let mut stats = LoadStats {
        url: spec.url.clone(),
        method: spec.method.clone(),
        concurrency: spec.concurrency,
        rate_limit: spec.rate,
        ..Default::default()
    };
    // Wait until the server listens (or the target is gone).
    let waited = Instant::now();
    loop {
        if finished.load(Ordering::Acquire) {
            stats.error = Some("the command ended before it listened".into());
            return stats;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if waited.elapsed() > LISTEN_TIMEOUT {
            stats.error = Some(format!(
                "nothing listened on {addr} within {} s",
                LISTEN_TIMEOUT.as_secs()
            ));
            return stats;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = AtomicU64::new(0);
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let start = Instant::now();
    stats.start_ms = crate::collect::now_ms();
    let deadline = spec.duration.map(|d| start + d);
    std::thread::scope(|s| {
        for _ in 0..spec.concurrency.max(1) {
            s.spawn(|| {
                // One keep-alive connection per worker (ureq pools it).
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .max_idle_connections_per_host(1)
                    .build()
                    .into();
                loop {
                    if finished.load(Ordering::Relaxed)
                        || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.requests {
                        break;
                    }
                    // A limited rate: request i leaves at i / rate seconds
                    // (a worker that fell behind sends at once).
                    if let Some(rate) = spec.rate
                        && !wait_until(
                            start + Duration::from_secs_f64(i as f64 / rate),
                            deadline,
                            finished,
                        )
                    {
                        break;
                    }
                    if request(&agent, spec) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    stats.end_ms = crate::collect::now_ms();
    stats.requests = ok.load(Ordering::Relaxed);
    stats.errors = errors.load(Ordering::Relaxed);
    stats
}

/// Sleeps until `at`, waking to see whether the target ended or the
/// load's duration is over: false then.
fn wait_until(at: Instant, deadline: Option<Instant>, finished: &AtomicBool) -> bool {
    loop {
        let now = Instant::now();
        if finished.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) {
            return false;
        }
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

/// One request; true if it was answered with a 2xx or 3xx status and its
/// body read whole (so the connection is reused).
fn request(agent: &ureq::Agent, spec: &LoadSpec) -> bool {
    let mut b = ureq::http::Request::builder()
        .method(spec.method.as_str())
        .uri(spec.url.as_str());
    for (k, v) in &spec.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let Ok(req) = b.body(spec.body.clone().unwrap_or_default().into_bytes()) else {
        return false;
    };
    match agent.run(req) {
        Ok(mut resp) => {
            let good = resp.status().as_u16() < 400;
            let read = resp
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .is_ok();
            good && read
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls() {
        assert!(loopback_addr("http://127.0.0.1:8080/").is_ok());
        assert!(loopback_addr("http://localhost:9/x").is_ok());
        assert!(loopback_addr("http://[::1]:9/").is_ok());
        assert!(loopback_addr("https://127.0.0.1:8080/").is_err());
        assert!(loopback_addr("http://192.0.2.1:80/").is_err());
        assert!(loopback_addr("not a url").is_err());
        assert_eq!(
            parse_header("X-Test: 1").unwrap(),
            ("X-Test".into(), "1".into())
        );
        assert!(parse_header("nocolon").is_err());
        assert_eq!(parse_rate("200").unwrap(), 200.0);
        assert_eq!(parse_rate("12.5/s").unwrap(), 12.5);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
