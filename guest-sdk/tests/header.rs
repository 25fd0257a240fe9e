// SPDX-License-Identifier: Apache-2.0
//! `include/shoal.h` is what cbindgen generates from `src/ffi/` with
//! `cbindgen.toml`. Run with `SHOAL_BLESS=1` to rewrite the header after
//! changing the C ABI; without it the test fails when the committed header
//! is stale.
//!
//! One step on top of cbindgen: it writes a negative constant bare
//! (`#define SHOAL_EINVAL -1`), which a C macro user can trip over
//! (`x-SHOAL_EINVAL` reads as `x--1`); `parenthesize_negative_defines`
//! wraps such values, `#define SHOAL_EINVAL (-1)`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn generate(crate_dir: &Path) -> String {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen parses src/ffi");
    let mut out = Vec::new();
    bindings.write(&mut out);
    parenthesize_negative_defines(&String::from_utf8(out).unwrap())
}

/// `#define NAME -VALUE` becomes `#define NAME (-VALUE)`; other lines stay.
fn parenthesize_negative_defines(header: &str) -> String {
    header
        .split_inclusive('\n')
        .map(|line| {
            let (text, end) = match line.strip_suffix('\n') {
                Some(text) => (text, "\n"),
                None => (line, ""),
            };
            match negative_define(text) {
                Some((name, value)) => format!("#define {name} ({value}){end}"),
                None => line.to_string(),
            }
        })
        .collect()
}

/// The name and value of a `#define NAME VALUE` line whose value starts
/// with a minus sign.
fn negative_define(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("#define ")?;
    let (name, value) = rest.split_once(' ')?;
    let value = value.trim();
    value.starts_with('-').then_some((name, value))
}

#[test]
fn negative_defines_get_parentheses_and_others_stay() {
    let header = "#define A -1\n#define B 2\n// -3\n#define C -(1 << 4)\n#define D";
    assert_eq!(
        parenthesize_negative_defines(header),
        "#define A (-1)\n#define B 2\n// -3\n#define C (-(1 << 4))\n#define D"
    );
}

#[test]
fn committed_header_is_what_cbindgen_generates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = dir.join("include/shoal.h");
    let fresh = generate(dir);
    if std::env::var_os("SHOAL_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/shoal.h is stale: rerun with SHOAL_BLESS=1 \
         (cargo test -p guest-sdk --test header) and commit it"
    );
}

#[test]
fn generated_header_has_the_api_and_its_docs() {
    let fresh = generate(Path::new(env!("CARGO_MANIFEST_DIR")));
    for needle in [
        "#define SHOAL_OWNER_DIED 1",
        "#define SHOAL_EINVAL (-1)",
        "#define SHOAL_ENAMES (-18)",
        "typedef uint64_t shoal_off_t;",
        "typedef struct shoal_t shoal_t;",
        "uint32_t word;",
        "int shoal_mutex_lock(shoal_t *s, shoal_mutex_t *m);",
        "// Frees a block from `shoal_alloc`",
        "extern \"C\" {",
    ] {
        assert!(fresh.contains(needle), "{needle:?} missing from\n{fresh}");
    }
    let bare = fresh.lines().find(|l| negative_define(l).is_some());
    assert_eq!(bare, None, "a negative constant without parentheses");
}
