// SPDX-License-Identifier: Apache-2.0
//! A minimal i8042 keyboard controller, there so a guest can reset the
//! machine (`0xfe` to port `0x64`) and so drivers probing it get sane answers.
//!
//! No keyboard is attached and no interrupt is raised. The device decodes
//! absolute ports, so the vmm can register it once over `0x60..=0x64`
//! ([`I8042_BASE`], [`I8042_LEN`]) or twice (`0x60` and `0x64`, length 1).
//! Other ports in its range read `0` and ignore writes.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::vm_control::{VmControl, VmEvent};

/// Data port.
pub const DATA_PORT: u64 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u64 = 0x64;
/// Lowest port the device decodes.
pub const I8042_BASE: u64 = DATA_PORT;
/// Ports from [`I8042_BASE`] through [`COMMAND_PORT`].
pub const I8042_LEN: u64 = COMMAND_PORT - DATA_PORT + 1;

/// Command that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPORT: u8 = 0xd0;
const CMD_WRITE_OUTPORT: u8 = 0xd1;

const SR_OUTPUT_FULL: u8 = 1 << 0;
const SR_SYSTEM_FLAG: u8 = 1 << 2;
const SR_COMMAND: u8 = 1 << 3;
const SR_KBD_UNLOCKED: u8 = 1 << 4;

const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;

/// Output-port bit 0 is the CPU reset line (active low).
const OUTPORT_RESET_N: u8 = 1 << 0;
/// Output-port value with A20 enabled and reset deasserted.
const OUTPORT_DEFAULT: u8 = 0x03;

/// Self-test passed.
const SELF_TEST_OK: u8 = 0x55;
/// Keyboard acknowledge.
const KBD_ACK: u8 = 0xfa;
/// Bytes the output buffer holds before newer answers are dropped.
const OUT_QUEUE_MAX: usize = 16;

/// Guest-visible state, for snapshot and restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Controller configuration byte.
    pub ctr: u8,
    /// Output port (A20, reset line).
    pub outport: u8,
    /// A command waiting for its data byte on port `0x60`.
    pub pending_cmd: Option<u8>,
    /// Bytes waiting to be read from port `0x60`.
    pub out: VecDeque<u8>,
    /// Last write was to the command port (status bit 3).
    pub last_was_command: bool,
}

/// The controller; see the module docs.
pub struct I8042 {
    state: I8042State,
    control: Arc<dyn VmControl>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").field("state", &self.state).finish()
    }
}

impl I8042 {
    /// Creates a controller that sends reset requests to `control`.
    pub fn new(control: Arc<dyn VmControl>) -> Self {
        Self {
            state: I8042State {
                ctr: CTR_AUX_DISABLE,
                outport: OUTPORT_DEFAULT,
                ..Default::default()
            },
            control,
        }
    }

    /// Current state.
    pub fn state(&self) -> I8042State {
        self.state.clone()
    }

    /// Replaces the state (snapshot restore); an oversized queue is cut.
    pub fn restore(&mut self, mut state: I8042State) {
        state.out.truncate(OUT_QUEUE_MAX);
        self.state = state;
    }

    fn push(&mut self, b: u8) {
        if self.state.out.len() < OUT_QUEUE_MAX {
            self.state.out.push_back(b);
        }
    }

    fn status(&self) -> u8 {
        let mut s = SR_SYSTEM_FLAG | SR_KBD_UNLOCKED;
        if !self.state.out.is_empty() {
            s |= SR_OUTPUT_FULL;
        }
        if self.state.last_was_command {
            s |= SR_COMMAND;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.state.last_was_command = true;
        self.state.pending_cmd = None;
        match cmd {
            CMD_READ_CTR => self.push(self.state.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPORT => self.state.pending_cmd = Some(cmd),
            CMD_DISABLE_AUX => self.state.ctr |= CTR_AUX_DISABLE,
            CMD_ENABLE_AUX => self.state.ctr &= !CTR_AUX_DISABLE,
            // No aux device: report a clock-line failure.
            CMD_TEST_AUX => self.push(0x01),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_TEST_KBD => self.push(0x00),
            CMD_DISABLE_KBD => self.state.ctr |= CTR_KBD_DISABLE,
            CMD_ENABLE_KBD => self.state.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_OUTPORT => self.push(self.state.outport),
            CMD_RESET_CPU => self.control.request(VmEvent::Reset),
            _ => {}
        }
    }

    fn data(&mut self, b: u8) {
        self.state.last_was_command = false;
        match self.state.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.state.ctr = b,
            Some(CMD_WRITE_OUTPORT) => {
                self.state.outport = b;
                if b & OUTPORT_RESET_N == 0 {
                    self.control.request(VmEvent::Reset);
                }
            }
            // A byte for the (absent) keyboard: acknowledge it, as drivers
            // expect, and answer the reset command with a passed self-test.
            _ => {
                self.push(KBD_ACK);
                if b == 0xff {
                    self.push(0xaa);
                }
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match base.checked_add(offset) {
            Some(DATA_PORT) => self.state.out.pop_front().unwrap_or(0),
            Some(COMMAND_PORT) => self.status(),
            _ => 0,
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let [b] = data else {
            return;
        };
        match base.checked_add(offset) {
            Some(DATA_PORT) => self.data(*b),
            Some(COMMAND_PORT) => self.command(*b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_control::RecordingVmControl;

    fn dev() -> (I8042, Arc<RecordingVmControl>) {
        let c = Arc::new(RecordingVmControl::default());
        (I8042::new(c.clone()), c)
    }

    fn rd(d: &mut I8042, port: u64) -> u8 {
        let mut b = [0u8];
        d.read(I8042_BASE, port - I8042_BASE, &mut b);
        b[0]
    }

    fn wr(d: &mut I8042, port: u64, v: u8) {
        d.write(I8042_BASE, port - I8042_BASE, &[v]);
    }

    #[test]
    fn reset_command_requests_reset() {
        let (mut d, c) = dev();
        wr(&mut d, COMMAND_PORT, CMD_RESET_CPU);
        assert_eq!(c.take(), vec![VmEvent::Reset]);
    }

    #[test]
    fn reset_works_when_registered_per_port() {
        let (mut d, c) = dev();
        d.write(COMMAND_PORT, 0, &[CMD_RESET_CPU]);
        assert_eq!(c.take(), vec![VmEvent::Reset]);
    }

    #[test]
    fn status_reports_output_full_after_self_test() {
        let (mut d, _) = dev();
        assert_eq!(rd(&mut d, COMMAND_PORT) & SR_OUTPUT_FULL, 0);
        wr(&mut d, COMMAND_PORT, CMD_SELF_TEST);
        assert_ne!(rd(&mut d, COMMAND_PORT) & SR_OUTPUT_FULL, 0);
        assert_eq!(rd(&mut d, DATA_PORT), SELF_TEST_OK);
        assert_eq!(rd(&mut d, COMMAND_PORT) & SR_OUTPUT_FULL, 0);
    }

    #[test]
    fn config_byte_round_trips() {
        let (mut d, _) = dev();
        wr(&mut d, COMMAND_PORT, CMD_WRITE_CTR);
        wr(&mut d, DATA_PORT, 0x47);
        wr(&mut d, COMMAND_PORT, CMD_READ_CTR);
        assert_eq!(rd(&mut d, DATA_PORT), 0x47);
    }

    #[test]
    fn output_port_reset_line_low_requests_reset() {
        let (mut d, c) = dev();
        wr(&mut d, COMMAND_PORT, CMD_WRITE_OUTPORT);
        wr(&mut d, DATA_PORT, 0x02);
        assert_eq!(c.take(), vec![VmEvent::Reset]);
    }

    #[test]
    fn bad_sizes_and_ports_are_ignored() {
        let (mut d, c) = dev();
        d.write(I8042_BASE, 4, &[CMD_RESET_CPU, 0]);
        d.write(I8042_BASE, 4, &[]);
        d.write(u64::MAX, 5, &[CMD_RESET_CPU]);
        assert!(c.take().is_empty());
        let mut three = [0u8; 3];
        d.read(I8042_BASE, 4, &mut three);
        assert_eq!(three, [0xff; 3]);
        assert_eq!(rd(&mut d, 0x62), 0);
        let mut z: [u8; 0] = [];
        d.read(I8042_BASE, 0, &mut z);
    }

    #[test]
    fn output_queue_is_bounded() {
        let (mut d, _) = dev();
        for _ in 0..1000 {
            wr(&mut d, DATA_PORT, 0xff);
        }
        assert_eq!(d.state().out.len(), OUT_QUEUE_MAX);
    }
}
