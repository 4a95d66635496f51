//! Pod readiness on a real cluster: wait for Ready with an address, give up early on states that
//! never recover (image pulls, crash loops), and say why a pod isn't ready: its phase, conditions,
//! container states and recent events.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod as KubePod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

use super::connection::call;
use crate::backend::BackendError;
use crate::model::PodRef;

/// Container waiting reasons that never resolve by waiting.
const HOPELESS: [&str; 5] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// A ready pod: its address and node.
pub(super) struct Placed {
    /// One per family the pod has, the primary first.
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
}

/// How often pod readiness is read again.
const POLL: Duration = Duration::from_millis(250);

/// A pod's state as the API shows it: ready with its addresses, hopeless, or neither yet.
enum PodState {
    Ready(Placed),
    Hopeless,
    Waiting,
}

fn pod_state(current: &KubePod) -> PodState {
    let node = current.spec.as_ref().and_then(|s| s.node_name.clone());
    let status = current.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    // `podIPs` lists every family of a dual-stack pod; `podIP` is its first.
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    let hopeless = status.container_statuses.iter().flatten().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| HOPELESS.contains(&r))
    });
    match (ready, ips.is_empty()) {
        (true, false) => PodState::Ready(Placed { ips, node }),
        _ if hopeless => PodState::Hopeless,
        _ => PodState::Waiting,
    }
}

/// Waits until every pod of `pods` (model names, all in the namespace `api` covers) is ready,
/// one is hopeless, or `deadline` passes: one LIST of the namespace's pods per poll, whatever
/// their number (a GET per pod, one pod after the other, cost a call per pod and a poll's wait
/// per pod still starting).
pub(super) async fn await_pods(
    api: &Api<KubePod>,
    events: &Api<Event>,
    pods: &[PodRef],
    selector: &str,
    deadline: tokio::time::Instant,
) -> Result<Vec<(PodRef, Placed)>, BackendError> {
    let mut placed: Vec<(PodRef, Placed)> = Vec::new();
    let mut waiting: Vec<PodRef> = pods.to_vec();
    loop {
        let list = call("listing the run's pods", || async {
            api.list(&ListParams::default().labels(selector)).await
        })
        .await?;
        let mut still = Vec::new();
        for pod in waiting {
            let state = list
                .items
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(pod.name.as_str()))
                .map_or(PodState::Waiting, pod_state);
            match state {
                PodState::Ready(at) => placed.push((pod, at)),
                PodState::Hopeless => {
                    return Err(BackendError::Pod {
                        message: format!("not ready: {}", unready_reason(api, events, &pod).await),
                        pod,
                    });
                }
                PodState::Waiting => still.push(pod),
            }
        }
        waiting = still;
        let Some(first) = waiting.first() else {
            return Ok(placed);
        };
        if tokio::time::Instant::now() > deadline {
            return Err(BackendError::Pod {
                pod: first.clone(),
                message: format!("not ready: {}", unready_reason(api, events, first).await),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the EndpointSlices of a pod's own Service (`service`, in the namespace `api` covers) until
/// every address of the pod is a ready endpoint: the first probe through the Service must not meet a
/// service proxy with no endpoint yet, which would look like a drop. (The proxy's own programming,
/// which follows the slice within moments, cannot be observed through the API; the step's
/// convergence loop absorbs it.)
pub(super) async fn await_endpoints(
    api: &Api<EndpointSlice>,
    service: &str,
    pod: &PodRef,
    addresses: &[IpAddr],
    deadline: tokio::time::Instant,
) -> Result<(), BackendError> {
    let selector = format!("kubernetes.io/service-name={service}");
    loop {
        let slices = call(
            &format!("listing the endpoints of pod {pod}'s Service"),
            || async { api.list(&ListParams::default().labels(&selector)).await },
        )
        .await?;
        let ready: Vec<IpAddr> = slices
            .items
            .iter()
            .flat_map(|slice| &slice.endpoints)
            // A nil condition means ready (the API's own reading).
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| &e.addresses)
            .filter_map(|a| a.parse().ok())
            .collect();
        let missing: Vec<String> = addresses
            .iter()
            .filter(|a| !ready.contains(a))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BackendError::Pod {
                pod: pod.clone(),
                message: format!(
                    "its Service {service} has no ready endpoint for {} (the endpoint controller did not add the pod)",
                    missing.join(", ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Why a pod isn't ready: its phase, container states and recent events.
async fn unready_reason(api: &Api<KubePod>, events: &Api<Event>, pod: &PodRef) -> String {
    let mut reasons = Vec::new();
    if let Ok(current) = api.get(&pod.name).await {
        let status = current.status.unwrap_or_default();
        reasons.push(format!(
            "phase {}",
            status.phase.unwrap_or_else(|| "unknown".into())
        ));
        for condition in status.conditions.iter().flatten() {
            if condition.status != "True"
                && let Some(reason) = &condition.reason
            {
                reasons.push(format!(
                    "{} {reason}: {}",
                    condition.type_,
                    condition.message.clone().unwrap_or_default()
                ));
            }
        }
        for container in status.container_statuses.iter().flatten() {
            if let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                reasons.push(format!(
                    "container {} waiting: {} {}",
                    container.name,
                    waiting.reason.clone().unwrap_or_default(),
                    waiting.message.clone().unwrap_or_default()
                ));
            }
        }
    }
    let selector = format!("involvedObject.name={}", pod.name);
    if let Ok(list) = events.list(&ListParams::default().fields(&selector)).await {
        for event in list.items.iter().rev().take(5) {
            reasons.push(format!(
                "event {}: {}",
                event.reason.clone().unwrap_or_default(),
                event.message.clone().unwrap_or_default()
            ));
        }
    }
    crate::input::one_line(&reasons.join("; "))
}
