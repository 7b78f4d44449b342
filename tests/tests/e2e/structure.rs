//! The workspace's structure, as the README's layout promises it: no two modules import each
//! other, and each crate depends only on what its role needs (`cargo tree`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Every `src/**/*.rs` of every crate, with its module path (`crate dir`, then modules).
fn modules(root: &Path) -> anyhow::Result<Vec<(Vec<String>, PathBuf)>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "fuzz" {
                    dirs.push(path);
                }
                continue;
            }
            let Some(src) = path
                .ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "src"))
            else {
                continue;
            };
            let relative = path.strip_prefix(src)?.with_extension("");
            // Binaries are their own crates' roots, importing nothing of the modules here.
            if !name.ends_with(".rs") || relative.starts_with("bin") {
                continue;
            }
            let krate = src.parent().context("src has a parent")?;
            let mut module: Vec<String> = vec![krate.strip_prefix(root)?.display().to_string()];
            module.extend(relative.iter().map(|p| p.to_string_lossy().into_owned()));
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            found.push((module, path));
        }
    }
    Ok(found)
}

/// The modules `text` (of module `me`) refers to through `crate::` or `super::`, outside
/// comments and its unit tests.
fn references(me: &[String], text: &str) -> BTreeSet<Vec<String>> {
    let code = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    let mut refs = BTreeSet::new();
    // `super` of `a/b.rs` and of `a/b/mod.rs` is `a` (a module path without the file).
    let parent = me[..me.len().saturating_sub(1).max(1)].to_vec();
    for line in code
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//"))
    {
        for (prefix, base) in [("crate::", me[..1].to_vec()), ("super::", parent.clone())] {
            let mut rest = line;
            while let Some(at) = rest.find(prefix) {
                let before = rest[..at].chars().last();
                rest = &rest[at + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let mut path: Vec<String> = Vec::new();
                for segment in rest.split("::").take(2) {
                    let ident: String = segment
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if ident.is_empty() {
                        break;
                    }
                    let whole = ident.len() == segment.len();
                    path.push(ident);
                    if !whole {
                        break;
                    }
                }
                if let Some(first) = path.first() {
                    let mut target = base.clone();
                    target.push(first.clone());
                    if let Some(second) = path.get(1) {
                        target.push(second.clone());
                    }
                    refs.insert(target);
                }
            }
        }
    }
    refs
}

fn within(path: &[String], module: &[String]) -> bool {
    path.len() >= module.len() && path[..module.len()] == *module
}

#[test]
fn no_two_modules_import_each_other() -> anyhow::Result<()> {
    let root = workspace();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in modules(&root)? {
        let text = std::fs::read_to_string(&path)?;
        graph.insert(module.clone(), references(&module, &text));
    }
    ensure!(
        graph.len() > 50,
        "found only {} modules: the walk is broken",
        graph.len()
    );
    let mut pairs = Vec::new();
    for (a, a_refs) in &graph {
        for (b, b_refs) in &graph {
            if a >= b || within(a, b) || within(b, a) {
                continue;
            }
            let a_uses_b = a_refs.iter().any(|r| within(r, b));
            let b_uses_a = b_refs.iter().any(|r| within(r, a));
            if a_uses_b && b_uses_a {
                pairs.push(format!("{} <-> {}", a.join("::"), b.join("::")));
            }
        }
    }
    ensure!(pairs.is_empty(), "modules importing each other: {pairs:#?}");
    Ok(())
}

/// The normal dependencies of `package`, one crate per line.
fn tree(package: &str) -> anyhow::Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .context("cargo tree")?;
    ensure!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout)?;
    ensure!(tree.contains(package), "not the tree of {package}: {tree}");
    Ok(tree)
}

#[test]
fn each_crate_depends_only_on_what_its_role_needs() -> anyhow::Result<()> {
    for (package, forbidden) in [
        // What a partner writes a handler against knows no API client.
        (
            "processor-engine",
            &["reqwest", "order-status", "sandbox", "hyper "][..],
        ),
        // Neither the API fakes nor the schema generator drag in a broker client.
        ("sandbox", &["rdkafka", "async-nats"][..]),
        ("schemas", &["rdkafka", "async-nats"][..]),
    ] {
        let tree = tree(package)?;
        for crate_name in forbidden {
            ensure!(
                !tree.lines().any(|line| line.starts_with(crate_name)),
                "{package} depends on {crate_name}:\n{tree}"
            );
        }
    }
    Ok(())
}
