//! `weir demo`, the README's first command, runs end to end and shows redaction at work.

use std::process::Command;

#[test]
fn demo_runs_the_pipelines_and_streams_a_redacted_answer() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["demo", "--once", "--size", "8MiB", "--seconds", "1"])
        .args(["--listen", &free(), "--upstream-listen", &free()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("bottleneck: gzip:6"), "{text}");
    for mask in ["[EMAIL]", "[PHONE]", "[CARD]", "[IPV4]", "[SECRET]"] {
        assert!(text.contains(mask), "no {mask} in {text}");
    }
    assert!(
        !text.contains('@'),
        "an e-mail address went through: {text}"
    );
    assert!(text.contains("curl -N"), "{text}");
}
