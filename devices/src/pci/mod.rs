// SPDX-License-Identifier: Apache-2.0
//! PCI: configuration space, root bus, config access mechanisms, BAR
//! allocation, INTx routing and MSI-X.
//!
//! How the vmm wires it: build a [`PciBus`], add functions, place their BARs
//! with [`assign_bars`], map trapped BARs with a [`BarMapper`] (which inserts
//! a [`PciBarRegion`] per BAR on the MMIO/PIO bus and follows guest moves;
//! RAM-like BARs get a KVM memory slot from the vmm), and put
//! [`PciConfigIo`] at `0xcf8` (length 8) and [`PciConfigMmio`] at the ECAM
//! base. Both config devices report guest BAR moves to a [`BarRelocator`] (the [`BarMapper`]).

pub mod allocator;
pub mod bar_mapper;
pub mod bus;
pub mod config;
pub mod config_io;
pub mod config_mmio;
pub mod device;
pub mod host_bridge;
pub mod intx;
pub mod msix;

pub use allocator::{assign_bars, AllocatorError, BarAllocator};
pub use bar_mapper::{BarMapper, BarMapperError};
pub use bus::{shared, PciBus, PciBusError};
pub use config::{BarInfo, BarKind, BarMove, PciConfigError, PciConfiguration, PciHeader};
pub use config_io::PciConfigIo;
pub use config_mmio::PciConfigMmio;
pub use device::{
    BarRelocator, BarReprogram, NullRelocator, PciBarRegion, PciBdf, PciDevice, SharedPciDevice,
};
pub use host_bridge::HostBridge;
pub use intx::{intx_pin_for_slot, Intx};
pub use msix::{MsixConfig, MsixNotifier};

#[cfg(test)]
mod test_util;
