// SPDX-License-Identifier: Apache-2.0
//! migration (in progress).
