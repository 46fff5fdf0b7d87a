//! The verdict on one process's memory over a whole run, not only its tail.
//!
//! Three questions, in order. Does memory grow over the steady-state window (the line
//! fit of `fit`)? That is a FAIL. Does it saw without a steady trend? Then the band
//! decides: peaks or troughs that climb are growth (FAIL), a band that does not climb is a
//! bound, and less than one full swing seen is INCONCLUSIVE. Is it flat or a bounded band?
//! Then the growth since the clients connected decides: beyond what the process's own
//! socket queues hold (while the kernel's queues fill, a runtime's heap rises with them, a
//! transient that ends when they are full), at most `max_per_client` per slow client is a
//! bound (PASS); more, followed by a plateau, is a ceiling such as a heap or container
//! limit that the server runs into, not a bound (FAIL).

use serde::Serialize;

use crate::fit::{LineFit, Thresholds, Trend};
use crate::report::{human_bytes, signed_bytes, Verdict};

/// The rise is over once memory first reaches this share of its growth.
const RISE_DONE: f64 = 0.9;
/// A swing counts once memory leaves the fitted line by this share of the band's height
/// (hysteresis: wobbles near the line are not swings).
const SWING: f64 = 0.25;

/// Memory that saws around its fitted line over the steady-state window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Band {
    pub low: f64,
    pub high: f64,
    /// The tops of the swings above the line, as `(seconds, bytes)`; a swing cut by the
    /// window's edge whose top may lie outside it is left out.
    pub peaks: Vec<(f64, f64)>,
    /// The bottoms of the swings below the line.
    pub troughs: Vec<(f64, f64)>,
    /// Bytes per second along the peaks; `None` with fewer than two.
    pub peak_slope: Option<f64>,
    pub trough_slope: Option<f64>,
    /// The median change between consecutive samples: a top is seen up to one step below
    /// where it was (it may fall between two samples), so a climb smaller than this over
    /// the whole band cannot be told from the sampling.
    pub step: f64,
}

impl Band {
    /// The swings of `points` around `fit`; `None` when memory never leaves the line.
    pub fn of(points: &[(f64, f64)], fit: &LineFit) -> Option<Band> {
        let residual = |&(t, y): &(f64, f64)| y - fit.at(t);
        let lowest = points.iter().map(residual).fold(f64::INFINITY, f64::min);
        let highest = points
            .iter()
            .map(residual)
            .fold(f64::NEG_INFINITY, f64::max);
        let height = highest - lowest;
        if height.is_nan() || height <= 0.0 {
            return None;
        }
        let threshold = SWING * height;
        // Runs above (true) or below (false) the line: the index of their extreme point.
        let mut runs: Vec<(bool, usize)> = Vec::new();
        for (i, point) in points.iter().enumerate() {
            let r = residual(point);
            let side = if r > threshold {
                true
            } else if r < -threshold {
                false
            } else {
                continue;
            };
            match runs.last_mut() {
                Some((above, extreme)) if *above == side => {
                    let further = residual(&points[*extreme]);
                    if (side && r > further) || (!side && r < further) {
                        *extreme = i;
                    }
                }
                _ => runs.push((side, i)),
            }
        }
        let last = points.len() - 1;
        let mut band = Band {
            low: points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            high: points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
            peaks: Vec::new(),
            troughs: Vec::new(),
            peak_slope: None,
            trough_slope: None,
            step: median(points.windows(2).map(|w| (w[1].1 - w[0].1).abs()).collect())
                .unwrap_or(0.0),
        };
        for &(above, i) in &runs {
            // An extreme on the window's edge may be the middle of a swing, not its top.
            if i == 0 || i == last {
                continue;
            }
            if above {
                band.peaks.push(points[i]);
            } else {
                band.troughs.push(points[i]);
            }
        }
        band.peak_slope = LineFit::of(&band.peaks).map(|f| f.slope);
        band.trough_slope = LineFit::of(&band.troughs).map(|f| f.slope);
        Some(band)
    }

    /// A full period: a top, a bottom and a top again (or the other way round).
    pub fn full_period(&self) -> bool {
        self.peaks.len() + self.troughs.len() >= 3 && self.peaks.len().min(self.troughs.len()) >= 1
    }

    /// Whether the peaks or the troughs climb at `max_slope` or more, their last above
    /// their first by more than one sampling step (a least-squares rise would not do: one
    /// top seen a step lower than the next, as sampling off the beat does, tilts a line
    /// through four of them by more than that step).
    pub fn climbs(&self, max_slope: f64) -> bool {
        let climbs = |extremes: &[(f64, f64)], slope: Option<f64>| match (extremes, slope) {
            ([first, .., last], Some(slope)) => slope >= max_slope && last.1 - first.1 > self.step,
            _ => false,
        };
        climbs(&self.peaks, self.peak_slope) || climbs(&self.troughs, self.trough_slope)
    }

    fn swings(&self) -> usize {
        self.peaks.len().min(self.troughs.len()).max(1)
    }
}

/// What the series showed, for machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// Flat over the window, and it rose by no more than the per-client allowance.
    Levelled,
    /// Saws in a band whose peaks and troughs do not climb, within the allowance.
    BoundedBand,
    /// Rose by more than the allowance, then stopped: a limit reached, not a bound.
    Ceiling,
    /// Grows steadily over the window.
    Growing,
    /// Saws in a band whose peaks or troughs climb.
    ClimbingBand,
    /// Moves without a trend over less than one full swing.
    TooShort,
    /// No steady-state window with two samples.
    NoWindow,
}

/// The verdict on one series, with the figures behind it.
#[derive(Clone, Debug, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub finding: Finding,
    pub reason: String,
    /// The line over the steady-state window.
    pub fit: Option<LineFit>,
    pub band: Option<Band>,
    /// Bytes before the clients connected (the first sample).
    pub baseline: f64,
    /// Where memory settled, the median over the steady-state window; for memory that
    /// grows, the fitted value at the window's end.
    pub level: Option<f64>,
    /// `level - baseline`.
    pub growth: Option<f64>,
    /// Bytes in the process's socket queues over the window (their median): growth up to
    /// this much is the kernel's backlog mirrored in the heap, not counted per client.
    pub kernel_share: f64,
    /// `(growth - kernel_share) / clients`: what the process holds itself per slow client.
    pub per_client: Option<f64>,
    /// Seconds from the first sample until memory first reached 90 % of its growth.
    pub rise_s: Option<f64>,
}

/// The slow clients a process served and what its socket queues held meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub clients: usize,
    /// Bytes in the process's socket queues over the window; 0 when not measured.
    pub kernel_share: f64,
}

/// Judges `points` (`(seconds, bytes)`, the first taken before any client connected) over
/// the steady-state window from `window_start` to `end_s`, under `load`.
pub fn judge(
    points: &[(f64, f64)],
    window_start: f64,
    end_s: f64,
    load: Load,
    rule: &Thresholds,
) -> Judgement {
    let baseline = points.first().map_or(0.0, |p| p.1);
    let window: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0 >= window_start)
        .collect();
    let fit = LineFit::of(&window);
    let level = median(window.iter().map(|p| p.1).collect());
    let growth = level.map(|l| l - baseline);
    let per_client = growth.map(|g| load.per_client(g));
    // When the rise ended, for the reason of a ceiling.
    let rise_s = growth.and_then(|g| {
        let first_t = points.first()?.0;
        let done = baseline + RISE_DONE * g;
        let reached = if g >= 0.0 {
            points.iter().find(|p| p.1 >= done)
        } else {
            points.iter().find(|p| p.1 <= done)
        };
        reached.map(|p| p.0 - first_t)
    });
    let band = fit.as_ref().and_then(|f| Band::of(&window, f));
    let mut judgement = Judgement {
        verdict: Verdict::Inconclusive,
        finding: Finding::NoWindow,
        reason: format!(
            "the steady-state window was too short for a fit (run ended at {end_s:.0} s)"
        ),
        fit,
        band,
        baseline,
        level,
        growth,
        kernel_share: load.kernel_share,
        per_client,
        rise_s,
    };
    let (Some(fit), Some(growth), Some(per_client)) = (fit, growth, per_client) else {
        return judgement;
    };
    let window_desc = format!("{window_start:.0} s to {end_s:.0} s");
    let slope = format!("{:+.1} KB/s", fit.slope / 1000.0);
    let kb = |bytes_per_s: f64| format!("{:+.1} KB/s", bytes_per_s / 1000.0);
    let bounded = match rule.trend(&fit) {
        Trend::Growing => {
            judgement.settle_at(fit.at(end_s), load);
            judgement.verdict = Verdict::Fail;
            judgement.finding = Finding::Growing;
            judgement.reason = format!(
                "memory grows steadily: {slope} with R² {:.2} over {window_desc}: the server \
                 buffers what its clients do not take",
                fit.r2
            );
            return judgement;
        }
        Trend::Flat => format!(
            "memory levelled off: {slope} over {window_desc} (below {:.1} KB/s)",
            rule.max_slope / 1000.0
        ),
        Trend::Erratic => match judgement.band.clone() {
            Some(band) if band.full_period() => {
                let swings = format!(
                    "memory saws between {} and {} over {window_desc} ({} swing{})",
                    human_bytes(band.low),
                    human_bytes(band.high),
                    band.swings(),
                    if band.swings() == 1 { "" } else { "s" }
                );
                let along = |slope: Option<f64>| slope.map_or_else(|| "-".to_string(), kb);
                let envelope = format!(
                    "peaks {}, troughs {}",
                    along(band.peak_slope),
                    along(band.trough_slope)
                );
                if band.climbs(rule.max_slope) {
                    judgement.settle_at(fit.at(end_s), load);
                    judgement.verdict = Verdict::Fail;
                    judgement.finding = Finding::ClimbingBand;
                    judgement.reason = format!(
                        "{swings} and the band climbs ({envelope}; threshold {:.1} KB/s, by \
                         more than a sample's step of {}): memory grows under the sawing",
                        rule.max_slope / 1000.0,
                        human_bytes(band.step)
                    );
                    return judgement;
                }
                judgement.finding = Finding::BoundedBand;
                format!(
                    "{swings} and neither its peaks nor its troughs climb ({envelope}: below \
                     {:.1} KB/s, or by less than a sample's step of {}): a band that does not \
                     climb is a bound",
                    rule.max_slope / 1000.0,
                    human_bytes(band.step)
                )
            }
            _ => {
                judgement.finding = Finding::TooShort;
                judgement.reason = format!(
                    "memory moved {slope} over {window_desc} without a steady trend (R² {:.2} < \
                     {:.2}) and the window holds less than one full swing up and down; run \
                     longer (--duration)",
                    fit.r2, rule.min_r2
                );
                return judgement;
            }
        },
    };
    let beyond = if load.kernel_share > 0.0 {
        format!(
            " beyond the {} its socket queues hold",
            human_bytes(load.kernel_share)
        )
    } else {
        String::new()
    };
    if per_client > rule.max_per_client {
        judgement.verdict = Verdict::Fail;
        judgement.finding = Finding::Ceiling;
        judgement.reason = format!(
            "grew {} ({} per slow client{beyond}) in {:.0} s, then stopped at {}: a ceiling \
             such as a heap or container limit, not a bound ({bounded}; a bounded server \
             holds at most --max-per-client {} per slow client)",
            human_bytes(growth),
            human_bytes(per_client),
            judgement.rise_s.unwrap_or(0.0),
            human_bytes(baseline + growth),
            human_bytes(rule.max_per_client)
        );
        return judgement;
    }
    if judgement.finding == Finding::NoWindow {
        judgement.finding = Finding::Levelled;
    }
    judgement.verdict = Verdict::Pass;
    judgement.reason = format!(
        "{bounded}; {} since the clients connected ({} per slow client{beyond}, at most {})",
        signed_bytes(growth),
        signed_bytes(per_client),
        human_bytes(rule.max_per_client)
    );
    judgement
}

impl Load {
    fn per_client(&self, growth: f64) -> f64 {
        (growth - self.kernel_share) / self.clients.max(1) as f64
    }
}

impl Judgement {
    fn settle_at(&mut self, level: f64, load: Load) {
        self.level = Some(level);
        self.growth = Some(level - self.baseline);
        self.per_client = Some(load.per_client(level - self.baseline));
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const RULE: Thresholds = Thresholds {
        max_slope: 16_000.0,
        min_r2: 0.5,
        max_per_client: 2.0 * MIB,
    };
    const CLIENTS: usize = 50;

    /// One point a second from 0 to `seconds`, `f(t)` bytes plus a deterministic wobble of
    /// ±`noise` bytes, like RSS pages coming and going.
    fn series(seconds: usize, noise: f64, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..=seconds)
            .map(|i| {
                let t = i as f64;
                let wobble = [0.0, 1.0, -1.0, 0.5, -0.5][i % 5] * noise;
                (t, f(t) + wobble)
            })
            .collect()
    }

    /// A sawtooth: rises linearly for `period` seconds from `low` by `height`, then drops.
    fn saw(t: f64, low: f64, height: f64, period: f64) -> f64 {
        low + height * (t % period) / period
    }

    const LOAD: Load = Load {
        clients: CLIENTS,
        kernel_share: 0.0,
    };

    fn judged(points: &[(f64, f64)], start: f64) -> Judgement {
        let end = points.last().unwrap().0;
        judge(points, start, end, LOAD, &RULE)
    }

    #[test]
    fn a_ceiling_reached_in_the_warm_up_fails_with_the_numbers() {
        // The report from the field: +515 MiB in 12 s with 50 clients, then flat at a heap cap.
        let points = series(30, 256.0 * 1024.0, |t| {
            125.0 * MIB + (t / 12.0).min(1.0) * 515.0 * MIB
        });
        let j = judged(&points, 15.0);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert_eq!(j.finding, Finding::Ceiling);
        assert!(
            (j.per_client.unwrap() - 10.3 * MIB).abs() < 0.1 * MIB,
            "{j:?}"
        );
        let rise = j.rise_s.unwrap();
        assert!((10.0..=12.0).contains(&rise), "rise {rise} s");
        assert!(
            j.reason.starts_with("grew 515.0 MiB (10.3 MiB per slow client) in 11 s, then stopped at 640.0 MiB: a ceiling"),
            "{}",
            j.reason
        );
        assert!(
            j.reason.contains("--max-per-client 2.0 MiB"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn the_same_server_without_a_cap_fails_as_growth() {
        let points = series(30, 256.0 * 1024.0, |t| 125.0 * MIB + t * 43.0 * MIB);
        let j = judged(&points, 10.0);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert_eq!(j.finding, Finding::Growing);
        assert!(
            j.reason.starts_with("memory grows steadily"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn a_small_rise_that_levels_off_passes() {
        // 24 MiB for 50 clients (about 0.5 MiB each), as weir serve behaves.
        let points = series(60, 128.0 * 1024.0, |t| {
            16.8 * MIB + (t / 13.0).min(1.0) * 24.0 * MIB
        });
        let j = judged(&points, 13.0);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        assert_eq!(j.finding, Finding::Levelled);
        assert!(j.reason.starts_with("memory levelled off"), "{}", j.reason);
        assert!(j.reason.contains("per slow client"), "{}", j.reason);
        let per_client = j.per_client.unwrap();
        assert!((0.4 * MIB..0.6 * MIB).contains(&per_client), "{per_client}");
    }

    #[test]
    fn the_allowance_is_the_line_between_a_bound_and_a_ceiling() {
        let rose_by = |per_client: f64| {
            series(40, 0.0, move |t| {
                50.0 * MIB + (t / 10.0).min(1.0) * per_client * CLIENTS as f64
            })
        };
        assert_eq!(judged(&rose_by(1.9 * MIB), 15.0).verdict, Verdict::Pass);
        assert_eq!(judged(&rose_by(2.1 * MIB), 15.0).verdict, Verdict::Fail);
        let more = Thresholds {
            max_per_client: 4.0 * MIB,
            ..RULE
        };
        let points = rose_by(3.0 * MIB);
        assert_eq!(
            judge(&points, 15.0, 40.0, LOAD, &more).verdict,
            Verdict::Pass
        );
        // The allowance is per client: the same rise over ten times the clients is a bound.
        let more_clients = Load {
            clients: 10 * CLIENTS,
            ..LOAD
        };
        assert_eq!(
            judge(&points, 15.0, 40.0, more_clients, &RULE).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn a_heap_that_rose_with_the_kernel_queues_is_not_counted_against_the_server() {
        // As the Node.js reference was measured: its heap rose 150 MiB while 147 MiB filled
        // its socket queues, then both stayed flat. 3 MiB per client, less the kernel's share.
        let points = series(30, 0.0, |t| 42.0 * MIB + (t / 15.0).min(1.0) * 150.0 * MIB);
        let node = Load {
            clients: CLIENTS,
            kernel_share: 147.0 * MIB,
        };
        let j = judge(&points, 15.0, 30.0, node, &RULE);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Pass, Finding::Levelled),
            "{}",
            j.reason
        );
        assert!(
            j.reason.contains("+150.0 MiB since the clients connected (+61.4 KiB per slow client beyond the 147.0 MiB its socket queues hold, at most 2.0 MiB)"),
            "{}",
            j.reason
        );
        // Without queues to account for it, the same rise is a ceiling.
        let j = judged(&points, 15.0);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Fail, Finding::Ceiling),
            "{}",
            j.reason
        );
        // And a heap far beyond its queues still is one, the queues named in the reason.
        let capped = series(30, 0.0, |t| 90.0 * MIB + (t / 5.0).min(1.0) * 490.0 * MIB);
        let java = Load {
            clients: CLIENTS,
            kernel_share: 4.5 * MIB,
        };
        let j = judge(&capped, 10.0, 30.0, java, &RULE);
        assert_eq!(j.finding, Finding::Ceiling, "{}", j.reason);
        assert!(
            j.reason.starts_with("grew 490.0 MiB (9.7 MiB per slow client beyond the 4.5 MiB its socket queues hold) in 5 s, then stopped at 580.0 MiB"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn memory_that_falls_below_its_start_passes() {
        let points = series(30, 0.0, |t| if t < 5.0 { 80.0 * MIB } else { 60.0 * MIB });
        let j = judged(&points, 10.0);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        assert!(j.reason.contains("-20.0 MiB since"), "{}", j.reason);
    }

    #[test]
    fn a_bounded_sawtooth_passes_whatever_the_window_cuts() {
        // A ring buffer trimmed in bulk: 16 to 48 MiB every 4 s, flat peaks and troughs. The
        // window starts at each phase of the saw; a line through it may slope either way.
        for start in [10.0, 11.0, 12.0, 13.0] {
            let points = series(30, 64.0 * 1024.0, |t| saw(t, 40.0 * MIB, 32.0 * MIB, 4.0));
            let j = judged(&points, start);
            assert_eq!(j.verdict, Verdict::Pass, "start {start}: {}", j.reason);
            assert!(
                matches!(j.finding, Finding::BoundedBand | Finding::Levelled),
                "{j:?}"
            );
            let band = j.band.unwrap();
            assert!(band.full_period(), "{band:?}");
            assert!(!band.climbs(RULE.max_slope), "{band:?}");
        }
    }

    #[test]
    fn a_bounded_sawtooth_sampled_off_its_beat_passes() {
        // As measured: a replay log grows 8 MiB/s from 24 to 64 MiB and drops back, every
        // 5.1 s; sampled every second, each top and bottom is seen at another phase, so the
        // tops seen differ by up to a step and a line through two of them slopes ±400 KB/s.
        for offset in [0.0, 0.25, 0.5, 0.75] {
            let points: Vec<(f64, f64)> = (0..=30)
                .map(|i| {
                    let t = i as f64 + offset;
                    (t, saw(t, 24.0 * MIB, 40.0 * MIB, 5.1))
                })
                .collect();
            let j = judged(&points, 10.0 + offset);
            assert_eq!(j.verdict, Verdict::Pass, "offset {offset}: {}", j.reason);
            let band = j.band.unwrap();
            assert!(band.full_period(), "{band:?}");
            assert!((7.0 * MIB..9.0 * MIB).contains(&band.step), "{band:?}");
        }
    }

    #[test]
    fn tops_and_bottoms_seen_a_step_apart_are_not_a_climb() {
        // Measured from sawing_server.py: the tops are seen at 55.9 MiB and then, the
        // sampling having drifted, at 62.9; the bottoms at 23.9 and then 30.9. A line
        // through the four bottoms rises 8.8 MB over 16 s, more than the 8 MiB step; their
        // last is above their first by 7 MiB, less than it.
        let rss = [
            15.0, 24.9, 32.9, 40.9, 48.9, 56.9, 24.9, 32.9, 40.9, 48.9, 55.9, 23.9, 31.9, 39.9,
            47.9, 55.9, 23.9, 31.9, 39.9, 47.9, 55.9, 62.9, 30.9, 38.9, 46.9, 54.9, 62.9, 30.9,
            38.9, 46.9, 54.9,
        ];
        let points: Vec<(f64, f64)> = rss
            .iter()
            .enumerate()
            .map(|(i, mib)| (i as f64, mib * MIB))
            .collect();
        let j = judged(&points, 10.0);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        assert_eq!(j.finding, Finding::BoundedBand, "{}", j.reason);
        let band = j.band.unwrap();
        let troughs = LineFit::of(&band.troughs).unwrap();
        let tilt = troughs.slope * (band.troughs[3].0 - band.troughs[0].0);
        assert!(tilt > band.step, "{band:?}");
    }

    #[test]
    fn a_sawtooth_the_line_calls_erratic_passes_on_its_band() {
        // A window from a trough to a peak: the line slopes up, the band does not climb.
        let points = series(31, 0.0, |t| saw(t, 40.0 * MIB, 24.0 * MIB, 8.0));
        let j = judged(&points, 8.0);
        let fit = j.fit.unwrap();
        assert_eq!(RULE.trend(&fit), Trend::Erratic, "{fit:?}");
        assert_eq!(j.finding, Finding::BoundedBand, "{}", j.reason);
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(j.reason.starts_with("memory saws between"), "{}", j.reason);
    }

    #[test]
    fn a_sawtooth_whose_peaks_climb_fails() {
        // A garbage collector's sawtooth over a live set that grows 200 KB/s: over four
        // swings the tops climb 4.8 MB, more than the 3 MiB a sample may miss a top by.
        let points = series(47, 0.0, |t| {
            saw(t, 40.0 * MIB, 24.0 * MIB, 8.0) + 200_000.0 * t
        });
        let j = judged(&points, 8.0);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert_eq!(j.finding, Finding::ClimbingBand, "{}", j.reason);
        assert!(j.reason.contains("the band climbs"), "{}", j.reason);
        let band = j.band.as_ref().unwrap();
        for climb in [band.peak_slope.unwrap(), band.trough_slope.unwrap()] {
            assert!((150_000.0..250_000.0).contains(&climb), "{band:?}");
        }
    }

    #[test]
    fn only_the_troughs_climbing_is_growth_too() {
        // Peaks pinned at a cap while what survives each collection grows.
        let points: Vec<(f64, f64)> = (0..=47)
            .map(|i| {
                let t = i as f64;
                let trough = 40.0 * MIB + 300_000.0 * t;
                let top = 80.0 * MIB;
                let phase = (t % 8.0) / 8.0;
                (t, trough + (top - trough) * phase)
            })
            .collect();
        let j = judged(&points, 8.0);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        let band = j.band.unwrap();
        assert!(band.trough_slope.unwrap() > RULE.max_slope, "{band:?}");
        assert!(
            band.peak_slope.unwrap() < band.trough_slope.unwrap() / 4.0,
            "{band:?}"
        );
    }

    #[test]
    fn a_climb_within_a_sample_step_cannot_be_told_from_the_sampling() {
        // 50 KB/s under a 24 MiB saw: 1.2 MB over the window, less than the 3 MiB step a
        // top may be missed by. A longer run would see it.
        let points = series(47, 0.0, |t| {
            saw(t, 40.0 * MIB, 24.0 * MIB, 8.0) + 50_000.0 * t
        });
        let j = judged(&points, 8.0);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Pass, Finding::BoundedBand),
            "{}",
            j.reason
        );
        assert!(
            j.reason.contains("by less than a sample's step of 3.0 MiB"),
            "{}",
            j.reason
        );
        let longer = series(200, 0.0, |t| {
            saw(t, 40.0 * MIB, 24.0 * MIB, 8.0) + 50_000.0 * t
        });
        let j = judged(&longer, 8.0);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
    }

    #[test]
    fn less_than_one_swing_is_inconclusive_and_asks_for_a_longer_run() {
        // One rise and one drop inside a 12 s window: a bottom and a top, no second one.
        let points = series(22, 0.0, |t| match t {
            t if t < 15.0 => 40.0 * MIB,
            t if t <= 21.0 => 40.0 * MIB + (t - 15.0) * 4.0 * MIB,
            _ => 40.0 * MIB,
        });
        let j = judged(&points, 10.0);
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.reason);
        assert_eq!(j.finding, Finding::TooShort);
        assert!(
            j.reason.contains("less than one full swing"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn a_ceiling_that_saws_at_its_cap_still_fails() {
        // Rose 400 MiB for 50 clients, then a collector saws just under the cap.
        let points = series(40, 0.0, |t| {
            if t < 8.0 {
                100.0 * MIB + t * 50.0 * MIB
            } else {
                saw(t, 470.0 * MIB, 30.0 * MIB, 5.0)
            }
        });
        let j = judged(&points, 12.0);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert_eq!(j.finding, Finding::Ceiling, "{}", j.reason);
    }

    #[test]
    fn steady_linear_growth_with_noise_fails_and_scatter_is_not_a_band() {
        let points = series(45, 256.0 * 1024.0, |t| 40.0 * MIB + t * MIB);
        let j = judged(&points, 10.0);
        assert_eq!((j.verdict, j.finding), (Verdict::Fail, Finding::Growing));
        let fit = j.fit.unwrap();
        assert!((fit.slope - MIB).abs() < 0.02 * MIB, "{fit:?}");
    }

    #[test]
    fn no_window_is_inconclusive() {
        let points = series(10, 0.0, |_| MIB);
        let j = judged(&points, 20.0);
        assert_eq!(
            (j.verdict, j.finding),
            (Verdict::Inconclusive, Finding::NoWindow)
        );
        assert!(j.reason.contains("too short for a fit"), "{}", j.reason);
        assert_eq!(judge(&[], 0.0, 0.0, LOAD, &RULE).finding, Finding::NoWindow);
    }

    #[test]
    fn a_flat_series_has_no_band() {
        let points = series(20, 0.0, |_| 30.0 * MIB);
        let fit = LineFit::of(&points).unwrap();
        assert_eq!(Band::of(&points, &fit), None);
        let j = judged(&points, 5.0);
        assert_eq!((j.verdict, j.finding), (Verdict::Pass, Finding::Levelled));
    }

    #[test]
    fn swings_cut_by_the_window_edges_are_not_peaks() {
        // Starts at a top and ends at a top: those two are edges, only the middle counts.
        let points: Vec<(f64, f64)> = [10.0, 6.0, 2.0, 6.0, 10.0, 6.0, 2.0, 6.0, 10.0]
            .iter()
            .enumerate()
            .map(|(i, y)| (i as f64, y * MIB))
            .collect();
        let fit = LineFit::of(&points).unwrap();
        let band = Band::of(&points, &fit).unwrap();
        assert_eq!(band.peaks, vec![(4.0, 10.0 * MIB)]);
        assert_eq!(band.troughs, vec![(2.0, 2.0 * MIB), (6.0, 2.0 * MIB)]);
        assert!(band.full_period());
        assert_eq!(band.trough_slope, Some(0.0));
        assert_eq!(band.peak_slope, None);
        assert_eq!((band.low, band.high), (2.0 * MIB, 10.0 * MIB));
        assert_eq!(band.step, 4.0 * MIB);
        assert!(!band.climbs(1.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
