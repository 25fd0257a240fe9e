// SPDX-License-Identifier: Apache-2.0
//! Builds the platform devices, puts them on the port and MMIO buses, and
//! connects their interrupts to KVM.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use devices::acpi::{AcpiPm, ACPI_PM_BASE, ACPI_PM_LEN};
use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use devices::pci::config_mmio::{ECAM_BASE, ECAM_SIZE};
use devices::pci::{
    BarAllocator, BarMapper, BarRelocator, BarReprogram, PciBdf, PciBus, PciConfigIo, PciConfigMmio,
};
use devices::serial::{Serial, SerialOut, COM1_BASE, COM1_IRQ, SERIAL_PORT_LEN};
use devices::{Bus, BusError, VmControl};
use hypervisor::Vm;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::SerialOutput;
use crate::vcpu::ExitHandler;
use crate::VmEvent;

/// Errors of device set-up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open the serial output file {0}")]
    SerialFile(std::path::PathBuf, #[source] std::io::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot connect an interrupt to KVM")]
    Irq(#[source] hypervisor::Error),
    #[error("cannot place a device on the bus")]
    Bus(#[source] BusError),
    #[error("cannot set up the PCI BAR windows")]
    BarWindows(#[source] devices::pci::AllocatorError),
    #[error("cannot map PCI BARs")]
    BarMap(#[source] devices::pci::BarMapperError),
    #[error("cannot encode the state of {0}")]
    Encode(&'static str, #[source] serde_json::Error),
    #[error("the snapshot has no state for device {0}")]
    MissingState(String),
    #[error("the snapshot's state of device {0} is not valid")]
    BadState(String, #[source] Box<dyn std::error::Error + Send + Sync>),
}

/// PCI configuration mechanism #1 ports.
const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
const PCI_CONFIG_IO_LEN: u64 = 8;

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Finds and decodes the state called `name`.
pub fn find_state<T: serde::de::DeserializeOwned>(
    states: &[(String, serde_json::Value)],
    name: &str,
) -> Result<T, DeviceError> {
    let value = states
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| DeviceError::MissingState(name.to_string()))?;
    serde_json::from_value(value).map_err(|e| DeviceError::BadState(name.to_string(), Box::new(e)))
}

/// Device requests for power-off and reset, sent to the control loop.
#[derive(Debug)]
struct ControlSender(Mutex<Sender<VmEvent>>);

impl VmControl for ControlSender {
    fn request(&self, ev: devices::VmEvent) {
        let event = match ev {
            devices::VmEvent::PowerOff => VmEvent::PowerOff,
            devices::VmEvent::Reset => VmEvent::Reset,
        };
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(event);
        }
    }
}

/// Serial output that goes straight to a file descriptor, unbuffered, so the
/// guest's bytes appear as they are written.
struct StdoutSink;

impl Write for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// The serial sink; `append` keeps what a file holds (a restored VM goes
/// on writing where the saved one stopped).
fn serial_out(output: &SerialOutput, append: bool) -> Result<SerialOut, DeviceError> {
    Ok(match output {
        SerialOutput::Stdout => Box::new(StdoutSink),
        SerialOutput::Off => Box::new(std::io::sink()),
        SerialOutput::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(path)
                .map_err(|e| DeviceError::SerialFile(path.clone(), e))?,
        ),
    })
}

/// Names of device states in a snapshot.
const SERIAL_STATE: &str = "serial";
const I8042_STATE: &str = "i8042";
const ACPI_STATE: &str = "acpi-pm";
const PCI_CONFIG_IO_STATE: &str = "pci-config-io";

/// Passes BAR moves on to the device that owns the BAR (e.g. to move the
/// memory slot of a shared region).
#[derive(Default)]
struct Relocators(Mutex<Vec<(PciBdf, Arc<dyn BarRelocator>)>>);

impl std::fmt::Debug for Relocators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relocators")
    }
}

impl BarRelocator for Relocators {
    fn relocate(&self, r: &BarReprogram) {
        let targets: Vec<_> = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(bdf, _)| *bdf == r.bdf)
            .map(|(_, t)| t.clone())
            .collect();
        for t in targets {
            t.relocate(r);
        }
    }
}

/// First KVM memory slot for device memory (RAM takes the ones below).
const FIRST_DEVICE_SLOT: u32 = 16;

/// All devices of one VM and the buses that reach them.
#[derive(Debug)]
pub struct DeviceManager {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pci: Arc<Mutex<PciBus>>,
    bar_mapper: Arc<BarMapper>,
    bar_allocator: Mutex<BarAllocator>,
    relocators: Arc<Relocators>,
    next_slot: std::sync::atomic::AtomicU32,
    serial: Arc<Mutex<Serial>>,
    serial_output: SerialOutput,
    com1_irq: Arc<EventFd>,
    i8042: Arc<Mutex<I8042>>,
    acpi: Arc<Mutex<AcpiPm>>,
    config_io: Arc<Mutex<PciConfigIo>>,
    unhandled_log: devices::ratelimit::LogLimiter,
}

impl DeviceManager {
    /// Creates the legacy platform devices of `docs/platform.md`.
    pub fn new(
        vm: &dyn Vm,
        serial: &SerialOutput,
        events: Sender<VmEvent>,
        mmio64_window: (u64, u64),
    ) -> Result<Self, DeviceError> {
        let control: Arc<dyn VmControl> = Arc::new(ControlSender(Mutex::new(events)));
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());

        let com1_irq = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?);
        vm.register_irqfd(com1_irq.as_raw_fd(), COM1_IRQ, None)
            .map_err(DeviceError::Irq)?;
        let serial_output = serial.clone();
        let serial = Arc::new(Mutex::new(Serial::new(
            com1_irq.clone(),
            serial_out(serial, false)?,
        )));
        pio.insert(serial.clone(), COM1_BASE, SERIAL_PORT_LEN)
            .map_err(DeviceError::Bus)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(control.clone())));
        pio.insert(i8042.clone(), I8042_BASE, I8042_LEN)
            .map_err(DeviceError::Bus)?;
        let acpi = Arc::new(Mutex::new(AcpiPm::new(control)));
        pio.insert(acpi.clone(), ACPI_PM_BASE, ACPI_PM_LEN)
            .map_err(DeviceError::Bus)?;

        let pci = Arc::new(Mutex::new(PciBus::new()));
        let relocators = Arc::new(Relocators::default());
        let bar_mapper = Arc::new(BarMapper::new(
            pci.clone(),
            pio.clone(),
            mmio.clone(),
            Some(relocators.clone()),
        ));
        let config_io = Arc::new(Mutex::new(PciConfigIo::new(
            pci.clone(),
            bar_mapper.clone(),
        )));
        pio.insert(config_io.clone(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN)
            .map_err(DeviceError::Bus)?;
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(
                pci.clone(),
                bar_mapper.clone(),
            ))),
            ECAM_BASE,
            ECAM_SIZE,
        )
        .map_err(DeviceError::Bus)?;
        let bar_allocator =
            BarAllocator::new(mmio64_window.0, mmio64_window.1).map_err(DeviceError::BarWindows)?;

        Ok(DeviceManager {
            pio,
            mmio,
            pci,
            bar_mapper,
            bar_allocator: Mutex::new(bar_allocator),
            relocators,
            next_slot: std::sync::atomic::AtomicU32::new(FIRST_DEVICE_SLOT),
            serial,
            serial_output,
            com1_irq,
            i8042,
            acpi,
            config_io,
            unhandled_log: devices::ratelimit::LogLimiter::new(),
        })
    }

    /// Saves the guest-visible state of the platform devices (PCI functions
    /// with state of their own save it themselves).
    pub fn save_state(&self) -> Result<Vec<(String, serde_json::Value)>, DeviceError> {
        fn encode<T: serde::Serialize>(
            name: &'static str,
            state: T,
        ) -> Result<(String, serde_json::Value), DeviceError> {
            serde_json::to_value(state)
                .map(|v| (name.to_string(), v))
                .map_err(|e| DeviceError::Encode(name, e))
        }
        Ok(vec![
            encode(SERIAL_STATE, lock(&self.serial).snapshot())?,
            encode(I8042_STATE, lock(&self.i8042).state())?,
            encode(ACPI_STATE, lock(&self.acpi).state())?,
            encode(PCI_CONFIG_IO_STATE, lock(&self.config_io).address())?,
        ])
    }

    /// Restores what [`DeviceManager::save_state`] saved.
    pub fn restore_state(&self, states: &[(String, serde_json::Value)]) -> Result<(), DeviceError> {
        let serial = find_state(states, SERIAL_STATE)?;
        let restored = Serial::restore(
            &serial,
            self.com1_irq.clone(),
            serial_out(&self.serial_output, true)?,
        )
        .map_err(|e| DeviceError::BadState(SERIAL_STATE.into(), Box::new(e)))?;
        *lock(&self.serial) = restored;
        lock(&self.i8042).restore(find_state(states, I8042_STATE)?);
        lock(&self.acpi).restore(find_state(states, ACPI_STATE)?);
        lock(&self.config_io).set_address(find_state(states, PCI_CONFIG_IO_STATE)?);
        Ok(())
    }

    /// Maps the BARs of every PCI function on the buses (call once all
    /// devices are added, before the vCPUs run).
    pub fn map_bars(&self) -> Result<(), DeviceError> {
        self.bar_mapper.map_all().map_err(DeviceError::BarMap)
    }

    /// The PCI root bus.
    pub fn pci(&self) -> &Arc<Mutex<PciBus>> {
        &self.pci
    }

    /// A KVM memory slot number for device memory.
    pub fn allocate_slot(&self) -> u32 {
        self.next_slot
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Tells `relocator` about every move of a BAR of `bdf`.
    pub fn add_relocator(&self, bdf: PciBdf, relocator: Arc<dyn BarRelocator>) {
        self.relocators
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((bdf, relocator));
    }

    /// The BAR allocator over the PCI windows.
    pub fn bar_allocator(&self) -> &Mutex<BarAllocator> {
        &self.bar_allocator
    }
}

impl DeviceManager {
    /// Logs an access no device decodes; a guest can do this in a loop, so
    /// the lines are rate-limited.
    fn unhandled(&self, what: &str, addr: u64, len: usize) {
        if self.unhandled_log.allow() {
            log::debug!("unhandled {what} {addr:#x} ({len} bytes)");
        }
    }
}

impl ExitHandler for DeviceManager {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if self.pio.read(u64::from(port), data).is_err() {
            self.unhandled("port read", u64::from(port), data.len());
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if self.pio.write(u64::from(port), data).is_err() {
            self.unhandled("port write", u64::from(port), data.len());
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.mmio.read(addr, data).is_err() {
            self.unhandled("MMIO read", addr, data.len());
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.mmio.write(addr, data).is_err() {
            self.unhandled("MMIO write", addr, data.len());
        }
    }
}
