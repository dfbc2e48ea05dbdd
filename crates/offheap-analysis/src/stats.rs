//! Robust statistics for noisy memory series.

/// A fitted trend over (t, value) points.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trend {
    /// Theil–Sen slope: the median of pairwise slopes, in value units per t unit.
    pub slope: f64,
    /// Kendall's tau between t and value, -1..1: how consistently the series rises.
    pub tau: f64,
    /// Median value.
    pub level: f64,
    /// Span of t covered.
    pub span: f64,
    /// Number of points used.
    pub n: usize,
}

impl Trend {
    /// Growth over the span according to the slope.
    pub fn growth(&self) -> f64 {
        self.slope * self.span
    }
}

/// Evenly thins a series to at most `max` points (keeping first and last).
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    (0..max)
        .map(|i| points[i * (points.len() - 1) / (max - 1)])
        .collect()
}

/// Theil–Sen slope and Kendall's tau. O(n²) on at most 200 points.
pub fn trend(points: &[(f64, f64)]) -> Trend {
    let pts = thin(points, 200);
    let n = pts.len();
    if n < 2 {
        return Trend {
            n,
            level: pts.first().map(|p| p.1).unwrap_or(0.0),
            ..Default::default()
        };
    }
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    let (mut conc, mut disc) = (0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dt = pts[j].0 - pts[i].0;
            let dv = pts[j].1 - pts[i].1;
            if dt > 0.0 {
                slopes.push(dv / dt);
            }
            if dv > 0.0 {
                conc += 1;
            } else if dv < 0.0 {
                disc += 1;
            }
        }
    }
    let pairs = (n * (n - 1) / 2) as f64;
    let mut values: Vec<f64> = pts.iter().map(|p| p.1).collect();
    Trend {
        slope: median(&mut slopes),
        tau: (conc - disc) as f64 / pairs,
        level: median(&mut values),
        span: pts[n - 1].0 - pts[0].0,
        n,
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The minimum of each of `buckets` equal time slices: the floor of a
/// sawtooth (garbage not yet collected does not count).
pub fn bucket_minima(points: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Vec::new();
    };
    let span = last.0 - first.0;
    if span <= 0.0 || buckets == 0 {
        return points.to_vec();
    }
    let mut out: Vec<Option<(f64, f64)>> = vec![None; buckets];
    for &(t, v) in points {
        let b = (((t - first.0) / span) * buckets as f64)
            .floor()
            .min(buckets as f64 - 1.0) as usize;
        match out[b] {
            Some((_, m)) if m <= v => {}
            _ => out[b] = Some((t, v)),
        }
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_outliers() {
        let mut pts: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 10.0 + 2.0 * i as f64)).collect();
        pts[10].1 = 1e9; // one wild outlier does not move Theil–Sen
        let t = trend(&pts);
        assert!((t.slope - 2.0).abs() < 1e-9, "{t:?}");
        assert!(t.tau > 0.9);
    }

    #[test]
    fn sawtooth_floor_is_flat() {
        let pts: Vec<(f64, f64)> = (0..400)
            .map(|i| (i as f64 * 0.1, 100.0 + (i % 20) as f64 * 5.0))
            .collect();
        let floor = bucket_minima(&pts, 8);
        let t = trend(&floor);
        assert!(t.slope.abs() < 1e-9, "{t:?}");
        assert_eq!(floor.len(), 8);
    }

    #[test]
    fn flat_noise_has_low_tau() {
        let pts: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, if i % 2 == 0 { 5.0 } else { 6.0 }))
            .collect();
        assert!(trend(&pts).tau.abs() < 0.1);
    }
}
