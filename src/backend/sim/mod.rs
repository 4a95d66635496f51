//! The simulated backend (`--backend sim`): no root, no cluster, no packets. Every probe is answered
//! from the oracle's reading of the policies the simulated dataplane enforces at that instant, at
//! the cluster model's addresses. It honours the same faults as the local dataplane (the policy
//! faults through `faults::distort`, the timed ones through `faults::lag`, on tokio's clock so tests
//! can run them on paused time), so a scenario library, its verdicts, timing and reports can be
//! checked end to end anywhere.
//!
//! A simulated drop is reported with the probe timeout as its elapsed time but is not waited for:
//! a round costs no time, so the whole library runs in seconds. Self traffic never leaves the pod
//! and is always connected, as on a routed CNI. SCTP is served unless `sctp` is off (then it is
//! `unsupported`, like a node without the kernel module).

mod dataplane;
mod held;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use polygraph_agent::wire::{ProbeResult, Target};
use tokio::time::Instant;

use super::session::hold_request;
use super::{Backend, BackendError, ClusterInfo, Held, ProbeTiming, Sessions};
use crate::faults::{Fault, Faults};
use std::net::IpAddr;

use crate::backend::local::proxy::cluster_ip;
use crate::model::{
    ContainerPort, Family, IpFamilies, OUTSIDE_NAMESPACE, Pod, PodRef, PortProtocol, ProbeTarget,
};
use crate::world::Mutation;
use dataplane::Dataplane;

#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Bugs to imitate (`--inject`).
    pub faults: Faults,
    /// Whether the simulated nodes serve SCTP.
    pub sctp: bool,
    /// The pods' address families (`--ip-family`), as the local cluster gives them.
    pub families: IpFamilies,
    /// `--dataplane none`: nothing enforces anything, as on a cluster whose CNI ignores policies.
    pub no_dataplane: bool,
}

pub struct SimBackend {
    run_id: String,
    faults: String,
    no_dataplane: bool,
    dataplane: Arc<Mutex<Dataplane>>,
    /// The simulated agent sessions that hold connections (`held`).
    sessions: Sessions,
}

impl SimBackend {
    pub fn new(options: SimOptions) -> SimBackend {
        SimBackend {
            run_id: format!("{:06x}", fastrand::u32(..0x0100_0000)),
            faults: options.faults.to_string(),
            no_dataplane: options.no_dataplane,
            dataplane: Arc::new(Mutex::new(Dataplane::new(
                options.faults,
                options.sctp,
                options.families,
                !options.no_dataplane,
            ))),
            sessions: Sessions::default(),
        }
    }

    fn dataplane(&self) -> MutexGuard<'_, Dataplane> {
        lock(&self.dataplane)
    }
}

fn lock(dataplane: &Mutex<Dataplane>) -> MutexGuard<'_, Dataplane> {
    dataplane.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend for SimBackend {
    async fn cluster_info(&mut self) -> ClusterInfo {
        ClusterInfo {
            cni: Some(if self.no_dataplane {
                "none (policies ignored)".to_string()
            } else if self.faults.is_empty() {
                "simulation (the oracle's answers)".to_string()
            } else {
                format!(
                    "simulation (the oracle's answers), injected faults: {}",
                    self.faults
                )
            }),
            nodes: 1,
            ..ClusterInfo::default()
        }
    }
    fn describe(&self) -> String {
        if self.no_dataplane {
            format!(
                "sim (no dataplane: policies are ignored, run {})",
                self.run_id
            )
        } else if self.faults.is_empty() {
            format!("sim (oracle answers, run {})", self.run_id)
        } else {
            format!(
                "sim (oracle answers, injected faults: {}, run {})",
                self.faults, self.run_id
            )
        }
    }

    fn cleanup_message(&self) -> String {
        "the simulated cluster was discarded".into()
    }

    fn addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        let dataplane = self.dataplane();
        if let Some((_, addresses)) = dataplane
            .outside
            .iter()
            .chain(&dataplane.node)
            .find(|(h, _)| h.key() == *pod)
        {
            return addresses.clone();
        }
        let families = dataplane.families;
        dataplane
            .world
            .pod(pod)
            .map(|p| families.addresses(p.ip))
            .unwrap_or_default()
    }

    fn node_port(&self, pod: &PodRef, pp: PortProtocol, family: Family) -> Option<(IpAddr, u16)> {
        let has_family = self
            .addresses(pod)
            .iter()
            .any(|ip| Family::of(*ip) == family);
        let dataplane = self.dataplane();
        let (_, port) = dataplane
            .node_ports
            .get(pod)?
            .iter()
            .find(|(p, _)| *p == pp)?;
        has_family.then(|| (crate::backend::local::proxy::node_address(family), *port))
    }

    /// A host outside the cluster at the local cluster's addresses (203.0.113.10,
    /// 2001:db8::10), or for `node` the pods' node at the local cluster's node addresses, serving
    /// what the scenario probes.
    async fn outside(
        &mut self,
        target: ProbeTarget,
        port_protocols: &[PortProtocol],
    ) -> Result<Vec<Pod>, String> {
        let mut dataplane = self.dataplane();
        if target == ProbeTarget::Node {
            let addresses = crate::backend::local::proxy::node_addresses(dataplane.families);
            let node = crate::backend::local::node_host(&addresses, port_protocols);
            dataplane.node = Some((node.clone(), addresses));
            dataplane.record();
            return Ok(vec![node]);
        }
        let v4 = IpAddr::from([203, 0, 113, 10]);
        let v6 = IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10u16]);
        let addresses = match dataplane.families {
            IpFamilies::Ipv4 => vec![v4],
            IpFamilies::Ipv6 => vec![v6],
            IpFamilies::Dual => vec![v4, v6],
        };
        let host = Pod {
            namespace: OUTSIDE_NAMESPACE.into(),
            name: "host".into(),
            labels: Default::default(),
            ip: addresses[0],
            ports: ContainerPort::serving(port_protocols),
            host_network: false,
        };
        dataplane.outside = Some((host.clone(), addresses));
        dataplane.record();
        Ok(vec![host])
    }

    fn service_name(&self, pod: &PodRef) -> Option<String> {
        self.dataplane().world.pod(pod).map(|_| {
            crate::backend::local::service_fqdn(pod, crate::backend::local::CLUSTER_DOMAIN)
        })
    }

    /// The local cluster's DNS pod, at its addresses.
    async fn dns(&mut self) -> Result<crate::model::ClusterDns, String> {
        let mut dataplane = self.dataplane();
        let pod = crate::backend::local::dns_pod();
        let addresses = dataplane.families.addresses(pod.ip);
        let server = Pod {
            ip: addresses[0],
            ..pod
        };
        dataplane.dns = Some((server.clone(), addresses));
        dataplane.record();
        Ok(crate::model::ClusterDns {
            namespace: crate::backend::local::dns_namespace(),
            servers: vec![server],
        })
    }

    fn service_addresses(&self, pod: &PodRef) -> Vec<IpAddr> {
        let Some(slot) = self.dataplane().services.get(pod).copied() else {
            return Vec::new();
        };
        self.addresses(pod)
            .into_iter()
            .map(|ip| cluster_ip(slot, Family::of(ip)))
            .collect()
    }

    async fn apply(&mut self, mutation: &Mutation) -> Result<(), BackendError> {
        let mut dataplane = self.dataplane();
        // What a deletion removes, for the `policy-deletion-ignored` fault to keep enforcing.
        let deleted = match mutation {
            Mutation::DeletePolicy { namespace, name }
                if dataplane.faults.has(Fault::PolicyDeletionIgnored) =>
            {
                dataplane
                    .world
                    .policies()
                    .iter()
                    .find(|p| (&p.namespace, &p.name) == (namespace, name))
                    .cloned()
            }
            _ => None,
        };
        dataplane
            .world
            .apply(mutation)
            .map_err(BackendError::rejected(mutation))?;
        match mutation {
            Mutation::CreatePod(pod) => {
                dataplane.created.insert(pod.key(), Instant::now());
                dataplane.add_service(pod);
            }
            Mutation::DeletePod(pod) => {
                dataplane.created.remove(pod);
                dataplane.remove_services(|p| p == pod);
            }
            Mutation::DeleteNamespace(name) => {
                dataplane.created.retain(|p, _| &p.namespace != name);
                dataplane.remove_services(|p| &p.namespace == name);
                dataplane.ghosts.retain(|g| &g.namespace != name);
            }
            Mutation::ApplyPolicy(policy) => dataplane
                .ghosts
                .retain(|g| (&g.namespace, &g.name) != (&policy.namespace, &policy.name)),
            Mutation::DeletePolicy { .. } => dataplane.ghosts.extend(deleted),
            _ => {}
        }
        dataplane.record();
        Ok(())
    }

    async fn wait_ready(&mut self, _timeout: Duration) -> Result<(), BackendError> {
        Ok(())
    }

    async fn probe(
        &self,
        from: &PodRef,
        targets: &[Target],
        timing: ProbeTiming,
    ) -> Result<Vec<ProbeResult>, BackendError> {
        let mut dataplane = self.dataplane();
        let outside = dataplane
            .outside
            .iter()
            .chain(&dataplane.node)
            .any(|(h, _)| h.key() == *from);
        if dataplane.world.pod(from).is_none() && !outside {
            return Err(BackendError::Probe {
                pod: from.clone(),
                message: "no such pod".into(),
            });
        }
        let now = Instant::now();
        // Each target is a new connection the enforcer's queue may not judge
        // (`queue-overflow`); the confirming attempts of a silent one are more.
        let queued: Vec<dataplane::Queued> = targets.iter().map(|_| dataplane.queue(now)).collect();
        let judge = dataplane.judge(now);
        Ok(targets
            .iter()
            .zip(queued)
            .map(|(target, queued)| {
                let mut result = judge.probe(from, target, timing.silent_wait(), queued);
                // A silent target's silence is confirmed by further attempts, as the agent does.
                if result.outcome == polygraph_agent::wire::Outcome::Timeout
                    && timing.effective_deadline().is_some()
                {
                    result.attempts = Some(timing.attempts.max(2));
                }
                result
            })
            .collect())
    }

    async fn hold(
        &self,
        from: &PodRef,
        targets: &[Target],
        timeout: Duration,
    ) -> Result<Held, BackendError> {
        self.sessions
            .hold(
                from,
                || held::session(self.dataplane.clone(), from),
                hold_request(targets, timeout, None),
                timeout + Duration::from_secs(10),
            )
            .await
    }

    async fn cleanup(&mut self) -> Result<(), BackendError> {
        self.sessions.clear();
        let mut dataplane = self.dataplane();
        let faults = dataplane.faults.clone();
        let sctp = dataplane.sctp;
        let families = dataplane.families;
        let enforcing = dataplane.enforcing;
        *dataplane = Dataplane::new(faults, sctp, families, enforcing);
        Ok(())
    }
}
