// SPDX-License-Identifier: Apache-2.0
//! A KVM VM.

use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqchip, kvm_msi, kvm_pit_config, kvm_userspace_memory_region,
    KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::KvmVcpu;
use crate::{Error, IoEventAddress, IrqRoute, Result, Vcpu, Vm, VmState};

/// A KVM VM file descriptor and what we learned about the host.
#[derive(Debug)]
pub struct KvmVm {
    fd: VmFd,
    xsave: bool,
    xcrs: bool,
}

impl KvmVm {
    pub(crate) fn new(fd: VmFd, xsave: bool, xcrs: bool) -> Self {
        KvmVm { fd, xsave, xcrs }
    }
}

/// Borrows a raw fd as an `EventFd` without taking ownership.
fn borrow_eventfd(fd: RawFd) -> ManuallyDrop<EventFd> {
    // SAFETY: the caller keeps `fd` open for the duration of the call; the
    // ManuallyDrop wrapper guarantees we never close it.
    ManuallyDrop::new(unsafe { EventFd::from_raw_fd(fd) })
}

fn kvm_io_address(addr: IoEventAddress) -> kvm_ioctls::IoEventAddress {
    match addr {
        IoEventAddress::Pio(a) => kvm_ioctls::IoEventAddress::Pio(a),
        IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
    }
}

fn get_chip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(Error::ioctl("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Calls `VmFd::$op` with the datamatch value typed by the access width
/// (kvm-ioctls takes the width from the type).
macro_rules! ioevent {
    ($self:ident, $op:ident, $fd:expr, $addr:expr, $len:expr, $datamatch:expr) => {{
        let efd = borrow_eventfd($fd);
        let addr = kvm_io_address($addr);
        match ($datamatch, $len) {
            (None, _) => $self.fd.$op(&efd, &addr, kvm_ioctls::NoDatamatch),
            (Some(d), 1) => $self.fd.$op(&efd, &addr, d as u8),
            (Some(d), 2) => $self.fd.$op(&efd, &addr, d as u16),
            (Some(d), 4) => $self.fd.$op(&efd, &addr, d as u32),
            (Some(d), _) => $self.fd.$op(&efd, &addr, d),
        }
        .map_err(Error::ioctl("KVM_IOEVENTFD"))
    }};
}

impl Vm for KvmVm {
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(Error::ioctl("KVM_CREATE_VCPU"))?;
        Ok(Box::new(KvmVcpu::new(fd, self.xsave, self.xcrs)))
    }

    fn create_irqchip(&self) -> Result<()> {
        self.fd
            .set_tss_address(0xfffb_d000)
            .map_err(Error::ioctl("KVM_SET_TSS_ADDR"))?;
        self.fd
            .set_identity_map_address(0xfffb_c000)
            .map_err(Error::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(Error::ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(Error::ioctl("KVM_CREATE_PIT2"))
    }

    unsafe fn set_memory_region(
        &self,
        slot: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
        log_dirty: bool,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // SAFETY: the caller guarantees the host range stays mapped while the
        // slot exists.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(Error::ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    fn remove_memory_region(&self, slot: u32, guest_addr: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: 0,
            userspace_addr: 0,
            flags: 0,
        };
        // SAFETY: a zero-sized region removes the slot; no host memory is referenced.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(Error::ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>> {
        let size = usize::try_from(size).map_err(|_| Error::Ioctl {
            op: "KVM_GET_DIRTY_LOG",
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        self.fd
            .get_dirty_log(slot, size)
            .map_err(Error::ioctl("KVM_GET_DIRTY_LOG"))
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, level)
            .map_err(Error::ioctl("KVM_IRQ_LINE"))
    }

    fn signal_msi(&self, addr: u64, data: u32) -> Result<()> {
        let msi = kvm_msi {
            address_lo: addr as u32,
            address_hi: (addr >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(|_| ())
            .map_err(Error::ioctl("KVM_SIGNAL_MSI"))
    }

    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<()> {
        let mut table = KvmIrqRouting::new(0).map_err(|_| Error::Ioctl {
            op: "KVM_SET_GSI_ROUTING",
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        for route in routes {
            let mut entry = kvm_irq_routing_entry::default();
            match *route {
                IrqRoute::Msi { gsi, addr, data } => {
                    entry.gsi = gsi;
                    entry.type_ = KVM_IRQ_ROUTING_MSI;
                    entry.u.msi.address_lo = addr as u32;
                    entry.u.msi.address_hi = (addr >> 32) as u32;
                    entry.u.msi.data = data;
                }
                IrqRoute::IoApic { gsi, pin } => {
                    entry.gsi = gsi;
                    entry.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                    entry.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
                    entry.u.irqchip.pin = pin;
                }
                IrqRoute::Pic { gsi, chip, pin } => {
                    entry.gsi = gsi;
                    entry.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                    entry.u.irqchip.irqchip = if chip == 0 {
                        KVM_IRQCHIP_PIC_MASTER
                    } else {
                        KVM_IRQCHIP_PIC_SLAVE
                    };
                    entry.u.irqchip.pin = pin;
                }
            }
            table.push(entry).map_err(|_| Error::Ioctl {
                op: "KVM_SET_GSI_ROUTING",
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            })?;
        }
        self.fd
            .set_gsi_routing(&table)
            .map_err(Error::ioctl("KVM_SET_GSI_ROUTING"))
    }

    fn register_irqfd(&self, fd: RawFd, gsi: u32, resample: Option<RawFd>) -> Result<()> {
        let efd = borrow_eventfd(fd);
        match resample {
            Some(r) => {
                let rfd = borrow_eventfd(r);
                self.fd.register_irqfd_with_resample(&efd, &rfd, gsi)
            }
            None => self.fd.register_irqfd(&efd, gsi),
        }
        .map_err(Error::ioctl("KVM_IRQFD"))
    }

    fn unregister_irqfd(&self, fd: RawFd, gsi: u32) -> Result<()> {
        let efd = borrow_eventfd(fd);
        self.fd
            .unregister_irqfd(&efd, gsi)
            .map_err(Error::ioctl("KVM_IRQFD"))
    }

    fn register_ioevent(
        &self,
        fd: RawFd,
        addr: IoEventAddress,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<()> {
        ioevent!(self, register_ioevent, fd, addr, len, datamatch)
    }

    fn unregister_ioevent(
        &self,
        fd: RawFd,
        addr: IoEventAddress,
        len: u32,
        datamatch: Option<u64>,
    ) -> Result<()> {
        ioevent!(self, unregister_ioevent, fd, addr, len, datamatch)
    }

    fn state(&self) -> Result<VmState> {
        Ok(VmState {
            pic_master: get_chip(&self.fd, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get_chip(&self.fd, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get_chip(&self.fd, KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(Error::ioctl("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(Error::ioctl("KVM_GET_CLOCK"))?,
        })
    }

    fn set_state(&self, state: &VmState) -> Result<()> {
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(Error::ioctl("KVM_SET_IRQCHIP"))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(Error::ioctl("KVM_SET_PIT2"))?;
        let mut clock = state.clock;
        // Only the clock value is restored; flags describe the source host.
        clock.flags = 0;
        self.fd
            .set_clock(&clock)
            .map_err(Error::ioctl("KVM_SET_CLOCK"))
    }
}
