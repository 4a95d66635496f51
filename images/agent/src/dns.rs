//! `dns`: the local cluster's DNS server, standing in for CoreDNS in `kube-system`. It serves one
//! zone (the cluster domain) from memory over UDP and TCP port 53, and answers A and AAAA queries
//! for the names polygraph gives it: `<service>.<namespace>.svc.<domain>` for each pod's Service
//! and `<a-b-c-d>.<namespace>.pod.<domain>` for each pod, as the Kubernetes DNS specification names
//! them. The names arrive as `DnsRecords` lines on stdin, each replacing the whole set, so the
//! answers follow pods as they come and go. EOF on stdin (polygraph is gone) ends the server.
//!
//! The protocol work is hickory-server's; this module only keeps the zone's records current.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use socket2::{Protocol as SockProtocol, Type};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::sockets::bind_any;
use crate::wire::{DnsRecords, Listen, Protocol, Ready};

/// As CoreDNS's kubernetes plugin answers: short enough that a changed Service is seen soon.
const TTL: u32 = 5;
/// How long a TCP client may stay silent before the server closes its connection.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// The zone and the server, bound and ready.
pub struct DnsServer {
    zone: Arc<InMemoryZoneHandler>,
    origin: Name,
    server: Server<Catalog>,
    serial: u32,
    pub ready: Ready,
}

/// The port a DNS server answers on in a pod.
pub const DNS_PORT: u16 = 53;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn fqdn(name: &str) -> io::Result<Name> {
    let mut parsed = Name::from_ascii(name).map_err(|e| invalid(format!("{name:?}: {e}")))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

impl DnsServer {
    /// Binds `port` (53 in a pod; 0 picks one, the same for UDP and TCP), both families where the
    /// namespace has IPv6, for `domain`.
    pub async fn bind(identity: &str, domain: &str, port: u16) -> io::Result<DnsServer> {
        let origin = fqdn(domain)?;
        let mut zone =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            fqdn(&format!("ns.dns.{domain}"))?,
            fqdn(&format!("hostmaster.{domain}"))?,
            1,
            7200,
            1800,
            86400,
            TTL,
        );
        if !zone.upsert_mut(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)), 1) {
            return Err(invalid(format!("cannot start the zone {domain}")));
        }
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let mut server = Server::new(catalog);
        let udp = bind_any(Type::DGRAM, Some(SockProtocol::UDP), port)?;
        udp.set_nonblocking(true)?;
        let port = udp
            .local_addr()?
            .as_socket()
            .map_or(port, |addr| addr.port());
        server.register_socket(tokio::net::UdpSocket::from_std(udp.into())?);
        let tcp = bind_any(Type::STREAM, Some(SockProtocol::TCP), port)?;
        tcp.listen(128)?;
        tcp.set_nonblocking(true)?;
        server.register_listener(tokio::net::TcpListener::from_std(tcp.into())?, TCP_IDLE, 64);
        let ready = Ready {
            identity: identity.to_string(),
            listening: [Protocol::Udp, Protocol::Tcp]
                .into_iter()
                .map(|protocol| Listen { port, protocol })
                .collect(),
            unsupported: Vec::new(),
        };
        Ok(DnsServer {
            zone,
            origin,
            server,
            serial: 1,
            ready,
        })
    }

    /// Replaces every A and AAAA record of the zone with `records`. Names outside the zone are
    /// refused: they would never be asked for.
    pub async fn replace(&mut self, records: &DnsRecords) -> io::Result<()> {
        self.serial = self.serial.wrapping_add(1);
        let mut sets: BTreeMap<RrKey, RecordSet> = BTreeMap::new();
        for record in &records.records {
            let name = fqdn(&record.name)?;
            if !self.origin.zone_of(&name) {
                return Err(invalid(format!(
                    "{} is not in the zone {}",
                    record.name, self.origin
                )));
            }
            for address in &record.addresses {
                let (kind, rdata) = match address {
                    IpAddr::V4(ip) => (RecordType::A, RData::A(A(*ip))),
                    IpAddr::V6(ip) => (RecordType::AAAA, RData::AAAA(AAAA(*ip))),
                };
                sets.entry(RrKey::new(LowerName::new(&name), kind))
                    .or_insert_with(|| RecordSet::new(name.clone(), kind, self.serial))
                    .insert(Record::from_rdata(name.clone(), TTL, rdata), self.serial);
            }
        }
        let mut zone = self.zone.records_mut().await;
        zone.retain(|key, _| key.record_type == RecordType::SOA);
        zone.extend(sets.into_iter().map(|(key, set)| (key, Arc::new(set))));
        Ok(())
    }

    /// Serves until `input` ends, taking each line as the new set of records. A bad line is an
    /// error: the backend that sent it has a bug, and answering from a stale set would hide it.
    pub async fn serve(mut self, input: impl AsyncBufRead + Unpin) -> io::Result<()> {
        let mut lines = input.lines();
        loop {
            tokio::select! {
                line = lines.next_line() => match line? {
                    None => break,
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => {
                        let records: DnsRecords = serde_json::from_str(&line)
                            .map_err(|e| invalid(format!("bad records line: {e}")))?;
                        self.replace(&records).await?;
                    }
                },
                done = self.server.block_until_done() => {
                    return done.map_err(|e| io::Error::other(e.to_string()));
                }
            }
        }
        let _ = self.server.shutdown_gracefully().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Names;
    use crate::wire::{AddressFamily, DnsRecord, Outcome, Protocol, Target};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn records(name: &str, addresses: &[&str]) -> String {
        let records = DnsRecords {
            records: vec![DnsRecord {
                name: name.into(),
                addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            }],
        };
        format!("{}\n", serde_json::to_string(&records).unwrap())
    }

    fn name(family: Option<AddressFamily>) -> Target {
        Target {
            family,
            ..Target::new("b.x.svc.cluster.local.", 80, Protocol::Tcp)
        }
    }

    #[tokio::test]
    async fn answers_the_names_it_is_given_and_follows_replacements() {
        let server = DnsServer::bind("kube-system/coredns", "cluster.local", 0)
            .await
            .unwrap();
        let port = server.ready.listening[0].port;
        let (mut input, theirs) = tokio::io::duplex(4096);
        tokio::spawn(server.serve(tokio::io::BufReader::new(theirs)));
        input
            .write_all(
                records("b.x.svc.cluster.local.", &["10.96.0.11", "fd00:10:96::11"]).as_bytes(),
            )
            .await
            .unwrap();
        // The line is read asynchronously: ask until the answer is there.
        let nameserver = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let timeout = Duration::from_millis(600);
        let resolve = |target: Target| async move {
            let names = Names::for_targets(
                std::slice::from_ref(&target),
                nameserver,
                crate::resolve::LookupWaits::new(timeout, None, 2),
                |_| None,
            );
            names.resolve(&target).await
        };
        let mut v4 = resolve(name(Some(AddressFamily::Ipv4))).await;
        for _ in 0..20 {
            if v4.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            v4 = resolve(name(Some(AddressFamily::Ipv4))).await;
        }
        assert_eq!(v4.ok().unwrap().to_string(), "10.96.0.11:80");
        let v6 = resolve(name(Some(AddressFamily::Ipv6))).await;
        assert_eq!(v6.ok().unwrap().to_string(), "[fd00:10:96::11]:80");
        let unknown = Target::new("nope.x.svc.cluster.local.", 80, Protocol::Tcp);
        let failed = resolve(unknown).await.err().unwrap();
        assert_eq!(failed.outcome, Outcome::DnsFailed);

        input
            .write_all(records("b.x.svc.cluster.local.", &["10.96.0.12"]).as_bytes())
            .await
            .unwrap();
        let mut moved = resolve(name(Some(AddressFamily::Ipv4))).await;
        for _ in 0..20 {
            if moved
                .as_ref()
                .is_ok_and(|a| a.to_string() == "10.96.0.12:80")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            moved = resolve(name(Some(AddressFamily::Ipv4))).await;
        }
        assert_eq!(moved.ok().unwrap().to_string(), "10.96.0.12:80");
        let gone = resolve(name(Some(AddressFamily::Ipv6)))
            .await
            .err()
            .unwrap();
        assert_eq!(
            gone.outcome,
            Outcome::DnsFailed,
            "the AAAA record was replaced away"
        );
    }

    #[tokio::test]
    async fn no_server_means_dns_failed_within_the_timeout() {
        // A port nothing answers on: the queries go unanswered, as under a DNS-egress drop.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = socket.local_addr().unwrap();
        let target = name(Some(AddressFamily::Ipv4));
        let timeout = Duration::from_millis(300);
        let names = Names::for_targets(
            std::slice::from_ref(&target),
            Some(silent),
            crate::resolve::LookupWaits::new(timeout, None, 2),
            |_| None,
        );
        let started = std::time::Instant::now();
        let failed = names.resolve(&target).await.err().unwrap();
        assert_eq!(failed.outcome, Outcome::DnsFailed);
        assert_eq!(failed.attempts, 1);
        assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());
        // With a deadline: a query, a confirming one, and dns-failed long before the timeout.
        let names = Names::for_targets(
            std::slice::from_ref(&target),
            Some(silent),
            crate::resolve::LookupWaits::new(
                Duration::from_secs(5),
                Some(Duration::from_millis(80)),
                2,
            ),
            |_| None,
        );
        let started = std::time::Instant::now();
        let failed = names.resolve(&target).await.err().unwrap();
        assert_eq!(failed.outcome, Outcome::DnsFailed);
        assert_eq!(failed.attempts, 2, "confirmed");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        drop(socket);
    }

    #[tokio::test]
    async fn names_outside_the_zone_are_refused() {
        let mut server = DnsServer::bind("kube-system/coredns", "cluster.local", 0)
            .await
            .unwrap();
        let outside: DnsRecords =
            serde_json::from_str(records("example.com.", &["192.0.2.1"]).trim()).unwrap();
        assert!(server.replace(&outside).await.is_err());
    }
}
