//! `reused-ip-stale`: a dataplane that keys what it knows of a pod by its address, and when a new
//! pod comes up on a deleted pod's address keeps the old entry: the new pod carries the old one's
//! labels in every selector, until it goes away. Kept here once for both dataplanes, like every
//! fault with a history.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Cluster, Labels, PodRef};

/// Addresses and the identities a dataplane still has for them.
#[derive(Debug, Clone, Default)]
pub struct StaleIdentities {
    /// The pods of the previous state: address and labels.
    previous: BTreeMap<PodRef, (IpAddr, Labels)>,
    /// Addresses whose pod went away, with its labels.
    departed: BTreeMap<IpAddr, Labels>,
    /// Pods living on a departed pod's address, with the labels the dataplane keeps for them.
    stale: BTreeMap<PodRef, Labels>,
}

impl StaleIdentities {
    /// Takes the next state and returns `cluster` as the dataplane sees it: each pod on a reused
    /// address with its predecessor's labels.
    pub fn update(&mut self, cluster: &Cluster) -> Cluster {
        let now: BTreeMap<PodRef, (IpAddr, Labels)> = cluster
            .pods()
            .iter()
            .map(|pod| (pod.key(), (pod.ip, pod.labels.clone())))
            .collect();
        for (pod, (ip, labels)) in &self.previous {
            if !now.contains_key(pod) {
                // A stale pod leaving hands on the identity the dataplane had for it.
                let labels = self.stale.remove(pod).unwrap_or_else(|| labels.clone());
                self.departed.insert(*ip, labels);
            }
        }
        for (pod, (ip, _)) in &now {
            if !self.previous.contains_key(pod)
                && let Some(labels) = self.departed.remove(ip)
            {
                self.stale.insert(pod.clone(), labels);
            }
        }
        self.stale.retain(|pod, _| now.contains_key(pod));
        self.previous = now;
        if self.stale.is_empty() {
            return cluster.clone();
        }
        let mut description = cluster.description();
        for pod in &mut description.pods {
            let key = PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            };
            if let Some(labels) = self.stale.get(&key) {
                pod.labels = labels.clone();
            }
        }
        // The labels were a valid pod's: rebuilding cannot fail; if it did, no distortion.
        description
            .build("the dataplane's view")
            .unwrap_or_else(|_| cluster.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PodDescription, default_model};

    #[test]
    fn a_pod_on_a_deleted_pods_address_keeps_its_labels_until_it_goes() {
        let model = default_model();
        let full = model.build("m").unwrap();
        let xa = full
            .pod(full.find_pod(&"x/a".parse().unwrap()).unwrap())
            .clone();
        let mut without = model.clone();
        without
            .pods
            .retain(|p| !(p.namespace == "x" && p.name == "a"));
        let mut reused = without.clone();
        reused.pods.push(PodDescription {
            namespace: "x".into(),
            name: "d".into(),
            labels: Labels::from([("pod".into(), "d".into())]),
            ip: Some(xa.ip.to_string()),
            ports: Vec::new(),
            host_network: false,
        });
        let mut stale = StaleIdentities::default();
        let seen = stale.update(&full);
        assert_eq!(seen.pods().len(), full.pods().len());
        stale.update(&without.build("m").unwrap());
        let seen = stale.update(&reused.build("m").unwrap());
        let xd = seen.pod(seen.find_pod(&"x/d".parse().unwrap()).unwrap());
        assert_eq!(xd.labels, xa.labels, "the old pod's labels");
        // Gone, and back on another address: itself again.
        stale.update(&without.build("m").unwrap());
        reused.pods.last_mut().unwrap().ip = Some("10.244.1.77".into());
        let seen = stale.update(&reused.build("m").unwrap());
        let xd = seen.pod(seen.find_pod(&"x/d".parse().unwrap()).unwrap());
        assert_eq!(xd.labels.get("pod").map(String::as_str), Some("d"));
    }
}
