// SPDX-License-Identifier: Apache-2.0
//! The scenarios the guest can run, picked by `scenario=<name>`.
//!
//! To add one: write `scenarios/<name>.rs` with a
//! `pub fn run(ctx: &Context)` that prints its marker lines (and
//! `SHOAL-TG error ...` lines on failure), then list it in [`SCENARIOS`].
//! Its arguments come from the command line as `key=value` words through
//! [`Context::args`]. `SHOAL-TG done` and the power-off happen after `run`
//! returns.

mod boot;
mod checksum;
mod counter;
mod dirty;
mod fault;
mod irq;
mod ram;
mod shm;
mod shm_sync;

use crate::acpi::{Fadt, Madt, Mcfg};
use crate::cmdline::Args;
use crate::start_info::MemRegion;

/// What every scenario gets (not every scenario reads every field).
#[derive(Debug)]
#[allow(dead_code)]
pub struct Context<'a> {
    /// The command line.
    pub args: Args<'a>,
    /// The MADT, when ACPI provided a usable one.
    pub madt: Option<&'a Madt>,
    /// The FADT, when ACPI provided a usable one.
    pub fadt: Option<&'a Fadt>,
    /// The MCFG (ECAM window), when ACPI provided a usable one.
    pub mcfg: Option<&'a Mcfg>,
    /// The loader's memory map (empty when it gave none).
    pub memmap: &'a [MemRegion],
}

/// A named scenario.
#[derive(Debug)]
pub struct Scenario {
    /// The value of `scenario=` that selects it.
    pub name: &'static str,
    /// Runs it.
    pub run: fn(&Context),
}

/// Every scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        run: boot::run,
    },
    Scenario {
        name: "irq",
        run: irq::run,
    },
    Scenario {
        name: "fault",
        run: fault::run,
    },
    Scenario {
        name: "shm",
        run: shm::run,
    },
    Scenario {
        name: "counter",
        run: counter::run,
    },
    Scenario {
        name: "dirty",
        run: dirty::run,
    },
    Scenario {
        name: "checksum",
        run: checksum::run,
    },
];

/// The scenario called `name`.
pub fn find(name: &[u8]) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name.as_bytes() == name)
}
