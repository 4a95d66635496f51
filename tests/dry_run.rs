//! `--dry-run` prints every manifest polygraph would create, contacting nothing; the output must pass
//! strict Kubernetes schema validation (kubernetes-validate --strict, from PyPI) for every built-in
//! scenario, for probe and for smoke.

mod common;

use std::process::Command;

/// Schema validation needs kubernetes-validate (PyPI); `.ci/run` installs it.
fn require_validator() {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "kubernetes-validate is not installed: pip install kubernetes-validate (.ci/run does)"
    );
}

fn dry_run(args: &[&str]) -> String {
    let output = common::polygraph(args, "");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

fn validate(name: &str, yaml: &str) {
    require_validator();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write");
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", &path.display().to_string()])
        .output()
        .expect("run kubernetes-validate");
    assert!(
        output.status.success() && output.stdout.is_empty(),
        "{name}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_whole_library_dry_run_is_valid_kubernetes() {
    let yaml = dry_run(&["run", "--dry-run"]);
    let documents = yaml.matches("\n---\n").count() + usize::from(yaml.starts_with("---"));
    // The dry run is the run: scenarios sharing a model share its deployment, so each call that
    // sends an object (create, apply, patch) has exactly one document, and deletions none.
    let sending = yaml
        .lines()
        .filter(|l| {
            ["# create ", "# apply ", "# patch "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .count();
    assert_eq!(documents, sending, "one object per call that sends one");
    assert!(documents > 60, "{documents} documents");
    assert!(
        yaml.contains("# delete NetworkPolicy "),
        "resets delete policies"
    );
    // Policies live in the run's namespaces, and namespace-name selectors follow them.
    assert!(
        !yaml.contains("namespace: x\n"),
        "a base namespace name leaked"
    );
    assert!(
        !yaml.contains("kubernetes.io/metadata.name: kube-system\n"),
        "a selector was not rewritten"
    );
    assert!(yaml.contains("app.kubernetes.io/managed-by: polygraph"));
    validate("library", &yaml);
}

#[test]
fn probe_and_smoke_dry_runs_are_valid_kubernetes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let probe = dry_run(&[
        "probe",
        "--dry-run",
        "--cluster",
        &format!("{root}/examples/production/cluster.yaml"),
        "-f",
        &format!("{root}/examples/production/policies"),
        "--image",
        "registry.example/agent:test",
        "--node-selector",
        "kubernetes.io/os=linux",
        "--toleration",
        "node-role.kubernetes.io/control-plane:NoSchedule",
        "--toleration",
        "dedicated=probes",
    ]);
    assert!(probe.contains("image: registry.example/agent:test"));
    assert!(probe.contains("key: node-role.kubernetes.io/control-plane"));
    assert!(probe.contains("operator: Equal"));
    assert!(probe.contains("kubernetes.io/os: linux"));
    validate("probe", &probe);
    let smoke = dry_run(&["smoke", "--dry-run", "--prefix", "ci"]);
    assert!(smoke.contains("name: ci-"));
    validate("smoke", &smoke);
}

#[test]
fn bad_flags_are_usage_errors() {
    let output = common::polygraph(&["smoke", "--dry-run", "--prefix", "Not_A_Label"], "");
    assert_eq!(output.status.code(), Some(2));
    let output = common::polygraph(&["smoke", "--dry-run", "--node-selector", "novalue"], "");
    assert_eq!(output.status.code(), Some(2));
    let output = common::polygraph(&["smoke", "--dry-run", "--toleration", "gpu:Sometimes"], "");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--toleration") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
