// SPDX-License-Identifier: Apache-2.0
//! Inside a Linux guest: the ivshmem PCI device (1af4:1110) through sysfs.
//! (Filled in after the host-peer transport; see the crate README.)

use super::{SleepKind, Transport, TransportError};
use std::time::Duration;

/// The PCI transport.
#[derive(Debug)]
pub struct Pci {
    base: *mut u8,
    len: usize,
    id: u16,
}

// SAFETY: the mapping is plain shared memory accessed through atomics.
unsafe impl Send for Pci {}
// SAFETY: as above.
unsafe impl Sync for Pci {}

impl Pci {
    /// Opens the first ivshmem device found in sysfs.
    pub fn open_first() -> Result<Self, TransportError> {
        Err(TransportError::NoDevice)
    }
}

impl Transport for Pci {
    fn base(&self) -> *mut u8 {
        self.base
    }

    fn len(&self) -> usize {
        self.len
    }

    fn id(&self) -> u16 {
        self.id
    }

    fn sleep_kind(&self) -> SleepKind {
        SleepKind::Poll
    }

    fn ring(&self, _peer: u16) -> Result<(), TransportError> {
        Ok(())
    }

    fn sleep(&self, timeout: Option<Duration>) -> Result<(), TransportError> {
        std::thread::sleep(timeout.unwrap_or(Duration::from_millis(1)));
        Ok(())
    }

    fn name(&self) -> &'static str {
        "pci"
    }
}
