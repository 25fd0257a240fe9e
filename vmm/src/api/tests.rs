// SPDX-License-Identifier: Apache-2.0
//! The API driving a live migration end to end: client → server → a
//! control loop (shaped like the VMM's) → sender → receiver, with the fake VM.

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client;
use super::{ApiMessage, ApiRequest, ApiResponse, ApiServer};
use crate::migration::fake::{FakeTarget, FakeVm};
use crate::migration::{
    receive, spawn_send, MigrationError, MigrationProgress, MigrationState, MigrationStatus,
    MigrationUrl, SendOptions,
};

fn sock(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("shoal-apimig-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// What the VMM's control loop does with migration requests.
fn control_loop(rx: std::sync::mpsc::Receiver<ApiMessage>, vm: Arc<FakeVm>) {
    let progress = Arc::new(MigrationProgress::default());
    for (req, answer) in rx {
        let r = match req {
            // The VMM would turn `done` into an event: stop on Ok.
            ApiRequest::SendMigration(opts) => {
                match spawn_send(vm.clone(), opts, progress.clone(), |_| {}) {
                    Ok(_) => ApiResponse::accepted(),
                    Err(e @ MigrationError::Busy) => ApiResponse::conflict(&e.to_string()),
                    Err(e) => ApiResponse::error(500, &e.to_string()),
                }
            }
            ApiRequest::MigrationStatus => ApiResponse::json(&progress.status()),
            ApiRequest::MigrationCancel => {
                progress.cancel();
                ApiResponse::ok()
            }
            _ => ApiResponse::error(500, "not in this test"),
        };
        let _ = answer.send(r);
    }
}

fn status(path: &std::path::Path) -> MigrationStatus {
    client::call(path, "GET", "vm.migration-status", None::<&()>)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn send_migration_through_the_api_completes_and_reports() {
    let vm = FakeVm::new(8 << 20).unwrap();
    vm.fill(2).unwrap();
    let mig = sock("dest");
    let listener = MigrationUrl::parse(&format!("unix:{}", mig.display()))
        .unwrap()
        .listen()
        .unwrap();
    let dest = std::thread::spawn(move || {
        let mut t = FakeTarget::default();
        receive(listener.accept().unwrap(), &mut t).unwrap();
        t
    });
    let api = sock("api");
    let (tx, rx) = channel();
    let vm2 = vm.clone();
    std::thread::spawn(move || control_loop(rx, vm2));
    let _server = ApiServer::start(&api, tx).unwrap();

    assert_eq!(status(&api).state, MigrationState::None);
    let opts = SendOptions::new(&format!("unix:{}", mig.display()));
    let r = client::call(&api, "PUT", "vm.send-migration", Some(&opts)).unwrap();
    assert_eq!(r.status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = status(&api);
        if !s.state.is_active() || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(s.state, MigrationState::Completed, "{s:?}");
    let report = s.report.unwrap();
    assert!(report.bytes_total > 4 << 20);
    let target = dest.join().unwrap();
    assert!(target.started);
    assert!(vm.ram_bytes().unwrap() == target.ram_bytes().unwrap());
}

#[test]
fn cancel_through_the_api_leaves_the_vm_running() {
    let vm = FakeVm::new(8 << 20).unwrap();
    vm.never_converge();
    let _dirtier = vm.start_dirtier(0, 2048, None);
    let mig = sock("cdest");
    let listener = MigrationUrl::parse(&format!("unix:{}", mig.display()))
        .unwrap()
        .listen()
        .unwrap();
    let dest = std::thread::spawn(move || {
        let mut t = FakeTarget::default();
        receive(listener.accept().unwrap(), &mut t).is_err()
    });
    let api = sock("capi");
    let (tx, rx) = channel();
    let vm2 = vm.clone();
    std::thread::spawn(move || control_loop(rx, vm2));
    let _server = ApiServer::start(&api, tx).unwrap();
    let opts = SendOptions {
        downtime_ms: 0,
        ..SendOptions::new(&format!("unix:{}", mig.display()))
    };
    assert_eq!(
        client::call(&api, "PUT", "vm.send-migration", Some(&opts))
            .unwrap()
            .status,
        202
    );
    // A second one while the first runs is refused.
    assert_eq!(
        client::call(&api, "PUT", "vm.send-migration", Some(&opts))
            .unwrap()
            .status,
        409
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        client::call(&api, "PUT", "vm.migration-cancel", None::<&()>)
            .unwrap()
            .status,
        204
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = status(&api);
        if !s.state.is_active() || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(s.state, MigrationState::Cancelled, "{s:?}");
    assert_eq!(s.error.as_deref(), Some("cancelled"));
    assert!(dest.join().unwrap(), "the destination must fail");
    assert!(!vm.is_paused());
}
