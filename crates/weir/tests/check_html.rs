//! `weir check --html FILE`: one self-contained page for CI artifacts, with the verdict,
//! the figures and the plot, and nothing fetched from elsewhere.

mod check;

use check::{steady_server, weir_check};

#[test]
fn check_html_writes_one_self_contained_page_with_verdict_figures_and_plot() {
    let (server, port) = steady_server();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("check.html");
    let run = weir_check(&[
        &format!("http://127.0.0.1:{port}/"),
        "--pid",
        &server.0.id().to_string(),
        "--clients",
        "4",
        "--duration",
        "6s",
        "--warmup",
        "2s",
        "--min-window",
        "3s",
        "--settle-window",
        "2s",
        "--interval",
        "250ms",
        "--read-rate",
        "2KiB",
        "--html",
        page.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&page)
        .unwrap_or_else(|e| panic!("no page ({e}); stderr:\n{}", run.stderr));
    let verdict = match run.code {
        0 => "PASS",
        1 => "FAIL",
        3 => "INCONCLUSIVE",
        code => panic!("exit {code}; stderr:\n{}", run.stderr),
    };
    assert!(html.starts_with("<!doctype html>"), "{html:.200}");
    assert!(
        html.contains(&format!(
            "<div class=\"verdict\" id=\"verdict\">{verdict}</div>"
        )),
        "the verdict ({verdict}) is not on the page"
    );
    let figures = html
        .split_once("<pre id=\"figures\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(figures, _)| figures)
        .expect("the figures");
    for wanted in ["memory from", "clients", "bytes per client"] {
        assert!(
            figures.contains(wanted),
            "no {wanted} in the figures:\n{figures}"
        );
    }
    let plot = html.find("<svg").expect("the plot, inline");
    assert!(html[plot..].contains("</svg>"));
    assert!(!html.contains("<?xml"), "an XML prolog inside HTML");
    for outside in ["src=\"http", "href=\"http", "<script", "<link", "@import"] {
        assert!(
            !html.contains(outside),
            "the page loads something: {outside}"
        );
    }
}
