//! Names to addresses for probes of `--target service-name`: hickory's resolver, pointed at the
//! nameserver the request names (the local cluster's DNS Service) or, without one, configured from
//! the pod's own resolv.conf, as any workload in the pod would resolve.
//!
//! A name that does not resolve (no answer, or no such record) is `dns-failed`, an outcome of its
//! own: under policies it usually means DNS egress is blocked, and it is not a blocked connection.
//!
//! Each distinct name of a batch is looked up from its own UDP source port, taken from the batch's
//! block of the agent's port range (after the UDP probes' own), exactly like a UDP probe: a query
//! from a port an earlier, allowed query used would meet that query's conntrack entry and be let
//! through as "established" after a deny, so a blocked name would seem to resolve.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::probe::Finding;
use crate::wire::{AddressFamily, Outcome, Target};

/// Tries per lookup within the timeout: one lost datagram must not read as "DNS egress blocked".
const ATTEMPTS: u32 = 3;

/// How long lookups wait: `per_attempt` for each of `attempts` queries, `total` in all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LookupWaits {
    pub(crate) per_attempt: Duration,
    pub(crate) attempts: u32,
    pub(crate) total: Duration,
}

impl LookupWaits {
    /// Within `timeout`: three attempts sharing it. With a `silent` deadline (see
    /// `probe::Waits`): a query, and a confirming one after the deadline, as probes do.
    pub(crate) fn new(timeout: Duration, silent: Option<Duration>) -> LookupWaits {
        match silent {
            Some(deadline) => LookupWaits {
                per_attempt: deadline,
                attempts: 2,
                total: deadline * 2,
            },
            None => LookupWaits {
                per_attempt: (timeout / ATTEMPTS).max(Duration::from_millis(50)),
                attempts: ATTEMPTS,
                total: timeout,
            },
        }
    }
}

type Name = (String, Option<AddressFamily>);

/// One batch's resolvers: one per distinct name (and family) among its targets.
pub(crate) struct Names {
    resolvers: Vec<(Name, Result<TokioResolver, String>)>,
    waits: LookupWaits,
}

/// The distinct names among `targets`, in request order: what `Names` looks up, and how many
/// source ports a batch needs for them.
pub fn distinct_names(targets: &[Target]) -> Vec<(String, Option<AddressFamily>)> {
    let mut names: Vec<Name> = Vec::new();
    for target in targets {
        let name = (target.host.clone(), target.family);
        if target.host.parse::<IpAddr>().is_err() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

impl Names {
    /// Resolvers for the names among `targets`: through `nameserver` when given, resolv.conf
    /// otherwise; the `k`th distinct name queries from `source_port(k)` when that is given. Each
    /// attempt gets a share of `timeout`, so a lookup ends within it.
    pub(crate) fn for_targets(
        targets: &[Target],
        nameserver: Option<SocketAddr>,
        waits: LookupWaits,
        source_port: impl Fn(usize) -> Option<u16>,
    ) -> Names {
        let names = distinct_names(targets);
        let config = if names.is_empty() {
            Err(String::new())
        } else {
            config(nameserver)
        };
        let resolvers = names
            .into_iter()
            .enumerate()
            .map(|(k, name)| {
                let resolver = config
                    .clone()
                    .and_then(|(config, options)| build(config, options, waits, source_port(k)));
                (name, resolver)
            })
            .collect();
        Names { resolvers, waits }
    }

    /// Where `target` goes: its address as given, or its name's first address in the target's
    /// family.
    pub(crate) async fn resolve(&self, target: &Target) -> Result<SocketAddr, Finding> {
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, target.port));
        }
        let resolver = match self
            .resolvers
            .iter()
            .find(|((host, family), _)| *host == target.host && *family == target.family)
        {
            Some((_, Ok(resolver))) => resolver,
            Some((_, Err(why))) => return Err(Finding::new(Outcome::Error, why.clone())),
            None => return Err(Finding::new(Outcome::Error, "no resolver")),
        };
        let kinds: &[RecordType] = match target.family {
            Some(AddressFamily::Ipv4) => &[RecordType::A],
            Some(AddressFamily::Ipv6) => &[RecordType::AAAA],
            None => &[RecordType::A, RecordType::AAAA],
        };
        let mut last = String::new();
        for &kind in kinds {
            let lookup = resolver.lookup(target.host.as_str(), kind);
            match tokio::time::timeout(self.waits.total, lookup).await {
                Err(_) => last = format!("resolving {} ({kind}) timed out", target.host),
                Ok(Err(e)) => last = format!("resolving {} ({kind}): {e}", target.host),
                Ok(Ok(lookup)) => {
                    let found = lookup.answers().iter().find_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    });
                    match found {
                        Some(ip) => return Ok(SocketAddr::new(ip, target.port)),
                        None => last = format!("{} has no {kind} record", target.host),
                    }
                }
            }
        }
        Err(Finding::new(Outcome::DnsFailed, last).with_attempts(self.waits.attempts))
    }
}

/// The resolver configuration: the named server (UDP, then TCP for truncated answers), or the
/// pod's resolv.conf.
fn config(nameserver: Option<SocketAddr>) -> Result<(ResolverConfig, ResolverOpts), String> {
    match nameserver {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                server.ip(),
                true,
                vec![udp, tcp],
            )]);
            Ok((config, ResolverOpts::default()))
        }
        None => hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the pod's resolver configuration: {e}")),
    }
}

fn build(
    config: ResolverConfig,
    mut options: ResolverOpts,
    waits: LookupWaits,
    source_port: Option<u16>,
) -> Result<TokioResolver, String> {
    let (domain, search, mut servers) = config.into_parts();
    if let Some(port) = source_port {
        for server in &mut servers {
            let any = if server.ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            };
            for connection in &mut server.connections {
                if connection.protocol == ProtocolConfig::Udp {
                    connection.bind_addr = Some(SocketAddr::new(any, port));
                }
            }
        }
    }
    let config = ResolverConfig::from_parts(domain, search, servers);
    options.timeout = waits.per_attempt;
    options.attempts = waits.attempts as usize;
    // The cluster's DNS decides, not the node's hosts file.
    options.use_hosts_file = ResolveHosts::Never;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot build a resolver: {e}"))
}
