// SPDX-License-Identifier: Apache-2.0
//! KVM behind small traits.
//!
//! This crate owns everything that talks to `/dev/kvm`: the [`Hypervisor`],
//! [`Vm`] and [`Vcpu`] traits, their KVM implementation, and the serde state
//! types that snapshot and migration carry. It depends on no other Shoal crate.

pub mod x86_64;
