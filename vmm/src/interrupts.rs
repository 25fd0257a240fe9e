// SPDX-License-Identifier: Apache-2.0
//! GSI routing: the in-kernel IOAPIC/PIC pins plus one MSI route per
//! device vector, so that eventfds can inject MSIs kernel to kernel.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use devices::MsiMessage;
use hypervisor::{IrqRoute, Vm};

/// GSIs below this are the IOAPIC pins; MSI routes are allocated above.
const IOAPIC_PINS: u32 = 24;
/// KVM's routing table limit on our hosts (`KVM_CAP_IRQ_ROUTING` = 4096).
const MAX_GSI: u32 = 4096;

/// Errors of interrupt routing.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("no free GSI for another MSI route (at most {MAX_GSI})")]
    Exhausted,
    #[error("cannot update KVM's GSI routing")]
    Kvm(#[source] hypervisor::Error),
}

#[derive(Debug, Default)]
struct Table {
    msi: BTreeMap<u32, MsiMessage>,
    allocated: BTreeMap<u32, ()>,
}

/// The VM's GSI routing table.
#[derive(Debug)]
pub struct IrqRouting {
    vm: Arc<dyn Vm>,
    table: Mutex<Table>,
}

/// KVM's default routes, which a routing update must keep: GSI 0-15 to the
/// PICs and the IOAPIC, 16-23 to the IOAPIC.
fn default_routes() -> Vec<IrqRoute> {
    let mut routes = Vec::with_capacity(40);
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            routes.push(IrqRoute::Pic {
                gsi,
                chip: gsi / 8,
                pin: gsi % 8,
            });
        }
        routes.push(IrqRoute::IoApic { gsi, pin: gsi });
    }
    routes
}

impl IrqRouting {
    /// Routing with only the default routes.
    pub fn new(vm: Arc<dyn Vm>) -> Self {
        IrqRouting {
            vm,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a GSI for an MSI route.
    pub fn allocate_gsi(&self) -> Result<u32, RoutingError> {
        let mut t = self.table();
        let gsi = (IOAPIC_PINS..MAX_GSI)
            .find(|g| !t.allocated.contains_key(g))
            .ok_or(RoutingError::Exhausted)?;
        t.allocated.insert(gsi, ());
        Ok(gsi)
    }

    /// Releases a GSI and its route.
    pub fn free_gsi(&self, gsi: u32) -> Result<(), RoutingError> {
        let mut t = self.table();
        t.allocated.remove(&gsi);
        if t.msi.remove(&gsi).is_some() {
            return self.apply(&t);
        }
        Ok(())
    }

    /// Points `gsi` at `msg`.
    pub fn set_msi(&self, gsi: u32, msg: MsiMessage) -> Result<(), RoutingError> {
        let mut t = self.table();
        if t.msi.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        t.msi.insert(gsi, msg);
        self.apply(&t)
    }

    fn apply(&self, t: &Table) -> Result<(), RoutingError> {
        let mut routes = default_routes();
        routes.extend(t.msi.iter().map(|(&gsi, m)| IrqRoute::Msi {
            gsi,
            addr: m.addr,
            data: m.data,
        }));
        self.vm.set_gsi_routing(&routes).map_err(RoutingError::Kvm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_pic_and_ioapic_pins() {
        let r = default_routes();
        assert_eq!(r.len(), 16 + 24);
        assert!(r.contains(&IrqRoute::Pic {
            gsi: 9,
            chip: 1,
            pin: 1
        }));
        assert!(r.contains(&IrqRoute::IoApic { gsi: 23, pin: 23 }));
    }
}
