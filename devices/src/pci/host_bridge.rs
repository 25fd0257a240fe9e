// SPDX-License-Identifier: Apache-2.0
//! The host bridge at 00:00.0.

use super::config::{BarInfo, BarMove, PciConfigError, PciConfiguration, PciHeader};
use super::device::PciDevice;

/// Vendor ID of the host bridge (Intel).
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0d57;
/// Class code: bridge.
pub const CLASS_BRIDGE: u8 = 0x06;
/// Subclass: host bridge.
pub const SUBCLASS_HOST: u8 = 0x00;

/// A host bridge with no BARs: identity, command and status only.
#[derive(Debug)]
pub struct HostBridge {
    config: PciConfiguration,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// Creates the bridge.
    pub fn new() -> Self {
        let h = PciHeader {
            vendor_id: HOST_BRIDGE_VENDOR,
            device_id: HOST_BRIDGE_DEVICE,
            class: CLASS_BRIDGE,
            subclass: SUBCLASS_HOST,
            ..Default::default()
        };
        Self {
            config: PciConfiguration::new(&h, true),
        }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        self.config.write_reg(reg, offset, data)
    }

    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    fn bars(&self) -> Vec<BarInfo> {
        Vec::new()
    }

    fn set_bar_addr(&mut self, bar: usize, _addr: u64) -> Result<(), PciConfigError> {
        Err(PciConfigError::NoSuchBar(bar))
    }

    fn name(&self) -> &str {
        "host-bridge"
    }
}
