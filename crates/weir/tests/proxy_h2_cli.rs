//! `weir serve` with unusable `tls_cert` / `tls_key` files stops before it listens, with
//! an error naming the file; `--check-config` says the same. (Serving over TLS is tested
//! in crates/weir-server/tests/proxy_h2_tls.rs.)

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn proxy_h2_weir_serve_stops_naming_an_unusable_certificate_or_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-cert.pem");
    let text = dir.path().join("not-a-key.pem");
    std::fs::write(&text, "not PEM at all\n").unwrap();
    // A bad key beside a good certificate: crates/weir-server's tests, which make certificates.
    for (cert, key, named, why) in [
        (&missing, &text, &missing, "cannot read"),
        (&text, &missing, &text, "no PEM certificate"),
    ] {
        let listen = free_addr();
        let config = dir.path().join("weir.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{listen}\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n\
                 [[route]]\nkind = \"llm_proxy\"\npath = \"/v1/chat/completions\"\n\
                 protocol = \"openai\"\nupstream = \"http://127.0.0.1:1/v1/chat/completions\"\n"
            ),
        )
        .unwrap();
        for check_only in [false, true] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
            command.args(["serve", "--config", config.to_str().unwrap()]);
            if check_only {
                command.arg("--check-config");
            }
            let out = command.stdin(Stdio::null()).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "exit {}: {stderr}", out.status);
            assert!(
                stderr.contains(&format!("{}", named.display())) && stderr.contains(why),
                "{stderr}"
            );
            assert!(
                TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err(),
                "nothing listened on {listen}"
            );
        }
    }
}
