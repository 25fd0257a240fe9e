// SPDX-License-Identifier: Apache-2.0
//! Parallel histogram across the peers of a Shoal group.
//!
//! Every member joins team "histogram", takes its static share of the
//! input indices, bins them with a few threads, and adds its counts into
//! shared atomic bins (a named object). Rank 0 then recomputes the histogram
//! alone and checks it matches.
//!
//! ```sh
//! # each member, joined to a running `shoal group serve`:
//! SHOAL_SOCKET=/tmp/g.sock cargo run -p guest-sdk --example histogram -- member 2
//! # or all in one: start a server and N member processes
//! cargo run -p guest-sdk --example histogram -- serve 2
//! ```

use shmem_group::{Server, ServerConfig};
use shoal::{Shoal, Team};
use std::error::Error;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const BINS: usize = 64;
const ITEMS: u64 = 2_000_000;
const THREADS: u64 = 2;

fn value(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) % 10_000
}

fn bin(v: u64) -> usize {
    // Skewed on purpose: small values are more common.
    ((v * v) / (10_000 * 10_000 / BINS as u64)) as usize % BINS
}

fn member(size: u32) -> Result<(), Box<dyn Error>> {
    let shoal = Shoal::open_default()?;
    let (bins, _) = shoal.find_or_create("histogram-bins", (BINS * 8) as u64)?;
    let bins = shoal.slice(bins.cast::<AtomicU64>(), BINS)?;
    let team = Team::join(&shoal, "histogram", size)?;
    // The bins may hold an earlier run's counts (same group): clear them
    // before anyone adds.
    if team.rank() == 0 {
        bins.iter().for_each(|b| b.store(0, Ordering::Relaxed));
    }
    team.barrier()?;
    let range = team.range(ITEMS);
    let start = Instant::now();
    let chunk = (range.end - range.start).div_ceil(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let lo = range.start + t * chunk;
            let hi = (lo + chunk).min(range.end);
            scope.spawn(move || {
                let mut local = [0u64; BINS];
                for i in lo..hi {
                    local[bin(value(i))] += 1;
                }
                for (shared, n) in bins.iter().zip(local) {
                    shared.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let counted = team.sum_i64((range.end - range.start) as i64)?;
    println!(
        "histogram: rank {}/{} items {}..{} in {:.1} ms (peer {}, {}, {:?})",
        team.rank(),
        team.size(),
        range.start,
        range.end,
        elapsed.as_secs_f64() * 1e3,
        shoal.id(),
        shoal.transport_name(),
        shoal.sleep_kind()
    );
    if team.rank() == 0 {
        let mut reference = [0u64; BINS];
        for i in 0..ITEMS {
            reference[bin(value(i))] += 1;
        }
        let shared: Vec<u64> = bins.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        if shared != reference || counted != ITEMS as i64 {
            println!("histogram: MISMATCH {shared:?} vs {reference:?}");
            team.barrier()?;
            return Err("histogram differs from the reference".into());
        }
        println!("histogram: {ITEMS} items in {BINS} bins match the single-process reference");
    }
    // Keep the bins until rank 0 has compared them.
    team.barrier()?;
    Ok(())
}

fn serve(members: u32) -> Result<(), Box<dyn Error>> {
    let socket = std::env::temp_dir().join(format!("shoal-histogram-{}.sock", std::process::id()));
    let mut server = Server::new(ServerConfig::new("histogram", socket.clone(), 4 << 20))?;
    let stopper = server.stopper()?;
    let thread = std::thread::spawn(move || server.run());
    let exe = std::env::current_exe()?;
    let rounds = std::env::var("HISTOGRAM_ROUNDS").map_or(Ok(1), |r| r.parse::<u32>())?;
    let children = (0..members * rounds)
        .map(|_| {
            Command::new(&exe)
                .args(["member", &members.to_string()])
                .env(shoal::SOCKET_ENV, &socket)
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ok = true;
    for mut c in children {
        ok &= c.wait()?.success();
    }
    stopper.stop();
    let _ = thread.join();
    if ok {
        Ok(())
    } else {
        Err("a member failed".into())
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let count = |i: usize| -> Result<u32, Box<dyn Error>> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(2))
    };
    match args.get(1).map(String::as_str) {
        Some("member") => member(count(2)?),
        Some("serve") => serve(count(2)?),
        _ => Err("usage: histogram member N | serve N".into()),
    }
}
