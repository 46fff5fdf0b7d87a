//! The picture of a run: RSS (and each process's, for a chain) and the target's socket
//! queues over time, the line fitted over the steady-state window, the warm-up and
//! settling shaded; SVG or PNG by the file's extension.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::Report;

const SIZE: (u32, u32) = (1000, 560);
const PROCESS_COLOURS: [RGBColor; 4] = [
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];
const MIB: f64 = 1048576.0;
/// TrueType fonts the text is laid out (and, in a PNG, drawn) with.
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// A plot that could not be drawn, naming its file.
#[derive(Debug, thiserror::Error)]
#[error("--plot {}: {problem}", path.display())]
pub struct PlotError {
    pub path: PathBuf,
    pub problem: PlotProblem,
}

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotProblem {
    #[error("give a file ending in .svg or .png")]
    Extension,
    #[error("a plot needs a TrueType font and none was found (looked for {}); install fonts-dejavu-core", FONTS.join(", "))]
    NoFont,
    #[error("the TrueType font found could not be read")]
    BadFont,
    /// The drawing backend's own message (its error type depends on the backend).
    #[error("{0}")]
    Draw(String),
}

/// Draws `report` into `path`: `.svg` or `.png`.
pub fn plot(report: &Report, path: &Path) -> Result<(), PlotError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let draw_to = |path| {
        register_font()?;
        match extension.as_deref() {
            Some("svg") => draw(SVGBackend::new(path, SIZE).into_drawing_area(), report),
            Some("png") => draw(BitMapBackend::new(path, SIZE).into_drawing_area(), report),
            _ => Err(PlotProblem::Extension),
        }
    };
    draw_to(path).map_err(|problem| PlotError {
        path: path.to_path_buf(),
        problem,
    })
}

fn register_font() -> Result<(), PlotProblem> {
    let bytes = FONTS
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .ok_or(PlotProblem::NoFont)?;
    // The font registry keeps fonts for the life of the process; a plot is drawn once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotProblem::BadFont)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &Report,
) -> Result<(), PlotProblem>
where
    DB::ErrorType: 'static,
{
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotProblem::Draw(e.to_string());
    root.fill(&WHITE).map_err(error)?;
    let samples = &report.samples;
    let end = report.window.end_s.max(1.0);
    let top = samples
        .iter()
        .map(|s| s.rss.max(s.queued().unwrap_or(0)))
        .max()
        .unwrap_or(0) as f64
        / MIB;
    let top = (top * 1.15).max(1.0);
    let title = match &report.fit {
        Some(fit) => format!(
            "{}: {:+.1} KB/s, R² {:.2} ({})",
            report.verdict,
            fit.slope / 1000.0,
            fit.r2,
            report.url
        ),
        None => format!("{} ({})", report.verdict, report.url),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the clients connected")
        .y_desc("MiB")
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(error)?;

    let warmup = report.window.warmup_s.min(end);
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (warmup, top)],
            BLACK.mix(0.08).filled(),
        )))
        .map_err(error)?
        .label("warm-up")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], BLACK.mix(0.08).filled()));
    let settling_end = report.window.start_s.unwrap_or(end);
    if settling_end > warmup {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(warmup, 0.0), (settling_end, top)],
                RGBColor(255, 165, 0).mix(0.10).filled(),
            )))
            .map_err(error)?
            .label("kernel queues settling")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 18, y + 5)],
                    RGBColor(255, 165, 0).mix(0.10).filled(),
                )
            });
    }

    let rss_colour = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, s.rss as f64 / MIB)),
            rss_colour.stroke_width(2),
        ))
        .map_err(error)?
        .label("RSS")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], rss_colour.stroke_width(2)));
    // A chain: each process's own RSS, so that the picture shows which one holds the bytes.
    if report.processes.len() > 1 {
        for (i, process) in report.processes.iter().enumerate() {
            let colour = PROCESS_COLOURS[i % PROCESS_COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    samples
                        .iter()
                        .filter_map(|s| Some((s.t, s.processes.get(i)?.rss as f64 / MIB))),
                    colour.stroke_width(1),
                ))
                .map_err(error)?
                .label(format!("RSS of {}", process.label))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(1))
                });
        }
    }
    let queue_colour = RGBColor(255, 127, 14);
    if samples.iter().any(|s| s.queued().is_some()) {
        chart
            .draw_series(LineSeries::new(
                samples
                    .iter()
                    .filter_map(|s| Some((s.t, s.queued()? as f64 / MIB))),
                queue_colour.stroke_width(2),
            ))
            .map_err(error)?
            .label("bytes in the target's socket queues")
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], queue_colour.stroke_width(2))
            });
    }
    if let (Some(fit), Some(start)) = (&report.fit, report.window.start_s) {
        let line = [start, report.window.end_s].map(|t| (t, fit.at(t) / MIB));
        chart
            .draw_series(LineSeries::new(line, RED.stroke_width(2)))
            .map_err(error)?
            .label("fitted over the steady-state window")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(error)?;
    root.present().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::{LineFit, Thresholds};
    use crate::report::{ClientSummary, ProcessSample, Sample, Verdict, Window};

    fn report() -> Report {
        let samples: Vec<Sample> = (0..40)
            .map(|i| {
                let t = i as f64 * 0.5;
                Sample {
                    t,
                    rss: (20.0 * MIB + t.min(8.0) * MIB) as u64,
                    processes: vec![ProcessSample {
                        rss: (20.0 * MIB + t.min(8.0) * MIB) as u64,
                        queued: None,
                    }],
                    queued_send: Some((t.min(6.0) * 2.0 * MIB) as u64),
                    queued_recv: Some(0),
                    streaming: 10,
                    received: i * 1000,
                }
            })
            .collect();
        let fit = LineFit::of(
            &samples
                .iter()
                .filter(|s| s.t >= 10.0)
                .map(|s| (s.t, s.rss as f64))
                .collect::<Vec<_>>(),
        );
        Report {
            verdict: Verdict::Pass,
            reason: "memory levelled off".into(),
            url: "http://127.0.0.1:8080/stream".into(),
            memory_source: "pid 1".into(),
            window: Window {
                warmup_s: 5.0,
                queues_settled_s: Some(10.0),
                start_s: Some(10.0),
                end_s: 19.5,
            },
            fit,
            thresholds: Thresholds {
                max_slope: 16_000.0,
                min_r2: 0.5,
                max_per_client: 2.0 * MIB,
            },
            memory: None,
            kernel: None,
            where_bytes_live: String::new(),
            processes: Vec::new(),
            limit: None,
            clients: ClientSummary::default(),
            samples,
        }
    }

    #[test]
    fn svg_and_png_by_extension() {
        let dir = std::env::temp_dir().join(format!("weir-check-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (svg, png) = (dir.join("run.svg"), dir.join("run.PNG"));
        plot(&report(), &svg).unwrap();
        plot(&report(), &png).unwrap();
        let wrong = plot(&report(), &dir.join("run.txt")).unwrap_err();
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        let png_bytes = std::fs::read(&png).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg_text.starts_with("<svg"), "{svg_text:.100}");
        for label in ["PASS", "warm-up", "RSS", "socket queues", "fitted"] {
            assert!(svg_text.contains(label), "no `{label}` in the SVG");
        }
        assert!(png_bytes.starts_with(b"\x89PNG\r\n"), "not a PNG");
        assert!(
            !svg_text.contains("RSS of"),
            "one process has no line of its own"
        );
        assert!(wrong.to_string().contains(".svg or .png"), "{wrong}");
    }

    #[test]
    fn a_chain_has_a_line_per_process() {
        let mut chain = report();
        for sample in &mut chain.samples {
            let app = ProcessSample {
                rss: 10 << 20,
                queued: None,
            };
            sample.processes.push(app);
        }
        chain.processes = ["pid 1 (node)", "pid 2 (java)"]
            .iter()
            .map(|label| crate::report::ProcessSummary {
                label: label.to_string(),
                pid: None,
                command: None,
                front: false,
                peak: 0,
                judgement: None,
                stderr_tail: Vec::new(),
            })
            .collect();
        let path =
            std::env::temp_dir().join(format!("weir-check-chain-{}.svg", std::process::id()));
        plot(&chain, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("RSS of pid 1 (node)") && svg.contains("RSS of pid 2 (java)"));
    }
}
