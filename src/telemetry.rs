//! Logging setup: JSON lines when stdout is not a terminal, human text when it is.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber at `info`; `RUST_LOG` overrides it.
pub fn init() {
    init_with("info");
}

/// Installs the global tracing subscriber at `level` (from the config); `RUST_LOG` overrides it.
pub fn init_with(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Errors only if a subscriber is already set (tests); keeping the first is right.
    if std::io::stderr().is_terminal() {
        let _ = builder.try_init();
    } else {
        let _ = builder.json().flatten_event(true).with_current_span(false).try_init();
    }
    std::panic::set_hook(Box::new(log_panic));
}

/// A panic becomes one ERROR log line (JSON off a terminal) instead of a multi-line trace on
/// stderr; supervised tasks then restart (see `task::supervise`).
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let thread = std::thread::current();
    tracing::error!(
        panic = %crate::task::panic_text(info.payload()),
        location,
        thread = thread.name().unwrap_or("unnamed"),
        "A panic occurred; this is a bug in inboxd. Supervised tasks restart by themselves."
    );
}
