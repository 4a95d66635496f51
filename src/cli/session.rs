//! One session lifecycle for every command that uses a backend (run, probe, smoke, bench probe):
//! start the backend, race the work against SIGINT/SIGTERM/SIGHUP, and clean up whatever happened,
//! with the interrupt message in the backend's own words.

use polygraph::backend::kube::dry_run::Transcript;
use polygraph::backend::{AnyBackend, Backend, BackendError};

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
        settle(outcome, cleaned).map(|value| Finished { value, transcript })
    })
}

/// The session's answer from the work's and the clean-up's. Clean-up that gave up after retrying
/// (`BackendError::CleanupIncomplete`) does not take the work's answer away: the caller still
/// writes its reports and exits with its verdict, and what is left, with the command that
/// removes it, is said on stderr. Any other clean-up failure is the answer; a failed work keeps
/// its own error, the clean-up's said beside it.
fn settle<T>(
    outcome: Result<T, CliError>,
    cleaned: Result<(), BackendError>,
) -> Result<T, CliError> {
    match (outcome, cleaned) {
        (Ok(value), Err(e @ BackendError::CleanupIncomplete { .. })) => {
            eprintln!("polygraph: {}", super::error_line(&e));
            Ok(value)
        }
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(work), Err(e)) => {
            eprintln!("polygraph: {}", super::error_line(&e));
            Err(work)
        }
        (outcome, Ok(())) => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gave_up() -> BackendError {
        BackendError::CleanupIncomplete {
            run_id: "abc123".into(),
            after: std::time::Duration::from_secs(120),
            gc: "polygraph gc --backend kube --run abc123".into(),
            source: Box::new(BackendError::Cluster {
                what: "deleting namespace x".into(),
                message: "unreachable".into(),
            }),
        }
    }

    #[test]
    fn a_clean_up_that_gave_up_keeps_the_runs_answer() {
        // The run's verdict and reports survive; only other clean-up failures replace them.
        assert_eq!(settle(Ok(7), Err(gave_up())).ok(), Some(7));
        let other = BackendError::Cluster {
            what: "x".into(),
            message: "y".into(),
        };
        assert!(settle(Ok(7), Err(other)).is_err());
        assert!(matches!(
            settle::<()>(Err(CliError::Usage("work".into())), Err(gave_up())),
            Err(CliError::Usage(m)) if m == "work"
        ));
    }
}
