// SPDX-License-Identifier: Apache-2.0
//! Benchmarks of migrating a fake 1 GiB VM, run by hand:
//! `cargo test -p vmm --release -- --ignored --nocapture bench_`.
//! They print numbers and assert only that the migration worked.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::fake::{FakeTarget, FakeVm};
use super::*;

const GIB: u64 = 1 << 30;

/// CPU time on `clock` (a thread's or the process's CPU clock: it does
/// not grow while the thread waits or another process runs, so it is
/// steadier than wall time on a loaded machine).
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    cpu_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (every thread).
fn process_cpu() -> Duration {
    cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// A migration's report with the CPU time of the sending and the
/// receiving thread, and of the whole process (the receiver's RAM writer
/// and any fake guest included).
struct Run {
    report: MigrationReport,
    send_cpu: Duration,
    receive_cpu: Duration,
    all_cpu: Duration,
}

fn migrate(vm: &FakeVm, listen: &str, opts: impl Fn(&str) -> SendOptions) -> Run {
    let url = MigrationUrl::parse(listen).unwrap();
    let listener = url.listen().unwrap();
    let url = match listener.tcp_port() {
        Some(p) => format!("tcp:127.0.0.1:{p}"),
        None => url.to_string(),
    };
    let rx = std::thread::spawn(move || {
        let mut target = FakeTarget::default();
        let stream = listener.accept().unwrap();
        let cpu = thread_cpu();
        let r = receive(stream, &mut target);
        (r, target, thread_cpu() - cpu)
    });
    let cpu = thread_cpu();
    let all = process_cpu();
    let report = send(vm, &opts(&url), &MigrationProgress::default()).unwrap();
    let send_cpu = thread_cpu() - cpu;
    let (res, target, receive_cpu) = rx.join().unwrap();
    let all_cpu = process_cpu() - all;
    res.unwrap();
    assert!(target.started);
    Run {
        report,
        send_cpu,
        receive_cpu,
        all_cpu,
    }
}

fn print(name: &str, run: &Run, ram: u64) {
    let r = &run.report;
    let secs = r.total_ms.max(1) as f64 / 1000.0;
    println!(
        "{name:<28} total {:>6} ms  downtime {:>8.3} ms  sent {:>7.1} MiB  {:>6.2} GiB/s of RAM  iterations {}  throttle {}%  cpu: send {:>4} ms receive {:>4} ms all {:>4} ms",
        r.total_ms,
        r.downtime_us as f64 / 1000.0,
        r.bytes_total as f64 / (1 << 20) as f64,
        ram as f64 / GIB as f64 / secs,
        r.iterations,
        r.throttle_max,
        run.send_cpu.as_millis(),
        run.receive_cpu.as_millis(),
        run.all_cpu.as_millis(),
    );
}

fn sock(name: &str) -> String {
    let p = std::env::temp_dir().join(format!("shoal-bench-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    format!("unix:{}", p.display())
}

/// The same socket carrying 1 GiB in 1 MiB writes, no framing:
/// (GiB/s, CPU of the sender, CPU of the receiver).
fn plain_copy(listen: &str) -> (f64, Duration, Duration) {
    plain_copy_into(listen, None)
}

/// [`plain_copy`], the receiver writing what it reads into `ram` (a fresh
/// memfd: what any migration must at least do on this host).
fn plain_copy_into(listen: &str, ram: Option<std::fs::File>) -> (f64, Duration, Duration) {
    use std::os::unix::fs::FileExt;
    let url = MigrationUrl::parse(listen).unwrap();
    let listener = url.listen().unwrap();
    let url = match listener.tcp_port() {
        Some(p) => MigrationUrl::parse(&format!("tcp:127.0.0.1:{p}")).unwrap(),
        None => url.clone(),
    };
    let rx = std::thread::spawn(move || {
        let mut s = listener.accept().unwrap();
        s.tune();
        let cpu = thread_cpu();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match &ram {
                Some(f) => match s.read_exact(&mut buf) {
                    Ok(()) => {
                        f.write_all_at(&buf, total).unwrap();
                        buf.len()
                    }
                    Err(_) => break,
                },
                None => match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
            };
            total += n as u64;
        }
        (total, thread_cpu() - cpu)
    });
    let mut s = url.connect().unwrap();
    s.tune();
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let cpu = thread_cpu();
    for _ in 0..1024 {
        s.write_all(&buf).unwrap();
    }
    let send_cpu = thread_cpu() - cpu;
    s.shutdown();
    let (total, receive_cpu) = rx.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(total, GIB);
    (GIB as f64 / (1 << 30) as f64 / secs, send_cpu, receive_cpu)
}

fn print_plain(name: &str, (rate, send, receive): (f64, Duration, Duration)) {
    println!(
        "{name:<28} {rate:.2} GiB/s  cpu: send {:>4} ms receive {:>4} ms",
        send.as_millis(),
        receive.as_millis()
    );
}

#[test]
#[ignore = "benchmark: run by hand in release mode"]
fn bench_migration_1gib() {
    print_plain("plain copy over unix", plain_copy(&sock("plain")));
    let fresh = crate::memory::create_memfd("bench", GIB).unwrap();
    print_plain(
        "plain copy into fresh RAM",
        plain_copy_into(&sock("plain-ram"), Some(fresh)),
    );
    print_plain(
        "plain copy over tcp loopback",
        plain_copy("tcp:127.0.0.1:0"),
    );

    let idle = FakeVm::new(GIB).unwrap();
    let r = migrate(&idle, &sock("idle"), SendOptions::new);
    print("idle (all zero) over unix", &r, GIB);

    let full = FakeVm::new(GIB).unwrap();
    full.fill(1).unwrap();
    let r = migrate(&full, &sock("full"), SendOptions::new);
    print("fully touched over unix", &r, GIB);
    let full = FakeVm::new(GIB).unwrap();
    full.fill(1).unwrap();
    let r = migrate(&full, "tcp:127.0.0.1:0", SendOptions::new);
    print("fully touched over tcp", &r, GIB);
    let full = FakeVm::new(GIB).unwrap();
    full.fill(1).unwrap();
    let r = migrate(&full, &sock("local"), |u| SendOptions {
        local: true,
        ..SendOptions::new(u)
    });
    print("fully touched, local=on", &r, GIB);

    // A guest dirtying 64 MiB of its RAM at about 100 MB/s.
    let busy = FakeVm::new(GIB).unwrap();
    busy.fill(1).unwrap();
    let _d = busy.start_dirtier(0, 16384, Some(100_000_000 / 4096));
    let r = migrate(&busy, &sock("busy"), SendOptions::new);
    print("dirtying ~100 MB/s over unix", &r, GIB);
    drop(_d);

    // A guest dirtying as fast as it can, all over its RAM.
    let fast = FakeVm::new(GIB).unwrap();
    fast.fill(1).unwrap();
    let _d = fast.start_dirtier(0, GIB / 4096, None);
    let r = migrate(&fast, &sock("fast"), SendOptions::new);
    print("dirtying flat out over unix", &r, GIB);
}

/// What one GiB costs in each step a migration takes (for comparison).
#[test]
#[ignore = "benchmark: run by hand in release mode"]
fn bench_migration_steps_per_gib() {
    use std::os::unix::fs::FileExt;
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut c = 0;
    for _ in 0..1024 {
        c ^= crate::snapshot::crc::crc32c(&buf);
    }
    println!("crc32c                 {:?} ({c:x})", t.elapsed());
    let t = Instant::now();
    let zero = (0..1024)
        .flat_map(|_| buf.chunks(4096))
        .filter(|p| crate::snapshot::memory::is_zero(p))
        .count();
    println!("zero-page test         {:?} ({zero})", t.elapsed());
    let f = crate::memory::create_memfd("bench", GIB).unwrap();
    let t = Instant::now();
    for i in 0..1024u64 {
        f.write_all_at(&buf, i << 20).unwrap();
    }
    println!("write into fresh RAM   {:?}", t.elapsed());
    let mut rb = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..1024u64 {
        f.read_exact_at(&mut rb, i << 20).unwrap();
    }
    println!("read from RAM          {:?}", t.elapsed());
}

/// One fully touched 1 GiB VM over unix, three times: the case to profile
/// (`perf record -g target/release/deps/vmm-* --ignored bench_profile_full_unix`).
#[test]
#[ignore = "benchmark: run by hand in release mode"]
fn bench_profile_full_unix() {
    print_plain("plain copy over unix", plain_copy(&sock("plain")));
    let fresh = crate::memory::create_memfd("bench", GIB).unwrap();
    print_plain(
        "plain copy into fresh RAM",
        plain_copy_into(&sock("plain-ram"), Some(fresh)),
    );
    for i in 0..3 {
        let full = FakeVm::new(GIB).unwrap();
        full.fill(1).unwrap();
        let r = migrate(&full, &sock(&format!("profile{i}")), SendOptions::new);
        print("fully touched over unix", &r, GIB);
    }
}
