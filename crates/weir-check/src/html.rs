//! The report as one self-contained HTML page, for CI artifacts: the verdict, the figures
//! and the plot (inline SVG), nothing fetched from elsewhere.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plot::{plot, PlotError};
use crate::report::{Report, Verdict};

/// A page that could not be written, naming its file.
#[derive(Debug, thiserror::Error)]
#[error("--html {}: {problem}", path.display())]
pub struct HtmlError {
    pub path: PathBuf,
    pub problem: HtmlProblem,
}

/// Why the page could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HtmlProblem {
    #[error("{0}")]
    Plot(PlotError),
    /// Making the plot's scratch file, reading it back or writing the page.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Writes `report` to `path` as one HTML file.
pub fn html(report: &Report, path: &Path) -> Result<(), HtmlError> {
    write(report, path).map_err(|problem| HtmlError {
        path: path.to_path_buf(),
        problem,
    })
}

fn write(report: &Report, path: &Path) -> Result<(), HtmlProblem> {
    // The plot is drawn by the same code as --plot, into a file of its own, then inlined.
    let dir = tempfile::tempdir().map_err(HtmlProblem::Io)?;
    let svg_path = dir.path().join("plot.svg");
    plot(report, &svg_path).map_err(HtmlProblem::Plot)?;
    let svg = std::fs::read_to_string(&svg_path).map_err(HtmlProblem::Io)?;
    std::fs::write(path, page(report, &svg)).map_err(HtmlProblem::Io)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(report: &Report, svg: &str) -> String {
    let colour = match report.verdict {
        Verdict::Pass => "#1a7f37",
        Verdict::Fail => "#cf222e",
        Verdict::Inconclusive => "#9a6700",
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>weir check: {verdict} — {url}</title>
<style>
  body {{ margin: 24px; font: 14px/1.5 -apple-system, "DejaVu Sans", sans-serif; color: #1f2328; }}
  .verdict {{ display: inline-block; padding: 4px 14px; border-radius: 6px; color: #fff;
              background: {colour}; font-size: 22px; font-weight: bold; }}
  .reason {{ font-size: 16px; margin: 10px 0 18px; }}
  pre {{ background: #f6f8fa; padding: 12px; border-radius: 6px; overflow-x: auto;
         font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }}
  .plot svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<h1>weir check</h1>
<div class="verdict" id="verdict">{verdict}</div>
<p class="reason" id="reason">{reason}</p>
<p>{url} — memory from {source}</p>
<h2>Figures</h2>
<pre id="figures">{table}</pre>
<h2>Memory over time</h2>
<div class="plot" id="plot">{svg}</div>
</body>
</html>
"#,
        verdict = report.verdict,
        url = escape(&report.url),
        reason = escape(&report.reason),
        source = escape(&report.memory_source),
        table = escape(&report.table()),
        svg = strip_prolog(svg),
    );
    out
}

/// An SVG file's `<?xml …?>` line cannot stand inside HTML; the `<svg>` element can.
fn strip_prolog(svg: &str) -> &str {
    svg.find("<svg").map_or(svg, |start| &svg[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_report_cannot_open_a_tag() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(strip_prolog("<?xml version=\"1.0\"?>\n<svg a>"), "<svg a>");
    }
}
