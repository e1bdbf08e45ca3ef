//! Instruction counting for the borrowed picks (run under cachegrind):
//! `pick_loop <rr|random|random_owned|local> <picks>`.
use std::hint::black_box;
use std::sync::Arc;

use sd_core::{BoxError, DefaultEndpointer, Event, Instance, InstanceCache};
use sd_lb::{Balancer, LocalRoundRobin, Random, RoundRobin};

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
