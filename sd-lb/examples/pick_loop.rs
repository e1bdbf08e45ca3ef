//! Instruction counting for the borrowed picks (run under cachegrind):
//! `pick_loop <rr|random|random_owned|local> <picks>`, or
//! `pick_loop p2c_ewma <picks> <endpoints>`: P2C peak-EWMA's pick alone over `endpoints`
//! endpoints of weights 1 to 4, the picks held in chunks of 10 000 and then ended, as
//! `benches/pick.rs`'s `p2c_peak_ewma_pick_only` does.
use std::hint::black_box;
use std::sync::Arc;

use sd_core::{BoxError, DefaultEndpointer, Event, Instance, InstanceCache};
use sd_lb::{Balancer, LocalRoundRobin, P2c, Random, Request, RoundRobin};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("rr");
    let n: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let src = InstanceCache::new();
    let ep = Arc::new(DefaultEndpointer::new(
        &src,
        |i: &Instance| -> Result<u64, BoxError> { Ok(i.port() as u64) },
    ));
    ep.apply(Event::instances(
        (0..10u16)
            .map(|p| Instance::new("10.0.0.1", 8000 + p))
            .collect::<Vec<_>>(),
    ));
    let mut sum = 0u64;
    if which == "p2c_ewma" {
        let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
        ep.apply(Event::instances(
            (0..size)
                .map(|i| {
                    Instance::builder(
                        format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                        8080,
                    )
                    .weight(1 + (i % 4) as u32)
                    .build()
                })
                .collect::<Vec<_>>(),
        ));
        let p2c = P2c::peak_ewma(ep.clone());
        let mut held = Vec::with_capacity(10_000);
        let mut left = n;
        while left > 0 {
            let chunk = left.min(10_000);
            for _ in 0..chunk {
                held.push(black_box(p2c.pick_with(&Request::new()).unwrap()));
            }
            sum += held.len() as u64;
            held.clear();
            left -= chunk;
        }
        println!("{sum}");
        return;
    }
    match which {
        "rr" => {
            let rr = RoundRobin::new(ep.clone());
            for _ in 0..n {
                sum += **black_box(rr.pick().unwrap());
            }
        }
        "random" => {
            let r = Random::new(ep.clone());
            for _ in 0..n {
                sum += **black_box(r.pick().unwrap());
            }
        }
        "random_owned" => {
            let r = Random::new(ep.clone());
            for _ in 0..n {
                sum += *black_box(Balancer::pick(&r).unwrap());
            }
        }
        _ => {
            let mut rr = LocalRoundRobin::new(ep.clone());
            for _ in 0..n {
                sum += **black_box(rr.pick().unwrap());
            }
        }
    }
    println!("{sum}");
}
