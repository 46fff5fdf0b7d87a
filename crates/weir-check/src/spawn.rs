//! A server the check starts itself (`--spawn`): run through `sh -c` in its own process
//! group, waited for until its port accepts connections, and stopped, group and all,
//! when dropped.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// How long a stopped server gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(50);

pub struct SpawnedServer {
    child: Child,
    command: String,
}

impl SpawnedServer {
    /// Starts `command` with `sh -c`; its output goes nowhere (it would garble the
    /// progress line).
    pub fn start(command: &str) -> Result<SpawnedServer, String> {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start `{command}`: {e}"))?;
        Ok(SpawnedServer {
            child,
            command: command.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` once the server has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("`{}` exited ({status})", self.command)),
            Ok(None) => None,
            Err(e) => Some(format!("cannot watch `{}`: {e}", self.command)),
        }
    }

    /// Waits until `addr` accepts a TCP connection, the server exits, or `timeout` passes.
    pub async fn wait_ready(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(exited) = self.exited() {
                return Err(format!("{exited} before {addr} answered"));
            }
            // Nothing to await but the port itself: poll it, bounded by the timeout.
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "`{}` did not answer on {addr} within {timeout:?}",
                    self.command
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal_group(&self, signal: Signal) {
        if let Some(group) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process_group(group, signal);
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        self.signal_group(Signal::TERM);
        let asked = Instant::now();
        while asked.elapsed() < GRACE {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(POLL);
        }
        // Children of the shell may outlive it: the whole group goes.
        self.signal_group(Signal::KILL);
        let _ = self.child.wait();
    }
}
