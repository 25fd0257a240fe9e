// SPDX-License-Identifier: Apache-2.0
//! Tests of kernel and initramfs loading, with images built here.

use std::io::Cursor;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const MIB: u64 = 1 << 20;
const RAM: u64 = 64 * MIB;
const CODE: &[u8] = &[0xf4, 0xeb, 0xfd]; // hlt; jmp .-1

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// A minimal x86_64 ELF: one PT_LOAD of `CODE` at `paddr` with `bss` extra
/// bytes of memory, and optionally a PT_NOTE with a Xen PVH entry note.
fn elf(paddr: u64, bss: u64, pvh_entry: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let mut b = vec![0u8; 0x1000];
    put(&mut b, 0, b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little-endian
    b[6] = 1; // version
    put(&mut b, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut b, 18, &62u16.to_le_bytes()); // x86_64
    put(&mut b, 20, &1u32.to_le_bytes());
    put(&mut b, 24, &paddr.to_le_bytes()); // e_entry
    put(&mut b, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut b, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut b, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut b, 56, &phnum.to_le_bytes());
    // PT_LOAD
    let ph = 64;
    put(&mut b, ph, &1u32.to_le_bytes());
    put(&mut b, ph + 4, &5u32.to_le_bytes());
    put(&mut b, ph + 8, &0x1000u64.to_le_bytes());
    put(&mut b, ph + 16, &paddr.to_le_bytes());
    put(&mut b, ph + 24, &paddr.to_le_bytes());
    put(&mut b, ph + 32, &(CODE.len() as u64).to_le_bytes());
    put(&mut b, ph + 40, &(CODE.len() as u64 + bss).to_le_bytes());
    put(&mut b, ph + 48, &0x1000u64.to_le_bytes());
    b.extend_from_slice(CODE);
    if let Some(entry) = pvh_entry {
        let note_off = b.len() as u64;
        // An unrelated note first, then the PVH one.
        let mut notes = Vec::new();
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&1u32.to_le_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&0u32.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&18u32.to_le_bytes());
        notes.extend_from_slice(b"Xen\0");
        notes.extend_from_slice(&entry.to_le_bytes());
        let ph = 64 + 56;
        put(&mut b, ph, &4u32.to_le_bytes());
        put(&mut b, ph + 8, &note_off.to_le_bytes());
        put(&mut b, ph + 32, &(notes.len() as u64).to_le_bytes());
        put(&mut b, ph + 40, &(notes.len() as u64).to_le_bytes());
        put(&mut b, ph + 48, &4u64.to_le_bytes());
        b.extend_from_slice(&notes);
    }
    b
}

/// A minimal bzImage: one setup sector, boot protocol `version`, a payload
/// of `payload` bytes (first bytes `CODE`), `init_size` as given.
fn bzimage(version: u16, payload: usize, init_size: u32) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0x1f1] = 1; // setup_sects
    put(
        &mut b,
        0x1f4,
        &((payload as u32).div_ceil(16)).to_le_bytes(),
    ); // syssize
    put(&mut b, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut b, 0x202, b"HdrS");
    put(&mut b, 0x206, &version.to_le_bytes());
    b[0x211] = 1; // LOADED_HIGH
    put(&mut b, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut b, 0x236, &1u16.to_le_bytes()); // XLF_KERNEL_64
    put(&mut b, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut b, 0x260, &init_size.to_le_bytes());
    let mut body = vec![0x90u8; payload.div_ceil(16) * 16];
    body[..CODE.len()].copy_from_slice(CODE);
    b.extend_from_slice(&body);
    b
}

fn load(m: &GuestMemoryMmap, image: Vec<u8>) -> Result<KernelEntry> {
    load_kernel(m, &mut Cursor::new(image))
}

#[test]
fn elf_without_pvh_note_boots_through_its_entry() {
    let m = mem();
    m.write_slice(&[0xaa; 64], GuestAddress(0x20_0000 + CODE.len() as u64))
        .unwrap();
    let k = load(&m, elf(0x20_0000, 64, None)).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry_addr, GuestAddress(0x20_0000));
    assert!(k.setup_header.is_none());
    assert_eq!(
        k.kernel_end,
        GuestAddress(0x20_0000 + CODE.len() as u64 + 64)
    );
    let mut code = [0u8; 3];
    m.read_slice(&mut code, GuestAddress(0x20_0000)).unwrap();
    assert_eq!(code, CODE);
    let mut bss = [0xffu8; 64];
    m.read_slice(&mut bss, GuestAddress(0x20_0000 + CODE.len() as u64))
        .unwrap();
    assert_eq!(bss, [0u8; 64], "bss is zeroed");
}

#[test]
fn elf_with_pvh_note_boots_through_pvh() {
    let m = mem();
    let k = load(&m, elf(0x10_0000, 0, Some(0x10_0001))).unwrap();
    assert_eq!(k.protocol, BootProtocol::Pvh);
    assert_eq!(k.entry_addr, GuestAddress(0x10_0001));
    assert_eq!(k.protocol.boot_info_addr(), GuestAddress(0x6000));
}

#[test]
fn bzimage_boots_at_1mib_plus_0x200_and_keeps_its_header() {
    let m = mem();
    let k = load(&m, bzimage(0x020f, 0x1000, 0x8000)).unwrap();
    assert_eq!(k.protocol, BootProtocol::Linux64);
    assert_eq!(k.entry_addr, GuestAddress(0x10_0200));
    let hdr = k.setup_header.unwrap();
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!({ hdr.cmdline_size }, 2047);
    assert_eq!(
        k.kernel_end,
        GuestAddress(0x10_0000 + 0x8000),
        "init_size counts"
    );
    let mut code = [0u8; 3];
    m.read_slice(&mut code, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(code, CODE);
}

#[test]
fn empty_kernel_is_rejected() {
    assert!(matches!(
        load(&mem(), Vec::new()),
        Err(LoaderError::EmptyKernel)
    ));
}

#[test]
fn garbage_is_neither_elf_nor_bzimage() {
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let err = load(&mem(), garbage).unwrap_err();
    assert!(matches!(err, LoaderError::UnknownFormat));
    assert_eq!(err.to_string(), "Kernel image is neither ELF nor bzImage");
}

#[test]
fn truncated_elf_header_is_reported() {
    let mut image = elf(0x10_0000, 0, None);
    image.truncate(40);
    assert!(matches!(
        load(&mem(), image),
        Err(LoaderError::Truncated {
            what: "ELF header",
            needed: 64,
            len: 40
        })
    ));
}

#[test]
fn truncated_elf_segment_is_reported() {
    let mut image = elf(0x10_0000, 0, None);
    image.truncate(0x1001);
    let err = load(&mem(), image).unwrap_err();
    assert!(
        matches!(
            err,
            LoaderError::Truncated {
                what: "loadable segment",
                needed: 0x1003,
                len: 0x1001
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_bzimage_is_reported() {
    let mut image = bzimage(0x020f, 0x1000, 0);
    image.truncate(1024 + 0x800);
    assert!(matches!(
        load(&mem(), image),
        Err(LoaderError::Truncated {
            needed: 0x1400,
            len: 0xc00,
            ..
        })
    ));
    let mut short = bzimage(0x020f, 0x1000, 0);
    short.truncate(0x210);
    assert!(matches!(
        load(&mem(), short),
        Err(LoaderError::Truncated {
            what: "bzImage setup header",
            ..
        })
    ));
}

#[test]
fn old_bzimage_is_unsupported() {
    assert!(matches!(
        load(&mem(), bzimage(0x0206, 0x1000, 0)),
        Err(LoaderError::UnsupportedBzImage(0x0206))
    ));
}

#[test]
fn elf_larger_than_ram_does_not_fit() {
    let err = load(&mem(), elf(0x10_0000, RAM, None)).unwrap_err();
    assert!(
        matches!(err, LoaderError::KernelTooBig { ram_end: RAM, .. }),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("Kernel does not fit in guest memory"));
}

#[test]
fn bzimage_whose_init_size_exceeds_ram_does_not_fit() {
    assert!(matches!(
        load(&mem(), bzimage(0x020f, 0x1000, RAM as u32)),
        Err(LoaderError::KernelTooBig { .. })
    ));
}

#[test]
fn elf_segment_below_1mib_is_rejected() {
    assert!(matches!(
        load(&mem(), elf(0x8000, 0, None)),
        Err(LoaderError::BelowLoadArea(0x8000))
    ));
}

#[test]
fn elf32_is_unsupported() {
    let mut image = elf(0x10_0000, 0, None);
    image[4] = 1;
    assert!(matches!(
        load(&mem(), image),
        Err(LoaderError::UnsupportedElf(_))
    ));
}

#[test]
fn elf_with_absurd_program_header_count_is_truncated() {
    let mut image = elf(0x10_0000, 0, None);
    image[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
    assert!(matches!(
        load(&mem(), image),
        Err(LoaderError::Truncated {
            what: "program header table",
            ..
        })
    ));
}

#[test]
fn pvh_note_scan_survives_bad_sizes() {
    let mut notes = Vec::new();
    notes.extend_from_slice(&u32::MAX.to_le_bytes());
    notes.extend_from_slice(&u32::MAX.to_le_bytes());
    notes.extend_from_slice(&18u32.to_le_bytes());
    assert_eq!(find_pvh_entry(&notes), None);
    assert_eq!(find_pvh_entry(&[1, 2, 3]), None);
}

#[test]
fn initramfs_goes_to_the_top_of_low_ram_page_aligned() {
    let m = mem();
    let data = vec![0x5au8; 5000];
    let r = load_initramfs(&m, &mut Cursor::new(data), GuestAddress(0x20_0000)).unwrap();
    assert_eq!(r.size, 5000);
    assert_eq!(r.addr.0 % PAGE_SIZE, 0);
    assert_eq!(r.addr, GuestAddress(RAM - 2 * PAGE_SIZE));
    let mut first = [0u8; 1];
    m.read_slice(&mut first, r.addr).unwrap();
    assert_eq!(first, [0x5a]);
}

#[test]
fn initramfs_top_stops_at_3_gib_in_large_guests() {
    let m: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 3 << 30),
        (GuestAddress(4 << 30), 1 << 30),
    ])
    .unwrap();
    assert_eq!(low_ram_end_of(&m), 3 << 30);
    let r = load_initramfs(&m, &mut Cursor::new(vec![1u8; 4096]), GuestAddress(MIB)).unwrap();
    assert_eq!(r.addr, GuestAddress((3 << 30) - 4096));
}

#[test]
fn initramfs_too_big_names_the_sizes() {
    let m = mem();
    let data = vec![0u8; 8 * MIB as usize];
    let err = load_initramfs(&m, &mut Cursor::new(data), GuestAddress(60 * MIB)).unwrap_err();
    match &err {
        LoaderError::InitramfsTooBig {
            size, available, ..
        } => {
            assert_eq!(*size, 8 * MIB);
            assert_eq!(*available, 4 * MIB);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("Initramfs does not fit"), "{msg}");
    assert!(msg.contains("8388608") && msg.contains("4194304"), "{msg}");
}

#[test]
fn empty_initramfs_is_rejected() {
    assert!(matches!(
        load_initramfs(&mem(), &mut Cursor::new(Vec::new()), GuestAddress(MIB)),
        Err(LoaderError::EmptyInitramfs)
    ));
}

#[test]
fn missing_file_is_not_found() {
    let path = std::path::Path::new("/nonexistent/shoal/vmlinux");
    match open_image(path) {
        Err(LoaderError::NotFound(p)) => assert_eq!(p, path),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn kernel_loads_from_a_real_file() {
    let path = std::env::temp_dir().join(format!("shoal-arch-test-{}.elf", std::process::id()));
    std::fs::write(&path, elf(0x10_0000, 0, Some(0x10_0000))).unwrap();
    let mut file = open_image(&path).unwrap();
    let result = load_kernel(&mem(), &mut file);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(result.unwrap().protocol, BootProtocol::Pvh);
}
