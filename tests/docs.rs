//! The documentation's links: every relative link in README.md, ARCHITECTURE.md and docs/
//! resolves to a file of the repository, and a link's `#anchor` to a heading of that file (as
//! GitHub makes anchors from headings). Links inside code blocks are not links.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The text outside fenced code blocks and inline code.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            // Inline code spans hold no links either.
            let mut inside = false;
            for part in line.split('`') {
                if !inside {
                    out.push_str(part);
                }
                inside = !inside;
            }
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation other than `-` and `_` dropped, spaces
/// to `-`; a repeated heading gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 1;
        while seen.contains(&unique) {
            unique = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(unique);
    }
    seen
}

fn links(text: &str) -> Vec<String> {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").expect("regex");
    link.captures_iter(&prose(text))
        .map(|c| c[1].to_string())
        .collect()
}

fn check(doc: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(doc).expect("readable");
    let mut broken = Vec::new();
    for target in links(&text) {
        if target.starts_with("http://")
            || target.starts_with("https://")
            || target.starts_with("mailto:")
        {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (target.as_str(), None),
        };
        let path = if file.is_empty() {
            doc.to_path_buf()
        } else {
            doc.parent().expect("a directory").join(file)
        };
        if !path.exists() {
            broken.push(format!("{}: {target}: no such file", doc.display()));
            continue;
        }
        if let Some(anchor) = anchor {
            let Ok(linked) = std::fs::read_to_string(&path) else {
                broken.push(format!(
                    "{}: {target}: an anchor into something not text",
                    doc.display()
                ));
                continue;
            };
            if !anchors(&linked).contains(anchor) {
                broken.push(format!("{}: {target}: no such heading", doc.display()));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let documents = documents();
    assert!(documents.len() > 10, "docs/ has its pages");
    let broken: Vec<String> = documents.iter().flat_map(|d| check(d)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_docs_page_is_reachable_from_the_index() {
    let index = std::fs::read_to_string(root().join("docs/README.md")).expect("docs/README.md");
    let linked: BTreeSet<String> = links(&index).into_iter().collect();
    for doc in documents()
        .iter()
        .filter(|d| d.starts_with(root().join("docs")))
    {
        let name = doc.file_name().and_then(|n| n.to_str()).expect("a name");
        if name != "README.md" {
            assert!(linked.contains(name), "docs/README.md does not link {name}");
        }
    }
}

#[test]
fn the_readme_is_a_five_minute_read() {
    let lines = std::fs::read_to_string(root().join("README.md"))
        .expect("README.md")
        .lines()
        .count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: the manual belongs in docs/"
    );
}

#[test]
fn the_checker_finds_a_broken_link_and_a_missing_anchor() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("b.md"), "# A heading: `code`\n").expect("write");
    let doc = dir.path().join("a.md");
    std::fs::write(
        &doc,
        "[ok](b.md#a-heading-code) [gone](missing.md) [no anchor](b.md#nope)\n```\n[in code](nowhere.md)\n```\n",
    )
    .expect("write");
    let broken = check(&doc);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].ends_with("missing.md: no such file"));
    assert!(broken[1].ends_with("b.md#nope: no such heading"));
}
