//! `weir top`: a running `weir serve`'s console in the terminal, refreshed each second.
//!
//! It reads `GET /_weir/state` once a second on a task of its own; the terminal is drawn
//! and its keys read on a blocking thread, so a slow server never freezes the keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, Gauge, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use serde::Deserialize;
use tokio::sync::watch;

use super::Failure;

#[derive(Args, Debug)]
#[command(
    about = "Watch a running weir serve: streams, stages and buffers against their budgets, live",
    long_about = "Watch a running `weir serve` in the terminal (works over SSH): every open stream \
with its buffered bytes against its budget, its rate and whether its client is slow, each \
[[pipeline]]'s stages with the bottleneck marked, and the memory budget. Keys: s sorts by \
buffered bytes or by rate, q quits."
)]
pub struct TopArgs {
    /// The server, as http://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// One of the server's admin_keys (without admin_keys the console answers loopback only).
    #[arg(long)]
    pub key: Option<String>,
}

/// How often the state is read.
const EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Buffered,
    Rate,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct State {
    uptime_s: f64,
    memory: Memory,
    rss: Option<u64>,
    streams: Streams,
    pipelines: Vec<Pipeline>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Memory {
    limit: u64,
    reserved: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Streams {
    open: usize,
    slow: usize,
    shown: Vec<Stream>,
    rest: usize,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Stream {
    route: String,
    kind: String,
    client: Option<String>,
    age_s: f64,
    bytes_out: u64,
    rate: f64,
    buffered: u64,
    budget: u64,
    send_queue: Option<u64>,
    send_buffer: u64,
    slow: bool,
    stages: Vec<Stage>,
    bottleneck: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Pipeline {
    name: String,
    stages: Vec<Stage>,
    bottleneck: Option<String>,
    lag: Vec<Lag>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Lag {
    lag: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Stage {
    name: String,
    state: String,
    items_out: u64,
    buffered: u64,
    budget: u64,
}

/// The last answer: the state, or why there is none.
enum Latest {
    Waiting,
    State(Box<State>),
    Failed(String),
}

pub async fn run(args: TopArgs) -> Result<(), Failure> {
    let base = args.url.trim_end_matches('/').to_string();
    let url = url::Url::parse(&format!("{base}/_weir/state"))
        .map_err(|e| Failure::Usage(format!("--url {}: {e}", args.url)))?;
    // The server ranks all its streams the way the screen sorts, and sends the first 100.
    let by_rate = Arc::new(AtomicBool::new(false));
    let asked = Arc::clone(&by_rate);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Failure::Pipeline(e.to_string()))?;
    let (tx, rx) = watch::channel(Latest::Waiting);
    let poller = tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let mut url = url.clone();
            let sort = if asked.load(Ordering::Relaxed) {
                "rate"
            } else {
                "buffered"
            };
            url.query_pairs_mut()
                .append_pair("top", "100")
                .append_pair("sort", sort);
            let latest = fetch(&client, url, args.key.as_deref()).await;
            if tx.send(latest).is_err() {
                return;
            }
            tokio::time::sleep(EVERY.saturating_sub(started.elapsed())).await;
        }
    });
    let shown = base.clone();
    let ui = tokio::task::spawn_blocking(move || {
        let mut terminal = ratatui::try_init()?;
        let outcome = show(&mut terminal, &shown, rx, &by_rate);
        ratatui::restore();
        outcome
    });
    let outcome = ui.await;
    poller.abort();
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Pipeline(format!("terminal: {e}"))),
        Err(e) => Err(Failure::Pipeline(e.to_string())),
    }
}

async fn fetch(client: &reqwest::Client, url: url::Url, key: Option<&str>) -> Latest {
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Latest::Failed(format!("cannot reach the server: {e}")),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Latest::Failed(format!("the answer broke off: {e}")),
    };
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        return Latest::Failed(format!("{status}: {message}"));
    }
    match serde_json::from_slice::<State>(&body) {
        Ok(state) => Latest::State(Box::new(state)),
        Err(e) => Latest::Failed(format!("not a weir console state: {e}")),
    }
}

/// Draws until `q` (or Ctrl-C, or Esc).
fn show(
    terminal: &mut DefaultTerminal,
    url: &str,
    rx: watch::Receiver<Latest>,
    by_rate: &AtomicBool,
) -> std::io::Result<()> {
    let mut sort = SortBy::Buffered;
    loop {
        terminal.draw(|frame| draw(frame, url, &rx.borrow(), sort))?;
        if !event::poll(Duration::from_millis(250))? {
            continue;
        }
        if let Event::Key(key) = event::read()? {
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(())
                }
                KeyCode::Char('s') => {
                    sort = match sort {
                        SortBy::Buffered => SortBy::Rate,
                        SortBy::Rate => SortBy::Buffered,
                    };
                    by_rate.store(sort == SortBy::Rate, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn percent(used: u64, budget: u64) -> String {
    if budget == 0 {
        bytes(used)
    } else {
        format!(
            "{} {:>3.0}%",
            bytes(used),
            used as f64 * 100.0 / budget as f64
        )
    }
}

fn draw(frame: &mut Frame, url: &str, latest: &Latest, sort: SortBy) {
    let [head, gauge, streams, stages, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let sorted_by = match sort {
        SortBy::Buffered => "buffered",
        SortBy::Rate => "rate",
    };
    frame.render_widget(
        Paragraph::new(format!(
            "s: sort by buffered/rate (now {sorted_by})   q: quit"
        ))
        .style(Style::new().fg(Color::DarkGray)),
        keys,
    );
    let state = match latest {
        Latest::Waiting => {
            frame.render_widget(
                Paragraph::new(format!("weir top  {url}  connecting…")),
                head,
            );
            return;
        }
        Latest::Failed(why) => {
            frame.render_widget(
                Paragraph::new(format!("weir top  {url}  {why}"))
                    .style(Style::new().fg(Color::Red)),
                head,
            );
            return;
        }
        Latest::State(state) => state,
    };
    let s = &state.streams;
    frame.render_widget(
        Paragraph::new(format!(
            "weir top  {url}  up {:.0} s  streams {} (slow {})  RSS {}",
            state.uptime_s,
            s.open,
            s.slow,
            state.rss.map_or("-".to_string(), bytes)
        )),
        head,
    );
    let m = &state.memory;
    let ratio = if m.limit == 0 {
        0.0
    } else {
        (m.reserved as f64 / m.limit as f64).clamp(0.0, 1.0)
    };
    frame.render_widget(
        Gauge::default()
            .ratio(ratio)
            .label(format!(
                "memory budget: {} of {} reserved",
                bytes(m.reserved),
                bytes(m.limit)
            ))
            .gauge_style(Style::new().fg(if ratio >= 0.9 {
                Color::Red
            } else {
                Color::Blue
            })),
        gauge,
    );

    let mut shown: Vec<&Stream> = s.shown.iter().collect();
    match sort {
        SortBy::Buffered => shown.sort_by_key(|s| std::cmp::Reverse(s.buffered)),
        SortBy::Rate => shown.sort_by(|a, b| b.rate.total_cmp(&a.rate)),
    }
    let rows = shown.iter().map(|st| {
        let row = Row::new(vec![
            st.route.clone(),
            st.kind.clone(),
            st.client.clone().unwrap_or_else(|| "-".into()),
            format!("{:.0} s", st.age_s),
            bytes(st.bytes_out),
            format!("{}/s", bytes(st.rate as u64)),
            percent(st.buffered, st.budget),
            st.send_queue
                .map_or("-".to_string(), |q| percent(q, st.send_buffer)),
            if st.slow {
                "slow".into()
            } else {
                String::new()
            },
        ]);
        if st.slow {
            row.style(Style::new().fg(Color::Red))
        } else {
            row
        }
    });
    let title = if s.rest > 0 {
        format!(" streams: {} shown, {} more ", shown.len(), s.rest)
    } else {
        format!(" streams: {} ", shown.len())
    };
    let header = Row::new(vec![
        "route",
        "kind",
        "client",
        "age",
        "out",
        "rate",
        "buffered",
        "send queue",
        "",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Fill(2),
                Constraint::Length(10),
                Constraint::Length(21),
                Constraint::Length(7),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(15),
                Constraint::Length(15),
                Constraint::Length(4),
            ],
        )
        .header(header)
        .block(Block::bordered().title(title)),
        streams,
    );

    let mut stage_rows = Vec::new();
    let mut add = |owner: String, list: &[Stage], bottleneck: Option<&str>, extra: String| {
        stage_rows.push(
            Row::new(vec![
                owner,
                String::new(),
                String::new(),
                String::new(),
                extra,
            ])
            .style(Style::new().add_modifier(Modifier::BOLD)),
        );
        for stage in list {
            let is_bottleneck = bottleneck == Some(stage.name.as_str());
            let row = Row::new(vec![
                format!("  {}", stage.name),
                stage.state.clone(),
                stage.items_out.to_string(),
                percent(stage.buffered, stage.budget),
                if is_bottleneck {
                    "<- bottleneck".into()
                } else {
                    String::new()
                },
            ]);
            stage_rows.push(if is_bottleneck {
                row.style(Style::new().fg(Color::Yellow))
            } else {
                row
            });
        }
    };
    for p in &state.pipelines {
        let lag: i64 = p.lag.iter().map(|l| l.lag).sum();
        add(
            p.name.clone(),
            &p.stages,
            p.bottleneck.as_deref(),
            format!("lag {lag}"),
        );
    }
    for st in shown.iter().filter(|st| !st.stages.is_empty()) {
        let owner = format!("{} ({})", st.route, st.client.as_deref().unwrap_or("-"));
        add(owner, &st.stages, st.bottleneck.as_deref(), String::new());
    }
    let header = Row::new(vec![
        "pipeline / stage",
        "state",
        "items out",
        "buffered",
        "",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    frame.render_widget(
        Table::new(
            stage_rows,
            [
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Length(12),
                Constraint::Length(15),
                Constraint::Fill(1),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" pipelines and export stages ")),
        stages,
    );
}
