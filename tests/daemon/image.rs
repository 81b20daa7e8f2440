//! The real binary run the way the container image runs it (Dockerfile, deploy/): as uid 65532
//! (dropped to with `setpriv` when the tests run as root), the config a read-only file in a
//! read-only directory, secrets only from environment variables, a read-only working
//! directory, and only the data directory writable. Also checks that every metric the
//! alert rules and the dashboard in deploy/monitoring/ query is one the daemon exports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::support::{Env, SECRET, SECRET_ENV, eventually, read_events};

/// The image's runtime user and group (distroless "nonroot").
const IMAGE_UID: u32 = 65532;
/// The env var the image-like config reads its API token from.
const API_TOKEN_ENV: &str = "INBOXD_API_TOKEN";
/// Its value.
const API_TOKEN: &str = "image-test-api-token-5e0c";
/// How long anything the test waits for may take.
const LIMIT: Duration = Duration::from_secs(30);
#[tokio::test]
async fn runs_as_the_image_does_non_root_read_only_secrets_from_env() {
    let env = Env::new().await;
    let mailbox = "image@contoso.test".to_string();
    env.mailboxes(std::slice::from_ref(&mailbox)).await;
    env.deliver(&mailbox, "Before start").await;

    let layout = Layout::new(&env);
    let config = env
        .config(std::slice::from_ref(&mailbox), "200ms")
        .replace(
            &format!("sqlite://{}", env.dir.path().join("inboxd.db").display()),
            &format!("sqlite://{}", layout.data.join("inboxd.db").display()),
        )
        .replace(
            &env.events_path().display().to_string(),
            &layout.data.join("inbound.ndjson").display().to_string(),
        )
        .replace(
            "shutdown_grace = \"10s\"\n",
            &format!("shutdown_grace = \"10s\"\napi_tokens = [\"env:{API_TOKEN_ENV}\"]\n"),
        )
        // As deploy/configmap.yaml does: the expiry alert needs it.
        .replace(
            &format!("client_secret = \"env:{SECRET_ENV}\"\n"),
            &format!("client_secret = \"env:{SECRET_ENV}\"\nsecret_expires_at = \"2099-01-01T00:00:00Z\"\n"),
        );
    assert!(config.contains(&layout.data.display().to_string()) && !config.contains(SECRET));
    let config_path = layout.seal(&config);
    let before = layout.snapshot_outside_data();

    let mut daemon = layout.spawn_daemon(&config_path);
    let addr = daemon.addr;
    if layout.as_root {
        assert_eq!(daemon.uid(), Some(IMAGE_UID), "the daemon runs as the image's user");
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let status = |path: &'static str| {
        let http = http.clone();
        async move {
            match http.get(format!("http://{addr}{path}")).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        }
    };
    assert!(
        eventually(LIMIT, || async { status("/livez").await == 200 }).await,
        "/livez never 200"
    );
    assert!(
        eventually(LIMIT, || async { status("/readyz").await == 200 }).await,
        "/readyz never 200"
    );

    // Mail arrives, before and after start, and lands in the data directory.
    env.deliver(&mailbox, "After start").await;
    let events_path = layout.data.join("inbound.ndjson");
    let delivered = eventually(LIMIT, || async { read_events(&events_path).len() >= 2 }).await;
    let subjects: BTreeSet<String> = read_events(&events_path).into_iter().map(|e| e.subject).collect();
    assert!(delivered, "2 events expected, got {subjects:?}; log:\n{}", daemon.log());
    assert_eq!(subjects, BTreeSet::from(["After start".into(), "Before start".into()]));

    // The API token came from the environment too.
    let views = http
        .get(format!("http://{addr}/v1/mailboxes"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        views.status().as_u16(),
        200,
        "/v1/mailboxes with the token from the environment"
    );

    // The container HEALTHCHECK: 0 against the daemon, non-zero against a closed port.
    assert!(
        layout.healthcheck(&format!("http://{addr}")).success(),
        "healthcheck against the daemon"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(
        !layout.healthcheck(&format!("http://{closed}")).success(),
        "healthcheck against {closed}"
    );

    let metrics = http.get(format!("http://{addr}/metrics")).send().await.unwrap();
    monitoring_queries_only_exported_metrics(&metrics.text().await.unwrap());

    // SIGTERM, as `docker stop` and Kubernetes send it: a clean exit.
    daemon.sigterm();
    let exit = daemon.wait_exit(LIMIT);
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit after SIGTERM: {exit:?}; log:\n{}",
        daemon.log()
    );

    // Nothing outside the data directory changed; the store and the events are inside it.
    assert_eq!(
        layout.snapshot_outside_data(),
        before,
        "the daemon wrote outside its data directory"
    );
    for file in ["inboxd.db", "inbound.ndjson"] {
        let meta = std::fs::metadata(layout.data.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        if layout.as_root {
            assert_eq!(meta.uid(), IMAGE_UID, "{file} was written by the image's user");
        }
    }
}

/// The scratch directory laid out like the image: `etc/` (config, read-only), `bin/inboxd`
/// (read-only), `work/` (the read-only working directory) and `data/` (the only writable place,
/// owned by [`IMAGE_UID`] when running as root). Restores write permissions on drop so the
/// temp dir can be removed.
struct Layout {
    /// The temp dir of the [`Env`].
    root: PathBuf,
    /// Writable data directory (the image's /var/lib/inboxd).
    data: PathBuf,
    /// Read-only working directory.
    work: PathBuf,
    /// Read-only config directory (the image's /etc/inboxd).
    etc: PathBuf,
    /// A copy of the binary (the image's /usr/local/bin/inboxd).
    bin: PathBuf,
    /// Whether the test runs as root, and so drops to [`IMAGE_UID`] with setpriv.
    as_root: bool,
}

impl Layout {
    fn new(env: &Env) -> Layout {
        let root = env.dir.path().to_path_buf();
        let as_root = std::fs::metadata(&root).unwrap().uid() == 0;
        let layout = Layout {
            data: root.join("data"),
            work: root.join("work"),
            etc: root.join("etc"),
            bin: root.join("bin"),
            root,
            as_root,
        };
        for dir in [&layout.data, &layout.work, &layout.etc, &layout.bin] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::copy(env!("CARGO_BIN_EXE_inboxd"), layout.bin.join("inboxd")).unwrap();
        // The image's user must reach data/ and the binary, but may write nowhere else.
        chmod(&layout.root, 0o755);
        chmod(&layout.bin.join("inboxd"), 0o555);
        chmod(&layout.bin, 0o555);
        chmod(&layout.work, 0o555);
        chmod(&layout.data, 0o700);
        if as_root {
            std::os::unix::fs::chown(&layout.data, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
        }
        layout
    }

    /// Writes the config as a read-only file in a read-only directory; returns its path.
    fn seal(&self, toml: &str) -> PathBuf {
        let path = self.etc.join("inboxd.toml");
        std::fs::write(&path, toml).unwrap();
        chmod(&path, 0o444);
        chmod(&self.etc, 0o555);
        path
    }

    /// The command line, as the image's user when running as root, with a clean environment
    /// holding only the secrets, in the read-only working directory.
    fn command(&self, args: &[&str]) -> Command {
        let bin = self.bin.join("inboxd");
        let mut cmd = if self.as_root {
            let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("setpriv (util-linux) is installed");
            let mut cmd = Command::new(setpriv);
            cmd.arg(format!("--reuid={IMAGE_UID}"))
                .arg(format!("--regid={IMAGE_UID}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(bin);
            cmd
        } else {
            Command::new(bin)
        };
        cmd.args(args)
            .env_clear()
            .env(SECRET_ENV, SECRET)
            .env(API_TOKEN_ENV, API_TOKEN)
            .current_dir(&self.work)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `inboxd run` on `config`; returns once it printed `listening on`.
    fn spawn_daemon(&self, config: &Path) -> Daemon {
        let log = self.root.join("inboxd.log");
        let mut child = self
            .command(&["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("inboxd starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads stdout to the end so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The address is filled in once printed; until then the guard only kills on failure.
        let mut daemon = Daemon {
            child,
            addr: ([127, 0, 0, 1], 0).into(),
            log,
        };
        let deadline = Instant::now() + LIMIT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on http://") {
                        break addr.trim().parse().expect("printed address parses");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.wait_exit(Duration::from_secs(5));
                    panic!("inboxd exited at start ({status:?}); log:\n{}", daemon.log());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            assert!(
                Instant::now() < deadline,
                "no 'listening on' within {LIMIT:?}; log:\n{}",
                daemon.log()
            );
        };
        daemon.addr = addr;
        daemon
    }

    /// `inboxd healthcheck --url URL`, as the image's HEALTHCHECK runs it.
    fn healthcheck(&self, url: &str) -> ExitStatus {
        let mut child = self
            .command(&["healthcheck", "--url", url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("inboxd healthcheck starts");
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("inboxd healthcheck --url {url} still running after {LIMIT:?}");
            }
            #[allow(clippy::disallowed_methods, reason = "a synchronous test polling a child process")]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every path under the temp dir except `data/`, with its size and modification time.
    fn snapshot_outside_data(&self) -> BTreeMap<PathBuf, (u64, SystemTime)> {
        let mut seen = BTreeMap::new();
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                // data/ is the daemon's; inboxd.log is the test's own capture of its stderr.
                if path == self.data || path == self.root.join("inboxd.log") {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    pending.push(path.clone());
                }
                seen.insert(path, (meta.len(), meta.modified().unwrap()));
            }
        }
        seen
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        for dir in [&self.etc, &self.work, &self.bin, &self.data] {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `inboxd run` as a child process; killed if dropped while running.
struct Daemon {
    /// The process (setpriv execs the binary, so this is the daemon itself).
    child: Child,
    /// The API address it printed.
    addr: std::net::SocketAddr,
    /// Its stderr.
    log: PathBuf,
}

impl Daemon {
    /// The real uid of the running process, from /proc.
    fn uid(&self) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Sends SIGTERM (through `kill -TERM`).
    fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.child.id());
    }

    /// Waits (bounded, polling) for the process to exit; `None` if it is still running.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            #[allow(clippy::disallowed_methods, reason = "a synchronous test polling a child process")]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every `inboxd_…` metric that deploy/monitoring/ queries appears in the daemon's /metrics
/// (after it delivered mail, so histograms and labelled counters have samples; families
/// without a sample yet still have their HELP line): a renamed metric would otherwise
/// silence an alert.
fn monitoring_queries_only_exported_metrics(exposition: &str) {
    let exported = metric_names(exposition);
    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    for file in ["prometheusrule.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(monitoring.join(file)).unwrap();
        let queried = metric_names(&text);
        assert!(!queried.is_empty(), "{file} queries no inboxd_ metric");
        let missing: Vec<&String> = queried.iter().filter(|m| !exported.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics inboxd does not export: {missing:?}"
        );
    }
}

/// The distinct `inboxd_[a-z0-9_]+` words of a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("inboxd_") && w.len() > "inboxd_".len())
        .map(str::to_string)
        .collect()
}
