// SPDX-License-Identifier: Apache-2.0
//! PCI: placeholder while the modules land.
