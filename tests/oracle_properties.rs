//! Properties of the oracle over generated clusters and policies (the benchmark's generator, which
//! mixes every selector form, ipBlock with except, ranges and named ports).

use polygraph::bench::{
    WorldSize, bench_port_protocols, generate_cluster, generate_cluster_policies,
    generate_policies, generate_policy_objects,
};
use std::net::IpAddr;

use polygraph::matrix::Cell;
use polygraph::model::Pod;
use polygraph::policy::{Direction, Oracle, parse_policies};
use proptest::prelude::*;

fn world() -> impl Strategy<Value = WorldSize> {
    (1usize..6, 1usize..30, 0usize..25, 0usize..12, any::<u64>()).prop_map(
        |(namespaces, pods, policies, cluster_policies, seed)| WorldSize {
            namespaces,
            pods,
            policies,
            cluster_policies,
            seed,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The indexed truth table and the direct, index-free explanation agree on every cell and
    /// every direction. The two share only the per-rule matching functions.
    #[test]
    fn index_agrees_with_direct_evaluation(size in world()) {
        let cluster = generate_cluster(&size);
        let policies = generate_policies(&size);
        let cluster_policies = generate_cluster_policies(&size);
        let oracle = Oracle::tiered(&cluster, &policies, &cluster_policies);
        let table = oracle.truth_table(&bench_port_protocols());
        for (cell, verdict) in table.cells() {
            let explanation = oracle.explain(cell);
            prop_assert_eq!(explanation.undefined(), verdict.undefined, "undefined {:?}: {}", cell, explanation.detail());
            if verdict.undefined {
                continue;
            }
            prop_assert_eq!(explanation.allowed(), verdict.allowed(), "{:?}: {}", cell, explanation.detail());
            prop_assert_eq!(explanation.drop_required(), verdict.drop, "drop {:?}: {} (egress drop {}, ingress drop {}: {})", cell, explanation.detail(), explanation.egress.drop, explanation.ingress.drop, explanation.ingress.summary());
        }
    }

    /// Hosts outside the cluster (a NodePort client, an external server) belong to no namespace:
    /// only ipBlock and networks peers can match them, and the index must find them as the direct
    /// evaluation does (it once narrowed ipBlock peers by namespace and missed them).
    #[test]
    fn hosts_outside_the_cluster_are_judged_alike_by_index_and_explanation(
        size in world(),
        thirds in proptest::collection::vec((0u8..6, 1u8..250), 1..4),
    ) {
        let cluster = generate_cluster(&size);
        // Some inside the generated ipBlocks and networks (10.244.0-5.x), some beyond them.
        let hosts: Vec<Pod> = thirds
            .iter()
            .enumerate()
            .map(|(i, (third, last))| Pod {
                namespace: String::new(),
                name: format!("host{i}"),
                labels: Default::default(),
                ip: IpAddr::from([10, 244, *third, *last]),
                ports: cluster.pods()[0].ports.clone(),
                host_network: false,
            })
            .chain([Pod {
                namespace: String::new(),
                name: "far".into(),
                labels: Default::default(),
                ip: IpAddr::from([203, 0, 113, 10]),
                ports: cluster.pods()[0].ports.clone(),
                host_network: false,
            }])
            .collect();
        let cluster = cluster.with_outside(&hosts);
        let policies = generate_policies(&size);
        let cluster_policies = generate_cluster_policies(&size);
        let oracle = Oracle::tiered(&cluster, &policies, &cluster_policies);
        let table = oracle.truth_table(&bench_port_protocols());
        for (cell, verdict) in table.cells() {
            if !(cluster.is_outside(cell.from) || cluster.is_outside(cell.to)) {
                continue;
            }
            let explanation = oracle.explain(cell);
            prop_assert_eq!(explanation.undefined(), verdict.undefined, "undefined {:?}: {}", cell, explanation.detail());
            if !verdict.undefined {
                prop_assert_eq!(explanation.allowed(), verdict.allowed(), "{:?}: {}", cell, explanation.detail());
            }
        }
    }

    /// Cluster policies are a set too: the order they are given in changes nothing, ties
    /// included (same-priority conflicts are undefined, never resolved by input order).
    #[test]
    fn cluster_policy_order_does_not_matter(size in world()) {
        let cluster = generate_cluster(&size);
        let policies = generate_policies(&size);
        let cluster_policies = generate_cluster_policies(&size);
        let mut reversed = cluster_policies.clone();
        reversed.reverse();
        let mut shuffled = cluster_policies.clone();
        fastrand::Rng::with_seed(size.seed).shuffle(&mut shuffled);
        let pps = bench_port_protocols();
        let table = Oracle::tiered(&cluster, &policies, &cluster_policies).truth_table(&pps);
        prop_assert_eq!(&table, &Oracle::tiered(&cluster, &policies, &reversed).truth_table(&pps));
        prop_assert_eq!(&table, &Oracle::tiered(&cluster, &policies, &shuffled).truth_table(&pps));
    }

    /// Without cluster policies the tiered oracle is exactly the NetworkPolicy oracle, and a
    /// cluster policy selecting nobody changes nothing.
    #[test]
    fn no_tiers_no_change(size in world()) {
        let cluster = generate_cluster(&size);
        let policies = generate_policies(&size);
        let pps = bench_port_protocols();
        let plain = Oracle::new(&cluster, &policies).truth_table(&pps);
        for (_, d) in plain.cells() {
            prop_assert!(!d.undefined && !d.drop);
        }
        let mut nobody = generate_cluster_policies(&WorldSize { cluster_policies: 3, ..size });
        for p in &mut nobody {
            p.subject = polygraph::policy::cluster::Subject::Namespaces(polygraph::policy::Selector {
                requirements: vec![polygraph::policy::Requirement {
                    key: "no-such-label".into(),
                    operator: polygraph::policy::Operator::Exists,
                }],
            });
        }
        prop_assert_eq!(plain, Oracle::tiered(&cluster, &policies, &nobody).truth_table(&pps));
    }

    /// Policies are a set: their order changes nothing.
    #[test]
    fn order_does_not_matter(size in world()) {
        let cluster = generate_cluster(&size);
        let policies = generate_policies(&size);
        let mut reversed = policies.clone();
        reversed.reverse();
        let pps = bench_port_protocols();
        prop_assert_eq!(
            Oracle::new(&cluster, &policies).truth_table(&pps),
            Oracle::new(&cluster, &reversed).truth_table(&pps)
        );
    }

    /// Union law, per direction: with policy sets A and B, a pod isolated by both allows what
    /// either allows; isolated by one, that one decides; isolated by neither, everything.
    #[test]
    fn policies_are_unioned(size in world(), split in 0usize..25) {
        let cluster = generate_cluster(&size);
        let all = generate_policies(&size);
        let split = split.min(all.len());
        let (a, b) = all.split_at(split);
        let pps = bench_port_protocols();
        let (oa, ob, oall) = (Oracle::new(&cluster, a), Oracle::new(&cluster, b), Oracle::new(&cluster, &all));
        let (ta, tb, tall) = (oa.truth_table(&pps), ob.truth_table(&pps), oall.truth_table(&pps));
        for k in 0..pps.len() {
            for from in 0..cluster.pods().len() {
                for to in 0..cluster.pods().len() {
                    let (va, vb, v) = (ta.get(k, from, to), tb.get(k, from, to), tall.get(k, from, to));
                    let combine = |pod, direction, in_a: bool, in_b: bool| {
                        let ia = !oa.isolating_policies(pod, direction).is_empty();
                        let ib = !ob.isolating_policies(pod, direction).is_empty();
                        match (ia, ib) {
                            (true, true) => in_a || in_b,
                            (true, false) => in_a,
                            (false, true) => in_b,
                            (false, false) => true,
                        }
                    };
                    prop_assert_eq!(v.egress, combine(from, Direction::Egress, va.egress, vb.egress));
                    prop_assert_eq!(v.ingress, combine(to, Direction::Ingress, va.ingress, vb.ingress));
                }
            }
        }
    }

    /// Writing policies out as YAML and reading them back yields the same compiled policies
    /// (origins aside): the loader loses nothing and invents nothing.
    #[test]
    fn yaml_round_trip(size in world()) {
        let objects = generate_policy_objects(&size);
        let compiled = generate_policies(&size);
        let text = serde_saphyr::to_string_multiple(&objects).expect("serialize");
        let reread = parse_policies("round-trip.yaml", &text, "default").expect("re-read");
        prop_assert_eq!(reread.network.len(), compiled.len());
        for (a, b) in reread.network.iter().zip(&compiled) {
            prop_assert_eq!((&a.namespace, &a.name, &a.pod_selector, &a.ingress, &a.egress),
                            (&b.namespace, &b.name, &b.pod_selector, &b.ingress, &b.egress));
        }
    }
}

/// Cells explained for the JSON report carry the same verdict as the table (debug assertion in
/// the report, checked here in release-like conditions as well).
#[test]
fn explanation_of_self_cell_is_flagged() {
    let size = WorldSize {
        namespaces: 2,
        pods: 4,
        policies: 3,
        cluster_policies: 0,
        seed: 3,
    };
    let cluster = generate_cluster(&size);
    let policies = generate_policies(&size);
    let oracle = Oracle::new(&cluster, &policies);
    let pp = bench_port_protocols()[0];
    let explanation = oracle.explain(Cell {
        from: 1,
        to: 1,
        port_protocol: pp,
    });
    assert!(explanation.summary().contains("self traffic"));
}
