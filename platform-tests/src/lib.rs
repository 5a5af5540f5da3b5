//! The harness of the platform-wide tests (`tests/it`) and of harborctl's: a [`World`] of a
//! test's own (schema, topics, the harborctl binary with its configuration), the four services
//! started together ([`platform`]), the hostile-input suite's tools ([`hostile`]) and the
//! rendered deployment manifests ([`manifests`]).
//!
//! A crate of its own so that these tests, which need every service, are not any one service's,
//! and so that the harness is compiled once rather than into every test binary.

pub mod hostile;
pub mod manifests;
pub mod platform;
mod world;

use std::path::PathBuf;

pub use world::World;

/// A workspace binary, built beside the running test (`target/<profile>/`). The README's test
/// command builds every binary of the workspace first; run alone, a test builds what it needs.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    if !path.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", name, "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    assert!(
        path.is_file(),
        "{} is not built: run the tests with --workspace",
        path.display()
    );
    path
}
