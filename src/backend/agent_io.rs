//! Talking to the probe agent, whichever way a backend reaches it (a session, a child process, a
//! Kubernetes exec): the request encoder, the output parser, per-pod UDP source ports.

use std::time::Duration;

use polygraph_agent::wire::{ProbeResult, Target};

use crate::model::PodRef;

use super::BackendError;

/// Per source pod, where its next batch's UDP source ports start: each batch takes the next block,
/// so no UDP 5-tuple repeats until the agent's port range wraps (see
/// `polygraph_agent::wire::udp_source_port`). A pod seen for the first time starts where the
/// furthest pod has got to, not at zero: a new pod may have the address of one deleted a moment
/// ago (the next scenario's model reuses it), and that pod's flows are still in conntrack, where
/// the same ports would meet them and pass as "established" whatever the policies say.
#[derive(Debug, Default)]
pub struct UdpSourcePorts(std::sync::Mutex<Cursors>);

#[derive(Debug, Default)]
pub struct Cursors {
    by_pod: std::collections::BTreeMap<PodRef, u32>,
    /// How far any pod has got (counting on from a wrap).
    furthest: u32,
}

impl UdpSourcePorts {
    /// The base for a batch of `count` ports from `from`, advancing the pod's cursor past it.
    pub fn next(&self, from: &PodRef, count: u32) -> u32 {
        let mut cursors = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let furthest = cursors.furthest;
        let cursor = cursors.by_pod.entry(from.clone()).or_insert(furthest);
        let base = *cursor;
        *cursor = cursor.wrapping_add(count);
        let advanced = *cursor;
        // Ahead of `furthest` by less than half the range: the cursor has got further.
        if advanced.wrapping_sub(furthest) < u32::MAX / 2 {
            cursors.furthest = advanced;
        }
        base
    }
}

/// The agent's probe request for a batch from `from`, as one JSON line (`probe` reads it and needs
/// no stdin EOF): see `batch_request`.
pub fn probe_request(
    targets: &[Target],
    timing: super::ProbeTiming,
    ports: Option<(&UdpSourcePorts, &PodRef)>,
    nameserver: Option<std::net::SocketAddr>,
) -> String {
    let request = batch_request(targets, timing, ports, nameserver);
    // Plain data of strings and numbers: serialization cannot fail.
    serde_json::to_string(&request).unwrap_or_default()
}

/// The agent's probe request for a batch from `from`, with its block of UDP source ports taken
/// from the pod's cursor in `ports` (as many as the agent will use:
/// `polygraph_agent::probe::source_ports_needed`); without, the kernel picks.
pub fn batch_request(
    targets: &[Target],
    timing: super::ProbeTiming,
    ports: Option<(&UdpSourcePorts, &PodRef)>,
    nameserver: Option<std::net::SocketAddr>,
) -> polygraph_agent::wire::ProbeRequest {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut request = polygraph_agent::wire::ProbeRequest {
        timeout_ms: millis(timing.timeout),
        targets: targets.to_vec(),
        udp_source_base: None,
        nameserver,
        deadline_ms: timing.effective_deadline().map(millis),
        // The agent's own default is 2: sent only where the runner asks for more.
        attempts: (timing.effective_deadline().is_some() && timing.attempts > 2)
            .then_some(timing.attempts),
    };
    if let Some((ports, from)) = ports {
        let needed = polygraph_agent::probe::source_ports_needed(&request);
        request.udp_source_base = Some(ports.next(from, needed));
    }
    request
}

/// The agent's output (one JSON result per line, in request order), checked for completeness.
pub fn parse_probe_output(
    from: &PodRef,
    output: &str,
    expected: usize,
) -> Result<Vec<ProbeResult>, BackendError> {
    let fail = |message: String| BackendError::Probe {
        pod: from.clone(),
        message,
    };
    let results: Vec<ProbeResult> = output
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("unreadable agent output: {e}")))?;
    if results.len() != expected {
        return Err(fail(format!(
            "{} results for {expected} targets",
            results.len()
        )));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ProbeTiming;
    use polygraph_agent::wire::Protocol;

    fn pod(name: &str) -> PodRef {
        name.parse().expect("pod")
    }

    #[test]
    fn each_batch_takes_a_block_for_its_udp_probes_and_its_names() {
        let ports = UdpSourcePorts::default();
        let batch = [
            Target::new("10.0.0.1", 80, Protocol::Udp),
            Target::new("10.0.0.1", 80, Protocol::Tcp),
            Target::new("b.x.svc.cluster.local.", 80, Protocol::Tcp),
            Target::new("b.x.svc.cluster.local.", 80, Protocol::Udp),
        ];
        let x_a = pod("x/a");
        let base = |targets: &[Target], timing: ProbeTiming| -> Option<u32> {
            let line = probe_request(targets, timing, Some((&ports, &x_a)), None);
            serde_json::from_str::<polygraph_agent::wire::ProbeRequest>(&line)
                .expect("a request")
                .udp_source_base
        };
        let fixed = ProbeTiming::from(Duration::from_secs(1));
        assert_eq!(base(&batch, fixed), Some(0));
        // One UDP probe, two UDP probes by name, one name whose queries follow each other:
        // three ports.
        assert_eq!(base(&batch, fixed), Some(3));
        assert_eq!(base(&batch[1..2], fixed), Some(6));
        assert_eq!(base(&batch, fixed), Some(6));
        // With a deadline and 16 attempts, the name's attempts go together, each from its own
        // port: 2 + 16.
        let lossy = ProbeTiming {
            timeout: Duration::from_secs(1),
            deadline: Some(Duration::from_millis(100)),
            attempts: 16,
        };
        assert_eq!(base(&batch, lossy), Some(9));
        assert_eq!(base(&batch, lossy), Some(27));
    }

    #[test]
    fn a_new_pod_starts_past_every_port_used_so_far() {
        // x/a may get the address of y/a, deleted a moment ago: y/a's ports must not repeat.
        let ports = UdpSourcePorts::default();
        let udp = [Target::new("10.0.0.1", 80, Protocol::Udp); 1];
        let count = udp.len() as u32;
        for _ in 0..5 {
            ports.next(&pod("y/a"), count);
        }
        assert_eq!(ports.next(&pod("x/a"), count), 5);
        assert_eq!(
            ports.next(&pod("y/a"), count),
            5,
            "an old pod keeps its own cursor"
        );
        assert_eq!(ports.next(&pod("z/a"), count), 6);
    }
}
