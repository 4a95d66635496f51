//! The known-answer corpus (tests/corpus/*.yaml), shared by the oracle test and the real-packet
//! test: loading cases, building command lines, expanding expectations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The spec rule or seed pattern under test.
    pub covers: String,
    /// A file in tests/corpus/clusters (default: the built-in model).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Passed as -n.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocols: Vec<String>,
    /// Policies as one multi-document YAML text, or...
    #[serde(default)]
    pub policies: Option<String>,
    /// ...as files of a directory applied together (`-f DIR`), name -> text.
    #[serde(default)]
    pub policy_files: BTreeMap<String, String>,
    /// ...or as a directory of the repository (`-f DIR`), e.g. the examples.
    #[serde(default)]
    pub policy_dir: Option<String>,
    pub expect: Vec<Expectation>,
    /// Warnings polygraph must print (substring match).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// `80/TCP` entries; default: every probed (port, protocol).
    #[serde(default)]
    pub on: Vec<String>,
    #[serde(default)]
    pub blocked: Vec<String>,
    /// Cells the spec leaves to the implementation (never failed on real packets).
    #[serde(default)]
    pub undefined: Vec<String>,
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

pub fn load_cases() -> Vec<(String, Case)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read case file");
        let options = serde_saphyr::options! { strict_booleans: true };
        let parsed: Vec<Case> = serde_saphyr::from_str_with_options(&text, options)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        cases.extend(parsed.into_iter().map(|c| (stem.clone(), c)));
    }
    cases
}

impl Case {
    /// `polygraph <command>` arguments for this case (policies written under `dir`).
    pub fn args(&self, command: &str, dir: &Path) -> Vec<String> {
        let case = self;
        let mut args: Vec<String> = vec![command.into(), "-o".into(), "json".into()];
        if let Some(text) = &case.policies {
            let path = dir.join("policies.yaml");
            std::fs::write(&path, text).expect("write case files");
            args.extend(["-f".into(), path.display().to_string()]);
        }
        if !case.policy_files.is_empty() {
            let sub = dir.join("policies");
            std::fs::create_dir(&sub).expect("write case files");
            for (name, text) in &case.policy_files {
                std::fs::write(sub.join(name), text).expect("write case files");
            }
            args.extend(["-f".into(), sub.display().to_string()]);
        }
        if let Some(policy_dir) = &case.policy_dir {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(policy_dir);
            args.extend(["-f".into(), path.display().to_string()]);
        }
        if let Some(cluster) = &case.cluster {
            let path = corpus_dir().join("clusters").join(cluster);
            args.extend(["--cluster".into(), path.display().to_string()]);
        }
        if let Some(ns) = &case.namespace {
            args.extend(["-n".into(), ns.clone()]);
        }
        for p in &case.ports {
            args.extend(["--port".into(), p.to_string()]);
        }
        for p in &case.protocols {
            args.extend(["--protocol".into(), p.clone()]);
        }
        args
    }

    /// Blocked (from, to, "port/PROTO") cells this case expects, given the report's pods and pairs.
    pub fn expected_blocked(
        &self,
        pods: &[String],
        probed: &[String],
    ) -> Result<BTreeSet<(String, String, String)>, String> {
        self.expected(pods, probed, |e| &e.blocked)
    }

    /// Undefined (from, to, "port/PROTO") cells this case expects.
    pub fn expected_undefined(
        &self,
        pods: &[String],
        probed: &[String],
    ) -> Result<BTreeSet<(String, String, String)>, String> {
        self.expected(pods, probed, |e| &e.undefined)
    }

    /// The cells one list of patterns (`blocked` or `undefined`) names, on their pairs.
    fn expected(
        &self,
        pods: &[String],
        probed: &[String],
        patterns: impl Fn(&Expectation) -> &Vec<String>,
    ) -> Result<BTreeSet<(String, String, String)>, String> {
        let mut expected = BTreeSet::new();
        for expectation in &self.expect {
            let on = if expectation.on.is_empty() {
                probed
            } else {
                &expectation.on[..]
            };
            for pp in on {
                if !probed.contains(pp) {
                    return Err(format!(
                        "expectation names {pp}, which is not probed ({probed:?})"
                    ));
                }
                for pattern in patterns(expectation) {
                    for (f, t) in super::expand_pattern(pattern, pods) {
                        expected.insert((f, t, pp.clone()));
                    }
                }
            }
        }
        Ok(expected)
    }
}

/// Pods and "port/PROTO" pairs of an analyze or probe JSON report.
pub fn report_axes(report: &serde_json::Value) -> Result<(Vec<String>, Vec<String>), String> {
    let pods = report["pods"]
        .as_array()
        .ok_or("no pods in report")?
        .iter()
        .map(|p| p["pod"].as_str().unwrap_or_default().to_string())
        .collect();
    let probed = report["port_protocols"]
        .as_array()
        .ok_or("no port_protocols")?
        .iter()
        .map(|pp| {
            format!(
                "{}/{}",
                pp["port"],
                pp["protocol"].as_str().unwrap_or_default()
            )
        })
        .collect();
    Ok((pods, probed))
}

/// (from, to, "port/PROTO") of a report cell.
pub fn cell_key(cell: &serde_json::Value) -> (String, String, String) {
    (
        cell["from"].as_str().unwrap_or_default().to_string(),
        cell["to"].as_str().unwrap_or_default().to_string(),
        format!(
            "{}/{}",
            cell["port"],
            cell["protocol"].as_str().unwrap_or_default()
        ),
    )
}
