//! The contract in `docs/` and the code cite each other by rule number: every rule a comment
//! or test names exists in `docs/`, every rule in `docs/` is named somewhere in the code (so a
//! reader finds its code by searching for it), and nothing in the repository points outside
//! it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const RULE_LETTERS: &[char] = &['T', 'H', 'L', 'W', 'C', 'Q'];

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a directory of the repository") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The rules `docs/` defines: `<a id="t8"></a>` anchors, as `T8`.
fn defined() -> BTreeSet<String> {
    let mut pages = Vec::new();
    files(&root().join("docs"), "md", &mut pages);
    let mut rules = BTreeSet::new();
    for page in pages {
        let text = std::fs::read_to_string(&page).expect("readable");
        for part in text.split("<a id=\"").skip(1) {
            let id = part.split('"').next().unwrap_or_default();
            let rule = id.to_uppercase();
            if is_rule(&rule) {
                rules.insert(rule);
            }
        }
    }
    rules
}

fn is_rule(token: &str) -> bool {
    let mut chars = token.chars();
    chars.next().is_some_and(|c| RULE_LETTERS.contains(&c))
        && token.len() >= 2
        && chars.all(|c| c.is_ascii_digit())
}

/// Rule numbers named in the comments of a Rust file (`// T8: ...`, `/// Q2 and Q5`, ranges
/// like `C2–C6`) and in its test-table names (`"T6 suspended stores"`), with where.
fn cited_in(path: &Path, out: &mut BTreeMap<String, Vec<String>>) {
    let text = std::fs::read_to_string(path).expect("readable");
    for (n, line) in text.lines().enumerate() {
        let Some(at) = line.find("//").or_else(|| line.find('"')) else {
            continue;
        };
        let tokens: Vec<&str> = line[at..]
            .split(|c: char| !c.is_ascii_alphanumeric())
            .collect();
        let mut add = |rule: String| {
            out.entry(rule)
                .or_default()
                .push(format!("{}:{}", path.display(), n + 1));
        };
        for token in &tokens {
            if is_rule(token) {
                add((*token).to_owned());
            }
        }
        // A range names every rule in it.
        for range in
            line[at..].split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        {
            let Some((from, to)) = range.trim_end_matches(['.', ':', ';']).split_once('–') else {
                continue;
            };
            if is_rule(from) && is_rule(to) && from[..1] == to[..1] {
                let (a, b): (u32, u32) =
                    (from[1..].parse().unwrap_or(0), to[1..].parse().unwrap_or(0));
                for i in a..=b {
                    add(format!("{}{i}", &from[..1]));
                }
            }
        }
    }
}

#[test]
fn every_rule_is_defined_and_cited() {
    let defined = defined();
    assert!(defined.len() >= 25, "docs/ defines the rules: {defined:?}");
    let mut sources = Vec::new();
    files(&root().join("src"), "rs", &mut sources);
    files(&root().join("tests"), "rs", &mut sources);
    let mut cited = BTreeMap::new();
    for source in sources.iter().filter(|s| !s.ends_with("tests/docs.rs")) {
        cited_in(source, &mut cited);
    }
    let unknown: Vec<String> = cited
        .iter()
        .filter(|(rule, _)| !defined.contains(*rule))
        .map(|(rule, at)| format!("{rule} (at {})", at.join(", ")))
        .collect();
    assert!(
        unknown.is_empty(),
        "the code cites rules docs/ does not define: {unknown:?}"
    );
    let uncited: Vec<&String> = defined.iter().filter(|r| !cited.contains_key(*r)).collect();
    assert!(
        uncited.is_empty(),
        "rules no code or test names (add the number where it is implemented): {uncited:?}"
    );
}

#[test]
fn nothing_points_outside_the_repository() {
    let mut texts = Vec::new();
    files(&root().join("src"), "rs", &mut texts);
    files(&root().join("tests"), "rs", &mut texts);
    files(&root().join("docs"), "md", &mut texts);
    texts.push(root().join("README.md"));
    for path in texts.iter().filter(|p| !p.ends_with("tests/docs.rs")) {
        let text = std::fs::read_to_string(path).expect("readable");
        for (n, line) in text.lines().enumerate() {
            // The one thing beside the checkout the project names: the control-plane binaries
            // the e2e suite unpacks by default (tests/e2e/control-plane).
            let outside = line.replace("../shared/k8s", "");
            assert!(
                !outside.contains("shared/") && !line.contains("DESIGN.md"),
                "{}:{} points outside the repository: {line}",
                path.display(),
                n + 1
            );
            // In Markdown, a relative link resolves to a file of the repository; Rust comments
            // link to none above the repository either.
            let markdown = path.extension().is_some_and(|e| e == "md");
            assert!(
                markdown || !line.contains("](../"),
                "{}:{} points outside the repository: {line}",
                path.display(),
                n + 1
            );
            for link in line.split("](").skip(1).filter(|_| markdown) {
                let target = link.split(')').next().unwrap_or_default();
                let file = target.split('#').next().unwrap_or_default();
                if file.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let resolved = path.parent().expect("a file's directory").join(file);
                let inside = resolved
                    .canonicalize()
                    .is_ok_and(|r| r.starts_with(root().canonicalize().expect("the root")));
                assert!(
                    inside,
                    "{}:{} links to {target}, which is not a file of the repository",
                    path.display(),
                    n + 1
                );
            }
        }
    }
}
