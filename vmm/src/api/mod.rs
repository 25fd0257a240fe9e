// SPDX-License-Identifier: Apache-2.0
//! The control API: HTTP/1.1 and JSON over a unix socket.
//!
//! [`ApiServer`] runs one listener thread. It parses each request (with
//! size limits and timeouts; malformed requests get a 400), turns it into an
//! [`ApiRequest`] and hands it to the VM's control loop over a channel,
//! together with a channel for the [`ApiResponse`]. The control loop, not
//! this thread, acts on the VM. [`client`] is the matching client.
//!
//! Endpoints live under `/api/v1/`; docs/api.yaml describes them.

pub mod client;
pub mod http;
mod server;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use serde::{Deserialize, Serialize};

pub use http::fuzz_request;
pub use server::ApiServer;

use crate::migration::{ReceiveOptions, SendOptions};

/// Path prefix of every endpoint.
pub const API_PREFIX: &str = "/api/v1/";

/// What the control loop receives: the request and where to answer.
pub type ApiMessage = (ApiRequest, Sender<ApiResponse>);

/// Errors of starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another VMM already serves the API socket {0}")]
    InUse(PathBuf),
    #[error("cannot listen on the API socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

/// A request for the control loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET vm.info`: answer with a [`VmInfo`].
    VmInfo,
    /// `PUT vm.pause`.
    VmPause,
    /// `PUT vm.resume`, with an optional [`ResumeBody`]. `force` is needed
    /// to run a VM kept paused after an unconfirmed incoming migration.
    VmResume { force: bool },
    /// `PUT vm.shutdown`: stop the VM and exit.
    VmShutdown,
    /// `PUT vm.snapshot`: pause, write a snapshot into `destination`, stay paused.
    VmSnapshot { destination: PathBuf },
    /// `PUT vm.restore`: only possible at start (`--restore`); a running
    /// VM answers 409.
    VmRestore { source: PathBuf },
    /// `PUT vm.send-migration`: start migrating (answer 202 at once).
    SendMigration(SendOptions),
    /// `PUT vm.receive-migration`: only possible at start (`--incoming`); a
    /// running VM answers 409.
    ReceiveMigration(ReceiveOptions),
    /// `GET vm.migration-status`: answer with a `migration::MigrationStatus`.
    MigrationStatus,
    /// `PUT vm.migration-cancel`.
    MigrationCancel,
}

/// The control loop's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

impl ApiResponse {
    /// 204: done, nothing to say.
    pub fn ok() -> Self {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    /// 202: started (a migration).
    pub fn accepted() -> Self {
        ApiResponse {
            status: 202,
            body: None,
        }
    }

    /// 200 with `value` as the JSON body.
    pub fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => ApiResponse {
                status: 200,
                body: Some(v),
            },
            Err(e) => Self::error(500, &format!("cannot encode the answer: {e}")),
        }
    }

    /// An error: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        ApiResponse {
            status,
            body: Some(serde_json::json!({ "error": message })),
        }
    }

    /// 409: not possible in the VM's current state.
    pub fn conflict(message: &str) -> Self {
        Self::error(409, message)
    }
}

/// Whether the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmRunState {
    Running,
    Paused,
    /// `shoal run --api-socket` without a VM: waiting for `vm.restore` or
    /// `vm.receive-migration`.
    NotCreated,
    /// No VM yet; `vm.receive-migration` is listening or receiving.
    Receiving,
}

/// One vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuInfo {
    pub id: u32,
}

/// One device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    /// E.g. "serial", "pci-root", "ivshmem".
    pub kind: String,
    /// PCI address `bb:dd.f`, for PCI devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bdf: Option<String>,
}

/// Membership in a shared-memory group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub name: String,
    pub peer_id: u32,
    pub region_size: u64,
    /// The group server's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Doorbell writes the VMM handled itself instead of a KVM ioeventfd
    /// (rings to a peer not known yet or absent); 0 on the fast path.
    #[serde(default)]
    pub doorbells_in_vmm: u64,
}

/// The body of `vm.info`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub config: serde_json::Value,
    pub state: VmRunState,
    pub vcpus: Vec<VcpuInfo>,
    pub devices: Vec<DeviceInfo>,
    pub groups: Vec<GroupInfo>,
    /// Without a VM: why the last restore or receive failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the VMM keeps the VM paused by itself: an incoming migration
    /// whose source did not confirm the commit. `vm.resume` with `force`
    /// runs it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
}

/// The body of `vm.snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    pub destination: PathBuf,
}

/// The body of `vm.resume` (optional: no body is `force: false`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    /// Run a VM kept paused after an incoming migration whose source did
    /// not confirm the commit: the operator checked that the source is gone.
    #[serde(default)]
    pub force: bool,
}

/// The body of `vm.restore`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    pub source: PathBuf,
}
