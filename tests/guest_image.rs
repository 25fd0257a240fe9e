// SPDX-License-Identifier: Apache-2.0
//! Checks of the built test guest image: it is a PVH ELF loaded at 1 MiB,
//! and its code uses no instruction KVM's emulator lacks (no SSE/AVX/x87
//! registers, no popcnt, cmpxchg16b, xsave, int3...).
//!
//! The instruction check disassembles with `objdump -d` when it is
//! installed (binutils; `scripts/test` installs it), and falls back to a
//! conservative byte scan of `.text` for SSE/VEX encodings otherwise.

use std::process::Command;

use shoal_tests::{test_guest_linux64_path, test_guest_path};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut v = [0; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[derive(Debug)]
struct Phdr {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn program_headers(elf: &[u8]) -> Vec<Phdr> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    let phoff = u64_at(elf, 32) as usize;
    let phentsize = u16_at(elf, 54) as usize;
    let phnum = u16_at(elf, 56) as usize;
    (0..phnum)
        .map(|i| {
            let p = phoff + i * phentsize;
            Phdr {
                kind: u32_at(elf, p),
                offset: u64_at(elf, p + 8),
                paddr: u64_at(elf, p + 24),
                filesz: u64_at(elf, p + 32),
                memsz: u64_at(elf, p + 40),
            }
        })
        .collect()
}

/// The PVH entry from the image's `XEN_ELFNOTE_PHYS32_ENTRY` note.
fn pvh_entry(elf: &[u8]) -> Option<u64> {
    for ph in program_headers(elf).iter().filter(|p| p.kind == PT_NOTE) {
        let mut at = ph.offset as usize;
        let end = at + ph.filesz as usize;
        while at + 12 <= end {
            let namesz = u32_at(elf, at) as usize;
            let descsz = u32_at(elf, at + 4) as usize;
            let kind = u32_at(elf, at + 8);
            let name = &elf[at + 12..at + 12 + namesz];
            let desc = at + 12 + namesz.div_ceil(4) * 4;
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                return Some(match descsz {
                    4 => u64::from(u32_at(elf, desc)),
                    _ => u64_at(elf, desc),
                });
            }
            at = desc + descsz.div_ceil(4) * 4;
        }
    }
    None
}

/// The bytes of the `.text` section.
fn text_section(elf: &[u8]) -> &[u8] {
    let shoff = u64_at(elf, 40) as usize;
    let shentsize = u16_at(elf, 58) as usize;
    let shnum = u16_at(elf, 60) as usize;
    let shstrndx = u16_at(elf, 62) as usize;
    let strtab = u64_at(elf, shoff + shstrndx * shentsize + 24) as usize;
    for i in 0..shnum {
        let s = shoff + i * shentsize;
        let name_at = strtab + u32_at(elf, s) as usize;
        if elf[name_at..].starts_with(b".text\0") {
            let offset = u64_at(elf, s + 24) as usize;
            let size = u64_at(elf, s + 32) as usize;
            return &elf[offset..offset + size];
        }
    }
    panic!("no .text section");
}

/// Mnemonics (or mnemonic prefixes) KVM's instruction emulator does not
/// implement, or that our machines showed failing (FIELD-NOTES.md).
const FORBIDDEN_MNEMONICS: &[&str] = &[
    "popcnt",
    "cmpxchg16b",
    "xsave",
    "xrstor",
    "fxsave",
    "fxrstor",
    "int3",
    "ldmxcsr",
    "stmxcsr",
    "emms",
    "lzcnt",
    "tzcnt",
    "movbe",
    "rdrand",
    "rdseed",
    "clac",
    "stac",
];
/// Registers that only vector or x87 instructions use.
const FORBIDDEN_REGISTERS: &[&str] = &["%xmm", "%ymm", "%zmm", "%mm", "%st", "%k0", "%k1"];

/// Prefixes objdump prints as separate words before the mnemonic.
fn is_prefix(word: &str) -> bool {
    matches!(
        word,
        "lock"
            | "rep"
            | "repz"
            | "repe"
            | "repnz"
            | "repne"
            | "data16"
            | "addr32"
            | "notrack"
            | "bnd"
            | "cs"
            | "ds"
            | "es"
            | "fs"
            | "gs"
            | "ss"
    ) || word.starts_with("rex")
}

/// The offending lines of `objdump -d` output.
fn forbidden_in_disassembly(disassembly: &str) -> Vec<String> {
    disassembly
        .lines()
        .filter(|line| {
            // "  1000a0:\t48 89 c7             \tmov    %rax,%rdi"
            let Some(text) = line.split('\t').nth(2) else {
                return false;
            };
            let mut words = text.split_whitespace();
            let mnemonic = words.find(|w| !is_prefix(w));
            let Some(mnemonic) = mnemonic else {
                return false;
            };
            mnemonic.starts_with('f')
                || mnemonic.starts_with('v')
                || FORBIDDEN_MNEMONICS.iter().any(|m| mnemonic.starts_with(m))
                || FORBIDDEN_REGISTERS.iter().any(|r| text.contains(r))
        })
        .map(str::to_string)
        .collect()
}

/// Conservative byte scan (without a disassembler): offsets in `code` of
/// SSE opcodes LLVM emits for copies and zeroing (`0f 10/11/28/29/57`,
/// `66|f3 0f 6f/7f/d6/ef`) and of two-byte VEX prefixes followed by a
/// vector-looking byte. May report false positives inside immediates.
fn forbidden_in_bytes(code: &[u8]) -> Vec<usize> {
    let mut hits = Vec::new();
    for i in 0..code.len().saturating_sub(2) {
        let (a, b, c) = (code[i], code[i + 1], code[i + 2]);
        let plain_sse = a == 0x0f && matches!(b, 0x10 | 0x11 | 0x28 | 0x29 | 0x57 | 0x58 | 0x59);
        let prefixed_sse = matches!(a, 0x66 | 0xf3)
            && b == 0x0f
            && matches!(c, 0x6f | 0x7f | 0xd6 | 0xef | 0x6e | 0x7e);
        if plain_sse || prefixed_sse {
            hits.push(i);
        }
    }
    hits
}

#[test]
fn image_is_a_pvh_elf_loaded_at_one_mib() {
    let elf = std::fs::read(test_guest_path()).unwrap();
    let loads: Vec<Phdr> = program_headers(&elf)
        .into_iter()
        .filter(|p| p.kind == PT_LOAD)
        .collect();
    assert!(!loads.is_empty());
    assert!(loads.iter().all(|p| p.paddr >= 0x10_0000), "{loads:?}");
    let entry = pvh_entry(&elf).expect("no XEN_ELFNOTE_PHYS32_ENTRY note");
    assert!(
        loads
            .iter()
            .any(|p| p.paddr <= entry && entry < p.paddr + p.filesz),
        "PVH entry {entry:#x} outside the loaded code"
    );
    // The image must stay far below the memory the guest uses otherwise
    // (command line at 0x20000 is below it; 3 GiB of RAM above).
    assert!(loads.iter().all(|p| p.paddr + p.memsz < 0x100_0000));
}

#[test]
fn linux64_variant_has_no_pvh_note_and_enters_in_the_image() {
    let pvh = std::fs::read(test_guest_path()).unwrap();
    let elf = std::fs::read(test_guest_linux64_path()).unwrap();
    assert_eq!(pvh_entry(&elf), None);
    assert_eq!(elf.len(), pvh.len());
    let entry = u64_at(&elf, 24);
    assert!(
        program_headers(&elf)
            .iter()
            .any(|p| p.kind == PT_LOAD && p.paddr <= entry && entry < p.paddr + p.filesz),
        "ELF entry {entry:#x} outside the loaded code"
    );
    // Same code: only the note name differs.
    let differing = pvh.iter().zip(&elf).filter(|(a, b)| a != b).count();
    assert!((1..=3).contains(&differing), "{differing} bytes differ");
}

#[test]
fn image_has_no_vector_or_x87_instructions() {
    let path = test_guest_path();
    match Command::new("objdump").arg("-d").arg(&path).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.lines().count() > 100, "objdump printed too little");
            let bad = forbidden_in_disassembly(&text);
            assert!(
                bad.is_empty(),
                "forbidden instructions in the test guest:\n{}",
                bad.join("\n")
            );
        }
        _ => {
            eprintln!("objdump not available: falling back to a byte scan of .text");
            let elf = std::fs::read(&path).unwrap();
            let hits = forbidden_in_bytes(text_section(&elf));
            assert!(
                hits.is_empty(),
                "SSE-looking bytes at .text offsets {hits:x?}"
            );
        }
    }
}

#[test]
fn disassembly_check_flags_sse_x87_and_popcnt() {
    let sample = "  100000:\t0f 57 c0             \txorps  %xmm0,%xmm0\n\
                  \x20 100003:\td9 c9                \tfxch   %st(1)\n\
                  \x20 100005:\tf3 48 0f b8 c0       \tpopcnt %rax,%rax\n\
                  \x20 10000a:\tc5 fd 6f 00          \tvmovdqa (%rax),%ymm0\n\
                  \x20 10000e:\tcc                   \tint3\n";
    assert_eq!(forbidden_in_disassembly(sample).len(), 5);
}

#[test]
fn disassembly_check_accepts_integer_code() {
    let sample = "  100000:\t48 89 c7             \tmov    %rax,%rdi\n\
                  \x20 100003:\tf0 0f c1 05 00 00 00 00 \tlock xadd %eax,0x0(%rip)\n\
                  \x20 10000b:\tf3 a4                \trep movsb %ds:(%rsi),%es:(%rdi)\n\
                  \x20 10000d:\tee                   \tout    %al,(%dx)\n\
                  0000000000100000 <pvh_start32>:\n";
    assert!(forbidden_in_disassembly(sample).is_empty());
}

#[test]
fn byte_scan_flags_sse_moves_and_accepts_integer_code() {
    assert_eq!(
        forbidden_in_bytes(&[0x48, 0x89, 0xc7, 0x0f, 0x57, 0xc0]),
        vec![3]
    );
    assert_eq!(forbidden_in_bytes(&[0x66, 0x0f, 0xef, 0xc0]), vec![0]);
    assert!(forbidden_in_bytes(&[0x48, 0x89, 0xc7, 0xf3, 0xa4, 0xc3]).is_empty());
}
