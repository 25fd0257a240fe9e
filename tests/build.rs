// SPDX-License-Identifier: Apache-2.0
//! Builds the test guest (`tests/guest`) with a nested
//! `cargo build --release --offline` and hands its path to the crate as
//! `SHOAL_TEST_GUEST`.
//!
//! The guest is a `no_std` PVH ELF for the host target with SSE/AVX off and
//! its own linker script, so it gets its own flags and its own target dir
//! (`tests/guest/target`, shared by every outer target dir and profile).
//! Everything the outer cargo, clippy or nextest put in the environment that
//! would change how the nested cargo builds is removed first.
//!
//! It also writes a copy without the PVH note (`SHOAL_TEST_GUEST_LINUX64`):
//! a loader then enters it at the ELF entry point with the Linux 64-bit boot
//! protocol, which the guest supports too.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The only target installed on our machines; passing it explicitly also
/// keeps the guest's flags away from any build script or proc macro.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_BIN: &str = "shoal-test-guest";
/// File in the guest's target dir holding its `CARGO_ENCODED_RUSTFLAGS`.
const FLAGS_FILE: &str = "encoded-rustflags";

/// Target features turned off: KVM's instruction emulator (our `/dev/kvm`
/// is PVM) implements none of the vector instructions.
const DISABLED_FEATURES: &str = "-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2,-avx,-avx2";

/// Environment variables of the outer build that must not reach the nested
/// cargo (besides `RUSTFLAGS` and every `CARGO_*` not kept below).
const CLEARED: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "__CARGO_FIX_PLZ",
    "__CARGO_DEFAULT_LIB_METADATA",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
];

/// `CARGO_*` variables the nested cargo keeps: where cargo lives, and the
/// jobserver so the nested build shares the outer build's job slots.
const KEPT_CARGO_VARS: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS"];

fn rustflags(linker_script: &Path) -> Vec<OsString> {
    let mut link_script = OsString::from("link-arg=-Wl,-T,");
    link_script.push(linker_script);
    let mut flags: Vec<OsString> = Vec::new();
    let mut codegen = |value: OsString| {
        flags.push("-C".into());
        flags.push(value);
    };
    codegen(format!("target-feature={DISABLED_FEATURES}").into());
    codegen("relocation-model=static".into());
    codegen("panic=abort".into());
    codegen("link-arg=-nostartfiles".into());
    codegen("link-arg=-nostdlib".into());
    codegen("link-arg=-static".into());
    codegen("link-arg=-Wl,--build-id=none".into());
    codegen("link-arg=-Wl,-z,max-page-size=0x1000".into());
    codegen(link_script);
    flags
}

/// `CARGO_ENCODED_RUSTFLAGS` form (0x1f-separated), so paths with spaces survive.
fn encode(flags: &[OsString]) -> OsString {
    let mut encoded = OsString::new();
    for (i, flag) in flags.iter().enumerate() {
        if i > 0 {
            encoded.push("\u{1f}");
        }
        encoded.push(flag);
    }
    encoded
}

const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Offset in the file of the name of the ELF64 image's PVH note.
fn pvh_note_name(elf: &[u8]) -> Option<usize> {
    let phoff = usize::try_from(read_u64(elf, 32)?).ok()?;
    let phentsize = usize::from(read_u16(elf, 54)?);
    let phnum = usize::from(read_u16(elf, 56)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if read_u32(elf, ph)? != PT_NOTE {
            continue;
        }
        let mut at = usize::try_from(read_u64(elf, ph + 8)?).ok()?;
        let end = at + usize::try_from(read_u64(elf, ph + 32)?).ok()?;
        while at + 12 <= end {
            let namesz = usize::try_from(read_u32(elf, at)?).ok()?;
            let descsz = usize::try_from(read_u32(elf, at + 4)?).ok()?;
            let name = at + 12;
            if read_u32(elf, at + 8)? == XEN_ELFNOTE_PHYS32_ENTRY
                && elf.get(name..name + namesz)? == b"Xen\0"
            {
                return Some(name);
            }
            at = name + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
    }
    None
}

/// Writes `image` to `out` with its PVH note renamed ("Xen" to "Shl"), so
/// loaders use the ELF entry point and the Linux 64-bit boot protocol.
fn write_linux64_variant(image: &Path, out: &Path) {
    let mut elf = match std::fs::read(image) {
        Ok(elf) => elf,
        Err(e) => panic!("cannot read {}: {e}", image.display()),
    };
    let Some(name) = pvh_note_name(&elf) else {
        panic!("the test guest has no PVH note: {}", image.display());
    };
    elf[name..name + 4].copy_from_slice(b"Shl\0");
    // Leave an identical file alone: its mtime tells cargo whether to rerun us.
    if std::fs::read(out).is_ok_and(|old| old == elf) {
        return;
    }
    if let Err(e) = std::fs::write(out, &elf) {
        panic!("cannot write {}: {e}", out.display());
    }
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let guest_dir = manifest_dir.join("guest");
    let target_dir = guest_dir.join("target");
    for path in ["src", "Cargo.toml", "Cargo.lock", "linker.ld"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&guest_dir)
        .args(["build", "--release", "--offline", "--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && !KEPT_CARGO_VARS.contains(&key)) || CLEARED.contains(&key)
        {
            command.env_remove(key);
        }
    }
    let flags = encode(&rustflags(&guest_dir.join("linker.ld")));
    command.env("CARGO_ENCODED_RUSTFLAGS", &flags);
    // For `scripts/test-guest --check`, which lints the guest with the same flags.
    if std::fs::create_dir_all(&target_dir).is_ok() {
        let _ = std::fs::write(target_dir.join(FLAGS_FILE), flags.as_encoded_bytes());
    }

    let output = match command.output() {
        Ok(output) => output,
        Err(e) => panic!("cannot run cargo to build the test guest: {e}"),
    };
    if !output.status.success() {
        panic!(
            "building the test guest failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let image = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_BIN);
    if !image.is_file() {
        panic!("the test guest build left no image at {}", image.display());
    }
    println!("cargo:rustc-env=SHOAL_TEST_GUEST={}", image.display());
    let linux64 = image.with_file_name(format!("{GUEST_BIN}-linux64"));
    write_linux64_variant(&image, &linux64);
    println!(
        "cargo:rustc-env=SHOAL_TEST_GUEST_LINUX64={}",
        linux64.display()
    );
    // Rebuild when the outputs are gone (e.g. `rm -rf tests/guest/target`).
    println!("cargo:rerun-if-changed={}", image.display());
    println!("cargo:rerun-if-changed={}", linux64.display());
}
