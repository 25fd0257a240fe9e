// SPDX-License-Identifier: Apache-2.0
//! Legacy INTx: routing (slot to IOAPIC pin) and the PCI 2.3 pending/disable
//! logic a function model needs.

use std::fmt;
use std::io;
use std::sync::Arc;

use super::config::PciConfiguration;
use crate::interrupt::LevelInterruptLine;

/// First IOAPIC pin used for PCI INTx.
pub const INTX_PIN_BASE: u8 = 16;
/// Interrupt pin register value for INTA#.
pub const INTA: u8 = 1;

/// IOAPIC pin (= GSI) of slot `slot`, pin INTA: `16 + slot % 8`.
pub fn intx_pin_for_slot(slot: u8) -> u8 {
    INTX_PIN_BASE + slot % 8
}

/// The INTx output of one function: drives a level line from the function's
/// pending state, honouring the command register's Interrupt Disable bit and
/// mirroring the pending state in the status register's Interrupt Status bit.
pub struct Intx {
    line: Arc<dyn LevelInterruptLine>,
    asserted: bool,
}

impl fmt::Debug for Intx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intx")
            .field("asserted", &self.asserted)
            .finish()
    }
}

impl Intx {
    /// Creates the output, deasserted.
    pub fn new(line: Arc<dyn LevelInterruptLine>) -> Self {
        Self {
            line,
            asserted: false,
        }
    }

    /// Declares INTA in `config` with the line register for `slot`. (The
    /// root bus also fills the line register when the function is added.)
    pub fn setup(config: &mut PciConfiguration, slot: u8) {
        config.set_interrupt(intx_pin_for_slot(slot), INTA);
    }

    /// Whether the line is asserted now.
    pub fn is_asserted(&self) -> bool {
        self.asserted
    }

    /// Sets the function's pending state and updates the line.
    pub fn set_pending(&mut self, config: &mut PciConfiguration, pending: bool) -> io::Result<()> {
        config.set_intx_status(pending);
        self.update(config)
    }

    /// Drives the line again if it should still be asserted; call when the
    /// interrupt controller reports an EOI (KVM irqfd resample). KVM clears
    /// the pin on resample, and under PVM the resample can come before the
    /// guest handler ran, so a still-pending function must re-assert.
    pub fn resample(&mut self) -> io::Result<()> {
        if self.asserted {
            self.line.set_level(true)?;
        }
        Ok(())
    }

    /// Re-evaluates the line; call after every config write (the guest may
    /// have toggled Interrupt Disable) and after restore.
    pub fn update(&mut self, config: &PciConfiguration) -> io::Result<()> {
        let want = config.intx_status() && !config.intx_disabled();
        if want != self.asserted {
            self.line.set_level(want)?;
            self.asserted = want;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::PciHeader;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Level(Mutex<Vec<bool>>);
    impl LevelInterruptLine for Level {
        fn set_level(&self, asserted: bool) -> io::Result<()> {
            self.0.lock().unwrap().push(asserted);
            Ok(())
        }
    }

    #[test]
    fn slot_maps_to_pin_16_plus_slot_mod_8() {
        assert_eq!(intx_pin_for_slot(0), 16);
        assert_eq!(intx_pin_for_slot(3), 19);
        assert_eq!(intx_pin_for_slot(9), 17);
        assert_eq!(intx_pin_for_slot(31), 23);
    }

    #[test]
    fn setup_declares_inta_and_line() {
        let mut c = PciConfiguration::new(&PciHeader::default(), false);
        Intx::setup(&mut c, 2);
        assert_eq!((c.interrupt_line(), c.interrupt_pin()), (18, INTA));
    }

    #[test]
    fn pending_asserts_and_sets_status() {
        let level = Arc::new(Level::default());
        let mut c = PciConfiguration::new(&PciHeader::default(), false);
        let mut i = Intx::new(level.clone());
        i.set_pending(&mut c, true).unwrap();
        assert!(c.intx_status() && i.is_asserted());
        i.set_pending(&mut c, true).unwrap();
        i.set_pending(&mut c, false).unwrap();
        assert_eq!(*level.0.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn resample_reasserts_only_while_pending() {
        let level = Arc::new(Level::default());
        let mut c = PciConfiguration::new(&PciHeader::default(), false);
        let mut i = Intx::new(level.clone());
        i.resample().unwrap();
        i.set_pending(&mut c, true).unwrap();
        i.resample().unwrap();
        i.set_pending(&mut c, false).unwrap();
        i.resample().unwrap();
        assert_eq!(*level.0.lock().unwrap(), vec![true, true, false]);
    }

    #[test]
    fn interrupt_disable_masks_line_but_keeps_status() {
        let level = Arc::new(Level::default());
        let mut c = PciConfiguration::new(&PciHeader::default(), false);
        let mut i = Intx::new(level.clone());
        i.set_pending(&mut c, true).unwrap();
        c.write_reg(1, 1, &[0x04]);
        i.update(&c).unwrap();
        assert!(!i.is_asserted());
        assert!(c.intx_status());
        c.write_reg(1, 1, &[0x00]);
        i.update(&c).unwrap();
        assert_eq!(*level.0.lock().unwrap(), vec![true, false, true]);
    }
}
