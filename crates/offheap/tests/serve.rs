//! `--serve` (issue 14, live endpoints) on real processes: a node program
//! that leaks Buffers, recorded by `offheap run --serve` (and `attach
//! --serve`), its endpoints read over HTTP while it runs: `/metrics` parsed
//! line by line and checked by `promtool check metrics`, then scraped by a
//! real Prometheus (its HTTP API says the target is up and holds the
//! series); `/debug/pprof/heap` gunzipped and decoded as a profile, and read
//! by `go tool pprof` over HTTP; `/summary.json` and `/`; a 404, a 405; the
//! listener on 127.0.0.1 only; a port in use refused before the target
//! starts. Prometheus, promtool and go are skipped with a note when missing.

mod common;
use common::*;
use offheap_report::pprof::proto::Profile;
use prost::Message;
use std::io::{BufRead, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buffers kept in globalThis by a named function: about 5 MiB/s.
const LEAK: &str = r#"const kept = (globalThis.kept = []);
function leakBuffers() { for (let k = 0; k < 8; k++) kept.push(Buffer.alloc(64 * 1024, k)); }
const cache = new Map(); let i = 0;
function fillCache() { for (let k = 0; k < 200; k++) cache.set(i++, { id: i, text: 'row ' + i }); }
const t = setInterval(() => { leakBuffers(); fillCache(); }, 100);
setTimeout(() => clearInterval(t), 60000);
"#;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

struct Got {
    status: u16,
    content_type: String,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

fn get(url: &str) -> Got {
    try_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn try_get(url: &str) -> Result<Got, ureq::Error> {
    let mut r = agent().get(url).call()?;
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let headers = r.headers().clone();
    let body = r.body_mut().with_config().limit(256 << 20).read_to_vec()?;
    Ok(Got {
        status: r.status().as_u16(),
        content_type,
        headers,
        body,
    })
}

fn text(g: &Got) -> String {
    String::from_utf8_lossy(&g.body).into_owned()
}

/// A sample: its name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

/// One sample line of the text exposition format: `name{l="v",...} value`,
/// or an error saying what is wrong.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let is_name = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
    };
    let mut chars = line.char_indices().peekable();
    let mut name = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if !is_name(c, name.is_empty()) {
            break;
        }
        name.push(c);
        chars.next();
    }
    if name.is_empty() {
        return Err(format!("no metric name: {line:?}"));
    }
    let mut labels = Vec::new();
    if let Some(&(_, '{')) = chars.peek() {
        chars.next();
        loop {
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' || c == '}' {
                    break;
                }
                if !is_name(c, key.is_empty()) || c == ':' {
                    return Err(format!("bad label name in {line:?}"));
                }
                key.push(c);
                chars.next();
            }
            match chars.next() {
                Some((_, '}')) if key.is_empty() => break,
                Some((_, '=')) => {}
                _ => return Err(format!("expected = in {line:?}")),
            }
            if chars.next().map(|x| x.1) != Some('"') {
                return Err(format!("label value not quoted in {line:?}"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|x| x.1) {
                    Some('\\') => match chars.next().map(|x| x.1) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err(format!("bad escape in {line:?}")),
                    },
                    Some('"') => break,
                    Some('\n') | None => return Err(format!("unterminated label in {line:?}")),
                    Some(c) => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next().map(|x| x.1) {
                Some(',') => {}
                Some('}') => break,
                _ => return Err(format!("expected , or }} in {line:?}")),
            }
        }
    }
    let rest: String = chars.map(|x| x.1).collect();
    let mut words = rest.split_whitespace();
    let v = words
        .next()
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let value = match v {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .map_err(|_| format!("bad value {v:?} in {line:?}"))?,
    };
    if !rest.starts_with(' ') || words.count() > 1 {
        return Err(format!("bad separator or trailing text in {line:?}"));
    }
    Ok((name, labels, value))
}

type Samples = Vec<Sample>;

/// Every sample of a /metrics body; panics on a line that does not parse.
fn parse_metrics(body: &str) -> Samples {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|e| panic!("{e}\n{body}")))
        .collect()
}

fn has(samples: &Samples, name: &str) -> bool {
    samples.iter().any(|(n, _, v)| n == name && *v > 0.0)
}

/// offheap with its stderr read line by line on a thread.
struct Recorder {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn spawn(cmd: &mut Command) -> Recorder {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
        Recorder { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for a line of stderr containing `what`.
    fn wait_line(&self, what: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(what))
            {
                return l.clone();
            }
            assert!(
                t.elapsed() < limit,
                "no {what:?} on stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The reader thread drains the pipe once the process is gone.
                std::thread::sleep(Duration::from_millis(100));
                return (st, self.stderr());
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("offheap did not end in {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `url` until `ok` holds for its answer, or `limit` passes (a
/// connection refused, before offheap listens, is polled again too).
fn poll(url: &str, limit: Duration, ok: impl Fn(&Got) -> bool) -> Got {
    let t = Instant::now();
    loop {
        match try_get(url) {
            Ok(g) if ok(&g) => return g,
            Ok(g) if t.elapsed() >= limit => return g,
            Err(e) if t.elapsed() >= limit => panic!("GET {url}: {e}"),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `promtool check metrics` on a /metrics body: its lint must find nothing.
fn promtool_check(body: &str) {
    if !installed("promtool") {
        eprintln!(
            "SKIPPED: promtool is not installed (apt-get install prometheus); /metrics not linted"
        );
        return;
    }
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus scraping `target` every second, its API on `api`.
struct Prometheus {
    child: Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Option<Prometheus> {
        if !installed("prometheus") {
            eprintln!(
                "SKIPPED: prometheus is not installed (apt-get install prometheus); no real scrape"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: offheap\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Some(Prometheus {
            child,
            api: format!("http://{listen}"),
            _dir: dir,
        })
    }

    /// The instant vector of `query`, if the API answered.
    fn query(&self, query: &str) -> Option<Vec<serde_json::Value>> {
        let url = format!("{}/api/v1/query?query={query}", self.api);
        let r = agent().get(&url).call().ok()?;
        let mut r = r;
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    /// Polls `query` until a series of it has a value for which `ok` holds.
    fn wait_for(
        &self,
        query: &str,
        limit: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Vec<serde_json::Value> {
        let t = Instant::now();
        loop {
            let r = self.query(query).unwrap_or_default();
            if r.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(&ok)
            }) || t.elapsed() >= limit
            {
                return r;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `go tool pprof -top` on the endpoint over HTTP; None without go.
fn go_pprof_url(url: &str) -> Option<String> {
    if !installed("go") {
        eprintln!(
            "SKIPPED: go is not installed (apt-get install golang-go); /debug/pprof/heap not read by go tool pprof"
        );
        return None;
    }
    let home = tempfile::tempdir().unwrap();
    let out = output_within(
        Command::new("go")
            .args(["tool", "pprof", "-top", "-timeout", "30", url])
            .env("HOME", home.path())
            .env("PPROF_TMPDIR", home.path())
            .env("GOCACHE", home.path().join("gocache"))
            .env("GOTOOLCHAIN", "local")
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "go tool pprof {url}:\n{text}");
    Some(text)
}

fn decode_pprof(gz: &[u8]) -> Profile {
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    Profile::decode(raw.as_slice()).unwrap()
}

fn refused(addr: &str) -> bool {
    let a: SocketAddr = addr.parse().unwrap();
    TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_err()
}

#[test]
fn run_serve_answers_prometheus_pprof_and_the_report_while_the_target_runs() {
    let sb = Sandbox::new();
    sb.write("leak.js", LEAK);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let base = format!("http://{addr}");
    let started = Instant::now();
    let rec = Recorder::spawn(
        offheap()
            .current_dir(sb.dir.path())
            .args(["run", "--serve", &addr.to_string(), "--duration", "16s"])
            .args(["--min-age", "1s", "--interval", "250ms", "--out", "rec"])
            .args(["--", "node", "leak.js"]),
    );
    let line = rec.wait_line("serving http://", Duration::from_secs(20));
    assert!(line.contains(&format!("http://{addr}/")), "{line}");
    assert!(!rec.stderr().contains("warning"), "{}", rec.stderr());
    let prom = Prometheus::start(addr);

    // The listener is 127.0.0.1's alone: another loopback address is refused.
    assert!(
        refused(&format!("127.0.0.2:{port}")),
        "listening beyond 127.0.0.1"
    );

    // The verdict so far, once samples are in: with suspects after a few seconds.
    let g = poll(
        &format!("{base}/summary.json"),
        Duration::from_secs(12),
        |g| {
            g.status == 200
                && serde_json::from_slice::<serde_json::Value>(&g.body)
                    .is_ok_and(|s| s["suspects"].as_array().is_some_and(|a| !a.is_empty()))
        },
    );
    assert_eq!(g.status, 200, "{}", text(&g));
    assert!(
        g.content_type.starts_with("application/json"),
        "{}",
        g.content_type
    );
    let s: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    assert!(s["verdict"]["primary"].is_string(), "{s:#}");
    assert!(s["verdict"]["kinds"].is_array(), "{s:#}");
    assert!(s["exit_status"].is_null(), "still running: {s:#}");
    assert!(s["notes"].to_string().contains("live:"), "{s:#}");
    let suspects = s["suspects"].as_array().unwrap();
    assert!(!suspects.is_empty(), "no suspects after 12 s: {s:#}");

    // /metrics: the telemetry, the ledger, and (the Model being cached by
    // now) the suspects as labelled series.
    let g = get(&format!("{base}/metrics"));
    assert_eq!(g.status, 200);
    assert!(
        g.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        g.content_type
    );
    let body = text(&g);
    let samples = parse_metrics(&body);
    for name in [
        "offheap_rss_bytes",
        "offheap_heap_used_bytes",
        "offheap_heap_total_bytes",
        "offheap_external_bytes",
        "offheap_rss_ledger_bytes",
        "offheap_suspect_live_bytes",
    ] {
        assert!(has(&samples, name), "no {name} in /metrics:\n{body}");
    }
    let suspect_series: Vec<_> = samples
        .iter()
        .filter(|(n, _, _)| n == "offheap_suspect_live_bytes")
        .collect();
    assert!(suspect_series.len() <= 10, "{body}");
    let top = suspects[0]["function"].as_str().unwrap();
    assert!(
        suspect_series
            .iter()
            .any(|(_, l, _)| l.iter().any(|(k, v)| k == "suspect" && v == top)),
        "the top suspect {top:?} is not a series:\n{body}"
    );
    for (_, labels, _) in &suspect_series {
        for k in ["pid", "rank", "kind", "suspect", "module"] {
            assert!(labels.iter().any(|(n, _)| n == k), "no {k} label:\n{body}");
        }
    }
    // Each family is announced once, with its type.
    let types = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let families: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(types, families.len(), "a family announced twice:\n{body}");
    promtool_check(&body);

    // pprof as Go's net/http/pprof serves it.
    let g = get(&format!("{base}/debug/pprof/heap"));
    assert_eq!(g.status, 200, "{}", text(&g));
    assert_eq!(g.content_type, "application/octet-stream");
    assert_eq!(
        g.headers.get("content-disposition").unwrap(),
        "attachment; filename=\"heap\""
    );
    let p = decode_pprof(&g.body);
    let types: Vec<&str> = p
        .sample_type
        .iter()
        .map(|t| p.string_table[t.r#type as usize].as_str())
        .collect();
    assert_eq!(types.last(), Some(&"inuse_space"), "{types:?}");
    assert!(!p.sample.is_empty(), "a profile without samples");
    assert!(
        get(&format!("{base}/debug/pprof/heap?seconds=30")).status == 400,
        "a delta profile was pretended"
    );
    if let Some(out) = go_pprof_url(&format!("{base}/debug/pprof/heap")) {
        assert!(out.contains("Type: inuse_space"), "{out}");
        assert!(out.contains("Fetching profile over HTTP"), "{out}");
    }

    // The live report, HEAD, and nothing else.
    let g = get(&format!("{base}/"));
    assert_eq!(g.status, 200);
    assert!(
        g.content_type.starts_with("text/html"),
        "{}",
        g.content_type
    );
    assert!(text(&g).contains("<html"), "not HTML");
    let head = agent().head(&format!("{base}/metrics")).call().unwrap();
    assert_eq!(head.status().as_u16(), 200);
    let g = get(&format!("{base}/nope"));
    assert_eq!(g.status, 404);
    assert_eq!(get(&format!("{base}/metrics/x")).status, 404);
    let post = agent()
        .post(&format!("{base}/metrics"))
        .send_empty()
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);

    // A real Prometheus scraped it: the target is up, the series are stored.
    if let Some(prom) = &prom {
        let up = prom.wait_for("up", Duration::from_secs(8), |v| v == 1.0);
        assert!(
            up.iter()
                .any(|s| s["value"][1] == "1"
                    && s["metric"]["instance"] == addr.to_string().as_str()),
            "prometheus: up is not 1: {up:?}"
        );
        let rss = prom.wait_for("offheap_rss_bytes", Duration::from_secs(3), |v| v > 0.0);
        assert!(!rss.is_empty(), "prometheus holds no offheap_rss_bytes");
        let sus = prom.wait_for("offheap_suspect_live_bytes", Duration::from_secs(4), |v| {
            v > 0.0
        });
        assert!(!sus.is_empty(), "prometheus holds no suspect series");
        assert!(sus.len() <= 10, "{sus:?}");
    }
    let checked = started.elapsed();

    // The recording ends as without --serve (node ends on --duration's
    // SIGINT: 128+2), and the endpoints with it.
    let (st, stderr) = rec.wait(Duration::from_secs(60));
    assert_eq!(st.code(), Some(130), "{stderr}");
    let s = summary(&sb.path("rec"));
    assert!(s["verdict"]["primary"].is_string());
    assert!(refused(&addr.to_string()), "still serving after the end");
    eprintln!(
        "run --serve: endpoints checked {checked:?} after the start, all done in {:?}",
        started.elapsed()
    );
}

#[test]
fn attach_serve_answers_while_attached() {
    let sb = Sandbox::new();
    sb.write("leak.js", LEAK);
    let mut node = Command::new("node")
        .arg("leak.js")
        .current_dir(sb.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let rec = Recorder::spawn(
        offheap()
            .current_dir(sb.dir.path())
            .args(["attach", &node.id().to_string(), "--quiet"])
            .args([
                "--serve",
                &port.to_string(),
                "--duration",
                "6s",
                "--out",
                "rec",
            ]),
    );
    let g = poll(
        &format!("{base}/summary.json"),
        Duration::from_secs(10),
        |g| g.status == 200,
    );
    assert_eq!(g.status, 200, "{}", text(&g));
    let s: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(s["pid"], node.id(), "{s:#}");
    // metrics.prom comes with the collector's first interval.
    let g = poll(&format!("{base}/metrics"), Duration::from_secs(5), |g| {
        text(g).contains("offheap_rss_bytes{")
    });
    let body = text(&g);
    let samples = parse_metrics(&body);
    assert!(has(&samples, "offheap_rss_bytes"), "{body}");
    assert!(has(&samples, "offheap_heap_used_bytes"), "{body}");
    let (st, stderr) = rec.wait(Duration::from_secs(60));
    assert!(st.success(), "{st:?}\n{stderr}");
    // Attach never ends the target.
    assert!(node.try_wait().unwrap().is_none(), "the target ended");
    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn a_port_in_use_is_one_error_before_the_target_starts() {
    let sb = Sandbox::new();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out = sb.run(
        "rec",
        &["--serve", &port.to_string()],
        &["node", "-e", "require('fs').writeFileSync('started', '')"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--serve 127.0.0.1:") && err.contains("cannot listen"),
        "{err}"
    );
    assert!(
        !Path::new(&sb.path("started")).exists(),
        "the target started"
    );
    assert!(!sb.path("rec").exists(), "a recording was left behind");
    // Not an address: refused by the argument parser.
    let out = sb.run("rec2", &["--serve", "example.com:80"], &["true"]);
    assert_eq!(out.status.code(), Some(2));
    drop(held);
}
