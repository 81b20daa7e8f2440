//! The real `inboxd run` as a child process (crash, graceful-shutdown and kill -9 tests),
//! the load generator that fills its mailboxes, and readers of the event file it writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::{CLIENT, Env, SECRET, SECRET_ENV, TENANT};

/// How long the binary may take to print `listening on`.
const BINARY_START_LIMIT: Duration = Duration::from_secs(30);

impl Env {
    /// Seeds `mailboxes` × `per_mailbox` messages with the load generator (small bodies, no
    /// attachments); returns the addresses `{prefix}{n}@load.example.com`.
    pub async fn load(&self, prefix: &str, mailboxes: usize, per_mailbox: usize) -> Vec<String> {
        let answer = self
            .control(
                "/_emulator/load",
                json!({
                    "tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
                    "mailboxes": mailboxes, "messages_per_mailbox": per_mailbox,
                    "body_bytes": 200, "attachment_share": 0.0,
                    "address_prefix": prefix, "domain": "load.example.com",
                }),
            )
            .await;
        assert_eq!(answer["messages"], json!(mailboxes * per_mailbox), "load: {answer}");
        (0..mailboxes)
            .map(|n| format!("{prefix}{n}@load.example.com"))
            .collect()
    }

    /// Immutable ids of the messages in a mailbox's inbox, from the emulator's own listing.
    pub async fn inbox_ids(&self, address: &str) -> Vec<String> {
        let listing = self
            .control_get(&format!("/_emulator/mailboxes/{address}/folders/inbox/messages"))
            .await;
        listing
            .as_array()
            .unwrap_or_else(|| panic!("inbox listing of {address}: {listing}"))
            .iter()
            .map(|m| m["immutable_id"].as_str().expect("immutable_id").to_string())
            .collect()
    }

    /// Starts the real binary on `config`; stderr goes to `inboxd-{run}.log` in the temp dir.
    /// Returns once it printed `listening on`; panics (with its log) if it does not.
    pub async fn spawn_binary(&self, config: &Path, run: usize) -> Binary {
        self.spawn_binary_logging(config, run, None).await
    }

    /// [`Env::spawn_binary`] with `RUST_LOG` set to `rust_log` (removed when `None`, so the
    /// config's own level applies).
    pub async fn spawn_binary_logging(&self, config: &Path, run: usize, rust_log: Option<&str>) -> Binary {
        let log = self.dir.path().join(format!("inboxd-{run}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_inboxd"));
        command.arg("run").arg("--config").arg(config).env(SECRET_ENV, SECRET);
        match rust_log {
            Some(level) => command.env("RUST_LOG", level),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("inboxd binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Reads stdout to the end so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut binary = Binary { child, addr: None, log };
        let deadline = std::time::Instant::now() + BINARY_START_LIMIT;
        loop {
            while let Ok(line) = rx.try_recv() {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    binary.addr = Some(addr.trim().parse().expect("printed address parses"));
                }
            }
            if binary.addr.is_some() {
                return binary;
            }
            if let Ok(Some(status)) = binary.child.try_wait() {
                panic!("inboxd exited at start with {status}; stderr:\n{}", binary.stderr());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "inboxd printed no 'listening on' within {BINARY_START_LIMIT:?}; stderr:\n{}",
                binary.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The real `inboxd run` as a child process; killed (SIGKILL) if dropped while running.
pub struct Binary {
    /// The process.
    child: std::process::Child,
    /// The API address it printed.
    addr: Option<SocketAddr>,
    /// Its stderr (JSON log lines).
    pub log: PathBuf,
}

impl Binary {
    /// The API address it printed.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("started")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reaps it.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL delivered");
        self.child.wait().expect("killed child reaped");
    }

    /// Sends SIGTERM (through `kill -TERM`).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid());
    }

    /// SIGTERM, then waits (bounded) for the exit; panics if it is still running after `limit`.
    pub async fn stop(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.sigterm();
        match self.wait_exit(limit).await {
            Some(status) => status,
            None => panic!(
                "inboxd did not stop within {limit:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Waits (bounded, polling) for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything it logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on its API: status and body, or the transport error (e.g. refused once it exited).
    pub async fn get(&self, path: &str) -> Result<(u16, String), reqwest::Error> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}{path}", self.addr()))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Number of complete lines (newline-terminated) in a file; cheap enough to poll.
pub fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .unwrap_or_default()
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// Lines of an NDJSON event file that are not a JSON object (torn writes), as (1-based line
/// number, start of the line), plus the total number of lines (a last line without newline
/// counts). Other event kinds in the file (mailbox state events) are whole lines, not torn.
pub fn torn_lines(path: &Path) -> (Vec<(usize, String)>, usize) {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    let torn = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object()))
        .map(|(i, l)| (i + 1, l.chars().take(120).collect()))
        .collect();
    (torn, lines.len())
}
