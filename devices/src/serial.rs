// SPDX-License-Identifier: Apache-2.0
//! COM1: a 16550A UART on top of vm-superio's `Serial`.
//!
//! Output goes to any `Write` sink (stdout, a file, [`std::io::sink`]); the
//! interrupt goes out through an [`InterruptLine`]. Input from the host is
//! queued with [`Serial::enqueue_raw_bytes`].

use std::io::{self, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;
use crate::ratelimit::LogLimiter;

/// First port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of ports a 16550A decodes.
pub const SERIAL_PORT_LEN: u64 = 8;
/// IOAPIC pin (and ISA IRQ) of COM1.
pub const COM1_IRQ: u32 = 4;
/// Bytes the receive FIFO holds.
pub const FIFO_SIZE: usize = 64;

/// Errors of the serial device.
#[derive(Debug, Error)]
pub enum SerialError {
    /// The receive FIFO has no room.
    #[error("Serial receive FIFO is full")]
    FifoFull,
    /// Raising the interrupt failed.
    #[error("Failed to raise the serial interrupt")]
    Interrupt(#[source] io::Error),
    /// Writing to the output sink failed.
    #[error("Failed to write serial output")]
    Output(#[source] io::Error),
    /// A snapshot holds more input than the FIFO can.
    #[error("Serial snapshot has {0} input bytes, more than the FIFO holds")]
    BadSnapshot(usize),
}

impl From<vm_superio::serial::Error<io::Error>> for SerialError {
    fn from(e: vm_superio::serial::Error<io::Error>) -> Self {
        use vm_superio::serial::Error as E;
        match e {
            E::Trigger(e) => SerialError::Interrupt(e),
            E::IOError(e) => SerialError::Output(e),
            E::FullFifo => SerialError::FifoFull,
        }
    }
}

/// Adapts an [`InterruptLine`] to vm-superio's `Trigger`.
#[derive(Clone)]
pub struct LineTrigger(pub Arc<dyn InterruptLine>);

impl std::fmt::Debug for LineTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineTrigger")
    }
}

impl Trigger for LineTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// The output sink of a serial port.
pub type SerialOut = Box<dyn Write + Send>;

struct DebugOut(SerialOut);

impl std::fmt::Debug for DebugOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialOut")
    }
}

impl Write for DebugOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Register state of a serial port, for snapshot and restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

type Uart = vm_superio::Serial<LineTrigger, NoEvents, DebugOut>;

/// A 16550A UART as a [`BusDevice`] (register it at [`COM1_BASE`], length
/// [`SERIAL_PORT_LEN`]).
#[derive(Debug)]
pub struct Serial {
    uart: Uart,
    log: LogLimiter,
}

impl Serial {
    /// Creates a UART in its reset state.
    pub fn new(irq: Arc<dyn InterruptLine>, out: SerialOut) -> Self {
        Self {
            uart: Uart::new(LineTrigger(irq), DebugOut(out)),
            log: LogLimiter::new(),
        }
    }

    /// Creates a UART from a snapshot.
    pub fn restore(
        snap: &SerialSnapshot,
        irq: Arc<dyn InterruptLine>,
        out: SerialOut,
    ) -> Result<Self, SerialError> {
        if snap.in_buffer.len() > FIFO_SIZE {
            return Err(SerialError::BadSnapshot(snap.in_buffer.len()));
        }
        let uart = Uart::from_state(&snap.into(), LineTrigger(irq), NoEvents, DebugOut(out))?;
        Ok(Self {
            uart,
            log: LogLimiter::new(),
        })
    }

    /// Current register state.
    pub fn snapshot(&self) -> SerialSnapshot {
        self.uart.state().into()
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_raw_bytes(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        Ok(self.uart.enqueue_raw_bytes(input)?)
    }

    /// Free room in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Register offset for byte `i` of an access at `offset`, if it is a port
    /// of this UART.
    fn reg(offset: u64, i: usize) -> Option<u8> {
        let r = offset.checked_add(i as u64)?;
        (r < SERIAL_PORT_LEN).then_some(r as u8)
    }
}

impl BusDevice for Serial {
    /// Each byte of the access reads one consecutive port, as the ISA bus
    /// splits a wide access to 8-bit ports.
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match Self::reg(offset, i) {
                Some(r) => self.uart.read(r),
                None => 0xff,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let Some(r) = Self::reg(offset, i) else {
                return;
            };
            if let Err(e) = self.uart.write(r, *b) {
                if self.log.allow() {
                    log::warn!("serial: {}", SerialError::from(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Count(AtomicU32);
    impl InterruptLine for Count {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Arc<Count>, Shared) {
        let irq = Arc::new(Count::default());
        let out = Shared::default();
        (Serial::new(irq.clone(), Box::new(out.clone())), irq, out)
    }

    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn data_port_write_reaches_sink() {
        let (mut s, _, out) = serial();
        for b in b"hi" {
            s.write(COM1_BASE, 0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn thr_empty_interrupt_fires_when_enabled() {
        let (mut s, irq, _) = serial();
        s.write(COM1_BASE, IER, &[0x02]);
        let before = irq.0.load(Ordering::SeqCst);
        assert!(before >= 1);
        // Reading IIR acknowledges the pending THR-empty interrupt.
        let mut iir = [0u8];
        s.read(COM1_BASE, 2, &mut iir);
        assert_eq!(iir[0] & 0x0f, 0x02);
        s.write(COM1_BASE, 0, b"x");
        assert!(irq.0.load(Ordering::SeqCst) > before);
    }

    #[test]
    fn enqueued_input_is_readable_and_raises_irq() {
        let (mut s, irq, _) = serial();
        s.write(COM1_BASE, IER, &[0x01]);
        let before = irq.0.load(Ordering::SeqCst);
        assert_eq!(s.enqueue_raw_bytes(b"ab").unwrap(), 2);
        assert!(irq.0.load(Ordering::SeqCst) > before);
        let mut lsr = [0u8];
        s.read(COM1_BASE, LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        s.read(COM1_BASE, 0, &mut b);
        assert_eq!(b, *b"a");
        s.read(COM1_BASE, 0, &mut b);
        assert_eq!(b, *b"b");
        assert_eq!(s.fifo_capacity(), FIFO_SIZE);
    }

    #[test]
    fn full_fifo_is_an_error() {
        let (mut s, _, _) = serial();
        assert_eq!(s.enqueue_raw_bytes(&[0u8; 100]).unwrap(), FIFO_SIZE);
        assert!(matches!(
            s.enqueue_raw_bytes(b"x"),
            Err(SerialError::FifoFull)
        ));
    }

    #[test]
    fn odd_sized_and_out_of_range_accesses_do_not_panic() {
        let (mut s, _, _) = serial();
        let mut nine = [0u8; 9];
        s.read(COM1_BASE, 0, &mut nine);
        assert_eq!(nine[8], 0xff, "byte past the UART reads all-ones");
        let mut zero: [u8; 0] = [];
        s.read(COM1_BASE, 7, &mut zero);
        let mut three = [0u8; 3];
        s.read(COM1_BASE, u64::MAX, &mut three);
        assert_eq!(three, [0xff; 3]);
        s.write(COM1_BASE, u64::MAX - 1, &[1, 2, 3]);
        s.write(COM1_BASE, 7, &[0x55, 0x66]);
        let mut scr = [0u8];
        s.read(COM1_BASE, 7, &mut scr);
        assert_eq!(scr, [0x55]);
    }

    #[test]
    fn failing_sink_is_survivable() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("broken"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = Serial::new(Arc::new(Count::default()), Box::new(Broken));
        s.write(COM1_BASE, 0, b"x");
        let mut lsr = [0u8];
        s.read(COM1_BASE, LSR, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter still reports empty");
    }

    #[test]
    fn snapshot_round_trips_registers_and_input() {
        let (mut s, _, _) = serial();
        s.write(COM1_BASE, 7, &[0x42]);
        s.enqueue_raw_bytes(b"q").unwrap();
        let snap = s.snapshot();
        let mut r =
            Serial::restore(&snap, Arc::new(Count::default()), Box::new(io::sink())).unwrap();
        assert_eq!(r.snapshot(), snap);
        let mut b = [0u8];
        r.read(COM1_BASE, 0, &mut b);
        assert_eq!(b, *b"q");
    }

    #[test]
    fn oversized_snapshot_is_rejected() {
        let (s, _, _) = serial();
        let mut snap = s.snapshot();
        snap.in_buffer = vec![0; FIFO_SIZE + 1];
        assert!(matches!(
            Serial::restore(&snap, Arc::new(Count::default()), Box::new(io::sink())),
            Err(SerialError::BadSnapshot(65))
        ));
    }
}
