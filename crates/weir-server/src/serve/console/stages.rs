//! A pipeline's stages as the console shows them: what each is doing now, and which one
//! the others wait for.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_runtime::{StageKind, StageSnapshot, StageStats};

/// How long a stage's state is measured over.
const WINDOW: Duration = Duration::from_secs(1);

/// One stage now.
#[derive(Serialize)]
pub struct StageView {
    pub name: String,
    pub kind: StageKind,
    pub items_in: u64,
    pub items_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub busy_s: f64,
    pub blocked_s: f64,
    pub starved_s: f64,
    /// What it spent most of the last second on: `busy`, `blocked` (on its downstream),
    /// `starved` (by its upstream) or `idle`.
    pub state: &'static str,
    /// Bytes queued for this stage, against its input channel's budget.
    pub buffered: u64,
    pub budget: u64,
}

/// The stages' times at the last look, to tell what each did since.
#[derive(Default)]
pub struct StageWindow(Mutex<Option<Look>>);

struct Look {
    at: Instant,
    times: Vec<[f64; 3]>,
    states: Vec<&'static str>,
    bottleneck: Option<usize>,
}

fn times(s: &StageSnapshot) -> [f64; 3] {
    [s.busy_secs, s.blocked_secs, s.starved_secs]
}

/// The state each stage spent most of `delta` in, and the stage busiest in it: the one
/// the others waited for (the runtime's report names its bottleneck the same way).
fn judge(delta: &[[f64; 3]]) -> (Vec<&'static str>, Option<usize>) {
    let states = delta
        .iter()
        .map(|[busy, blocked, starved]| {
            let most = busy.max(*blocked).max(*starved);
            if most <= 0.0 {
                "idle"
            } else if most == *busy {
                "busy"
            } else if most == *blocked {
                "blocked"
            } else {
                "starved"
            }
        })
        .collect();
    let bottleneck = delta
        .iter()
        .enumerate()
        .filter(|(_, [busy, _, _])| *busy > 0.0)
        .max_by(|(_, a), (_, b)| a[0].total_cmp(&b[0]))
        .map(|(i, _)| i);
    (states, bottleneck)
}

impl StageWindow {
    /// The stages now, and the bottleneck's name.
    pub fn view(
        &self,
        stages: &[Arc<StageStats>],
        now: Instant,
    ) -> (Vec<StageView>, Option<String>) {
        let snaps: Vec<StageSnapshot> = stages.iter().map(|s| s.snapshot()).collect();
        let current: Vec<[f64; 3]> = snaps.iter().map(times).collect();
        let mut look = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = match look.as_ref() {
            Some(l) if l.times.len() == current.len() => {
                now.saturating_duration_since(l.at) >= WINDOW
            }
            _ => true,
        };
        if fresh {
            let delta: Vec<[f64; 3]> = match look.as_ref() {
                Some(l) if l.times.len() == current.len() => current
                    .iter()
                    .zip(&l.times)
                    .map(|(c, p)| [c[0] - p[0], c[1] - p[1], c[2] - p[2]])
                    .collect(),
                // A first look judges by the whole run so far.
                _ => current.clone(),
            };
            let (states, bottleneck) = judge(&delta);
            *look = Some(Look {
                at: now,
                times: current,
                states,
                bottleneck,
            });
        }
        let Some(look) = look.as_ref() else {
            return (Vec::new(), None);
        };
        let bottleneck = look
            .bottleneck
            .and_then(|i| snaps.get(i))
            .map(|s| s.name.clone());
        let views = snaps
            .into_iter()
            .zip(&look.states)
            .map(|(s, state)| StageView {
                name: s.name,
                kind: s.kind,
                items_in: s.items_in,
                items_out: s.items_out,
                bytes_in: s.bytes_in,
                bytes_out: s.bytes_out,
                busy_s: s.busy_secs,
                blocked_s: s.blocked_secs,
                starved_s: s.starved_secs,
                state,
                buffered: s.buffered_bytes,
                budget: s.budget_bytes,
            })
            .collect();
        (views, bottleneck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_busiest_in_the_window_is_the_bottleneck() {
        let (states, bottleneck) = judge(&[[0.1, 0.9, 0.0], [0.8, 0.0, 0.2], [0.1, 0.0, 0.9]]);
        assert_eq!(states, ["blocked", "busy", "starved"]);
        assert_eq!(bottleneck, Some(1));
        let (states, bottleneck) = judge(&[[0.0, 0.0, 0.0]]);
        assert_eq!((states, bottleneck), (vec!["idle"], None));
    }
}
