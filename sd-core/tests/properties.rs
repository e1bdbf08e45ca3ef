//! Property tests over random update sequences (issue 2):
//! - the factory runs exactly once per instance lifetime;
//! - closes equal creations minus live endpoints;
//! - the snapshot equals the sorted live set.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use sd_core::{
    BoxError, DefaultEndpointer, Endpointer, Error, Event, Factory, Instance, InstanceCache,
};

#[derive(Clone, Default)]
struct Ledger {
    made: Arc<Mutex<HashMap<String, usize>>>,
    closed: Arc<Mutex<HashMap<String, usize>>>,
}

impl Factory<String> for Ledger {
    fn make(&self, i: &Instance) -> Result<String, BoxError> {
        *self
            .made
            .lock()
            .unwrap()
            .entry(i.addr().into())
            .or_default() += 1;
        Ok(i.addr().into())
    }
    fn close(&self, i: &Instance, _: &String) {
        *self
            .closed
            .lock()
            .unwrap()
            .entry(i.addr().into())
            .or_default() += 1;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Set(BTreeSet<u8>),
    Error,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::collection::btree_set(0u8..24, 0..12).prop_map(Op::Set),
            1 => Just(Op::Error),
        ],
        1..40,
    )
}

fn addr(n: u8) -> String {
    format!("10.0.0.{n}:80")
}

proptest! {
    #[test]
    fn endpointer_lifecycle_invariants(ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let inst = InstanceCache::new();
            inst.update(Event::instances(vec![]));
            let ledger = Ledger::default();
            let ep = DefaultEndpointer::new(&inst, ledger.clone());
            let mut live: BTreeSet<u8> = BTreeSet::new();
            // Lifetimes started per address, from the model.
            let mut lifetimes: HashMap<String, usize> = HashMap::new();
            let mut changes = ep.changes();
            for op in ops {
                let published = match &op {
                    Op::Set(s) => inst.update(Event::instances(
                        s.iter().map(|n| Instance::parse(&addr(*n)).unwrap()).collect::<Vec<_>>())),
                    Op::Error => inst.update(Event::Error(Error::unavailable("p", "e"))),
                };
                if published {
                    changes.changed().await;
                }
                if let Op::Set(s) = op {
                    for n in s.difference(&live) {
                        *lifetimes.entry(addr(*n)).or_default() += 1;
                    }
                    live = s;
                }
                let made = ledger.made.lock().unwrap().clone();
                let closed = ledger.closed.lock().unwrap().clone();
                // Factory runs exactly once per instance lifetime.
                prop_assert_eq!(&made, &lifetimes.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect::<HashMap<_, _>>());
                // Closes = creations - live endpoints.
                let total_made: usize = made.values().sum();
                let total_closed: usize = closed.values().sum();
                prop_assert_eq!(total_closed, total_made - live.len());
                // Snapshot = sorted live set (errors keep the last good set).
                let snap = ep.endpoints();
                let got: Vec<String> = snap.get().unwrap().iter().map(|e| (**e).clone()).collect();
                let mut want: Vec<String> = live.iter().map(|n| addr(*n)).collect();
                want.sort();
                prop_assert_eq!(got, want);
            }
            ep.close().await;
            let total_made: usize = ledger.made.lock().unwrap().values().sum();
            let total_closed: usize = ledger.closed.lock().unwrap().values().sum();
            prop_assert_eq!(total_made, total_closed, "everything closed after close()");
            Ok(())
        })?;
    }
}
