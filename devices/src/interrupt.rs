// SPDX-License-Identifier: Apache-2.0
//! Interrupt handles given to device models.
//!
//! Devices never talk to KVM: the vmm hands them an object implementing one of
//! these traits (typically wrapping an irqfd-registered `EventFd`, or a
//! `KVM_IRQ_LINE` call for level-triggered IOAPIC pins).

use std::io;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line (ISA IRQ, or an MSI bound to a route).
pub trait InterruptLine: Send + Sync {
    /// Raises one edge.
    fn trigger(&self) -> io::Result<()>;
}

/// A level-triggered interrupt line (PCI INTx on an IOAPIC pin).
pub trait LevelInterruptLine: Send + Sync {
    /// Drives the line: `true` asserts it, `false` deasserts it.
    fn set_level(&self, asserted: bool) -> io::Result<()>;
}

/// An eventfd registered as a KVM irqfd is the usual edge line.
impl InterruptLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// A line that goes nowhere, for fuzz targets and devices without an IRQ.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullInterrupt;

impl InterruptLine for NullInterrupt {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

impl LevelInterruptLine for NullInterrupt {
    fn set_level(&self, _asserted: bool) -> io::Result<()> {
        Ok(())
    }
}

/// A message-signalled interrupt: the write a device would issue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MsiMessage {
    /// Message address (for x86, `0xfee0_0000 | dest << 12 | ...`).
    pub addr: u64,
    /// Message data (vector, delivery mode, trigger mode).
    pub data: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_line_counts_triggers() {
        let fd = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        fd.trigger().unwrap();
        fd.trigger().unwrap();
        assert_eq!(fd.read().unwrap(), 2);
    }

    #[test]
    fn null_interrupt_always_succeeds() {
        assert!(NullInterrupt.trigger().is_ok());
        assert!(NullInterrupt.set_level(true).is_ok());
    }
}
