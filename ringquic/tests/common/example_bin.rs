//! Finding a package's example binary among those `cargo test` built.
//!
//! Two workspace packages have examples named `server` and `client` (ringquic's file server,
//! ringquic-h3's HTTP/3 one), and cargo links both to the same `target/<profile>/examples/server`
//! (it warns of the collision), so that path may be the other package's program. The
//! hash-named artifact beside it is unique: its dep-info file (`server-<hash>.d`) names the
//! source it was built from. This picks the newest artifact built from `package_dir`'s own
//! `examples/<name>.rs`.

use std::path::{Path, PathBuf};

/// The example `name` of the package in `package_dir` (pass `env!("CARGO_MANIFEST_DIR")`).
pub fn example_binary(package_dir: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("examples");
    let source = Path::new(package_dir).join("examples").join(format!("{name}.rs"));
    let source = source.to_string_lossy().into_owned();
    let prefix = format!("{name}-");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let stem = file.strip_prefix(&prefix)?.strip_suffix(".d")?.to_owned();
            let deps = std::fs::read_to_string(e.path()).ok()?;
            let first = deps.lines().next()?;
            // `<artifact>: <main source> <other sources…>`
            let main_source = first.split_once(": ")?.1.split_whitespace().next()?;
            // Absolute, or relative to the workspace root, depending on how cargo was run; with
            // either separator (a Windows build cross-compiled here reads Linux paths).
            let (main_source, source) = (main_source.replace('\\', "/"), source.replace('\\', "/"));
            let same = main_source == source || source.ends_with(&format!("/{main_source}"));
            if !same {
                return None;
            }
            let bin = dir.join(format!("{name}-{stem}{}", std::env::consts::EXE_SUFFIX));
            let built = std::fs::metadata(&bin).ok()?.modified().ok()?;
            Some((built, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no `{name}` example built from {source} in {}: `cargo test` builds the package's examples \
             (a single `--test` does not: run `cargo build --examples` in that package first)",
            dir.display()
        )
    })
}
