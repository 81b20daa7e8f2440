//! The emulator and the daemon as separate processes of the bench binary, each behind a
//! guard that kills it on every exit path, plus the emulator's control API.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Tenant, app and secret of every bench run (the emulator's load generator registers the app).
pub const TENANT: &str = "bench-tenant";
/// Client id of the bench app.
pub const CLIENT_ID: &str = "bench-app";
/// Its secret, handed to the daemon through [`SECRET_ENV`], never written to the config.
pub const SECRET: &str = "bench-secret";
/// Environment variable the generated config points at for the client secret.
pub const SECRET_ENV: &str = "INBOXD_BENCH_CLIENT_SECRET";
/// A command line the daemon runs under, e.g. `heaptrack -o /tmp/daemon` (profiling only).
const PROFILER_ENV: &str = "INBOXD_BENCH_PROFILER";
/// The allocator settings the container image gives the daemon (the Dockerfile's `ENV`), so the
/// bench measures the daemon as it runs there. glibc's defaults keep freed buffers of a few
/// tens of MB resident in per-thread arenas; these return them to the OS.
pub const IMAGE_MALLOC_ENV: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "2"), ("MALLOC_MMAP_THRESHOLD_", "4194304")];
/// CPUs the emulator is confined to (`taskset -c` syntax, e.g. `0`), for runs where Graph must
/// not share the client's CPUs: run the bench itself under `taskset -c 1`, and the daemon and the
/// reference client (which run in the bench's process or inherit its CPUs) get the other one.
pub const EMULATOR_CPUS_ENV: &str = "INBOXD_BENCH_EMULATOR_CPUS";
/// `INBOXD_BENCH_MALLOC=glibc` runs the daemon with glibc's defaults instead (to compare).
const MALLOC_CHOICE_ENV: &str = "INBOXD_BENCH_MALLOC";

/// The daemon's allocator settings: the image's unless [`MALLOC_CHOICE_ENV`] says `glibc`, and
/// their name for the report (`daemon_malloc_env`).
pub fn malloc_env() -> (Vec<(&'static str, &'static str)>, String) {
    if std::env::var(MALLOC_CHOICE_ENV).as_deref() == Ok("glibc") {
        return (Vec::new(), "glibc defaults".into());
    }
    let settings: Vec<String> = IMAGE_MALLOC_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (
        IMAGE_MALLOC_ENV.to_vec(),
        format!("the image's: {}", settings.join(" ")),
    )
}

/// How long a child may take to print its `listening on URL` line (a hang guard: a daemon
/// with 100,000 mailboxes reads a 7 MB configuration first).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A child process that is killed and reaped when dropped.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Process id, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `exe args…` with stderr to `log`, waits for `listening on URL` on stdout and keeps
/// draining stdout afterwards so the child never blocks on a full pipe.
async fn spawn_listening(
    exe: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    log: &Path,
) -> anyhow::Result<(ChildGuard, String)> {
    let stderr = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // For profiling runs only: the daemon under a profiler (its figures are then the profiler's).
    let profiler = std::env::var(PROFILER_ENV)
        .ok()
        .filter(|_| args.first() == Some(&"run"));
    let cpus = std::env::var(EMULATOR_CPUS_ENV)
        .ok()
        .filter(|_| args.first() == Some(&"emulate"));
    let mut cmd = match (profiler.as_deref().map(str::split_whitespace), cpus) {
        (Some(mut words), _) => {
            let mut cmd = Command::new(words.next().unwrap_or_default());
            cmd.args(words).arg(exe);
            cmd
        }
        (None, Some(cpus)) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &cpus]).arg(exe);
            cmd
        }
        (None, None) => Command::new(exe),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let guard = ChildGuard { child };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A profiler may print lines of its own first (heaptrack does).
    let skip = if profiler.is_some() { 16 } else { 0 };
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut first = reader.read_line(&mut line).map(|_| line.trim().to_string());
        for _ in 0..skip {
            if first.as_ref().is_ok_and(|l| !l.starts_with("listening on ")) {
                line.clear();
                first = reader.read_line(&mut line).map(|_| line.trim().to_string());
            }
        }
        let _ = tx.send(first);
        let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
    });
    let first = match tokio::time::timeout(START_TIMEOUT, rx).await {
        Ok(Ok(Ok(line))) => line,
        _ => bail!(
            "{} {} did not print 'listening on URL' (see {})",
            exe.display(),
            args.join(" "),
            log.display()
        ),
    };
    let Some(url) = first.strip_prefix("listening on ") else {
        bail!(
            "unexpected first line {first:?} from {} (see {})",
            args.join(" "),
            log.display()
        );
    };
    Ok((guard, url.trim_end_matches('/').to_string()))
}

/// A running emulator and a client for its control API.
pub struct Emulator {
    /// Keeps the process alive; kills it on drop.
    process: ChildGuard,
    /// Its base URL (authority host and Graph URL at once).
    pub url: String,
    http: reqwest::Client,
}

impl Emulator {
    /// The CPUs its process may run on (see [`EMULATOR_CPUS_ENV`]).
    pub fn cpus(&self) -> Option<String> {
        super::measure::cpus_allowed(self.process.pid())
    }

    /// Starts `inboxd emulate --listen 127.0.0.1:0`, logging at WARN (the rig, not the subject).
    pub async fn start(exe: &Path, dir: &Path, name: &str) -> anyhow::Result<Emulator> {
        let log = dir.join(format!("{name}.log"));
        let (process, url) = spawn_listening(
            exe,
            &["emulate", "--listen", "127.0.0.1:0"],
            &[("RUST_LOG", "warn")],
            &log,
        )
        .await?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
        Ok(Emulator { process, url, http })
    }

    /// POSTs to the control API and returns the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self.http.post(format!("{}{path}", self.url)).json(body).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("emulator {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Runs the load generator once.
    pub async fn load(&self, spec: &Value) -> anyhow::Result<Value> {
        let mut body = json!({"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": SECRET});
        if let (Some(b), Some(s)) = (body.as_object_mut(), spec.as_object()) {
            b.extend(s.clone());
        }
        self.post("/_emulator/load", &body).await
    }

    /// Every logged request after `since`, in sequence order.
    pub async fn requests(&self, since: u64) -> anyhow::Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/_emulator/requests?since={since}", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v.get("requests").and_then(Value::as_array).cloned().unwrap_or_default())
    }
}

/// How the daemon under test is configured.
pub struct DaemonSpec<'a> {
    /// Mailbox addresses.
    pub mailboxes: &'a [String],
    /// `poll_interval` in seconds.
    pub poll_secs: u64,
    /// `start_at`: `"all"` for mail seeded before start, `"now"` otherwise.
    pub start_at: &'a str,
    /// `notifications.safety_poll_interval` in seconds; `None`: notifications off.
    pub safety_poll_secs: Option<u64>,
    /// The `[sink]` keys; `None` is the file sink the event watch reads.
    pub sink: Option<&'a str>,
}

/// The daemon under test.
pub struct Daemon {
    /// Keeps the process alive; kills it on drop.
    pub process: ChildGuard,
    /// Its API base URL.
    pub url: String,
    /// The file sink.
    pub events: PathBuf,
    /// One client for every scrape of its metrics (a backlog's are 50 a second).
    http: reqwest::Client,
}

impl Daemon {
    /// Writes a config into `dir` and starts `inboxd run --config` against `emulator`.
    pub async fn start(exe: &Path, dir: &Path, emulator: &str, spec: &DaemonSpec<'_>) -> anyhow::Result<Daemon> {
        let (env, _) = malloc_env();
        Daemon::launch(exe, dir, "daemon", &Daemon::config(dir, emulator, spec), &env).await
    }

    /// The generated config of `spec` (a scenario may add keys before launching it).
    pub fn config(dir: &Path, emulator: &str, spec: &DaemonSpec<'_>) -> String {
        let events = dir.join("events.ndjson");
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\n[store]\nurl = \"sqlite://{db}\"\n\n\
             [microsoft]\nauthority_host = \"{emulator}\"\ngraph_url = \"{emulator}\"\n\n\
             [sink]\n{sink}\n\n\
             [defaults]\npoll_interval = \"{poll}s\"\nfolders = [\"inbox\"]\nafter_ingest = \"none\"\nstart_at = \"{start}\"\n\n\
             [[apps]]\nname = \"bench\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"env:{SECRET_ENV}\"\n",
            db = dir.join("inboxd.db").display(),
            sink = spec.sink.map_or_else(
                || format!("type = \"file\"\npath = \"{}\"", events.display()),
                str::to_string
            ),
            poll = spec.poll_secs,
            start = spec.start_at,
        );
        if let Some(safety) = spec.safety_poll_secs {
            toml = toml.replacen("[store]\n", "[store]\nencryption_key = \"dev:bench-store-key\"\n", 1);
            toml.push_str(&format!(
                "\n[notifications]\nenabled = true\nsafety_poll_interval = \"{safety}s\"\nrate_limit = 5000\n"
            ));
        }
        for address in spec.mailboxes {
            toml.push_str(&format!("\n[[mailboxes]]\naddress = \"{address}\"\napp = \"bench\"\n"));
        }
        toml
    }

    /// Writes `toml` into `dir` and starts `inboxd run --config` with the bench app's secret
    /// and `envs` in its environment; its log goes to `{name}.log`.
    pub async fn launch(
        exe: &Path,
        dir: &Path,
        name: &str,
        toml: &str,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Daemon> {
        let config = dir.join("inboxd.toml");
        std::fs::write(&config, toml)?;
        let config_arg = config.to_string_lossy().to_string();
        let mut all = vec![(SECRET_ENV, SECRET)];
        all.extend_from_slice(envs);
        let (process, url) = spawn_listening(
            exe,
            &["run", "--config", &config_arg],
            &all,
            &dir.join(format!("{name}.log")),
        )
        .await?;
        Ok(Daemon {
            process,
            url,
            events: dir.join("events.ndjson"),
            http: reqwest::Client::new(),
        })
    }

    /// The daemon's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?)
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct WorkDir {
    /// Its path.
    pub path: PathBuf,
}

impl WorkDir {
    /// Creates `inboxd-bench-<uuid>` under `std::env::temp_dir()`.
    pub fn new() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("inboxd-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("INBOXD_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
