//! Persistent agent sessions: one `session` agent per source pod for the whole run (a child process
//! in the pod's namespace locally, one `kubectl exec` stream on Kubernetes), carrying every probe
//! batch and every hold of held connections from that pod, instead of one process or exec per
//! round. Requests carry ids and run concurrently in the agent (`polygraph_agent::session`).
//!
//! A stream that breaks is never an outcome: the batch it carried is sent again on a fresh
//! session (with fresh UDP source ports: the broken attempt's may sit in conntrack), up to
//! `TRIES` times, and only then is it an error. Held connections live in the agent that opened
//! them, so a broken stream loses them: their check is then an error, never a "cut".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polygraph_agent::wire::{
    ProbeRequest, ProbeResult, SESSION_PROTOCOL, SessionHello, SessionOp, SessionReply,
    SessionRequest, Target,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::BackendError;
use crate::model::PodRef;

/// How many sessions a batch may go through before a broken stream is an error.
const TRIES: usize = 3;
/// How much of the agent's stderr is kept to explain a session that ended.
const STDERR_KEPT: usize = 2048;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<SessionReply>>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One agent session: requests out, replies matched back to them by id.
pub struct Session {
    outgoing: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: AtomicU64,
    /// Why the stream ended, once it has.
    ended: Arc<Mutex<Option<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The process or the exec: dropping it ends the agent.
    _transport: Box<dyn Send + Sync>,
}

/// What a request is, for its errors: `doing` prefixes them, and the reply must hold `expected`
/// results (`noun`).
struct Asked {
    doing: &'static str,
    expected: usize,
    noun: &'static str,
}

/// How a request failed.
#[derive(Debug)]
enum CallError {
    /// The stream ended or broke: the request may be sent again on a new session.
    Broken(String),
    /// No reply within the limit: the agent is stuck or the stream hangs.
    Timeout(Duration),
    /// The agent answered with an error.
    Agent(String),
}

impl Session {
    /// Starts talking to an agent that runs `session`: waits up to `limit` for its hello line.
    /// `stderr`, when there is one, is kept (its last `STDERR_KEPT` bytes) to say why a session
    /// ended. `transport` is kept as long as the session (dropping it must end the agent);
    /// `ended_by`, when given, resolves with a reason once the transport has ended, for a transport
    /// whose stdout may not say so (a Kubernetes exec whose connection broke never closes it).
    pub async fn open(
        from: &PodRef,
        stdout: impl AsyncRead + Send + Unpin + 'static,
        stdin: impl AsyncWrite + Send + Unpin + 'static,
        stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
        transport: impl Send + Sync + 'static,
        ended_by: Option<std::pin::Pin<Box<dyn Future<Output = String> + Send>>>,
        limit: Duration,
    ) -> Result<Session, BackendError> {
        let ended = Arc::new(Mutex::new(None));
        let pending: Pending = Arc::default();
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let mut tasks = Vec::new();
        if let Some(stderr) = stderr {
            tasks.push(tokio::spawn(keep_tail(stderr, stderr_tail.clone())));
        }
        // Watching the transport from the start: a hello that never comes is then known at once.
        let (gone, mut transport_ended) = oneshot::channel::<String>();
        if let Some(ended_by) = ended_by {
            let (ended, pending) = (ended.clone(), pending.clone());
            tasks.push(tokio::spawn(async move {
                let reason = ended_by.await;
                end(&ended, &pending, reason.clone());
                let _ = gone.send(reason);
            }));
        }
        let fail = |message: String| BackendError::Probe {
            pod: from.clone(),
            message,
        };
        let mut lines = BufReader::new(stdout).lines();
        let hello = tokio::time::timeout(limit, async {
            tokio::select! {
                line = lines.next_line() => line,
                // The transport's own reason is in `ended`.
                Ok(_) = &mut transport_ended => Ok(None),
            }
        })
        .await;
        let said = |tail: &Mutex<String>| {
            let tail = lock(tail);
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {}", crate::input::one_line(&tail))
            }
        };
        let hello = match hello {
            Err(_) => {
                abort_all(&tasks);
                return Err(fail(format!(
                    "the agent's session did not start within {}",
                    humantime::format_duration(limit)
                )));
            }
            Ok(Err(e)) => {
                abort_all(&tasks);
                return Err(fail(format!("starting the agent's session: {e}")));
            }
            Ok(Ok(None)) => {
                // Give the stderr reader a moment to take what the agent said as it exited.
                tokio::time::sleep(Duration::from_millis(50)).await;
                abort_all(&tasks);
                let how = lock(&ended)
                    .clone()
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default();
                return Err(fail(format!(
                    "the agent ended before its session started{how}{}",
                    said(&stderr_tail)
                )));
            }
            Ok(Ok(Some(line))) => line,
        };
        match serde_json::from_str::<SessionHello>(&hello) {
            Ok(h) if h.session == SESSION_PROTOCOL => {}
            Ok(h) => {
                abort_all(&tasks);
                return Err(fail(format!(
                    "the agent speaks session protocol {}, this polygraph {SESSION_PROTOCOL}: \
                     use the agent image of this polygraph version",
                    h.session
                )));
            }
            Err(_) => {
                abort_all(&tasks);
                return Err(fail(format!(
                    "the agent did not start a session (an agent image without `session`?): it said {:?}",
                    crate::input::one_line(&hello)
                )));
            }
        }
        let (outgoing, requests) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(read_replies(
            lines,
            pending.clone(),
            ended.clone(),
            stderr_tail.clone(),
        )));
        tasks.push(tokio::spawn(write_requests(
            stdin,
            requests,
            pending.clone(),
            ended.clone(),
        )));
        Ok(Session {
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            ended,
            tasks,
            _transport: Box::new(transport),
        })
    }

    /// A request id not used before on this session.
    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends request `id` and waits up to `limit` for its reply.
    async fn call(
        &self,
        id: u64,
        op: SessionOp,
        limit: Duration,
    ) -> Result<SessionReply, CallError> {
        let (reply_to, reply) = oneshot::channel();
        lock(&self.pending).insert(id, reply_to);
        if let Some(reason) = lock(&self.ended).clone() {
            lock(&self.pending).remove(&id);
            return Err(CallError::Broken(reason));
        }
        let line = serde_json::to_string(&SessionRequest { id, op }).unwrap_or_default();
        if self.outgoing.send(line).is_err() {
            lock(&self.pending).remove(&id);
            return Err(CallError::Broken(self.end_reason()));
        }
        match tokio::time::timeout(limit, reply).await {
            Ok(Ok(reply)) => match reply.error {
                Some(error) => Err(CallError::Agent(error)),
                None => Ok(reply),
            },
            Ok(Err(_)) => Err(CallError::Broken(self.end_reason())),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(CallError::Timeout(limit))
            }
        }
    }

    /// Sends a request whose reply nobody waits for (a release).
    fn tell(&self, op: SessionOp) {
        let id = self.new_id();
        let line = serde_json::to_string(&SessionRequest { id, op }).unwrap_or_default();
        let _ = self.outgoing.send(line);
    }

    fn end_reason(&self) -> String {
        lock(&self.ended)
            .clone()
            .unwrap_or_else(|| "the session's stream closed".into())
    }

    fn is_ended(&self) -> bool {
        lock(&self.ended).is_some()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        abort_all(&self.tasks);
    }
}

fn abort_all(tasks: &[tokio::task::JoinHandle<()>]) {
    for task in tasks {
        task.abort();
    }
}

/// Marks the session ended (the first reason stays) and fails every waiting request.
fn end(ended: &Mutex<Option<String>>, pending: &Pending, reason: String) {
    lock(ended).get_or_insert(reason);
    // Dropping the senders wakes their callers with "broken".
    lock(pending).clear();
}

async fn read_replies(
    mut lines: tokio::io::Lines<BufReader<impl AsyncRead + Unpin>>,
    pending: Pending,
    ended: Arc<Mutex<Option<String>>>,
    stderr_tail: Arc<Mutex<String>>,
) {
    let reason = loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let Ok(reply) = serde_json::from_str::<SessionReply>(&line) else {
                    break format!(
                        "the agent wrote {:?}, not a reply",
                        crate::input::one_line(&line)
                    );
                };
                // A reply nobody waits for any more (a timed-out request, a release) is dropped.
                if let Some(waiting) = lock(&pending).remove(&reply.id) {
                    let _ = waiting.send(reply);
                }
            }
            Ok(None) => {
                // What the agent said as it went, if anything.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let tail = lock(&stderr_tail).clone();
                break if tail.is_empty() {
                    "the agent's session ended".to_string()
                } else {
                    format!(
                        "the agent's session ended: {}",
                        crate::input::one_line(&tail)
                    )
                };
            }
            Err(e) => break format!("reading from the agent's session: {e}"),
        }
    };
    end(&ended, &pending, reason);
}

async fn write_requests(
    mut stdin: impl AsyncWrite + Unpin,
    mut requests: mpsc::UnboundedReceiver<String>,
    pending: Pending,
    ended: Arc<Mutex<Option<String>>>,
) {
    while let Some(mut line) = requests.recv().await {
        line.push('\n');
        let written = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        };
        if let Err(e) = written.await {
            end(
                &ended,
                &pending,
                format!("writing to the agent's session: {e}"),
            );
            return;
        }
    }
}

async fn keep_tail(mut stderr: impl AsyncRead + Unpin, tail: Arc<Mutex<String>>) {
    let mut chunk = [0u8; 1024];
    while let Ok(n) = stderr.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        let mut tail = lock(&tail);
        tail.push_str(&String::from_utf8_lossy(&chunk[..n]));
        if tail.len() > STDERR_KEPT {
            let cut = tail.len() - STDERR_KEPT;
            let cut = (cut..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(tail.len());
            tail.drain(..cut);
        }
    }
}

/// The sessions of a backend, one per source pod, opened on first use and reopened when their
/// stream breaks.
#[derive(Default)]
pub struct Sessions {
    by_pod: Mutex<HashMap<PodRef, Arc<Session>>>,
    /// Sessions given up on because their stream broke or their agent stopped answering.
    broken: AtomicU64,
}

impl Sessions {
    /// One probe batch from `from` on its session: `request` builds the batch for each try (each
    /// try takes fresh UDP source ports), `connect` opens a session when the pod has none. The
    /// reply must hold `targets` results.
    pub async fn probe<F>(
        &self,
        from: &PodRef,
        connect: impl Fn() -> F,
        request: impl Fn() -> ProbeRequest,
        targets: usize,
        limit: Duration,
    ) -> Result<Vec<ProbeResult>, BackendError>
    where
        F: Future<Output = Result<Session, BackendError>>,
    {
        let what = Asked {
            doing: "",
            expected: targets,
            noun: "targets",
        };
        let (_, _, results) = self
            .ask(from, connect, || SessionOp::Probe(request()), limit, what)
            .await?;
        Ok(results)
    }

    /// Opens held connections from `from` on its session (a broken stream before they open is
    /// retried like a batch).
    pub async fn hold<F>(
        &self,
        from: &PodRef,
        connect: impl Fn() -> F,
        request: ProbeRequest,
        limit: Duration,
    ) -> Result<Held, BackendError>
    where
        F: Future<Output = Result<Session, BackendError>>,
    {
        let targets = request.targets.len();
        let what = Asked {
            doing: "holding connections: ",
            expected: targets,
            noun: "held connections",
        };
        let (session, hold, opened) = self
            .ask(
                from,
                connect,
                || SessionOp::Hold(request.clone()),
                limit,
                what,
            )
            .await?;
        Ok(Held {
            from: from.clone(),
            session,
            hold,
            targets,
            opened,
        })
    }

    /// Sends `op` on the pod's session, and again on a new session each time the stream breaks,
    /// up to `TRIES` times. Returns the session that answered, the request's id there (a hold is
    /// kept under it) and the results.
    async fn ask<F>(
        &self,
        from: &PodRef,
        connect: impl Fn() -> F,
        op: impl Fn() -> SessionOp,
        limit: Duration,
        what: Asked,
    ) -> Result<(Arc<Session>, u64, Vec<ProbeResult>), BackendError>
    where
        F: Future<Output = Result<Session, BackendError>>,
    {
        let fail = |message: String| BackendError::Probe {
            pod: from.clone(),
            message: format!("{}{message}", what.doing),
        };
        let mut reasons = Vec::new();
        for _ in 0..TRIES {
            let session = self.session(from, &connect).await?;
            let id = session.new_id();
            match session.call(id, op(), limit).await {
                Ok(reply) if reply.results.len() == what.expected => {
                    return Ok((session, id, reply.results));
                }
                Ok(reply) => {
                    return Err(fail(format!(
                        "{} results for {} {}",
                        reply.results.len(),
                        what.expected,
                        what.noun
                    )));
                }
                Err(CallError::Broken(reason)) => {
                    self.forget_broken(from, &session);
                    reasons.push(reason);
                }
                Err(CallError::Timeout(limit)) => {
                    // A stuck agent is not reused.
                    self.forget_broken(from, &session);
                    return Err(fail(format!(
                        "the agent did not answer within {}",
                        humantime::format_duration(limit)
                    )));
                }
                Err(CallError::Agent(error)) => {
                    return Err(fail(format!("the agent failed: {error}")));
                }
            }
        }
        Err(fail(format!(
            "the agent's session broke on each of {TRIES} tries: {}",
            reasons.join("; ")
        )))
    }

    /// The pod's session, opened if it has none (or its last one ended).
    async fn session<F>(
        &self,
        from: &PodRef,
        connect: &impl Fn() -> F,
    ) -> Result<Arc<Session>, BackendError>
    where
        F: Future<Output = Result<Session, BackendError>>,
    {
        {
            let mut by_pod = lock(&self.by_pod);
            match by_pod.get(from) {
                Some(session) if !session.is_ended() => return Ok(session.clone()),
                // It broke between two requests (its agent exited, its exec closed).
                Some(_) => {
                    by_pod.remove(from);
                    self.broken.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
        let session = Arc::new(connect().await?);
        let mut by_pod = lock(&self.by_pod);
        // Batches from one pod may race to open its session: the first one kept wins.
        match by_pod.get(from) {
            Some(kept) if !kept.is_ended() => Ok(kept.clone()),
            _ => {
                by_pod.insert(from.clone(), session.clone());
                Ok(session)
            }
        }
    }

    /// Drops `session` as the pod's, if it still is, and counts it as broken.
    fn forget_broken(&self, from: &PodRef, session: &Arc<Session>) {
        self.broken.fetch_add(1, Ordering::Relaxed);
        let mut by_pod = lock(&self.by_pod);
        if by_pod.get(from).is_some_and(|s| Arc::ptr_eq(s, session)) {
            by_pod.remove(from);
        }
    }

    /// Ends the pod's session (the pod is going away: its agent must not probe on as a ghost).
    pub fn forget(&self, from: &PodRef) {
        lock(&self.by_pod).remove(from);
    }

    /// Ends the sessions of every pod in `namespace` (it is being deleted).
    pub fn forget_namespace(&self, namespace: &str) {
        lock(&self.by_pod).retain(|pod, _| pod.namespace != namespace);
    }

    /// How many sessions broke (their stream ended, or their agent stopped answering) and were
    /// given up on: their batches went again on new ones, or failed as errors.
    pub fn broken(&self) -> u64 {
        self.broken.load(Ordering::Relaxed)
    }

    /// Ends every session.
    pub fn clear(&self) {
        lock(&self.by_pod).clear();
    }
}

/// Long-lived connections from one pod, held by its agent session (`SessionOp::Hold`): opened
/// once, then re-tested on demand, released when dropped.
pub struct Held {
    from: PodRef,
    session: Arc<Session>,
    hold: u64,
    targets: usize,
    opened: Vec<ProbeResult>,
}

impl Held {
    /// How each connection opened (`connected` = established).
    pub fn established(&self) -> &[ProbeResult] {
        &self.opened
    }

    /// Re-tests every connection: `connected` means it still carries traffic. A broken session is
    /// an error: the connections are gone with it, and that is no verdict on the dataplane.
    pub async fn check(&self, timeout: Duration) -> Result<Vec<ProbeResult>, BackendError> {
        let fail = |message: String| BackendError::Probe {
            pod: self.from.clone(),
            message: format!("holding connections: {message}"),
        };
        let limit = timeout + Duration::from_secs(10);
        match self
            .session
            .call(
                self.session.new_id(),
                SessionOp::Check { hold: self.hold },
                limit,
            )
            .await
        {
            Ok(reply) if reply.results.len() == self.targets => Ok(reply.results),
            Ok(reply) => Err(fail(format!(
                "{} results for {} held connections",
                reply.results.len(),
                self.targets
            ))),
            Err(CallError::Broken(reason)) => Err(fail(format!(
                "the session holding them broke, and they with it: {reason}"
            ))),
            Err(CallError::Timeout(limit)) => Err(fail(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            ))),
            Err(CallError::Agent(error)) => Err(fail(error)),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.session.tell(SessionOp::Release { hold: self.hold });
    }
}

/// The request a hold of `targets` sends: held flows keep kernel-chosen ports, outside the
/// probes' range, and wait the whole timeout.
pub fn hold_request(
    targets: &[Target],
    timeout: Duration,
    nameserver: Option<std::net::SocketAddr>,
) -> ProbeRequest {
    super::batch_request(targets, timeout.into(), None, nameserver)
}
