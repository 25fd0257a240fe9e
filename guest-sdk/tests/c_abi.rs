// SPDX-License-Identifier: Apache-2.0
//! The C library: the (generated, see `header.rs`) header declares exactly
//! what the library exports, and C programs (an API check and the OpenMP Jacobi example) built against the
//! static library run as host peers and get the right answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(crate_dir().join(rel)).unwrap()
}

/// Names of the `shoal_*` functions libshoal.a defines.
fn exported() -> BTreeSet<String> {
    let out = Command::new("nm")
        .args(["-g", "--defined-only"])
        .arg(libdir().join("libshoal.a"))
        .output()
        .unwrap();
    assert!(out.status.success(), "nm failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" T "))
        .map(|(_, name)| name.to_string())
        .filter(|name| name.starts_with("shoal_"))
        .collect()
}

/// Names of the functions the header declares (comments skipped; a
/// declaration may span lines).
fn declared() -> BTreeSet<String> {
    let code: String = read("include/shoal.h")
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("//")
                || l.starts_with('*')
                || l.starts_with("/*")
                || l.starts_with('#'))
        })
        .collect::<Vec<_>>()
        .join(" ");
    code.split(';')
        .filter_map(|decl| {
            let before = decl.split_once('(')?.0;
            let name = before.rsplit([' ', '*']).next()?;
            name.starts_with("shoal_").then(|| name.to_string())
        })
        .collect()
}

#[test]
fn header_declares_every_exported_function_and_nothing_else() {
    let exported = exported();
    let declared = declared();
    assert!(exported.len() > 30, "parsed only {exported:?}");
    assert_eq!(exported, declared);
}

/// Builds libshoal.a into a private target dir (cargo test does not build
/// the staticlib) and returns its directory.
fn libdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().join("sdk-clib");
        let out = Command::new(env!("CARGO"))
            .args(["build", "-p", "guest-sdk", "--lib", "--quiet"])
            .current_dir(crate_dir())
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building libshoal.a failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug")
    })
}

fn compile(source: &str, out: &str) -> PathBuf {
    let lib = libdir();
    let exe = lib.join(out);
    let status = Command::new("cc")
        .arg(crate_dir().join(source))
        .arg("-I")
        .arg(crate_dir().join("include"))
        .args(["-O2", "-fopenmp", "-o"])
        .arg(&exe)
        .arg(lib.join("libshoal.a"))
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .unwrap();
    assert!(status.success(), "cc {source} failed");
    exe
}

#[test]
fn c_api_returns_error_codes_instead_of_crashing() {
    let exe = compile("tests/c/api.c", "shoal-api-test");
    let server = TestServer::start("capi");
    let out = Command::new(exe)
        .env(shoal::SOCKET_ENV, &server.path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("api: ok"), "{stdout}");
}

#[test]
fn openmp_jacobi_across_two_peers_matches_the_reference() {
    let exe = compile("examples/c/jacobi.c", "shoal-jacobi");
    let server = TestServer::start("jacobi");
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["2", "128", "50"])
                .env(shoal::SOCKET_ENV, &server.path)
                .env("OMP_NUM_THREADS", "2")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all = String::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        assert!(out.status.success(), "{all}");
    }
    assert!(
        all.contains("result matches the single-process reference"),
        "{all}"
    );
    assert_eq!(all.matches("rank ").count(), 2, "{all}");
}
