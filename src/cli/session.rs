//! One session lifecycle for every command that uses a backend (run, probe, smoke, bench probe):
//! start the backend, race the work against SIGINT/SIGTERM/SIGHUP, and clean up whatever happened,
//! with the interrupt message in the backend's own words.

use polygraph::backend::kube::dry_run::Transcript;
use polygraph::backend::{AnyBackend, Backend};

use super::{CliError, runtime};

/// Resolves when the process is asked to stop; names the signal.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// What a session produced, and the dry run's transcript when it was one.
pub struct Finished<T> {
    pub value: T,
    pub transcript: Option<Transcript>,
}

/// Runs `work` on the backend `start` gives, then cleans up, also after an error or a signal.
pub fn session<T>(
    start: impl Future<Output = Result<AnyBackend, CliError>>,
    work: impl AsyncFnOnce(&mut AnyBackend) -> Result<T, CliError>,
) -> Result<Finished<T>, CliError> {
    runtime()?.block_on(async {
        let mut backend = start.await?;
        let cleanup = backend.cleanup_message();
        let transcript = backend.transcript();
        let outcome = tokio::select! {
            result = work(&mut backend) => result,
            signal = shutdown_signal() => Err(CliError::Interrupted { signal, cleanup }),
        };
        backend.cleanup().await?;
        outcome.map(|value| Finished { value, transcript })
    })
}
