//! The Microsoft identity platform v2.0 + Graph v1.0 mail emulator (`inboxd emulate`).
//!
//! A second, independent reading of Microsoft's documents: nothing here is shared
//! with the client modules, so the two catch each other's mistakes.

mod clock;
mod control;
mod der;
mod faults;
mod graph;
mod identity;
mod keys;
mod limits;
mod load;
mod log;
mod message;
mod middleware;
mod model;
mod seed;
mod server;
mod settings;
mod tls;
mod transport;
mod util;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub use server::{RunningEmulator, run_cli, spawn};

/// How to start the emulator.
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1, ::1 and localhost.
    pub tls: bool,
    /// JSON scenario to seed at start (apps, mailboxes, messages, settings, load).
    pub scenario: Option<PathBuf>,
}

/// Shared state behind every handler.
pub(crate) struct Emulator {
    /// Tenants, apps, mailboxes, grants: one lock, held briefly, never across I/O.
    world: Mutex<model::World>,
    /// Signs access tokens; its public half is the JWKS.
    keys: keys::SigningKeys,
    /// Real time plus a test-controlled offset.
    clock: clock::Clock,
    /// Every request received (outside `/_emulator`).
    log: log::RequestLog,
    /// Injected failures.
    faults: faults::Faults,
    /// Per app + mailbox throttling.
    limits: Arc<limits::Limits>,
    /// `http(s)://host:port` once bound; links and upload URLs use it.
    base_url: OnceLock<String>,
}

/// Cheap handle passed to handlers.
pub(crate) type Shared = Arc<Emulator>;

impl Emulator {
    fn new() -> Self {
        Emulator {
            world: Mutex::new(model::World::default()),
            keys: keys::SigningKeys::generate(),
            clock: clock::Clock::default(),
            log: log::RequestLog::default(),
            faults: faults::Faults::default(),
            limits: Arc::default(),
            base_url: OnceLock::new(),
        }
    }

    /// Locks the world; a poisoned lock (a panicking handler) is recovered, not fatal.
    /// Whatever mail transport has due by now is moved first, so every reader sees it.
    fn world(&self) -> MutexGuard<'_, model::World> {
        let mut world = self.world.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !world.transport.is_empty() {
            world.run_transport(self.clock.now());
        }
        world
    }

    /// The externally visible base URL.
    fn base(&self) -> &str {
        self.base_url.get().map(String::as_str).unwrap_or("http://127.0.0.1")
    }

    /// Current settings (a copy).
    fn settings(&self) -> settings::Settings {
        self.world().settings.clone()
    }
}
