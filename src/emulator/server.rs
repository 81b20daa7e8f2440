//! Binding, serving (plain or TLS) and stopping the emulator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::{any, put};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::middleware::{self, ResetConnection};
use super::{Emulator, EmulatorOptions, Shared, control, graph, identity, load, tls};

/// Largest request body accepted (axum's default of 2 MiB is below Graph's 4 MB chunks).
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// A running emulator; dropping it does not stop it, `stop` does.
pub struct RunningEmulator {
    url: String,
    cert_pem: Option<String>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningEmulator {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The self-signed certificate (PEM) when serving HTTPS.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Stops accepting, lets open connections finish their current request, and waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The whole HTTP surface.
fn router(emu: Shared) -> Router {
    Router::new()
        .merge(control::routes())
        .merge(graph::subscription_routes())
        .merge(identity::routes())
        .route("/v1.0/{*rest}", any(graph::entry))
        .route("/_upload/{token}", put(graph::upload_chunk))
        .layer(axum::middleware::from_fn_with_state(emu.clone(), middleware::around))
        // Upload chunks are just under 4 MB and sendMail bodies carry base64 attachments.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(emu)
}

/// Binds `addr`, seeds the scenario, and serves until `stop`.
pub async fn spawn(addr: SocketAddr, options: EmulatorOptions) -> std::io::Result<RunningEmulator> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let tls = if options.tls {
        Some(tls::self_signed().map_err(std::io::Error::other)?)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}");
    let emu: Shared = Arc::new(Emulator::new());
    let _ = emu.base_url.set(url.clone());
    if let Some(path) = &options.scenario {
        load::apply_scenario(&emu, path).map_err(std::io::Error::other)?;
    }
    let shutdown = CancellationToken::new();
    let cert_pem = tls.as_ref().map(|t| t.cert_pem.clone());
    let acceptor = tls.map(|t| t.acceptor);
    graph::spawn_dispatcher(emu.clone(), shutdown.clone());
    let app = router(emu);
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let acceptor = acceptor.clone();
            let stop = stop.clone();
            connections.spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls_stream) = acceptor.accept(stream).await {
                            serve_connection(tls_stream, app, stop).await;
                        }
                    }
                    None => serve_connection(stream, app, stop).await,
                }
            });
        }
        connections.close();
        connections.wait().await;
    });
    Ok(RunningEmulator {
        url,
        cert_pem,
        shutdown,
        task,
    })
}

/// Serves one connection; a response marked `ResetConnection` drops it unanswered.
async fn serve_connection<S>(stream: S, app: Router, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        async move {
            let resp = app
                .oneshot(req.map(Body::new))
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            if resp.extensions().get::<ResetConnection>().is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected connection reset",
                ));
            }
            Ok::<_, std::io::Error>(resp)
        }
    });
    let builder = hyper::server::conn::http1::Builder::new();
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// `inboxd emulate`: prints `listening on URL` first, runs until SIGINT/SIGTERM.
pub async fn run_cli(listen: SocketAddr, options: EmulatorOptions, cert_out: Option<PathBuf>) -> anyhow::Result<()> {
    let stop = crate::shutdown_signal();
    let running = spawn(listen, options).await?;
    if let (Some(path), Some(pem)) = (&cert_out, running.cert_pem()) {
        std::fs::write(path, pem).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    println!("listening on {}", running.url());
    tracing::info!(url = %running.url(), "Emulator listening.");
    stop.await;
    tracing::info!("Emulator stopping.");
    running.stop().await;
    Ok(())
}
