// SPDX-License-Identifier: Apache-2.0
//! The shared-memory group device, register-compatible with QEMU's ivshmem.
//!
//! PCI `1af4:1110`, revision 1, class `0x0500` (RAM memory controller).
//!
//! | BAR | what |
//! | --- | --- |
//! | 0 | 256 bytes of registers: IntrMask `0x0`, IntrStatus `0x4` (reading clears it), IVPosition `0x8` (own peer id, read-only), Doorbell `0xC` (write `(peer << 16) \| vector`) |
//! | 1 | MSI-X table (at 0) and PBA (at `0x800`), doorbell mode only |
//! | 2 | the shared region: 64-bit prefetchable, power-of-two size, not trapped (the vmm maps it as a KVM memory slot) |
//!
//! INTx works too (pin INTA): an incoming doorbell sets IntrStatus bit 0;
//! the line is asserted while `IntrStatus & IntrMask` is non-zero and the
//! command register's Interrupt Disable bit is clear, and PCI 2.3 Interrupt
//! Status mirrors it, as Linux's uio_pci_generic expects.
//!
//! The model is sans-IO: doorbells leave through [`DoorbellSink`] (the slow
//! path: the vmm normally catches Doorbell writes in the kernel with
//! ioeventfds), interrupts through the MSI-X notifier and the INTx line.

use std::io;
use std::sync::Arc;

use thiserror::Error;

use crate::interrupt::LevelInterruptLine;
use crate::pci::config::{BarInfo, BarKind, BarMove, PciConfigError, PciConfiguration, PciHeader};
use crate::pci::device::PciDevice;
use crate::pci::intx::{Intx, INTA};
use crate::pci::msix::{MsixConfig, MsixError, MsixLocation, MsixNotifier, MsixState};
use crate::ratelimit::LogLimiter;

/// PCI vendor ID (Red Hat, as QEMU's ivshmem).
pub const VENDOR_ID: u16 = 0x1af4;
/// PCI device ID of ivshmem.
pub const DEVICE_ID: u16 = 0x1110;
/// Register BAR.
pub const REGS_BAR: usize = 0;
/// MSI-X BAR (doorbell mode).
pub const MSIX_BAR: usize = 1;
/// Shared-region BAR.
pub const REGION_BAR: usize = 2;
/// Size of the register BAR.
pub const REGS_SIZE: u64 = 0x100;
/// Size of the MSI-X BAR.
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// Offset of the PBA in the MSI-X BAR.
const PBA_OFFSET: u32 = 0x800;
/// Most vectors: the table must end before the PBA.
pub const MAX_VECTORS: u16 = (PBA_OFFSET / 16) as u16;

/// Register offsets in BAR0.
pub const INTR_MASK: u64 = 0x0;
/// Interrupt status; reading it clears it.
pub const INTR_STATUS: u64 = 0x4;
/// Own peer id.
pub const IV_POSITION: u64 = 0x8;
/// Doorbell.
pub const DOORBELL: u64 = 0xc;

/// Errors of device creation and restore (never of guest accesses).
#[derive(Debug, Error)]
pub enum IvshmemError {
    /// The region is not a power of two of at least 4 KiB.
    #[error("Shared region size {0:#x} is not a power of two of at least 4 KiB")]
    BadRegionSize(u64),
    /// More vectors than the MSI-X BAR holds.
    #[error("{0} doorbell vectors requested; at most {MAX_VECTORS} are supported")]
    TooManyVectors(u16),
    /// Config space set-up failed.
    #[error("Cannot build the configuration space")]
    Config(#[source] PciConfigError),
    /// MSI-X set-up failed.
    #[error("Cannot build the MSI-X capability")]
    Msix(#[source] MsixError),
}

/// Where Doorbell writes go when the kernel did not catch them.
pub trait DoorbellSink: Send + Sync {
    /// Signals `vector` of `peer`.
    fn ring(&self, peer: u16, vector: u16);
}

/// How the device is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IvshmemConfig {
    /// Size of the shared region (BAR2).
    pub region_size: u64,
    /// Doorbell vectors; 0 makes an `ivshmem-plain` device (no BAR1, no MSI-X).
    pub vectors: u16,
    /// Own peer id, read back from IVPosition.
    pub peer_id: u16,
}

/// Guest-visible register state, for snapshot and restore.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IvshmemState {
    /// Configuration space.
    pub config: PciConfiguration,
    /// MSI-X table and PBA (doorbell mode).
    pub msix: Option<MsixState>,
    /// IntrMask.
    pub intr_mask: u32,
    /// IntrStatus.
    pub intr_status: u32,
}

/// The device model.
pub struct Ivshmem {
    config: PciConfiguration,
    msix: Option<MsixConfig>,
    intx: Intx,
    intr_mask: u32,
    intr_status: u32,
    peer_id: u16,
    vectors: u16,
    doorbell: Arc<dyn DoorbellSink>,
    log: LogLimiter,
}

impl std::fmt::Debug for Ivshmem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ivshmem")
            .field("peer_id", &self.peer_id)
            .field("vectors", &self.vectors)
            .field("intr_mask", &self.intr_mask)
            .field("intr_status", &self.intr_status)
            .finish()
    }
}

impl Ivshmem {
    /// Builds the device.
    pub fn new(
        cfg: IvshmemConfig,
        msix_notifier: Arc<dyn MsixNotifier>,
        intx_line: Arc<dyn LevelInterruptLine>,
        doorbell: Arc<dyn DoorbellSink>,
    ) -> Result<Self, IvshmemError> {
        if !cfg.region_size.is_power_of_two() || cfg.region_size < 4096 {
            return Err(IvshmemError::BadRegionSize(cfg.region_size));
        }
        if cfg.vectors > MAX_VECTORS {
            return Err(IvshmemError::TooManyVectors(cfg.vectors));
        }
        let header = PciHeader {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID,
            class: 0x05,
            subclass: 0x00,
            revision: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            ..Default::default()
        };
        let mut config = PciConfiguration::new(&header, false);
        config
            .add_bar(REGS_BAR, REGS_SIZE, BarKind::Mmio32, true)
            .map_err(IvshmemError::Config)?;
        config
            .add_bar(
                REGION_BAR,
                cfg.region_size,
                BarKind::Mmio64 { prefetch: true },
                false,
            )
            .map_err(IvshmemError::Config)?;
        config.set_interrupt(0, INTA);
        let msix = if cfg.vectors > 0 {
            config
                .add_bar(MSIX_BAR, MSIX_BAR_SIZE, BarKind::Mmio32, true)
                .map_err(IvshmemError::Config)?;
            let mut msix = MsixConfig::new(
                cfg.vectors,
                MsixLocation {
                    bar: MSIX_BAR as u8,
                    offset: 0,
                },
                MsixLocation {
                    bar: MSIX_BAR as u8,
                    offset: PBA_OFFSET,
                },
                msix_notifier,
            )
            .map_err(IvshmemError::Msix)?;
            msix.add_capability(&mut config)
                .map_err(IvshmemError::Msix)?;
            Some(msix)
        } else {
            None
        };
        Ok(Ivshmem {
            config,
            msix,
            intx: Intx::new(intx_line),
            intr_mask: 0,
            intr_status: 0,
            peer_id: cfg.peer_id,
            vectors: cfg.vectors,
            doorbell,
            log: LogLimiter::new(),
        })
    }

    /// Whether the guest enabled MSI-X (interrupts then bypass INTx).
    pub fn msix_enabled(&self) -> bool {
        self.msix.as_ref().is_some_and(|m| m.enabled())
    }

    /// Number of doorbell vectors (0 in plain mode).
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// Own peer id (IVPosition).
    pub fn peer_id(&self) -> u16 {
        self.peer_id
    }

    /// Changes the own peer id (a new membership after a server restart).
    pub fn set_peer_id(&mut self, id: u16) {
        self.peer_id = id;
    }

    /// An incoming doorbell on `vector`, delivered through the device (the
    /// slow path: in MSI-X mode the vmm routes doorbells kernel to kernel).
    pub fn interrupt(&mut self, vector: u16) -> io::Result<()> {
        if vector >= self.vectors.max(1) {
            return Ok(());
        }
        if let Some(msix) = self.msix.as_mut().filter(|m| m.enabled()) {
            return msix.trigger(vector);
        }
        self.intr_status |= 1;
        self.update_intx()
    }

    /// Call when the interrupt controller acknowledged INTx (irqfd resample).
    pub fn intx_resample(&mut self) -> io::Result<()> {
        self.intx.resample()
    }

    fn update_intx(&mut self) -> io::Result<()> {
        let pending = self.intr_status & self.intr_mask != 0 && !self.msix_enabled();
        self.intx.set_pending(&mut self.config, pending)
    }

    fn reg_read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            INTR_MASK => self.intr_mask,
            INTR_STATUS => {
                let v = self.intr_status;
                self.intr_status = 0;
                if let Err(e) = self.update_intx() {
                    self.warn(&format!("INTx update failed: {e}"));
                }
                v
            }
            IV_POSITION => u32::from(self.peer_id),
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn reg_write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            INTR_MASK => self.intr_mask = value,
            INTR_STATUS => self.intr_status = value,
            DOORBELL => {
                let peer = (value >> 16) as u16;
                let vector = (value & 0xff) as u16;
                self.doorbell.ring(peer, vector);
                return;
            }
            _ => return,
        }
        if let Err(e) = self.update_intx() {
            self.warn(&format!("INTx update failed: {e}"));
        }
    }

    fn warn(&self, msg: &str) {
        if self.log.allow() {
            log::warn!("ivshmem: {msg}");
        }
    }

    /// Saves the guest-visible state.
    pub fn state(&self) -> IvshmemState {
        IvshmemState {
            config: self.config.clone(),
            msix: self.msix.as_ref().map(|m| m.state()),
            intr_mask: self.intr_mask,
            intr_status: self.intr_status,
        }
    }

    /// Restores what [`Ivshmem::state`] saved (on a device built with the
    /// same configuration).
    pub fn restore(&mut self, state: IvshmemState) -> Result<(), IvshmemError> {
        self.config = PciConfiguration::restore(state.config).map_err(IvshmemError::Config)?;
        match (self.msix.as_mut(), state.msix) {
            (Some(m), Some(s)) => m.restore(s).map_err(IvshmemError::Msix)?,
            (None, None) => {}
            _ => return Err(IvshmemError::Msix(MsixError::BadSnapshot)),
        }
        self.intr_mask = state.intr_mask;
        self.intr_status = state.intr_status;
        let _ = self.update_intx();
        Ok(())
    }
}

impl PciDevice for Ivshmem {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let moved = self.config.write_reg(reg, offset, data);
        if let Some(msix) = self.msix.as_mut() {
            msix.config_written(&self.config);
        }
        if let Err(e) = self.update_intx() {
            self.warn(&format!("INTx update failed: {e}"));
        }
        moved
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            REGS_BAR => self.reg_read(offset, data),
            MSIX_BAR => {
                let handled = self
                    .msix
                    .as_ref()
                    .is_some_and(|m| m.bar_read(bar, offset, data));
                if !handled {
                    data.fill(0xff);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            REGS_BAR => self.reg_write(offset, data),
            MSIX_BAR => {
                if let Some(m) = self.msix.as_mut() {
                    m.bar_write(bar, offset, data);
                }
            }
            _ => {}
        }
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
    }

    fn set_bar_addr(&mut self, bar: usize, addr: u64) -> Result<(), PciConfigError> {
        self.config.set_bar_addr(bar, addr)
    }

    fn name(&self) -> &str {
        "ivshmem"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::MsiMessage;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rings(Mutex<Vec<(u16, u16)>>);
    impl DoorbellSink for Rings {
        fn ring(&self, peer: u16, vector: u16) {
            self.0.lock().unwrap().push((peer, vector));
        }
    }

    #[derive(Default)]
    struct Level(Mutex<Vec<bool>>);
    impl LevelInterruptLine for Level {
        fn set_level(&self, asserted: bool) -> io::Result<()> {
            self.0.lock().unwrap().push(asserted);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Msis(Mutex<Vec<MsiMessage>>);
    impl MsixNotifier for Msis {
        fn vector_changed(&self, _vector: u16, _msg: MsiMessage, _masked: bool) {}
        fn send(&self, msg: MsiMessage) -> io::Result<()> {
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    struct Rig {
        dev: Ivshmem,
        rings: Arc<Rings>,
        level: Arc<Level>,
        msis: Arc<Msis>,
    }

    fn rig(vectors: u16) -> Rig {
        let rings = Arc::new(Rings::default());
        let level = Arc::new(Level::default());
        let msis = Arc::new(Msis::default());
        let dev = Ivshmem::new(
            IvshmemConfig {
                region_size: 1 << 20,
                vectors,
                peer_id: 3,
            },
            msis.clone(),
            level.clone(),
            rings.clone(),
        )
        .unwrap();
        Rig {
            dev,
            rings,
            level,
            msis,
        }
    }

    fn read32(dev: &mut Ivshmem, bar: usize, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.bar_read(bar, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(dev: &mut Ivshmem, bar: usize, offset: u64, v: u32) {
        dev.bar_write(bar, offset, &v.to_le_bytes());
    }

    #[test]
    fn identity_matches_qemu_ivshmem() {
        let mut r = rig(2);
        assert_eq!(r.dev.config_read(0), 0x1110_1af4);
        assert_eq!(r.dev.config_read(2), 0x0500_0001);
        let bars = r.dev.bars();
        let region = bars.iter().find(|b| b.index == REGION_BAR).unwrap();
        assert_eq!(region.size, 1 << 20);
        assert!(!region.trapped);
        assert_eq!(region.kind, BarKind::Mmio64 { prefetch: true });
        assert!(bars.iter().any(|b| b.index == MSIX_BAR));
    }

    #[test]
    fn plain_mode_has_no_msix_bar() {
        let r = rig(0);
        assert!(!r.dev.bars().iter().any(|b| b.index == MSIX_BAR));
    }

    #[test]
    fn iv_position_reads_own_peer_id_and_ignores_writes() {
        let mut r = rig(1);
        assert_eq!(read32(&mut r.dev, REGS_BAR, IV_POSITION), 3);
        write32(&mut r.dev, REGS_BAR, IV_POSITION, 9);
        assert_eq!(read32(&mut r.dev, REGS_BAR, IV_POSITION), 3);
    }

    #[test]
    fn doorbell_write_rings_peer_and_vector() {
        let mut r = rig(2);
        write32(&mut r.dev, REGS_BAR, DOORBELL, (5 << 16) | 1);
        write32(&mut r.dev, REGS_BAR, DOORBELL, (7 << 16) | 0x101);
        assert_eq!(*r.rings.0.lock().unwrap(), vec![(5, 1), (7, 1)]);
    }

    #[test]
    fn doorbell_needs_a_dword_write() {
        let mut r = rig(2);
        r.dev.bar_write(REGS_BAR, DOORBELL, &[1, 0]);
        r.dev
            .bar_write(REGS_BAR, DOORBELL, &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(r.rings.0.lock().unwrap().is_empty());
    }

    #[test]
    fn intx_asserts_when_masked_in_and_reading_status_clears() {
        let mut r = rig(1);
        r.dev.interrupt(0).unwrap();
        // IntrMask is 0: nothing asserted yet.
        assert!(!r.dev.intx.is_asserted());
        write32(&mut r.dev, REGS_BAR, INTR_MASK, 1);
        assert!(r.dev.intx.is_asserted());
        assert!(r.dev.config.intx_status());
        assert_eq!(read32(&mut r.dev, REGS_BAR, INTR_STATUS), 1);
        assert!(!r.dev.intx.is_asserted());
        assert_eq!(read32(&mut r.dev, REGS_BAR, INTR_STATUS), 0);
        assert_eq!(*r.level.0.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn intx_honours_interrupt_disable() {
        let mut r = rig(1);
        write32(&mut r.dev, REGS_BAR, INTR_MASK, 1);
        // Command register: memory space + Interrupt Disable (bit 10).
        r.dev.config_write(1, 0, &[0x02, 0x04]);
        r.dev.interrupt(0).unwrap();
        assert!(!r.dev.intx.is_asserted());
        assert!(r.dev.config.intx_status());
        r.dev.config_write(1, 0, &[0x02, 0x00]);
        assert!(r.dev.intx.is_asserted());
    }

    #[test]
    fn interrupt_for_unknown_vector_is_dropped() {
        let mut r = rig(2);
        r.dev.interrupt(7).unwrap();
        assert_eq!(r.dev.intr_status, 0);
    }

    #[test]
    fn odd_register_accesses_do_not_panic() {
        let mut r = rig(2);
        for off in [0u64, 1, 3, 0xb, 0xc, 0xff, 0x100, u64::MAX] {
            for len in [0usize, 1, 2, 3, 4, 8, 9] {
                let mut buf = vec![0u8; len];
                for bar in 0..6 {
                    r.dev.bar_read(bar, off, &mut buf);
                    r.dev.bar_write(bar, off, &buf);
                }
            }
        }
        assert!(r.msis.0.lock().unwrap().is_empty());
    }

    #[test]
    fn state_round_trips() {
        let mut r = rig(2);
        write32(&mut r.dev, REGS_BAR, INTR_MASK, 1);
        r.dev.interrupt(0).unwrap();
        let state = r.dev.state();
        let mut other = rig(2);
        other.dev.restore(state.clone()).unwrap();
        assert_eq!(other.dev.state(), state);
        assert!(other.dev.intx.is_asserted());
        let mut plain = rig(0);
        assert!(plain.dev.restore(state).is_err());
    }

    #[test]
    fn bad_configurations_are_rejected() {
        let mk = |size, vectors| {
            Ivshmem::new(
                IvshmemConfig {
                    region_size: size,
                    vectors,
                    peer_id: 0,
                },
                Arc::new(Msis::default()),
                Arc::new(Level::default()),
                Arc::new(Rings::default()),
            )
        };
        assert!(matches!(
            mk(3 << 20, 1),
            Err(IvshmemError::BadRegionSize(_))
        ));
        assert!(matches!(mk(1024, 1), Err(IvshmemError::BadRegionSize(_))));
        assert!(matches!(
            mk(1 << 20, 200),
            Err(IvshmemError::TooManyVectors(200))
        ));
    }
}
