//! The layer rule of ARCHITECTURE.md §2, checked on the source: no module names a module above
//! it (in `use` lines or paths, test code included). A change that breaks the rule fails here
//! with the file, the line and the module it named.

use std::collections::BTreeMap;
use std::path::Path;

/// Each module and the modules of the crate it may name (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("hash", &[]),
    ("clock", &[]),
    ("observe", &[]),
    ("budget", &["observe"]),
    ("codec", &["error"]),
    ("fs", &["error"]),
    ("lock", &["fs", "error"]),
    ("keys", &["codec", "error", "hash"]),
    ("ttl", &["codec", "error", "clock"]),
    ("descriptor", &["codec", "error", "ttl"]),
    (
        "lsm",
        &[
            "codec", "fs", "lock", "hash", "observe", "error", "clock", "budget",
        ],
    ),
    (
        "checkpoint",
        &[
            "codec",
            "keys",
            "ttl",
            "clock",
            "fs",
            "error",
            "descriptor",
            "observe",
            "hash",
            "budget",
        ],
    ),
];

/// The top-level module a source file belongs to (`src/lsm/db/mod.rs` → `lsm`).
fn module_of(relative: &Path) -> String {
    let first = relative.components().next().unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_names_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = module_of(relative);
        let Some(may) = allowed.get(module.as_str()) else {
            continue; // backend, state, engine, tools: above everything the table lists
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let named: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    !rest.starts_with('{'),
                    "{}:{}: name modules one `use crate::module::…` at a time so this check sees \
                     them",
                    relative.display(),
                    n + 1
                );
                if named.is_empty() || named == module || !allowed_name(&named) {
                    continue;
                }
                if !may.contains(&named.as_str()) {
                    broken.push(format!(
                        "{}:{}: {module} names {named}",
                        relative.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rule broken:\n{}",
        broken.join("\n")
    );
}

/// Whether `name` is a top-level module of the crate (not an item such as `crate::Error`).
fn allowed_name(name: &str) -> bool {
    const MODULES: &[&str] = &[
        "error",
        "hash",
        "clock",
        "observe",
        "budget",
        "codec",
        "fs",
        "lock",
        "keys",
        "ttl",
        "descriptor",
        "lsm",
        "checkpoint",
        "backend",
        "state",
        "engine",
        "savepoint",
        "verify",
        "inspect",
        "fuzzing",
        "internals",
    ];
    MODULES.contains(&name)
}
