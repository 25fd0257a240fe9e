// SPDX-License-Identifier: Apache-2.0
//! Helpers shared by the PCI unit tests.

use std::sync::Mutex;

use super::config::{BarInfo, BarMove, PciConfigError, PciConfiguration};
use super::device::{BarRelocator, BarReprogram, PciDevice};

/// A function that is nothing but its configuration space.
pub(crate) struct BarDev(pub PciConfiguration);

impl PciDevice for BarDev {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.0.read_reg(reg)
    }
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        self.0.write_reg(reg, offset, data)
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xab);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn bars(&self) -> Vec<BarInfo> {
        self.0.bars()
    }
    fn set_bar_addr(&mut self, bar: usize, addr: u64) -> Result<(), PciConfigError> {
        self.0.set_bar_addr(bar, addr)
    }
    fn name(&self) -> &str {
        "bar-dev"
    }
}

/// Remembers BAR moves.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<BarReprogram>>);

impl Recorder {
    pub(crate) fn take(&self) -> Vec<BarReprogram> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl BarRelocator for Recorder {
    fn relocate(&self, r: &BarReprogram) {
        self.0.lock().unwrap().push(*r);
    }
}
