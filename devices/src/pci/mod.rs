// SPDX-License-Identifier: Apache-2.0
//! PCI: configuration space, root bus, config access mechanisms, BAR
//! allocation, INTx routing and MSI-X.

pub mod config;

pub use config::{BarInfo, BarKind, BarMove, PciConfigError, PciConfiguration, PciHeader};
