//! Least-squares fits of memory over time, and the rule that turns one into a verdict.
//!
//! The rule: memory has levelled off (PASS) when the fitted slope over the steady-state
//! window is below `max_slope`; it grows steadily (FAIL) when the slope is at or above
//! `max_slope` and the line explains the points well (R² at least `min_r2`); a slope at or
//! above the threshold with a poor fit is memory that moves without a trend (INCONCLUSIVE).

use serde::Serialize;

/// A straight line fitted to `(seconds, bytes)` points.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LineFit {
    /// Bytes per second.
    pub slope: f64,
    /// Bytes at time zero.
    pub intercept: f64,
    /// Coefficient of determination: 1 for points on the line, near 0 for no trend.
    pub r2: f64,
}

impl LineFit {
    /// The least-squares line through `points`; `None` for fewer than two distinct times.
    pub fn of(points: &[(f64, f64)]) -> Option<LineFit> {
        let n = points.len() as f64;
        if points.len() < 2 {
            return None;
        }
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
        let (mut stt, mut sty, mut syy) = (0.0, 0.0, 0.0);
        for &(t, y) in points {
            stt += (t - mean_t) * (t - mean_t);
            sty += (t - mean_t) * (y - mean_y);
            syy += (y - mean_y) * (y - mean_y);
        }
        if stt <= 0.0 {
            return None;
        }
        let slope = sty / stt;
        let intercept = mean_y - slope * mean_t;
        // A perfectly flat series has no variance, so no trend for a line to explain.
        let r2 = if syy <= 0.0 {
            0.0
        } else {
            (sty * sty) / (stt * syy)
        };
        Some(LineFit {
            slope,
            intercept,
            r2,
        })
    }

    /// The fitted value at time `t`.
    pub fn at(&self, t: f64) -> f64 {
        self.intercept + self.slope * t
    }
}

/// The thresholds of the rule.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Thresholds {
    /// Bytes per second at or above which memory counts as growing.
    pub max_slope: f64,
    /// The R² a growing fit needs to count as steady growth.
    pub min_r2: f64,
    /// Bytes of growth per slow client, from before the clients connected to the steady
    /// state, that still count as a bound.
    pub max_per_client: f64,
}

/// What the fit over the steady-state window says about memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trend {
    /// The slope is below the threshold.
    Flat,
    /// The slope is at or above the threshold and the line fits.
    Growing,
    /// The slope is at or above the threshold but the points scatter around the line.
    Erratic,
}

impl Thresholds {
    pub fn trend(&self, fit: &LineFit) -> Trend {
        if fit.slope < self.max_slope {
            Trend::Flat
        } else if fit.r2 >= self.min_r2 {
            Trend::Growing
        } else {
            Trend::Erratic
        }
    }
}

/// The first time at which the series has stopped growing: the fit over the `window`
/// seconds ending there has a slope below `max_slope`. `None` while it still grows (or
/// before a whole window of points exists).
pub fn settled_at(points: &[(f64, f64)], window: f64, max_slope: f64) -> Option<f64> {
    let first = points.first()?.0;
    let mut start = 0;
    for (end, &(t, _)) in points.iter().enumerate() {
        if t - first < window {
            continue;
        }
        while points[start].0 < t - window {
            start += 1;
        }
        if let Some(fit) = LineFit::of(&points[start..=end]) {
            if fit.slope < max_slope {
                return Some(t);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const RULE: Thresholds = Thresholds {
        max_slope: 16.0 * 1024.0,
        min_r2: 0.5,
        max_per_client: 2.0 * MIB,
    };

    /// One point a second for `seconds`, `f(t)` bytes, with a deterministic wobble of
    /// ±`noise` bytes like RSS pages coming and going.
    fn series(seconds: usize, noise: f64, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..seconds)
            .map(|i| {
                let t = i as f64;
                let wobble = [0.0, 1.0, -1.0, 0.5, -0.5][i % 5] * noise;
                (t, f(t) + wobble)
            })
            .collect()
    }

    #[test]
    fn a_line_is_recovered_exactly() {
        let fit = LineFit::of(&series(30, 0.0, |t| 10.0 * MIB + 1000.0 * t)).unwrap();
        assert!((fit.slope - 1000.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.intercept - 10.0 * MIB).abs() < 1e-3, "{fit:?}");
        assert!((fit.r2 - 1.0).abs() < 1e-9, "{fit:?}");
        assert!((fit.at(10.0) - (10.0 * MIB + 10_000.0)).abs() < 1e-3);
    }

    #[test]
    fn too_few_points_have_no_fit() {
        assert_eq!(LineFit::of(&[]), None);
        assert_eq!(LineFit::of(&[(1.0, 5.0)]), None);
        assert_eq!(LineFit::of(&[(1.0, 5.0), (1.0, 7.0)]), None);
    }

    #[test]
    fn flat_memory_with_noise_is_flat() {
        let fit = LineFit::of(&series(60, 256.0 * 1024.0, |_| 40.0 * MIB)).unwrap();
        assert_eq!(RULE.trend(&fit), Trend::Flat, "{fit:?}");
    }

    #[test]
    fn linear_growth_is_growing() {
        let fit = LineFit::of(&series(45, 256.0 * 1024.0, |t| 40.0 * MIB + t * MIB)).unwrap();
        assert_eq!(RULE.trend(&fit), Trend::Growing, "{fit:?}");
        assert!(fit.r2 > 0.99, "{fit:?}");
    }

    #[test]
    fn scatter_around_a_slope_is_erratic() {
        // Large jumps with a small upward drift: above the slope threshold, no steady line.
        let points: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                let jump = if i % 2 == 0 { 0.0 } else { 50.0 * MIB };
                (i as f64, 100.0 * MIB + jump + 40_000.0 * i as f64)
            })
            .collect();
        let fit = LineFit::of(&points).unwrap();
        assert_eq!(RULE.trend(&fit), Trend::Erratic, "{fit:?}");
    }

    #[test]
    fn rise_then_plateau_is_flat_once_the_window_starts_at_the_plateau() {
        // Grows for 30 s (kernel queues filling, the heap following), then levels off.
        let points = series(90, 64.0 * 1024.0, |t| 20.0 * MIB + t.min(30.0) * MIB);
        let whole = LineFit::of(&points).unwrap();
        assert_eq!(RULE.trend(&whole), Trend::Growing, "a naive fit: {whole:?}");
        let plateau: Vec<_> = points.iter().copied().filter(|p| p.0 >= 35.0).collect();
        let fit = LineFit::of(&plateau).unwrap();
        assert_eq!(RULE.trend(&fit), Trend::Flat, "{fit:?}");
    }

    #[test]
    fn queues_settle_when_their_trailing_window_stops_growing() {
        let queues = series(90, 32.0 * 1024.0, |t| t.min(40.0) * 4.0 * MIB);
        let at = settled_at(&queues, 10.0, RULE.max_slope).unwrap();
        assert!((40.0..=50.0).contains(&at), "settled at {at}");
    }

    #[test]
    fn queues_still_growing_never_settle() {
        let queues = series(90, 32.0 * 1024.0, |t| t * 2.0 * MIB);
        assert_eq!(settled_at(&queues, 10.0, RULE.max_slope), None);
    }

    #[test]
    fn no_settling_before_a_whole_window() {
        let queues = series(5, 0.0, |_| MIB);
        assert_eq!(settled_at(&queues, 10.0, RULE.max_slope), None);
    }
}
