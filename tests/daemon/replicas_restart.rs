//! PostgreSQL itself restarted under three replicas: a private server (Debian's `initdb` and
//! `pg_ctl`, run as the `postgres` user, on a port and in a directory of its own) is stopped
//! mid-ingest and started again. While it is down no replica polls a mailbox once its leases
//! can no longer be confirmed; once it is back they carry on by themselves, nothing lost.
//! The test fails, naming the step, when the private server cannot be set up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::replicas::{
    LIMIT, POLL, REPLICAS, Schema, Setup, TTL, check_nothing_lost, delta_polls, feed, replica_id, seeded, settle,
    spread,
};

/// How long the server stays down: several lease TTLs, so every lease lapses meanwhile.
const OUTAGE: Duration = Duration::from_secs(10);

/// A PostgreSQL server of this test's own, stopped (immediately) when dropped.
struct PrivateServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Holds the directory; removed last.
    _dir: tempfile::TempDir,
}

/// Runs `bin/tool args…` as the `postgres` user (initdb refuses root); panics with its output.
fn as_postgres(bin: &Path, tool: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("a private PostgreSQL is required: running runuser for {tool} failed: {e}"));
    assert!(
        out.status.success(),
        "a private PostgreSQL is required: {tool} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivateServer {
    /// `initdb` (trust auth) in a fresh directory owned by `postgres`, then started on a free port.
    fn start() -> PrivateServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
            .max()
            .expect("a private PostgreSQL is required: no initdb and pg_ctl under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("a temp dir");
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .expect("chown runs");
        assert!(
            chown.success(),
            "a private PostgreSQL is required: chown of its directory to postgres failed"
        );
        let data = dir.path().join("data");
        let data_arg = data.to_string_lossy().to_string();
        as_postgres(
            &bin,
            "initdb",
            &["-D", &data_arg, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        // A free port now; nothing else on this machine takes it between here and the start.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = PrivateServer {
            bin,
            data,
            port,
            _dir: dir,
        };
        server.pg_ctl_start();
        server
    }

    fn pg_ctl_start(&self) {
        let data = self.data.to_string_lossy().to_string();
        let log = self.data.join("server.log").to_string_lossy().to_string();
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {data} -c fsync=off", self.port);
        as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"],
        );
    }

    /// `pg_ctl stop -m fast`: clients are disconnected, the server shuts down cleanly.
    fn stop(&self) {
        let data = self.data.to_string_lossy().to_string();
        as_postgres(&self.bin, "pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_stop_polling_while_postgres_is_down_and_recover_when_it_is_back() {
    let server = PrivateServer::start();
    let addresses: Vec<String> = (0..6).map(|n| format!("pg{n}@load.example.com")).collect();
    let setup = Setup::on(&addresses, Schema::create_on(&server.url()).await).await;
    setup.env.load("pg", addresses.len(), 40).await;
    setup
        .env
        .control("/_emulator/settings", json!({"latency_ms": 50}))
        .await;
    let backlog = seeded(&setup.env, &addresses).await.len();
    // Mail keeps arriving until the replicas are back: the stop lands mid-ingest.
    let (stop_feeding, feeding) = tokio::sync::watch::channel(false);
    let feeder = tokio::spawn(feed(setup.env.url.clone(), addresses.clone(), feeding));
    let mut replicas = setup.start_all().await;
    let ids: Vec<String> = (0..REPLICAS).map(replica_id).collect();

    let reached = crate::support::eventually(LIMIT, || async { setup.delivered().len() >= backlog }).await;
    assert!(reached, "the backlog was not delivered");
    server.stop();
    let stopped_at = OffsetDateTime::now_utc();
    let at_stop = setup.delivered().len();
    println!("PostgreSQL stopped (pg_ctl stop -m fast) with {at_stop} messages delivered, mail still arriving");

    // Down for several lease TTLs. A lease that cannot be confirmed is dropped before it could
    // expire, so from one TTL after the stop on, nobody polls (and nothing new is delivered).
    tokio::time::sleep(OUTAGE).await;
    let quiet_from = stopped_at + time::Duration::try_from(TTL + Duration::from_secs(1)).unwrap();
    let polls = delta_polls(&setup.env).await;
    let during: Vec<_> = polls.iter().filter(|(at, _, _)| *at > stopped_at).collect();
    let late: Vec<_> = during.iter().filter(|(at, _, _)| *at > quiet_from).collect();
    let in_outage = setup.delivered().len();
    for (i, r) in replicas.iter_mut().enumerate() {
        assert!(
            r.wait_exit(Duration::ZERO).await.is_none(),
            "replica {i} exited while PostgreSQL was down:\n{}",
            r.stderr()
        );
    }
    println!(
        "while down ({}s): {} delta polls in all, {} of them later than the lease TTL ({}s) + 1s after the stop; {} delivered by then",
        OUTAGE.as_secs(),
        during.len(),
        late.len(),
        TTL.as_secs(),
        in_outage
    );
    assert!(
        late.is_empty(),
        "replicas kept polling mailboxes whose leases they could not confirm: {late:?}"
    );

    server.pg_ctl_start();
    let restarted_at = OffsetDateTime::now_utc();
    let (settled, last) = settle(&replicas[0], &ids, addresses.len()).await;
    let _ = stop_feeding.send(true);
    let fed = feeder.await.expect("the feeder ran");
    let expected = seeded(&setup.env, &addresses).await;
    assert_eq!(expected.len(), backlog + fed);
    let all = crate::support::eventually(LIMIT, || async { setup.delivered().len() == expected.len() }).await;
    assert!(
        all,
        "only {} of {} delivered after the restart",
        setup.delivered().len(),
        expected.len()
    );
    let duplicates = check_nothing_lost(&setup, &expected);
    let resumed = delta_polls(&setup.env)
        .await
        .into_iter()
        .filter(|(at, _, _)| *at > restarted_at)
        .map(|(at, _, _)| at)
        .min();
    println!(
        "PostgreSQL started again: first delta poll {:?}s later; all {} delivered, {duplicates} duplicates (same dedup_key); spread {:?} (poll interval {}s)",
        resumed.map(|at| (at - restarted_at).as_seconds_f64()),
        expected.len(),
        spread(&last),
        POLL.as_secs()
    );
    assert!(settled, "the replicas did not share the mailboxes again: {last:?}");
    for (i, r) in replicas.iter_mut().enumerate() {
        assert!(r.wait_exit(Duration::ZERO).await.is_none(), "replica {i} exited");
        let ready = r.get("/readyz").await.map(|(s, _)| s).unwrap_or(0);
        assert_eq!(ready, 200, "replica {i} not ready after the restart");
    }
}
