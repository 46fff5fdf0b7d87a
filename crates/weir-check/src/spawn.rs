//! A server the check starts itself (`--spawn`): run through `sh -c` in its own process
//! group, waited for until it listens on a TCP port (and the URL's port accepts), and
//! stopped, group and all, when dropped. Its stderr is kept in an unnamed temporary file,
//! so that the report can quote its last lines (an OutOfMemoryError, a GC warning) and a
//! server that dies can be reported with its last words.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use crate::memory::{process_tree, start_time};
use crate::sockets::listening_ports;

/// How long a stopped server gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(50);
/// How much of the end of a dead server's stderr a report quotes.
const LAST_WORDS: u64 = 600;
/// The lines of its stderr a report quotes, and the most bytes read to find them.
const TAIL_LINES: usize = 12;
const TAIL_BYTES: u64 = 8 << 10;
/// A quoted line longer than this is cut (a stack trace on one line, a binary dump).
const MAX_LINE: usize = 300;

/// A spawned server that could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create a file for the server's stderr: {0}")]
    StderrFile(std::io::Error),
    #[error("cannot start `{command}`: {error}")]
    Start {
        command: String,
        error: std::io::Error,
    },
    /// `exited` says how, with the server's last words.
    #[error("{what} never answered: {exited}")]
    Exited { what: String, exited: String },
    #[error("`{command}` did not answer on {what} within {timeout:?}")]
    NoAnswer {
        command: String,
        what: String,
        timeout: Duration,
    },
    #[error("`{command}` listened on no TCP port within {timeout:?}")]
    NoPort { command: String, timeout: Duration },
}

pub struct SpawnedServer {
    child: Child,
    command: String,
    stderr: File,
    stopped: bool,
}

impl SpawnedServer {
    /// Starts `command` with `sh -c`; its stdout goes nowhere and its stderr to a
    /// temporary file (either would garble the progress line).
    pub fn start(command: &str) -> Result<SpawnedServer, SpawnError> {
        use std::os::unix::process::CommandExt;
        let stderr = tempfile::tempfile()
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(SpawnError::StderrFile)?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr.0))
            .process_group(0)
            .spawn()
            .map_err(|error| SpawnError::Start {
                command: command.to_string(),
                error,
            })?;
        Ok(SpawnedServer {
            child,
            command: command.to_string(),
            stderr: stderr.1,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` once the server has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                let last_words = self.last_words();
                Some(format!("`{}` exited ({status}){last_words}", self.command))
            }
            Ok(None) => None,
            Err(e) => Some(format!("cannot watch `{}`: {e}", self.command)),
        }
    }

    /// Waits until the server listens on a TCP port of its own (and, given `url`, that
    /// address accepts a connection), or it exits, or `timeout` passes. The first makes a
    /// chain start in order: a proxy in front is not started before the app behind it
    /// listens.
    pub async fn wait_ready(
        &mut self,
        url: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<(), SpawnError> {
        let started = Instant::now();
        let what = url.map_or_else(|| "a TCP port".to_string(), |a| a.to_string());
        loop {
            if let Some(exited) = self.exited() {
                return Err(SpawnError::Exited { what, exited });
            }
            // Nothing to await but the ports themselves: poll them, bounded by the timeout.
            let listens = listening_ports(&process_tree(self.pid())).is_ok_and(|p| !p.is_empty());
            let answers = match url {
                Some(addr) if listens => tokio::net::TcpStream::connect(addr).await.is_ok(),
                _ => listens,
            };
            if answers {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                let command = self.command.clone();
                return Err(if listens {
                    SpawnError::NoAnswer {
                        command,
                        what,
                        timeout,
                    }
                } else {
                    SpawnError::NoPort { command, timeout }
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the server (as dropping it does) and returns the last lines it wrote to
    /// stderr, its dying words included.
    pub fn stop(mut self) -> Vec<String> {
        self.terminate();
        self.stderr_tail()
    }

    fn stderr_tail(&mut self) -> Vec<String> {
        let mut bytes = Vec::new();
        let len = self.stderr.metadata().map_or(0, |m| m.len());
        let from = len.saturating_sub(TAIL_BYTES);
        let read = self
            .stderr
            .seek(SeekFrom::Start(from))
            .and_then(|_| (&self.stderr).take(TAIL_BYTES).read_to_end(&mut bytes));
        if read.is_err() {
            return Vec::new();
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<&str> = text.lines().collect();
        // Reading from the middle of the file starts in the middle of a line.
        if from > 0 && !lines.is_empty() {
            lines.remove(0);
        }
        let lines: Vec<String> = lines
            .into_iter()
            .map(plain)
            .filter(|l| !l.is_empty())
            .map(|l| match l.char_indices().nth(MAX_LINE) {
                Some((cut, _)) => format!("{}…", &l[..cut]),
                None => l,
            })
            .collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].to_vec()
    }

    /// The end of what the server wrote to stderr, as `: …`, or nothing.
    fn last_words(&mut self) -> String {
        let mut text = String::new();
        let len = self.stderr.metadata().map_or(0, |m| m.len());
        let read = self
            .stderr
            .seek(SeekFrom::Start(len.saturating_sub(LAST_WORDS)))
            .and_then(|_| (&self.stderr).take(LAST_WORDS).read_to_string(&mut text));
        match read {
            Ok(_) if !text.trim().is_empty() => format!(": {}", text.trim()),
            _ => String::new(),
        }
    }

    /// Signals the process group and, for those that left it (`setsid`, `timeout`), every
    /// process of `tree` that is still the one seen then (same pid, same start time).
    fn signal(&self, tree: &[(u32, Option<u64>)], signal: Signal) {
        if let Some(group) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process_group(group, signal);
        }
        for &(pid, started) in tree {
            if started.is_some() && start_time(pid) == started {
                if let Some(pid) = Pid::from_raw(pid as i32) {
                    let _ = kill_process(pid, signal);
                }
            }
        }
    }
}

impl SpawnedServer {
    fn terminate(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let tree: Vec<_> = process_tree(self.child.id())
            .into_iter()
            .map(|pid| (pid, start_time(pid)))
            .collect();
        // The check must not return while the server still holds its port: wait for
        // every process of the tree, not only the shell, to be gone.
        let gone = |child: &mut Child| {
            let _ = child.try_wait();
            !tree.iter().any(|&(pid, started)| running(pid, started))
        };
        self.signal(&tree, Signal::TERM);
        let asked = Instant::now();
        while asked.elapsed() < GRACE && !gone(&mut self.child) {
            std::thread::sleep(POLL);
        }
        self.signal(&tree, Signal::KILL);
        let killed = Instant::now();
        while killed.elapsed() < GRACE && !gone(&mut self.child) {
            std::thread::sleep(POLL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `line` without terminal escape sequences (a logger's colours) or other control
/// characters, which would garble the report or the terminal it is printed on.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a byte from @ to ~.
            if chars.next() == Some('[') {
                for end in chars.by_ref() {
                    if ('@'..='~').contains(&end) {
                        break;
                    }
                }
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// Whether `pid` is still the process that started at `started` and has not exited (a
/// zombie has closed its files and sockets already).
fn running(pid: u32, started: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    started.is_some() && start_time(pid) == started && !matches!(state, Some("Z" | "X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_control_characters_are_stripped() {
        assert_eq!(
            plain("\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m stream ended\r\x07  "),
            "2026  INFO stream ended"
        );
        assert_eq!(plain("a\tb"), "a\tb");
    }

    #[tokio::test]
    async fn the_last_lines_of_stderr_are_kept_after_the_server_stops() {
        let mut server = SpawnedServer::start(
            "for i in $(seq 1 2000); do echo \"line $i\" >&2; done; \
             echo 'java.lang.OutOfMemoryError: Java heap space' >&2; exec sleep 30",
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // `sleep` listens on nothing: never ready, however open the URL's port.
        let err = server
            .wait_ready(Some(addr), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("listened on no TCP port"), "{err}");
        let pid = server.pid();
        let tail = server.stop();
        assert_eq!(tail.len(), TAIL_LINES, "{tail:?}");
        assert_eq!(tail[TAIL_LINES - 2], "line 2000");
        assert_eq!(
            tail.last().map(String::as_str),
            Some("java.lang.OutOfMemoryError: Java heap space")
        );
        assert!(
            crate::memory::process_rss(pid).is_none(),
            "{pid} still runs"
        );
    }
}
