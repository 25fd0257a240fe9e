// SPDX-License-Identifier: Apache-2.0
//! Hardware-reduced ACPI power registers: sleep control, sleep status, reset.
//!
//! The FADT points the guest at these ports (see docs/platform.md). The
//! device decodes absolute ports, so the vmm may register it once over
//! [`ACPI_PM_BASE`]..+[`ACPI_PM_LEN`] or once per register, length 1.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::vm_control::{VmControl, VmEvent};

/// Sleep control register.
pub const SLEEP_CONTROL_PORT: u64 = 0x3c0;
/// Sleep status register.
pub const SLEEP_STATUS_PORT: u64 = 0x3c1;
/// Reset register.
pub const RESET_PORT: u64 = 0x3c4;
/// First port of the block.
pub const ACPI_PM_BASE: u64 = SLEEP_CONTROL_PORT;
/// Ports from [`ACPI_PM_BASE`] through [`RESET_PORT`].
pub const ACPI_PM_LEN: u64 = RESET_PORT - SLEEP_CONTROL_PORT + 1;

/// Value written to the reset register to reset (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x01;
/// `SLP_TYP` of S5 (the DSDT's `_S5_`).
pub const S5_SLP_TYP: u8 = 5;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// `WAK_STS`, the only sleep-status bit we keep (write one to clear).
const WAK_STS: u8 = 1 << 7;

/// Guest-visible state, for snapshot and restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// Sleep status register.
    pub sleep_status: u8,
}

/// The power-management register block.
pub struct AcpiPm {
    state: AcpiPmState,
    control: Arc<dyn VmControl>,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm")
            .field("state", &self.state)
            .finish()
    }
}

impl AcpiPm {
    /// Creates the block; power-off and reset requests go to `control`.
    pub fn new(control: Arc<dyn VmControl>) -> Self {
        Self {
            state: AcpiPmState::default(),
            control,
        }
    }

    /// Current state.
    pub fn state(&self) -> AcpiPmState {
        self.state
    }

    /// Replaces the state (snapshot restore).
    pub fn restore(&mut self, state: AcpiPmState) {
        self.state = AcpiPmState {
            sleep_status: state.sleep_status & WAK_STS,
        };
    }

    fn sleep_control(&mut self, v: u8) {
        let typ = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if v & SLP_EN != 0 && typ == S5_SLP_TYP {
            self.control.request(VmEvent::PowerOff);
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match base.checked_add(offset) {
            Some(SLEEP_STATUS_PORT) => self.state.sleep_status,
            // Sleep control and reset registers are write-only.
            _ => 0,
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let [v] = data else {
            return;
        };
        match base.checked_add(offset) {
            Some(SLEEP_CONTROL_PORT) => self.sleep_control(*v),
            Some(SLEEP_STATUS_PORT) => self.state.sleep_status &= !(*v & WAK_STS),
            Some(RESET_PORT) if *v == RESET_VALUE => self.control.request(VmEvent::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::RecordingVmControl;

    fn dev() -> (AcpiPm, Arc<RecordingVmControl>) {
        let c = Arc::new(RecordingVmControl::default());
        (AcpiPm::new(c.clone()), c)
    }

    fn wr(d: &mut AcpiPm, port: u64, v: u8) {
        d.write(ACPI_PM_BASE, port - ACPI_PM_BASE, &[v]);
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut d, c) = dev();
        wr(&mut d, SLEEP_CONTROL_PORT, 0x34);
        assert_eq!(c.take(), vec![VmEvent::PowerOff]);
    }

    #[test]
    fn s5_without_slp_en_or_other_type_is_ignored() {
        let (mut d, c) = dev();
        wr(&mut d, SLEEP_CONTROL_PORT, 0x14);
        wr(&mut d, SLEEP_CONTROL_PORT, 0x20 | (3 << 2));
        assert!(c.take().is_empty());
    }

    #[test]
    fn reset_register_resets_only_on_reset_value() {
        let (mut d, c) = dev();
        wr(&mut d, RESET_PORT, 0x02);
        assert!(c.take().is_empty());
        d.write(RESET_PORT, 0, &[RESET_VALUE]);
        assert_eq!(c.take(), vec![VmEvent::Reset]);
    }

    #[test]
    fn sleep_status_is_write_one_to_clear() {
        let (mut d, _) = dev();
        d.restore(AcpiPmState { sleep_status: 0xff });
        let mut b = [0u8];
        d.read(ACPI_PM_BASE, 1, &mut b);
        assert_eq!(b, [WAK_STS]);
        wr(&mut d, SLEEP_STATUS_PORT, WAK_STS);
        d.read(ACPI_PM_BASE, 1, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let (mut d, c) = dev();
        d.write(ACPI_PM_BASE, 0, &[0x34, 0x34]);
        d.write(ACPI_PM_BASE, 4, &[]);
        d.write(u64::MAX, 1, &[0x34]);
        wr(&mut d, 0x3c2, 0x34);
        assert!(c.take().is_empty());
        let mut nine = [0u8; 9];
        d.read(ACPI_PM_BASE, 0, &mut nine);
        assert_eq!(nine, [0xff; 9]);
    }
}
