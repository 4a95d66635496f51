//! Scenario files are checked completely before anything is deployed: every problem is one line
//! naming the file and line, exit code 2, and no backend is started (nothing on stdout).

mod common;

const POLICY: &str = "      - apiVersion: networking.k8s.io/v1\n        kind: NetworkPolicy\n";

fn cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("yaml error", "name: t\nsteps:\n  - apply: [\n".into(), ":3:"),
        ("unknown action", "name: t\nsteps:\n  - delete-polcy: {namespace: x, name: y}\n".into(), ":3:"),
        ("two actions", "name: t\nsteps:\n  - delete-pod: x/a\n    delete-namespace: y\n".into(), ":3: a step needs exactly one action"),
        ("no action", "name: t\nsteps:\n  - name: nothing\n".into(), ":3: a step needs exactly one action"),
        ("invalid policy", format!("name: t\nsteps:\n  - apply:\n{POLICY}        metadata: {{name: p, namespace: x}}\n        spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: 90, endPort: 80}}]}}]}}\n"), ":4: NetworkPolicy x/p: spec.ingress[0].ports[0].endPort"),
        ("policy in unknown namespace", format!("name: t\nsteps:\n  - apply:\n{POLICY}        metadata: {{name: p, namespace: q}}\n        spec: {{podSelector: {{}}}}\n"), ":3: policy q/p: namespace q does not exist"),
        ("unknown pod", "name: t\nsteps:\n  - set-pod-labels: {pod: x/q, labels: {a: b}}\n".into(), ":3: there is no pod x/q"),
        ("unknown namespace", "name: t\nsteps:\n  - remove-namespace-labels: {namespace: q, keys: [ns]}\n".into(), ":3: there is no namespace q"),
        ("delete missing policy", "name: t\nsteps:\n  - delete-policy: {namespace: x, name: nope}\n".into(), ":3: there is no policy x/nope"),
        ("update missing policy", format!("name: t\nsteps:\n  - update:\n{POLICY}        metadata: {{name: p, namespace: x}}\n"), ":3: update: there is no policy x/p"),
        ("pinned expectation wrong", format!("name: t\nsteps:\n  - apply:\n{POLICY}        metadata: {{name: p, namespace: x}}\n        spec: {{podSelector: {{}}, policyTypes: [Ingress]}}\n    expect:\n      - blocked: [\"*/* -> y/*\"]\n"), ":9: the pinned expectation disagrees with the spec"),
        ("pattern typo", "name: t\nsteps:\n  - probe: {}\n    expect:\n      - blocked: [\"*/* -> q/*\"]\n".into(), ":5: expect.blocked: \"q/*\" matches no pod"),
        ("unprobed pair", "name: t\nprobe: {protocols: [TCP]}\nsteps:\n  - probe: {}\n    expect:\n      - on: [80/UDP]\n        blocked: []\n".into(), ":6: expect.on: 80/UDP is not probed"),
        ("unknown model", "name: t\nmodel: nope\nsteps:\n  - probe: {}\n".into(), "unknown model \"nope\""),
        ("bad cluster", "name: t\ncluster: {namespaces: [{name: x}], pods: [{namespace: y, name: a}]}\nsteps:\n  - probe: {}\n".into(), "pods[0].namespace"),
        ("existing pod", "name: t\nsteps:\n  - create-pod: {namespace: x, name: a}\n".into(), ":3: pod x/a already exists"),
        ("protected label", "name: t\nsteps:\n  - set-namespace-labels: {namespace: x, labels: {kubernetes.io/metadata.name: z}}\n".into(), ":3: kubernetes.io/metadata.name is set by the API server"),
        ("no steps", "name: t\nsteps: []\n".into(), "at least one step"),
    ]
}

#[test]
fn bad_scenarios_are_rejected_before_anything_is_deployed() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text, expected) in cases() {
        let path = dir.path().join("scenario.yaml");
        std::fs::write(&path, &text).expect("write");
        let path = path.display().to_string();
        let output = common::polygraph(&["run", &path], "");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "{name}: something ran: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(&path), "{name}: no file in {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: {stderr:?} should contain {expected:?}"
        );
        assert!(!stderr.contains("panicked"), "{name}");
    }
}

#[test]
fn unknown_scenario_names_are_usage_errors() {
    let output = common::polygraph(&["run", "no-such-scenario"], "");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no built-in scenario has that name"));
}

/// A scenario file that can't be read: one line naming the file, what was being done and why.
#[test]
fn an_unreadable_scenario_names_the_file_and_the_cause() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A directory where a file is expected: reading it fails whoever runs the test.
    let path = dir.path().join("not-a-file.yaml");
    std::fs::create_dir(&path).expect("mkdir");
    let output = common::polygraph(&["scenarios", "check", &path.display().to_string()], "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: {}: reading the scenario: ",
            path.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("directory"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn the_library_can_be_listed_and_shown() {
    let list = common::polygraph(&["scenarios", "list"], "");
    assert_eq!(list.status.code(), Some(0));
    let text = String::from_utf8_lossy(&list.stdout);
    for name in [
        "deny-all-ingress",
        "or-selector-trap",
        "seed-production-layered",
        "new-pod-under-policy",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    let show = common::polygraph(&["scenarios", "show", "and-selector"], "");
    assert_eq!(show.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&show.stdout).starts_with("name: and-selector"));
}

#[test]
fn apply_files_reads_policies_relative_to_the_scenario() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("policies")).expect("mkdir");
    std::fs::write(
        dir.path().join("policies/deny.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .expect("write policy");
    let scenario = dir.path().join("from-files.yaml");
    std::fs::write(
        &scenario,
        "name: from-files\nsteps:\n  - apply-files: [policies/deny.yaml]\n    expect:\n      - blocked: [\"*/* -> x/*\"]\n  - delete-policy: {namespace: x, name: deny}\n",
    )
    .expect("write scenario");
    let output = common::polygraph(&["scenarios", "check", &scenario.display().to_string()], "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok from-files"), "{stdout}");
    assert!(
        stdout.contains("2 steps, 1 with pinned expectations"),
        "{stdout}"
    );

    // A wrong pin on a file-applied policy is caught the same way.
    let text = std::fs::read_to_string(&scenario)
        .expect("read")
        .replace("-> x/*", "-> y/*");
    std::fs::write(&scenario, text).expect("rewrite");
    let output = common::polygraph(&["scenarios", "check", &scenario.display().to_string()], "");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("from-files.yaml:5: the pinned expectation disagrees")
    );
}

#[test]
fn the_whole_library_checks() {
    let output = common::polygraph(
        &[
            "scenarios",
            "check",
            "deny-all-ingress",
            "seed-production-layered",
        ],
        "",
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains(
        "ok seed-production-layered (built-in:seed-production-layered): 5 steps, 5 with pinned"
    ));
}
