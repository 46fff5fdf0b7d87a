//! The least a relay can add to a token's latency on this machine: one thread per
//! direction of each connection, blocking reads, each read written on as it came, no
//! parsing. `bench/proxy --phases latency` runs it beside weir and the Node peer, so that
//! the added latency of a proxy can be read against that of a hop that does nothing.
//!
//! Usage: relay_floor LISTEN UPSTREAM (both host:port); stops when killed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn relay(client: TcpStream, upstream_addr: &str) -> std::io::Result<()> {
    let upstream = TcpStream::connect(upstream_addr)?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (client_back, upstream_back) = (client.try_clone()?, upstream.try_clone()?);
    thread::spawn(move || pipe(client, upstream));
    thread::spawn(move || pipe(upstream_back, client_back));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream] = args.as_slice() else {
        eprintln!("usage: relay_floor LISTEN UPSTREAM (host:port each)");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relay_floor: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    for client in listener.incoming() {
        let relayed = client.and_then(|c| relay(c, upstream));
        if let Err(e) = relayed {
            eprintln!("relay_floor: {e}");
        }
    }
    ExitCode::SUCCESS
}
