// SPDX-License-Identifier: Apache-2.0
//! `include/shoal.h` is what cbindgen generates from `src/ffi/` with
//! `cbindgen.toml`. Run with `SHOAL_BLESS=1` to rewrite the header after
//! changing the C ABI; without it the test fails when the committed header
//! is stale.

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
    String::from_utf8(out).unwrap()
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
        "#define SHOAL_EINVAL -1",
        "typedef uint64_t shoal_off_t;",
        "typedef struct shoal_t shoal_t;",
        "uint32_t word;",
        "int shoal_mutex_lock(shoal_t *s, shoal_mutex_t *m);",
        "// Frees a block from `shoal_alloc`",
        "extern \"C\" {",
    ] {
        assert!(fresh.contains(needle), "{needle:?} missing from\n{fresh}");
    }
}
