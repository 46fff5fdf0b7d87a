//! Bytes the target parks in the kernel: the send and receive queues of the TCP sockets
//! its processes hold open, from /proc/PID/fd and the target's own view of
//! /proc/PID/net/tcp{,6} (its network namespace, which may not be ours).

use std::collections::HashSet;

use serde::Serialize;

/// The state column of a listening socket in /proc/net/tcp: its queues count pending
/// connections, not bytes.
const LISTEN: &str = "0A";

/// The target's sockets could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    #[error("cannot list {dir}: {error}")]
    ListFds { dir: String, error: std::io::Error },
    #[error("cannot read {path}: {error}")]
    ReadTable { path: String, error: std::io::Error },
}

/// Queued bytes over all of the target's TCP sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SocketQueues {
    /// Written by the target, not yet taken by the peer.
    pub send: u64,
    /// Arrived for the target, not yet read by it.
    pub recv: u64,
    /// Connected sockets counted.
    pub sockets: u64,
}

impl SocketQueues {
    pub fn total(&self) -> u64 {
        self.send + self.recv
    }
}

/// The queues of the sockets held by `pids`, looked up in the socket tables of `pids[0]`.
pub fn socket_queues(pids: &[u32]) -> Result<SocketQueues, SocketsError> {
    let mut queues = SocketQueues::default();
    for_each_row(pids, |row| {
        if row.state != LISTEN {
            queues.send += row.tx;
            queues.recv += row.rx;
            queues.sockets += 1;
        }
    })?;
    Ok(queues)
}

/// The TCP ports `pids` listen on (looked up as `socket_queues` does).
pub fn listening_ports(pids: &[u32]) -> Result<Vec<u16>, SocketsError> {
    let mut ports = Vec::new();
    for_each_row(pids, |row| {
        if row.state == LISTEN && !ports.contains(&row.port) {
            ports.push(row.port);
        }
    })?;
    Ok(ports)
}

/// One row of /proc/net/tcp{,6}.
struct Row<'a> {
    state: &'a str,
    port: u16,
    tx: u64,
    rx: u64,
}

/// Calls `f` with each row of the socket tables of `pids[0]` that belongs to one of `pids`.
fn for_each_row(pids: &[u32], mut f: impl FnMut(Row)) -> Result<(), SocketsError> {
    let Some(&root) = pids.first() else {
        return Ok(());
    };
    let mut inodes = HashSet::new();
    for &pid in pids {
        let dir = format!("/proc/{pid}/fd");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A child that exited between the listing and now holds nothing any more.
            Err(_) if pid != root => continue,
            Err(error) => return Err(SocketsError::ListFds { dir, error }),
        };
        for entry in entries.flatten() {
            if let Some(inode) = std::fs::read_link(entry.path())
                .ok()
                .and_then(|t| socket_inode(&t.to_string_lossy()))
            {
                inodes.insert(inode);
            }
        }
    }
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{root}/net/{table}");
        match std::fs::read_to_string(&path) {
            Ok(text) => rows(&text, &inodes, &mut f),
            // No IPv6 in the kernel: no tcp6 table.
            Err(_) if table == "tcp6" => {}
            Err(error) => return Err(SocketsError::ReadTable { path, error }),
        }
    }
    Ok(())
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The rows of one /proc/net/tcp table whose inode is in `inodes`.
/// Columns: sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode …
fn rows(text: &str, inodes: &HashSet<u64>, f: &mut impl FnMut(Row)) {
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 {
            continue;
        }
        let Some(inode) = cols[9].parse::<u64>().ok() else {
            continue;
        };
        if !inodes.contains(&inode) {
            continue;
        }
        let port = cols[1]
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
        let Some((tx, rx)) = cols[4].split_once(':') else {
            continue;
        };
        if let (Some(port), Ok(tx), Ok(rx)) = (
            port,
            u64::from_str_radix(tx, 16),
            u64::from_str_radix(rx, 16),
        ) {
            f(Row {
                state: cols[3],
                port,
                tx,
                rx,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn rows_are_summed_by_inode_and_listeners_skipped() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000005 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:C350 01 00010000:00000100 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
   2: 0100007F:1F90 0100007F:C351 01 00000400:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n\
   3: 0100007F:1F90 0100007F:C352 01 00000400:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1\n\
   garbage\n";
        let inodes: HashSet<u64> = [111, 222, 333].into();
        let mut queues = SocketQueues::default();
        let mut listening = Vec::new();
        rows(table, &inodes, &mut |row| {
            if row.state == LISTEN {
                listening.push(row.port);
            } else {
                queues.send += row.tx;
                queues.recv += row.rx;
                queues.sockets += 1;
            }
        });
        assert_eq!(listening, vec![0x1F90]);
        assert_eq!(
            queues,
            SocketQueues {
                send: 0x10000 + 0x400,
                recv: 0x100,
                sockets: 2
            }
        );
    }

    #[test]
    fn socket_links_are_parsed() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn bytes_we_leave_unread_show_in_our_own_receive_queue() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (receiver, _) = listener.accept().unwrap();
        sender.write_all(&[7u8; 3000]).unwrap();
        let me = std::process::id();
        // Loopback delivers in the write call, but give the softirq a bounded chance.
        let mut queues = socket_queues(&[me]).unwrap();
        for _ in 0..100 {
            if queues.recv >= 3000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            queues = socket_queues(&[me]).unwrap();
        }
        let ports = listening_ports(&[me]).unwrap();
        drop(receiver);
        assert!(queues.recv >= 3000, "{queues:?}");
        assert!(queues.sockets >= 2, "{queues:?}");
        let port = listener.local_addr().unwrap().port();
        assert!(ports.contains(&port), "{port} not in {ports:?}");
    }
}
