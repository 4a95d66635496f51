//! Fuzzing the whole input path: YAML text -> documents -> validation -> compilation -> oracle ->
//! explanations -> reports. Whatever the input, polygraph returns an error or an answer; it never
//! panics. Starts from valid policies and mutates them (hostile values, dropped and invented keys,
//! truncation), and also feeds raw strings.
//!
//! CI runs a few thousand cases; for a long run: `PROPTEST_CASES=200000 cargo test --release --test
//! fuzz_policy_input`.

use polygraph::analyze::analyze;
use polygraph::bench::{WorldSize, generate_policy_objects};
use polygraph::matrix::Cell;
use polygraph::model::default_model;
use polygraph::policy::parse_policies;
use polygraph::report::{analyze_json, matrix_table};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Values that have broken parsers and validators before.
fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(65535)),
        Just(json!(65536)),
        Just(json!(2147483648i64)),
        Just(json!(-2147483649i64)),
        Just(json!(1.5)),
        Just(json!("")),
        Just(json!("y")),
        Just(json!("80")),
        Just(json!("serve-80-tcp")),
        Just(json!("TCP")),
        Just(json!("SCTP")),
        Just(json!("Ingress")),
        Just(json!("Egress")),
        Just(json!("In")),
        Just(json!("NotIn")),
        Just(json!("Exists")),
        Just(json!("10.0.0.0/8")),
        Just(json!("10.0.0.1/32")),
        Just(json!("0.0.0.0/0")),
        Just(json!("::/0")),
        Just(json!("fd00::1/128")),
        Just(json!("10.0.0.0/33")),
        Just(json!("::ffff:1.2.3.4/128")),
        Just(json!("kubernetes.io/metadata.name")),
        Just(json!("a".repeat(300))),
        Just(json!("ünïcödé/ключ")),
        "[ -~]{0,20}".prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("podSelector"),
        Just("namespaceSelector"),
        Just("ipBlock"),
        Just("cidr"),
        Just("except"),
        Just("port"),
        Just("endPort"),
        Just("protocol"),
        Just("ports"),
        Just("policyTypes"),
        Just("ingress"),
        Just("egress"),
        Just("from"),
        Just("to"),
        Just("matchLabels"),
        Just("matchExpressions"),
        Just("key"),
        Just("operator"),
        Just("values"),
        Just("items"),
        Just("kind"),
        Just("apiVersion"),
        Just("name"),
        Just("namespace"),
        Just("spec"),
        Just("metadata"),
        Just("pod"),
        Just("ns"),
    ]
    .prop_map(str::to_string)
}

/// Every path to a node of the tree.
fn paths(value: &Value, prefix: Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let mut p = prefix.clone();
                p.push(PathStep::Key(k.clone()));
                paths(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let mut p = prefix.clone();
                p.push(PathStep::Index(i));
                paths(v, p, out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(value: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut node = value;
    for step in path {
        node = match step {
            PathStep::Key(k) => node.get_mut(k.as_str())?,
            PathStep::Index(i) => node.get_mut(*i)?,
        };
    }
    Some(node)
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    Insert(usize, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), hostile_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), field_name(), hostile_value())
            .prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
    ]
}

fn apply(value: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    paths(value, Vec::new(), &mut all);
    let pick = |i: usize| all[i % all.len()].clone();
    match mutation {
        Mutation::Replace(i, v) => {
            if let Some(node) = node_mut(value, &pick(*i)) {
                *node = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let path = pick(*i);
            if let Some((PathStep::Key(k), parent)) = path.split_last()
                && let Some(Value::Object(map)) = node_mut(value, parent)
            {
                map.remove(k);
            }
        }
        Mutation::Insert(i, k, v) => {
            if let Some(Value::Object(map)) = node_mut(value, &pick(*i)) {
                map.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Runs everything downstream of the text. Panics propagate and fail the test.
fn exercise(text: &str) {
    let Ok(policies) = parse_policies("fuzz.yaml", text, "x") else {
        return;
    };
    let cluster = default_model()
        .build("built-in")
        .expect("default model is valid");
    let analysis = analyze(cluster, policies, &[]);
    let oracle = analysis.oracle();
    for (k, pp) in analysis.table.port_protocols().iter().enumerate() {
        let _ = matrix_table::truth_matrix(&analysis.table, k, false).to_string();
        let explanation = oracle.explain(Cell {
            from: 0,
            to: 4,
            port_protocol: *pp,
        });
        assert_eq!(explanation.allowed(), analysis.table.get(k, 0, 4).allowed());
        let _ = explanation.detail();
    }
    let _ = serde_json::to_string(&analyze_json::report(&analysis)).expect("report serializes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_policies_never_panic(
        seed in any::<u64>(),
        mutations in prop::collection::vec(mutation(), 1..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        let size = WorldSize { namespaces: 3, pods: 9, policies: 2, cluster_policies: 0, seed };
        let mut objects = generate_policy_objects(&size);
        // Aim the generated policies at the default model's namespaces.
        for (i, object) in objects.iter_mut().enumerate() {
            object["metadata"]["namespace"] = json!(["x", "y", "z"][i % 3]);
            for m in &mutations {
                apply(object, m);
            }
        }
        let mut text = serde_saphyr::to_string_multiple(&objects).unwrap_or_default();
        if let Some(cut) = cut {
            let mut at = cut % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        exercise(&text);
    }

    #[test]
    fn raw_text_never_panics(text in "\\PC{0,200}") {
        exercise(&text);
    }

    #[test]
    fn list_wrappers_never_panic(items in prop::collection::vec(hostile_value(), 0..4)) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        exercise(&serde_saphyr::to_string(&list).unwrap_or_default());
    }
}
