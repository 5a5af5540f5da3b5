//! The Dockerfile's structure (no Docker engine on these machines, so it is checked as text):
//! a build and a runtime stage, a non-root user in the image that runs, every service binary
//! of the workspace built and copied, and an entrypoint that is one of them.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Workspace members that have a binary (a `src/main.rs`).
fn binaries() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .expect("members");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty() && root().join(m).join("src/main.rs").exists())
        .collect()
}

#[test]
fn dockerfile_builds_every_binary_and_runs_unprivileged() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{}", stages[0]);
    assert!(stages[1].ends_with(" AS runtime"), "{}", stages[1]);
    let runtime = text.split(stages[1]).nth(1).expect("runtime stage");
    assert!(
        runtime.contains("COPY --from=build"),
        "the runtime copies the built binaries"
    );
    assert!(
        !runtime.contains("cargo "),
        "no toolchain in the runtime image"
    );

    let user = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER in the runtime stage");
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "runs as {user}"
    );

    let bins = binaries();
    assert_eq!(bins.len(), 5, "{bins:?}");
    for bin in &bins {
        assert!(text.contains(&format!("-p {bin}")), "{bin} is not built");
        assert!(
            text.contains(&format!("target/release/{bin}")),
            "{bin} is not copied"
        );
    }
    let entry = runtime
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    assert!(
        bins.iter()
            .any(|b| entry.contains(&format!("/usr/local/bin/{b}\""))),
        "entrypoint {entry}"
    );
    assert!(
        text.contains("ARG VERSION") && text.contains("HARBORHOOK_BUILD_VERSION"),
        "the version is baked in"
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context skips target/"
    );
}
