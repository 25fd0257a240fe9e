// SPDX-License-Identifier: Apache-2.0
//! The Rust example runs as host peers and matches its reference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn histogram_example_across_three_peers_matches_the_reference_twice() {
    // cargo test builds the examples next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let example = exe.ancestors().nth(2).unwrap().join("examples/histogram");
    if !example.exists() {
        // Only `cargo test` without a target filter builds examples.
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "guest-sdk",
                "--example",
                "histogram",
                "--quiet",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", exe.ancestors().nth(3).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "building the example failed");
    }
    let out = Command::new(&example)
        .args(["serve", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("match the single-process reference"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("histogram: rank").count(), 3, "{stdout}");
}
