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

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
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

/// How long lookups wait: `per_attempt` for each of `attempts` queries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LookupWaits {
    pub(crate) per_attempt: Duration,
    pub(crate) attempts: u32,
    /// Whether the attempts confirm a silence (a deadline set them) rather than share the
    /// timeout.
    pub(crate) confirming: bool,
}

impl LookupWaits {
    /// The source ports a name's lookup takes: one per attempt where they go together, one
    /// where they follow each other.
    pub(crate) fn ports_per_name(self) -> u32 {
        if self.confirming { self.attempts } else { 1 }
    }

    /// Within `timeout`: three attempts one after the other, sharing it. With a `silent`
    /// deadline (see `probe::Waits`): a query, then the other `attempts - 1` together once it has
    /// been silent that long, each from a source port of its own, all given as long again.
    pub(crate) fn new(timeout: Duration, silent: Option<Duration>, attempts: u32) -> LookupWaits {
        match silent {
            Some(deadline) => LookupWaits {
                per_attempt: deadline,
                attempts: attempts.max(2),
                confirming: true,
            },
            None => LookupWaits {
                per_attempt: (timeout / ATTEMPTS).max(Duration::from_millis(50)),
                attempts: ATTEMPTS,
                confirming: false,
            },
        }
    }
}

type Name = (String, Option<AddressFamily>);

/// How to build a name's resolver: the configuration, and the source port its queries use.
struct Recipe {
    config: ResolverConfig,
    options: ResolverOpts,
    /// One per attempt that goes at the same time as others (see `LookupWaits::ports_per_name`).
    source_ports: Vec<Option<u16>>,
}

/// A name's lookup, done once per batch and shared by every target with that name: each
/// lookup of a name queries from the name's own source port, so two at once would contend for it.
type Resolved = Result<IpAddr, Finding>;

/// One batch's names: one lookup per distinct name (and family) among its targets.
pub(crate) struct Names {
    names: Vec<(
        Name,
        Result<Recipe, String>,
        tokio::sync::OnceCell<Resolved>,
    )>,
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
    /// The names among `targets`, to be resolved through `nameserver` when given, resolv.conf
    /// otherwise; the `k`th distinct name's `j`th concurrent attempt queries from
    /// `source_port(k * waits.ports_per_name() + j)` when that is given.
    pub(crate) fn for_targets(
        targets: &[Target],
        nameserver: Option<SocketAddr>,
        waits: LookupWaits,
        source_port: impl Fn(usize) -> Option<u16>,
    ) -> Names {
        let per_name = waits.ports_per_name() as usize;
        let names = distinct_names(targets);
        let config = if names.is_empty() {
            Err(String::new())
        } else {
            config(nameserver)
        };
        let names = names
            .into_iter()
            .enumerate()
            .map(|(k, name)| {
                let recipe = config.clone().map(|(config, options)| Recipe {
                    config,
                    options,
                    source_ports: (0..per_name)
                        .map(|j| source_port(k * per_name + j))
                        .collect(),
                });
                (name, recipe, tokio::sync::OnceCell::new())
            })
            .collect();
        Names { names, waits }
    }

    /// Where `target` goes: its address as given, or its name's first address in the target's
    /// family.
    pub(crate) async fn resolve(&self, target: &Target) -> Result<SocketAddr, Finding> {
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, target.port));
        }
        let Some((_, recipe, resolved)) = self
            .names
            .iter()
            .find(|((host, family), _, _)| *host == target.host && *family == target.family)
        else {
            return Err(Finding::new(Outcome::Error, "no resolver"));
        };
        let recipe = match recipe {
            Ok(recipe) => recipe,
            Err(why) => return Err(Finding::new(Outcome::Error, why.clone())),
        };
        let ip = resolved
            .get_or_init(|| self.lookup(recipe, &target.host, target.family))
            .await
            .clone()?;
        Ok(SocketAddr::new(ip, target.port))
    }

    /// Looks `host` up. Without a deadline: up to `waits.attempts` queries one after the other,
    /// each sharing the timeout. With one: a query, then once it has been silent a deadline the
    /// other attempts together, each from its own port, all until a second deadline has passed.
    /// Each attempt has a resolver of its own making one query per record type (no retries
    /// inside: the attempts are ours, so each starts afresh). The first answer ends it, one
    /// without the record as surely as one with it.
    async fn lookup(&self, recipe: &Recipe, host: &str, family: Option<AddressFamily>) -> Resolved {
        let waits = self.waits;
        let port = |j: usize| recipe.source_ports.get(j).copied().flatten();
        if !waits.confirming {
            let mut last = String::new();
            for attempt in 1..=waits.attempts {
                match query(recipe, port(0), host, family, waits.per_attempt).await {
                    Queried::Silent(why) => last = why,
                    decided => return decided.into_resolved(attempt, false),
                }
            }
            return Err(Finding::new(Outcome::DnsFailed, last).with_attempts(1, false));
        }
        let start = tokio::time::Instant::now();
        let give_up = start + waits.per_attempt * 2;
        let mut running = FuturesUnordered::new();
        running.push(query(recipe, port(0), host, family, waits.per_attempt * 2));
        let mut launched = 1;
        let mut last = String::new();
        loop {
            tokio::select! {
                Some(queried) = running.next() => match queried {
                    Queried::Silent(why) => last = why,
                    decided => return decided.into_resolved(launched, true),
                },
                _ = tokio::time::sleep_until(start + waits.per_attempt), if launched == 1 => {
                    for j in 1..waits.attempts as usize {
                        running.push(query(recipe, port(j), host, family, waits.per_attempt));
                    }
                    launched = waits.attempts;
                }
                _ = tokio::time::sleep_until(give_up) => break,
            }
        }
        Err(Finding::new(Outcome::DnsFailed, last).with_attempts(launched, true))
    }
}

/// How one attempt at a name ended.
enum Queried {
    Found(IpAddr),
    /// The server answered, without the record.
    Answered(String),
    /// No answer within the attempt's time.
    Silent(String),
    /// The attempt could not be made.
    Broken(Finding),
}

impl Queried {
    fn into_resolved(self, attempts: u32, confirming: bool) -> Resolved {
        match self {
            Queried::Found(ip) => Ok(ip),
            Queried::Answered(why) | Queried::Silent(why) => {
                Err(Finding::new(Outcome::DnsFailed, why).with_attempts(attempts, confirming))
            }
            Queried::Broken(finding) => Err(finding),
        }
    }
}

/// One attempt at `host` (in `family`, or both), within `wait`, from `source_port`.
async fn query(
    recipe: &Recipe,
    source_port: Option<u16>,
    host: &str,
    family: Option<AddressFamily>,
    wait: Duration,
) -> Queried {
    let kinds: &[RecordType] = match family {
        Some(AddressFamily::Ipv4) => &[RecordType::A],
        Some(AddressFamily::Ipv6) => &[RecordType::AAAA],
        None => &[RecordType::A, RecordType::AAAA],
    };
    let resolver = match build(
        recipe.config.clone(),
        recipe.options.clone(),
        wait,
        source_port,
    ) {
        Ok(resolver) => resolver,
        Err(why) => return Queried::Broken(Finding::new(Outcome::Error, why)),
    };
    let mut answered = None;
    let mut last = String::new();
    for &kind in kinds {
        match tokio::time::timeout(wait, resolver.lookup(host, kind)).await {
            Err(_) => last = format!("resolving {host} ({kind}) timed out"),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => {
                answered = Some(format!("resolving {host} ({kind}): {e}"));
            }
            Ok(Err(e)) => last = format!("resolving {host} ({kind}): {e}"),
            Ok(Ok(lookup)) => {
                let found = lookup.answers().iter().find_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                });
                match found {
                    Some(ip) => return Queried::Found(ip),
                    None => answered = Some(format!("{host} has no {kind} record")),
                }
            }
        }
    }
    match answered {
        Some(why) => Queried::Answered(why),
        None => Queried::Silent(last),
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
    per_attempt: Duration,
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
    options.timeout = per_attempt;
    // One query per lookup: `Names::lookup` makes the attempts.
    options.attempts = 1;
    // Every attempt asks the server: a cached failure would answer for it.
    options.cache_size = 0;
    // The cluster's DNS decides, not the node's hosts file.
    options.use_hosts_file = ResolveHosts::Never;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot build a resolver: {e}"))
}
