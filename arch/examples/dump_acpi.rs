// SPDX-License-Identifier: Apache-2.0
//! Writes the ACPI tables for a guest into a directory, one file per table,
//! for inspection with `iasl -d` (acpica-tools).
//!
//! `cargo run -p arch --example dump_acpi -- OUT_DIR [NUM_CPUS] [RAM_MIB]`

use std::error::Error;
use std::path::PathBuf;

use arch::{create_acpi_tables, AcpiConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn read(mem: &GuestMemoryMmap, at: u64, len: usize) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(at))?;
    Ok(v)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: dump_acpi OUT_DIR [NUM_CPUS] [RAM_MIB]")?,
    );
    let num_cpus: u32 = args.next().map_or(Ok(2), |a| a.parse())?;
    let ram_mib: u64 = args.next().map_or(Ok(128), |a| a.parse())?;
    let ram_bytes = ram_mib << 20;

    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)])?;
    let rsdp = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus,
            ram_bytes,
        },
    )?;
    std::fs::create_dir_all(&out)?;
    let rsdp_bytes = read(&mem, rsdp.0, 36)?;
    std::fs::write(out.join("rsdp.dat"), &rsdp_bytes)?;

    let mut pending = vec![u64::from_le_bytes(rsdp_bytes[24..32].try_into()?)];
    while let Some(at) = pending.pop() {
        let header = read(&mem, at, 36)?;
        let len = u32::from_le_bytes(header[4..8].try_into()?) as usize;
        let table = read(&mem, at, len)?;
        let sig = String::from_utf8_lossy(&table[0..4]).to_lowercase();
        match &table[0..4] {
            b"XSDT" => {
                for entry in table[36..].chunks_exact(8) {
                    pending.push(u64::from_le_bytes(entry.try_into()?));
                }
            }
            b"FACP" => pending.push(u64::from_le_bytes(table[140..148].try_into()?)),
            _ => {}
        }
        std::fs::write(out.join(format!("{sig}.dat")), &table)?;
        println!("{sig} at {at:#x}, {len} bytes");
    }
    Ok(())
}
