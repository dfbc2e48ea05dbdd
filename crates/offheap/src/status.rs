//! The live status line on stderr: elapsed time, RSS, heapUsed, external and
//! arrayBuffers, each with its trend. Redrawn in place on a terminal, plain
//! periodic lines otherwise, nothing with `--quiet`.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

/// Formats a byte count for people: `512 B`, `11.8 MiB`, `1.12 GiB`.
pub fn human_bytes(b: f64) -> String {
    offheap_format::units::bytes_f(b)
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// One figure and its recent history.
struct Metric {
    name: &'static str,
    history: VecDeque<(f64, f64)>,
}

impl Metric {
    fn push(&mut self, t: f64, v: f64) {
        self.history.push_back((t, v));
        while self.history.len() > 2 && t - self.history[0].0 > 10.0 {
            self.history.pop_front();
        }
    }

    fn render(&self) -> Option<String> {
        let &(t1, v1) = self.history.back()?;
        let &(t0, v0) = self.history.front()?;
        let trend = if t1 - t0 >= 1.0 {
            let rate = (v1 - v0) / (t1 - t0);
            if rate.abs() < (v1.abs() * 0.002).max(16.0 * 1024.0) {
                " →".to_string()
            } else if rate > 0.0 {
                format!(" ↑{}/s", human_bytes(rate))
            } else {
                format!(" ↓{}/s", human_bytes(-rate))
            }
        } else {
            String::new()
        };
        Some(format!("{} {}{}", self.name, human_bytes(v1), trend))
    }
}

/// Columns of the terminal on stderr (80 if unknown).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; fd 2 is only queried.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            ws.ws_col as usize
        } else {
            80
        }
    }
}

pub struct StatusLine {
    enabled: bool,
    tty: bool,
    start: Instant,
    last_plain: Option<Instant>,
    metrics: [Metric; 4],
    drawn: bool,
}

impl StatusLine {
    pub fn new(quiet: bool) -> StatusLine {
        // SAFETY: isatty only inspects the given descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        let m = |name| Metric {
            name,
            history: VecDeque::new(),
        };
        StatusLine {
            enabled: !quiet,
            tty,
            start: Instant::now(),
            last_plain: None,
            metrics: [m("rss"), m("heapUsed"), m("external"), m("arrayBuffers")],
            drawn: false,
        }
    }

    /// Records the latest figures (any may be unknown).
    pub fn update(
        &mut self,
        rss: Option<u64>,
        heap_used: Option<u64>,
        external: Option<u64>,
        array_buffers: Option<u64>,
    ) {
        let t = self.start.elapsed().as_secs_f64();
        for (m, v) in self
            .metrics
            .iter_mut()
            .zip([rss, heap_used, external, array_buffers])
        {
            if let Some(v) = v {
                m.push(t, v as f64);
            }
        }
    }

    /// Takes the collector's latest figures and draws the line.
    pub fn show(&mut self, c: &crate::collect::Collector) {
        let node = c.last_node.as_ref();
        self.update(
            c.last_proc.as_ref().and_then(|p| p.rss()),
            node.map(|n| n.heap_used),
            node.map(|n| n.external),
            node.map(|n| n.array_buffers),
        );
        self.draw();
    }

    /// The line's text, terminal-safe (only the redraw below adds controls).
    pub fn line(&self) -> String {
        let mut parts = vec![format!("offheap {}", human_duration(self.start.elapsed()))];
        parts.extend(self.metrics.iter().filter_map(Metric::render));
        crate::terminal(&parts.join(" | ")).into_owned()
    }

    /// Draws the line: in place on a terminal, every 5 s otherwise.
    pub fn draw(&mut self) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            // Never wider than the terminal: a wrapped line cannot be redrawn in place.
            let line: String = self
                .line()
                .chars()
                .take(terminal_width().saturating_sub(1))
                .collect();
            let _ = write!(err, "\r\x1b[K{line}");
            self.drawn = true;
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.last_plain = Some(Instant::now());
            let _ = writeln!(err, "{}", self.line());
        }
        let _ = err.flush();
    }

    /// Clears the in-place line before other output.
    pub fn clear(&mut self) {
        if self.enabled && self.tty && self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(12_345_678.0), "11.8 MiB");
        assert_eq!(human_bytes(1.5e9), "1.40 GiB");
        assert_eq!(human_duration(Duration::from_secs(75)), "1m15s");
    }

    #[test]
    fn trend_arrows() {
        let mut m = Metric {
            name: "rss",
            history: VecDeque::new(),
        };
        m.push(0.0, 10e6);
        m.push(2.0, 30e6);
        assert!(m.render().unwrap().contains('↑'));
        let mut f = Metric {
            name: "rss",
            history: VecDeque::new(),
        };
        f.push(0.0, 10e6);
        f.push(2.0, 10e6);
        assert!(f.render().unwrap().contains('→'));
    }
}
