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
    session_many(
        vec![start],
        async |backends: &mut [AnyBackend]| match backends.first_mut() {
            Some(backend) => work(backend).await,
            None => Err(CliError::Usage("no backend started".into())),
        },
    )
}

/// Runs `work` on the backends `starts` give (started one after the other; if one fails, those
/// already started are cleaned up), then cleans every one up, also after an error or a signal.
pub fn session_many<T, S>(
    starts: Vec<S>,
    work: impl AsyncFnOnce(&mut [AnyBackend]) -> Result<T, CliError>,
) -> Result<Finished<T>, CliError>
where
    S: Future<Output = Result<AnyBackend, CliError>>,
{
    runtime()?.block_on(async {
        let mut backends = Vec::with_capacity(starts.len());
        for start in starts {
            match start.await {
                Ok(backend) => backends.push(backend),
                Err(e) => {
                    for backend in &mut backends {
                        let _ = backend.cleanup().await;
                    }
                    return Err(e);
                }
            }
        }
        let cleanup = backends
            .iter()
            .map(|b| b.cleanup_message())
            .collect::<Vec<_>>()
            .join("; ");
        let transcript = backends.first().and_then(|b| b.transcript());
        let outcome = tokio::select! {
            result = work(&mut backends) => result,
            signal = shutdown_signal() => Err(CliError::Interrupted { signal, cleanup }),
        };
        // Every backend is cleaned up; the first failure to do so is the one reported.
        let mut cleaned = Ok(());
        for backend in &mut backends {
            if let Err(e) = backend.cleanup().await {
                cleaned = cleaned.and(Err(e));
            }
        }
        cleaned?;
        outcome.map(|value| Finished { value, transcript })
    })
}
