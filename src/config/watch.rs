//! Telling the daemon to reload: SIGHUP, or a change in the config file or in a secret file
//! it names.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the file is compared for changes (Kubernetes swaps ConfigMaps through a symlink).
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// A digest of the config file and of every `file:` secret it refers to: a rotated secret file
/// (a Kubernetes Secret volume swaps it under the pod) reloads like an edited config. Hashed,
/// so no secret is kept around in plain text; None while the config cannot be read.
fn fingerprint(path: &std::path::Path) -> Option<Vec<u8>> {
    let text = std::fs::read(path).ok()?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    digest.update(&text);
    // Quoted TOML strings alternate with the text between them; a reference is a whole string.
    for reference in String::from_utf8_lossy(&text)
        .split('"')
        .filter_map(|s| s.strip_prefix("file:"))
    {
        digest.update(reference.as_bytes());
        digest.update(&std::fs::read(base.join(reference.trim())).unwrap_or_default());
    }
    Some(digest.finish().as_ref().to_vec())
}

/// Signals a reload on SIGHUP and when the file's content, or a secret file's, changes.
pub async fn watch_config(path: PathBuf, reload: mpsc::Sender<()>, cancel: CancellationToken) {
    let read = |p: &PathBuf| fingerprint(p);
    let mut last = read(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(CONFIG_POLL);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hangup => {
                tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration.");
                last = read(&path);
                let _ = reload.try_send(());
            }
            _ = tick.tick() => {
                let now = read(&path);
                if now.is_some() && now != last {
                    tracing::info!(path = %path.display(), "The configuration file or a secret file it names changed: reloading.");
                    last = now;
                    let _ = reload.try_send(());
                }
            }
        }
    }
}
