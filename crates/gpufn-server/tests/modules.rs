//! The server's modules form a layered graph: no module uses another that uses it back, directly
//! or through others (issue 17, point 6). Read from the source: a top-level module (a file under
//! `src/` or a folder with its submodules) uses another when its code names `crate::other`.
//! Comments and test modules do not count. ARCHITECTURE.md draws the layers.
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Code without comments and without the unit tests at the end of a file.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module names that follow `crate::` in `code`, also inside `use crate::{a, b::c}`.
fn used(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items at the group's top level: `a, b::c, d::{e, f}` → a, b, d.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
            out.remove("");
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let module_of = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|p| module_of(p))
        .filter(|m| m != "lib")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(f);
        if m == "lib" || f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        let entry = edges.entry(m.clone()).or_default();
        for u in used(&code(&text)) {
            if u != m && modules.contains(&u) {
                entry.insert(u);
            }
        }
    }
    edges
}

/// A path from `from` back to itself, if there is one.
fn cycle_through(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_modules_form_a_layered_graph() {
    let edges = graph();
    assert!(edges.len() > 20, "the source was read: {edges:?}");
    // What the layering rests on (a change here is a change of ARCHITECTURE.md's picture).
    for (low, high) in [
        ("pool", "platform"),
        ("instance", "pool"),
        ("auth", "platform"),
        ("upstream", "gateway"),
        ("forward", "direct"),
    ] {
        assert!(
            !edges[low].contains(high),
            "{low} must not use {high}: {:?}",
            edges[low]
        );
    }
    let cycles: Vec<Vec<String>> = edges
        .keys()
        .filter_map(|m| cycle_through(&edges, m))
        .collect();
    assert!(cycles.is_empty(), "module cycles: {cycles:?}");
}

#[test]
fn the_reader_finds_uses_and_ignores_comments() {
    let text = "use crate::{a, b::c, d::{e, f}};\n// crate::commented\nfn x() { crate::g::h(); }\n";
    let got = used(&code(text));
    let want: BTreeSet<String> = ["a", "b", "d", "g"].iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(
        cycle_through(&edges, "a"),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}

/// The span of the brace block that starts at the first `{` at or after `from`.
fn block(code: &str, from: usize) -> Option<(usize, usize)> {
    let open = from + code[from..].find('{')?;
    let mut depth = 0usize;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((open, open + i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

/// `text` without the argument lists of calls to `calls` (what runs on a blocking thread).
fn without_calls(text: &str, calls: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = text;
    'outer: loop {
        let next = calls
            .iter()
            .filter_map(|c| rest.find(c).map(|i| (i, c.len())))
            .min();
        let Some((i, len)) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..i]);
        let args = &rest[i + len..];
        let mut depth = 1usize;
        for (j, c) in args.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        rest = &args[j + 1..];
                        continue 'outer;
                    }
                }
                _ => {}
            }
        }
        break;
    }
    out
}

/// SQLite calls block (a write waits for its fsync): async code reaches the store only through
/// `Platform::with_store` / `Platform::blocking` / `Shared::blocking` (a blocking thread).
#[test]
fn async_code_reaches_the_store_only_from_blocking_threads() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let code = code(&std::fs::read_to_string(f).expect("read"));
        for (at, _) in code.match_indices("async fn ") {
            let Some((start, end)) = block(&code, at) else {
                continue;
            };
            // Handing the store's `Arc` to a blocking thread is how it is done.
            let body = without_calls(
                &code[start..end],
                &[".blocking(", ".with_store(", "spawn_blocking("],
            )
            .replace("shared.store.clone()", "");
            for needle in [".store()", "shared.store.", "self.store."] {
                if body.contains(needle) {
                    let name: String = code[at + 9..].chars().take_while(|c| *c != '(').collect();
                    found.push(format!(
                        "{}: async fn {name} uses {needle}",
                        f.strip_prefix(&src).unwrap_or(f).display()
                    ));
                }
            }
        }
    }
    assert!(found.is_empty(), "store calls on async threads: {found:#?}");
}

#[test]
fn the_store_check_sees_calls_outside_blocking_closures() {
    let body = "{ let a = p.with_store(move |s| s.x()).await; p.store().y(); }";
    assert!(without_calls(body, &[".with_store("]).contains(".store()"));
    let body = "{ p.blocking(move |p| p.store().y()).await }";
    assert!(!without_calls(body, &[".blocking("]).contains(".store()"));
    assert_eq!(block("fn f() { { } }", 0), Some((7, 14)));
}
