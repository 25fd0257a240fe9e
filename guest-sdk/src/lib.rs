// SPDX-License-Identifier: Apache-2.0
//! The Shoal guest SDK.
