// SPDX-License-Identifier: Apache-2.0
//! ACPI discovery: RSDP → XSDT (or RSDT) → MADT, FADT and MCFG.
//!
//! Pure parsing over [`Memory`], so it is unit-tested on the host. Every
//! table is bounds- and checksum-checked; a bad table becomes an
//! [`AcpiError`] for the caller to report, never a crash.

use crate::mem::Memory;

/// Most CPUs the guest tracks (APIC IDs beyond it are counted, not kept).
pub const MAX_CPUS: usize = 64;
/// Largest table length accepted (a sanity bound against junk headers).
const MAX_TABLE_LEN: u32 = 1 << 20;
const SDT_HEADER_LEN: u32 = 36;
const RSDP_V1_LEN: u64 = 20;
const RSDP_V2_LEN: u32 = 36;
/// Legacy BIOS area scanned for the RSDP when no pointer is passed.
const RSDP_SCAN_START: u64 = 0xe_0000;
const RSDP_SCAN_END: u64 = 0x10_0000;

/// FADT flag: hardware-reduced ACPI.
#[cfg_attr(not(test), allow(dead_code))]
pub const FADT_HW_REDUCED: u32 = 1 << 20;
/// FADT flag: the reset register is supported.
pub const FADT_RESET_REG_SUP: u32 = 1 << 10;

/// GAS address space: system memory.
pub const GAS_MEMORY: u8 = 0;
/// GAS address space: system I/O.
pub const GAS_IO: u8 = 1;

/// Why a table could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP at the given address nor in the BIOS area.
    NoRsdp,
    /// The RSDP checksum (or extended checksum) is wrong.
    RsdpChecksum,
    /// The RSDP names neither an XSDT nor an RSDT.
    NoRootTable,
    /// A table lies outside readable memory or has an absurd length.
    BadTableAddress([u8; 4]),
    /// A table's signature is not the one its pointer promised.
    BadSignature([u8; 4]),
    /// A table's checksum is wrong.
    BadChecksum([u8; 4]),
    /// A table is too short for the fields the guest needs.
    TooShort([u8; 4]),
    /// A MADT entry has a length below 2 or runs past the table.
    BadMadtEntry,
    /// The root table lists no table with this signature.
    Missing([u8; 4]),
}

impl AcpiError {
    /// A short description for the `SHOAL-TG error acpi ...` line.
    pub fn message(&self) -> &'static str {
        match self {
            AcpiError::NoRsdp => "no rsdp",
            AcpiError::RsdpChecksum => "bad rsdp checksum",
            AcpiError::NoRootTable => "no xsdt or rsdt",
            AcpiError::BadTableAddress(_) => "bad table address or length",
            AcpiError::BadSignature(_) => "bad table signature",
            AcpiError::BadChecksum(_) => "bad table checksum",
            AcpiError::TooShort(_) => "table too short",
            AcpiError::BadMadtEntry => "bad madt entry",
            AcpiError::Missing(_) => "missing table",
        }
    }

    /// The signature of the table concerned, if any.
    pub fn signature(&self) -> Option<[u8; 4]> {
        match *self {
            AcpiError::BadTableAddress(s)
            | AcpiError::BadSignature(s)
            | AcpiError::BadChecksum(s)
            | AcpiError::TooShort(s)
            | AcpiError::Missing(s) => Some(s),
            AcpiError::BadMadtEntry => Some(*b"APIC"),
            _ => None,
        }
    }
}

/// An ACPI Generic Address Structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gas {
    /// Address space ([`GAS_MEMORY`], [`GAS_IO`], ...).
    pub space: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Bit offset of the field in the register.
    pub bit_offset: u8,
    /// Access size: 0 undefined, 1 byte, 2 word, 3 dword, 4 qword.
    pub access_size: u8,
    /// Register address.
    pub address: u64,
}

impl Gas {
    fn read(mem: &impl Memory, addr: u64) -> Gas {
        Gas {
            space: mem.read8(addr),
            bit_width: mem.read8(addr + 1),
            bit_offset: mem.read8(addr + 2),
            access_size: mem.read8(addr + 3),
            address: mem.read64(addr + 4),
        }
    }

    /// Whether the register exists (non-zero address).
    pub fn is_present(&self) -> bool {
        self.address != 0
    }

    /// Access width in bytes: from the access size, else the bit width,
    /// else one byte.
    pub fn access_bytes(&self) -> u8 {
        match self.access_size {
            1 => 1,
            2 => 2,
            3 => 4,
            4 => 8,
            _ => match self.bit_width {
                16 => 2,
                32 => 4,
                64 => 8,
                _ => 1,
            },
        }
    }
}

/// What the guest needs from the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Madt {
    /// Local APIC MMIO base.
    pub lapic_address: u32,
    /// APIC IDs of the enabled processors, in table order.
    pub apic_ids: [u32; MAX_CPUS],
    /// Valid entries in `apic_ids`.
    pub cpu_count: usize,
    /// Enabled processors that did not fit in `apic_ids`.
    pub cpus_dropped: usize,
    /// First IOAPIC: (id, MMIO address, GSI base).
    pub ioapic: Option<(u8, u32, u32)>,
}

impl Madt {
    /// The enabled APIC IDs.
    pub fn apic_ids(&self) -> &[u32] {
        self.apic_ids.get(..self.cpu_count).unwrap_or(&[])
    }
}

/// What the guest needs from the FADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fadt {
    /// FADT flags.
    pub flags: u32,
    /// Reset register (valid when [`FADT_RESET_REG_SUP`] is set).
    pub reset_reg: Gas,
    /// Value to write to the reset register.
    pub reset_value: u8,
    /// Sleep control register (hardware-reduced ACPI).
    pub sleep_control: Gas,
    /// Sleep status register (hardware-reduced ACPI).
    pub sleep_status: Gas,
}

/// The ECAM window of PCI segment 0, from the MCFG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mcfg {
    /// Physical base address (of bus 0, whatever the start bus).
    pub base: u64,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

/// The result of [`discover`]: each table on its own, so one bad table
/// does not hide the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiInfo {
    /// Physical address of the RSDP used.
    pub rsdp: u64,
    /// Signature of the root table used (`XSDT` or `RSDT`).
    pub root: [u8; 4],
    /// The MADT, or why it is unusable.
    pub madt: Result<Madt, AcpiError>,
    /// The FADT, or why it is unusable.
    pub fadt: Result<Fadt, AcpiError>,
    /// The MCFG (segment 0), or why it is unusable.
    pub mcfg: Result<Mcfg, AcpiError>,
}

fn checksum_ok(mem: &impl Memory, addr: u64, len: u64) -> bool {
    let mut sum: u8 = 0;
    for i in 0..len {
        sum = sum.wrapping_add(mem.read8(addr + i));
    }
    sum == 0
}

fn is_rsdp(mem: &impl Memory, addr: u64) -> bool {
    mem.contains(addr, RSDP_V1_LEN)
        && b"RSD PTR "
            .iter()
            .enumerate()
            .all(|(i, &b)| mem.read8(addr + i as u64) == b)
}

/// Finds the RSDP: at `hint` when non-zero, else by scanning the BIOS area
/// on 16-byte boundaries. Checksums are checked by [`discover`].
pub fn find_rsdp(mem: &impl Memory, hint: u64) -> Result<u64, AcpiError> {
    if hint != 0 && is_rsdp(mem, hint) {
        return Ok(hint);
    }
    (RSDP_SCAN_START..RSDP_SCAN_END)
        .step_by(16)
        .find(|&addr| is_rsdp(mem, addr))
        .ok_or(AcpiError::NoRsdp)
}

fn read_signature(mem: &impl Memory, addr: u64) -> [u8; 4] {
    [
        mem.read8(addr),
        mem.read8(addr + 1),
        mem.read8(addr + 2),
        mem.read8(addr + 3),
    ]
}

/// Checks a table header at `addr` that should carry `signature`; returns
/// the table length.
fn check_table(mem: &impl Memory, addr: u64, signature: [u8; 4]) -> Result<u32, AcpiError> {
    if !mem.contains(addr, u64::from(SDT_HEADER_LEN)) {
        return Err(AcpiError::BadTableAddress(signature));
    }
    if read_signature(mem, addr) != signature {
        return Err(AcpiError::BadSignature(signature));
    }
    let len = mem.read32(addr + 4);
    if !(SDT_HEADER_LEN..=MAX_TABLE_LEN).contains(&len) || !mem.contains(addr, u64::from(len)) {
        return Err(AcpiError::BadTableAddress(signature));
    }
    if !checksum_ok(mem, addr, u64::from(len)) {
        return Err(AcpiError::BadChecksum(signature));
    }
    Ok(len)
}

/// Walks RSDP → root table and parses the MADT and the FADT.
pub fn discover(mem: &impl Memory, rsdp_hint: u64) -> Result<AcpiInfo, AcpiError> {
    let rsdp = find_rsdp(mem, rsdp_hint)?;
    if !checksum_ok(mem, rsdp, RSDP_V1_LEN) {
        return Err(AcpiError::RsdpChecksum);
    }
    let revision = mem.read8(rsdp + 15);
    let rsdt = u64::from(mem.read32(rsdp + 16));
    let mut xsdt = 0;
    if revision >= 2 && mem.contains(rsdp, u64::from(RSDP_V2_LEN)) {
        let len = mem.read32(rsdp + 20);
        if len < RSDP_V2_LEN || !mem.contains(rsdp, u64::from(len)) {
            return Err(AcpiError::RsdpChecksum);
        }
        if !checksum_ok(mem, rsdp, u64::from(len)) {
            return Err(AcpiError::RsdpChecksum);
        }
        xsdt = mem.read64(rsdp + 24);
    }
    let (root, root_sig, entry_size) = if xsdt != 0 {
        (xsdt, *b"XSDT", 8)
    } else if rsdt != 0 {
        (rsdt, *b"RSDT", 4)
    } else {
        return Err(AcpiError::NoRootTable);
    };
    let root_len = check_table(mem, root, root_sig)?;
    let entries = u64::from(root_len - SDT_HEADER_LEN) / entry_size;
    let entry_addr = |i: u64| {
        let at = root + u64::from(SDT_HEADER_LEN) + i * entry_size;
        if entry_size == 8 {
            mem.read64(at)
        } else {
            u64::from(mem.read32(at))
        }
    };
    let find = |signature: [u8; 4]| {
        (0..entries)
            .map(entry_addr)
            .find(|&addr| mem.contains(addr, 4) && read_signature(mem, addr) == signature)
            .ok_or(AcpiError::Missing(signature))
    };
    Ok(AcpiInfo {
        rsdp,
        root: root_sig,
        madt: find(*b"APIC").and_then(|addr| parse_madt(mem, addr)),
        fadt: find(*b"FACP").and_then(|addr| parse_fadt(mem, addr)),
        mcfg: find(*b"MCFG").and_then(|addr| parse_mcfg(mem, addr)),
    })
}

/// Parses the MADT at `addr`: enabled local APICs and x2APICs, first IOAPIC.
pub fn parse_madt(mem: &impl Memory, addr: u64) -> Result<Madt, AcpiError> {
    let len = u64::from(check_table(mem, addr, *b"APIC")?);
    if len < 44 {
        return Err(AcpiError::TooShort(*b"APIC"));
    }
    let mut madt = Madt {
        lapic_address: mem.read32(addr + 36),
        apic_ids: [0; MAX_CPUS],
        cpu_count: 0,
        cpus_dropped: 0,
        ioapic: None,
    };
    let mut offset = 44;
    while offset < len {
        if offset + 2 > len {
            return Err(AcpiError::BadMadtEntry);
        }
        let kind = mem.read8(addr + offset);
        let entry_len = u64::from(mem.read8(addr + offset + 1));
        if entry_len < 2 || offset + entry_len > len {
            return Err(AcpiError::BadMadtEntry);
        }
        let entry = addr + offset;
        match (kind, entry_len) {
            // Processor local APIC: uid, APIC id, flags (bit 0 enabled).
            (0, 8..) if mem.read32(entry + 4) & 1 != 0 => {
                madt.add_cpu(u32::from(mem.read8(entry + 3)));
            }
            // IOAPIC: id, reserved, address, GSI base.
            (1, 12..) if madt.ioapic.is_none() => {
                madt.ioapic = Some((
                    mem.read8(entry + 2),
                    mem.read32(entry + 4),
                    mem.read32(entry + 8),
                ));
            }
            // Processor local x2APIC: reserved, x2APIC id, flags, uid.
            (9, 16..) if mem.read32(entry + 8) & 1 != 0 => {
                madt.add_cpu(mem.read32(entry + 4));
            }
            _ => {}
        }
        offset += entry_len;
    }
    Ok(madt)
}

impl Madt {
    fn add_cpu(&mut self, apic_id: u32) {
        match self.apic_ids.get_mut(self.cpu_count) {
            Some(slot) => {
                *slot = apic_id;
                self.cpu_count += 1;
            }
            None => self.cpus_dropped += 1,
        }
    }
}

/// Parses the FADT at `addr`: flags, reset register, sleep registers.
/// Fields past the table's length read as absent.
pub fn parse_fadt(mem: &impl Memory, addr: u64) -> Result<Fadt, AcpiError> {
    let len = u64::from(check_table(mem, addr, *b"FACP")?);
    if len < 116 {
        return Err(AcpiError::TooShort(*b"FACP"));
    }
    let gas_if_present = |offset: u64| {
        if offset + 12 <= len {
            Gas::read(mem, addr + offset)
        } else {
            Gas::default()
        }
    };
    Ok(Fadt {
        flags: mem.read32(addr + 112),
        reset_reg: gas_if_present(116),
        reset_value: if len > 128 { mem.read8(addr + 128) } else { 0 },
        sleep_control: gas_if_present(244),
        sleep_status: gas_if_present(256),
    })
}

/// Parses the MCFG at `addr`: the first allocation for segment 0.
pub fn parse_mcfg(mem: &impl Memory, addr: u64) -> Result<Mcfg, AcpiError> {
    const ENTRIES: u64 = 44;
    const ENTRY_LEN: u64 = 16;
    let len = u64::from(check_table(mem, addr, *b"MCFG")?);
    let mut entry = addr + ENTRIES;
    while entry + ENTRY_LEN <= addr + len {
        let segment = mem.read16(entry + 8);
        let start_bus = mem.read8(entry + 10);
        let end_bus = mem.read8(entry + 11);
        if segment == 0 && start_bus <= end_bus {
            return Ok(Mcfg {
                base: mem.read64(entry),
                start_bus,
                end_bus,
            });
        }
        entry += ENTRY_LEN;
    }
    Err(AcpiError::TooShort(*b"MCFG"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Physical memory for tests: `bytes` placed at `base`.
    struct Buffer {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Memory for Buffer {
        fn read8(&self, addr: u64) -> u8 {
            addr.checked_sub(self.base)
                .and_then(|off| self.bytes.get(off as usize).copied())
                .unwrap_or(0xff)
        }

        fn contains(&self, addr: u64, len: u64) -> bool {
            addr >= self.base && addr + len <= self.base + self.bytes.len() as u64
        }
    }

    const BASE: u64 = 0xe_0000;
    const XSDT: u64 = BASE + 0x40;
    const MADT: u64 = BASE + 0x800;
    const FADT: u64 = BASE + 0x200;
    const MCFG: u64 = BASE + 0x400;

    fn put(buf: &mut Buffer, addr: u64, data: &[u8]) {
        let off = (addr - buf.base) as usize;
        buf.bytes[off..off + data.len()].copy_from_slice(data);
    }

    fn fix_checksum(buf: &mut Buffer, addr: u64, len: usize, at: usize) {
        let off = (addr - buf.base) as usize;
        buf.bytes[off + at] = 0;
        let sum = buf.bytes[off..off + len]
            .iter()
            .fold(0u8, |s, &b| s.wrapping_add(b));
        buf.bytes[off + at] = 0u8.wrapping_sub(sum);
    }

    fn header(signature: &[u8; 4], len: u32) -> Vec<u8> {
        let mut h = vec![0u8; 36];
        h[..4].copy_from_slice(signature);
        h[4..8].copy_from_slice(&len.to_le_bytes());
        h[8] = 1;
        h
    }

    fn gas(space: u8, width: u8, address: u64) -> Vec<u8> {
        let mut g = vec![space, width, 0, 1];
        g.extend_from_slice(&address.to_le_bytes());
        g
    }

    /// A complete, valid table set like docs/platform.md describes.
    fn platform_tables(cpus: u8) -> Buffer {
        let mut buf = Buffer {
            base: BASE,
            bytes: vec![0; 0x1000],
        };
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.extend_from_slice(&[0, b'S', b'H', b'O', b'A', b'L', b' ', 2]);
        rsdp.extend_from_slice(&0u32.to_le_bytes());
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&XSDT.to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
        put(&mut buf, BASE, &rsdp);
        fix_checksum(&mut buf, BASE, 20, 8);
        fix_checksum(&mut buf, BASE, 36, 32);

        let mut xsdt = header(b"XSDT", 36 + 24);
        xsdt.extend_from_slice(&FADT.to_le_bytes());
        xsdt.extend_from_slice(&MADT.to_le_bytes());
        xsdt.extend_from_slice(&MCFG.to_le_bytes());
        put(&mut buf, XSDT, &xsdt);
        fix_checksum(&mut buf, XSDT, xsdt.len(), 9);

        let mut body = Vec::new();
        body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for id in 0..cpus {
            body.extend_from_slice(&[0, 8, id, id, 1, 0, 0, 0]);
        }
        body.extend_from_slice(&[1, 12, 0, 0]);
        body.extend_from_slice(&0xfec0_0000u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        let mut madt = header(b"APIC", 36 + body.len() as u32);
        madt.extend_from_slice(&body);
        put(&mut buf, MADT, &madt);
        fix_checksum(&mut buf, MADT, madt.len(), 9);

        let mut fadt = header(b"FACP", 276);
        fadt.resize(276, 0);
        fadt[112..116].copy_from_slice(&(FADT_HW_REDUCED | FADT_RESET_REG_SUP).to_le_bytes());
        fadt[116..128].copy_from_slice(&gas(GAS_IO, 8, 0x3c4));
        fadt[128] = 1;
        fadt[244..256].copy_from_slice(&gas(GAS_IO, 8, 0x3c0));
        fadt[256..268].copy_from_slice(&gas(GAS_IO, 8, 0x3c1));
        put(&mut buf, FADT, &fadt);
        fix_checksum(&mut buf, FADT, fadt.len(), 9);

        let mut mcfg = header(b"MCFG", 44 + 16);
        mcfg.resize(44, 0);
        mcfg.extend_from_slice(&0xe000_0000u64.to_le_bytes());
        mcfg.extend_from_slice(&[0, 0, 0, 255, 0, 0, 0, 0]);
        put(&mut buf, MCFG, &mcfg);
        fix_checksum(&mut buf, MCFG, mcfg.len(), 9);
        buf
    }

    #[test]
    fn platform_tables_give_cpus_ioapic_and_registers() {
        let buf = platform_tables(2);
        let info = discover(&buf, BASE).unwrap();
        assert_eq!(info.rsdp, BASE);
        assert_eq!(&info.root, b"XSDT");
        let madt = info.madt.unwrap();
        assert_eq!(madt.apic_ids(), &[0, 1]);
        assert_eq!(madt.lapic_address, 0xfee0_0000);
        assert_eq!(madt.ioapic, Some((0, 0xfec0_0000, 0)));
        let fadt = info.fadt.unwrap();
        assert_eq!(fadt.sleep_control.space, GAS_IO);
        assert_eq!(fadt.sleep_control.address, 0x3c0);
        assert_eq!(fadt.reset_reg.address, 0x3c4);
        assert_eq!(fadt.reset_value, 1);
        assert_ne!(fadt.flags & FADT_HW_REDUCED, 0);
        assert_eq!(
            info.mcfg,
            Ok(Mcfg {
                base: 0xe000_0000,
                start_bus: 0,
                end_bus: 255
            })
        );
    }

    #[test]
    fn mcfg_without_an_entry_is_an_error() {
        let mut buf = platform_tables(1);
        put(&mut buf, MCFG + 4, &44u32.to_le_bytes());
        fix_checksum(&mut buf, MCFG, 44, 9);
        assert_eq!(parse_mcfg(&buf, MCFG), Err(AcpiError::TooShort(*b"MCFG")));
    }

    #[test]
    fn rsdp_is_found_by_scanning_without_a_hint() {
        let buf = platform_tables(1);
        assert_eq!(find_rsdp(&buf, 0), Ok(BASE));
    }

    #[test]
    fn wrong_hint_falls_back_to_the_scan() {
        let buf = platform_tables(1);
        assert_eq!(find_rsdp(&buf, BASE + 0x800), Ok(BASE));
    }

    #[test]
    fn missing_rsdp_is_an_error() {
        let buf = Buffer {
            base: BASE,
            bytes: vec![0; 0x100],
        };
        assert_eq!(discover(&buf, 0), Err(AcpiError::NoRsdp));
    }

    #[test]
    fn corrupt_rsdp_checksum_is_an_error() {
        let mut buf = platform_tables(1);
        buf.bytes[9] ^= 0xff;
        assert_eq!(discover(&buf, BASE), Err(AcpiError::RsdpChecksum));
    }

    #[test]
    fn corrupt_madt_is_reported_and_fadt_still_parsed() {
        let mut buf = platform_tables(2);
        buf.bytes[(MADT - BASE) as usize + 40] ^= 0x55;
        let info = discover(&buf, BASE).unwrap();
        assert_eq!(info.madt, Err(AcpiError::BadChecksum(*b"APIC")));
        assert!(info.fadt.is_ok());
    }

    #[test]
    fn madt_entry_with_zero_length_is_rejected() {
        let mut buf = platform_tables(1);
        buf.bytes[(MADT - BASE) as usize + 45] = 0;
        fix_checksum(&mut buf, MADT, 36 + 8 + 8 + 12, 9);
        assert_eq!(parse_madt(&buf, MADT), Err(AcpiError::BadMadtEntry));
    }

    #[test]
    fn table_length_past_memory_is_rejected() {
        let mut buf = platform_tables(1);
        put(&mut buf, FADT + 4, &0x10_0000u32.to_le_bytes());
        assert_eq!(
            parse_fadt(&buf, FADT),
            Err(AcpiError::BadTableAddress(*b"FACP"))
        );
    }

    #[test]
    fn disabled_processors_are_not_listed() {
        let mut buf = platform_tables(2);
        buf.bytes[(MADT - BASE) as usize + 44 + 8 + 4] = 0;
        fix_checksum(&mut buf, MADT, 36 + 8 + 16 + 12, 9);
        assert_eq!(parse_madt(&buf, MADT).unwrap().apic_ids(), &[0]);
    }

    #[test]
    fn more_cpus_than_slots_are_counted_as_dropped() {
        let buf = platform_tables(MAX_CPUS as u8 + 2);
        let madt = discover(&buf, BASE).unwrap().madt.unwrap();
        assert_eq!(madt.cpu_count, MAX_CPUS);
        assert_eq!(madt.cpus_dropped, 2);
    }

    #[test]
    fn gas_access_width_prefers_access_size() {
        let g = Gas {
            access_size: 3,
            bit_width: 8,
            ..Gas::default()
        };
        assert_eq!(g.access_bytes(), 4);
        let g = Gas {
            bit_width: 16,
            ..Gas::default()
        };
        assert_eq!(g.access_bytes(), 2);
    }
}
