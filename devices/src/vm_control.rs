// SPDX-License-Identifier: Apache-2.0
//! Machine-level requests a guest can make through a device.

use serde::{Deserialize, Serialize};

/// What a guest asked the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmEvent {
    /// Power the machine off (ACPI S5).
    PowerOff,
    /// Reset the machine (i8042 pulse, ACPI reset register).
    Reset,
}

/// Receives [`VmEvent`]s; implemented by the vmm.
///
/// Called from a vCPU thread in the middle of a port access, so an
/// implementation should only record the request and wake its event loop.
pub trait VmControl: Send + Sync {
    /// Records a request from the guest.
    fn request(&self, ev: VmEvent);
}

/// A [`VmControl`] that drops every request (fuzzing, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullVmControl;

impl VmControl for NullVmControl {
    fn request(&self, _ev: VmEvent) {}
}

/// A [`VmControl`] that remembers requests, for tests of devices and the vmm.
#[derive(Debug, Default)]
pub struct RecordingVmControl {
    events: std::sync::Mutex<Vec<VmEvent>>,
}

impl RecordingVmControl {
    /// Returns and clears the requests seen so far.
    pub fn take(&self) -> Vec<VmEvent> {
        std::mem::take(&mut *crate::lock(&self.events))
    }
}

impl VmControl for RecordingVmControl {
    fn request(&self, ev: VmEvent) {
        crate::lock(&self.events).push(ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_control_keeps_order_and_clears_on_take() {
        let c = RecordingVmControl::default();
        c.request(VmEvent::Reset);
        c.request(VmEvent::PowerOff);
        assert_eq!(c.take(), vec![VmEvent::Reset, VmEvent::PowerOff]);
        assert!(c.take().is_empty());
    }
}
