//! `serve`: listen on every requested (port, protocol) and answer with the pod's identity.
//! TCP and SCTP send the greeting, then echo whatever the client sends until it closes (so `hold`
//! can tell a live long-lived connection from a cut one); UDP answers every datagram with it.

use std::io;
use std::sync::Arc;

use socket2::{Protocol as SockProtocol, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::sockets::{IPPROTO_SCTP, bind_any, is_protocol_unavailable};
use crate::wire::{Listen, Protocol, Ready, greeting};

/// A listener that could not be opened for a reason other than a missing protocol.
#[derive(Debug)]
pub struct ServeError {
    pub listen: Listen,
    pub source: io::Error,
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot listen on {}/{}: {}",
            self.listen.port, self.listen.protocol, self.source
        )
    }
}

impl std::error::Error for ServeError {}

enum Listener {
    Stream(TcpListener),
    Datagram(UdpSocket),
}

fn open(listen: Listen) -> io::Result<Listener> {
    match listen.protocol {
        Protocol::Tcp | Protocol::Sctp => {
            let protocol = match listen.protocol {
                Protocol::Tcp => SockProtocol::TCP,
                _ => SockProtocol::from(IPPROTO_SCTP),
            };
            let socket = bind_any(Type::STREAM, Some(protocol), listen.port)?;
            socket.listen(1024)?;
            socket.set_nonblocking(true)?;
            // An SCTP one-to-one socket accepts and streams like TCP, so tokio's listener serves it.
            Ok(Listener::Stream(TcpListener::from_std(socket.into())?))
        }
        Protocol::Udp => {
            let socket = bind_any(Type::DGRAM, Some(SockProtocol::UDP), listen.port)?;
            socket.set_nonblocking(true)?;
            Ok(Listener::Datagram(UdpSocket::from_std(socket.into())?))
        }
    }
}

/// Binds everything, then hands back the ready report and a future that serves forever.
/// Bind failures other than a missing protocol are errors: a pod that can't serve its ports
/// would make every probe to it look blocked.
pub async fn bind(
    identity: &str,
    listens: &[Listen],
) -> Result<(Ready, impl Future<Output = ()> + use<>), ServeError> {
    let greeting: Arc<[u8]> = greeting(identity).into_bytes().into();
    let mut ready = Ready {
        identity: identity.to_string(),
        listening: Vec::new(),
        unsupported: Vec::new(),
    };
    let mut listeners = Vec::new();
    for &listen in listens {
        match open(listen) {
            Ok(listener) => {
                ready.listening.push(listen);
                listeners.push(listener);
            }
            Err(e) if is_protocol_unavailable(&e) => ready.unsupported.push(listen),
            Err(source) => return Err(ServeError { listen, source }),
        }
    }
    let serving = async move {
        let mut tasks = tokio::task::JoinSet::new();
        for listener in listeners {
            let greeting = greeting.clone();
            match listener {
                Listener::Stream(l) => tasks.spawn(serve_stream(l, greeting)),
                Listener::Datagram(s) => tasks.spawn(serve_datagrams(s, greeting)),
            };
        }
        while tasks.join_next().await.is_some() {}
        // An agent stays up for as long as its pod lives, whatever it could bind: one whose
        // every port is unsupported here (SCTP on a kernel without it) has nothing to serve, but
        // if it exited, Kubernetes would restart its container into CrashLoopBackOff and the pod
        // would never be ready, where the truthful answer is "unsupported". SIGTERM ends it.
        std::future::pending::<()>().await;
    };
    Ok((ready, serving))
}

async fn serve_stream(listener: TcpListener, greeting: Arc<[u8]>) {
    loop {
        // Accept errors (e.g. EMFILE) are transient; keep serving.
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let greeting = greeting.clone();
        tokio::spawn(async move {
            if stream.write_all(&greeting).await.is_err() {
                return;
            }
            let mut buf = [0u8; 512];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

async fn serve_datagrams(socket: UdpSocket, greeting: Arc<[u8]>) {
    let mut buf = [0u8; 1500];
    loop {
        if let Ok((_, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&greeting, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mutation tried: without the final `pending()`, the future completes at once when no
    /// listener was opened, and this test fails.
    #[tokio::test]
    async fn an_agent_with_nothing_it_can_serve_stays_up() {
        // A high port, so no privilege is needed where the kernel has SCTP (the listener then
        // opens and serves: staying up either way).
        let sctp_only = [Listen {
            port: 40_999,
            protocol: Protocol::Sctp,
        }];
        let (ready, serving) = bind("x/a", &sctp_only).await.expect("bind");
        assert_eq!(ready.listening.len() + ready.unsupported.len(), 1);
        let ended = tokio::time::timeout(std::time::Duration::from_millis(300), serving).await;
        assert!(
            ended.is_err(),
            "the serving future ended: the agent would exit"
        );
        // And with nothing asked at all.
        let (_, serving) = bind("x/a", &[]).await.expect("bind");
        let ended = tokio::time::timeout(std::time::Duration::from_millis(100), serving).await;
        assert!(ended.is_err());
    }
}
