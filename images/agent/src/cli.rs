//! The agent's command line, shared by the `polygraph-agent` binary and `polygraph agent`.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::wire::{Listen, ProbeRequest};

#[derive(Debug, Parser)]
#[command(name = "polygraph-agent", version, about = "polygraph's probe agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Listen on the given ports and answer with IDENTITY; prints one JSON "ready" line first.
    Serve {
        /// Who this pod is, `namespace/pod`.
        #[arg(long)]
        identity: String,
        /// PORT/PROTOCOL to listen on, e.g. 80/TCP,81/UDP,80/SCTP. Repeatable.
        #[arg(long, value_delimiter = ',', required = true)]
        listen: Vec<Listen>,
        /// Also write the ready line to this file once every listener is bound (for `ready`).
        #[arg(long)]
        ready_file: Option<std::path::PathBuf>,
    },
    /// Exit 0 when `serve` has written its ready file: a readiness check that needs no network, so
    /// the very policies under test can't fail it.
    Ready {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Read {"timeout_ms":…, "targets":[{"host","port","protocol"}…]} on stdin; print one JSON
    /// result per target.
    Probe {
        /// Overrides the request's timeout, e.g. 1s or 500ms.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Serve a whole run's requests for this pod: probe batches, and held connections opened,
    /// checked and released, one JSON request per stdin line and one reply per request, by id.
    /// Ends at EOF, or after IDLE_EXIT without a request.
    Session {
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        idle_exit: Duration,
    },
    /// Serve DNS for the local cluster (UDP and TCP 53): the zone DOMAIN, with the names read as
    /// JSON lines on stdin; prints one JSON "ready" line first. Not for pods of a real cluster.
    #[command(hide = true)]
    Dns {
        #[arg(long)]
        identity: String,
        #[arg(long, default_value = "cluster.local")]
        domain: String,
    },
}

/// Runs the agent with `args` (the first is the program name).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // A batch on a lossy network holds up to `MAX_ATTEMPTS` sockets per silent target for a
    // deadline; the usual soft limit of 1024 descriptors is below that for large matrices. The hard
    // limit is ours to use, and where it cannot be raised probes still run (an attempt that finds
    // no socket is no answer, never a verdict).
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polygraph-agent: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                identity,
                listen,
                ready_file,
            } => serve(&identity, &listen, ready_file.as_deref()).await,
            Command::Ready { file } => {
                if file.is_file() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "polygraph-agent: not ready ({} does not exist)",
                        file.display()
                    );
                    ExitCode::from(1)
                }
            }
            Command::Probe { timeout } => probe(timeout).await,
            Command::Dns { identity, domain } => dns(&identity, &domain).await,
            Command::Session { idle_exit } => {
                let ended =
                    crate::session::run(tokio::io::stdin(), tokio::io::stdout(), idle_exit).await;
                match ended {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("polygraph-agent: session: {e}");
                        ExitCode::from(2)
                    }
                }
            }
        }
    });
    // A probe that timed out may leave a blocking resolver or SCTP connect behind: don't wait for it.
    runtime.shutdown_background();
    code
}

async fn serve(
    identity: &str,
    listen: &[Listen],
    ready_file: Option<&std::path::Path>,
) -> ExitCode {
    let (ready, serving) = match crate::serve::bind(identity, listen).await {
        Ok(bound) => bound,
        Err(e) => {
            eprintln!("polygraph-agent: {e}");
            return ExitCode::from(1);
        }
    };
    let line = serde_json::to_string(&ready).unwrap_or_default();
    if let Some(path) = ready_file {
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, format!("{line}\n")));
        if let Err(e) = written {
            eprintln!("polygraph-agent: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}")
        .and_then(|_| stdout.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(stdout);
    let mut terminate = match sigterm() {
        Ok(s) => s,
        Err(code) => return code,
    };
    tokio::select! {
        _ = serving => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}

/// SIGTERM, which ends a serving agent (the kubelet's, or the local backend's, way to stop a pod).
fn sigterm() -> Result<tokio::signal::unix::Signal, ExitCode> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| {
        eprintln!("polygraph-agent: cannot watch SIGTERM: {e}");
        ExitCode::from(1)
    })
}

async fn dns(identity: &str, domain: &str) -> ExitCode {
    let server = match crate::dns::DnsServer::bind(identity, domain, crate::dns::DNS_PORT).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("polygraph-agent: dns: {e}");
            return ExitCode::from(1);
        }
    };
    let line = serde_json::to_string(&server.ready).unwrap_or_default();
    println!("{line}");
    let input = tokio::io::BufReader::new(tokio::io::stdin());
    let mut terminate = match sigterm() {
        Ok(s) => s,
        Err(code) => return code,
    };
    tokio::select! {
        served = server.serve(input) => match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("polygraph-agent: dns: {e}");
                ExitCode::from(1)
            }
        },
        _ = terminate.recv() => ExitCode::SUCCESS,
    }
}

async fn probe(timeout: Option<Duration>) -> ExitCode {
    // The first JSON value on stdin, without waiting for EOF: over `kubectl exec` with the v4
    // protocol (clusters before 1.30) stdin cannot be closed.
    let stdin = std::io::stdin().lock();
    let first = serde_json::Deserializer::from_reader(stdin)
        .into_iter::<ProbeRequest>()
        .next();
    let mut request: ProbeRequest = match first {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            eprintln!("polygraph-agent: bad probe request: {e}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("polygraph-agent: no probe request on stdin");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = timeout {
        request.timeout_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
    }
    let results = crate::probe::run(&request).await;
    let mut stdout = std::io::stdout().lock();
    for result in results {
        let line = serde_json::to_string(&result).unwrap_or_default();
        if writeln!(stdout, "{line}").is_err() {
            return ExitCode::from(1);
        }
    }
    let _ = stdout.flush();
    ExitCode::SUCCESS
}
