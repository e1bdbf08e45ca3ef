//! `InstanceReuse::sort` against a plain sort, exhaustively on small answers: every
//! sequence of three answers of up to four entries drawn from an alphabet where entries
//! share keys with different attributes (weight, health), share addresses with different
//! ids, and one fails to decode. Each sorted answer must hold exactly what `sort()` gives
//! (the same instances, in the same places), and `InstanceSet::new` / `new_counting` the
//! same set and count as from the unsorted answer.

use sd_core::{Health, Instance, InstanceReuse, InstanceSet};

const ALPHABET: [&str; 6] = [
    "10.0.0.2:80 a 1 p",
    "10.0.0.2:80 a 2 p", // same key, another weight
    "10.0.0.2:80 a 1 c", // same key, critical
    "10.0.0.2:80 b 1 p", // same address, another id
    "10.0.0.10:80 a 1 p",
    "bad",
];

fn decode(raw: &[u8]) -> Result<Instance, String> {
    let s = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
    let p: Vec<&str> = s.split(' ').collect();
    if p.len() != 4 {
        return Err(format!("bad entry {s:?}"));
    }
    let health = if p[3] == "p" {
        Health::Passing
    } else {
        Health::Critical
    };
    Instance::parse(p[0])
        .map(|i| {
            i.to_builder()
                .id(p[1])
                .weight(p[2].parse().unwrap())
                .health(health)
                .build()
        })
        .map_err(|e| e.to_string())
}

/// Every answer of up to `max` entries of the alphabet (repeats allowed), by index.
fn answers(max: usize) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    let mut last = vec![vec![]];
    for _ in 0..max {
        let mut next = Vec::new();
        for a in &last {
            for e in 0..ALPHABET.len() {
                let mut b = a.clone();
                b.push(e);
                next.push(b);
            }
        }
        out.extend(next.iter().cloned());
        last = next;
    }
    out
}

/// Decodes `answer` through `reuse`, sorts it (without its second instance when `skip`:
/// a vector that is not the answer in its order) and compares with the plain sort.
fn check(reuse: &mut InstanceReuse, answer: &[usize], skip: bool, what: &str) {
    let mut v: Vec<Instance> = answer
        .iter()
        .filter_map(|&e| {
            let raw = ALPHABET[e].as_bytes();
            reuse.instance(raw, || decode(raw)).ok()
        })
        .collect();
    reuse.finish();
    if skip && v.len() > 1 {
        v.remove(1);
    }
    let unsorted = v.clone();
    let mut plain = v.clone();
    plain.sort();
    reuse.sort(&mut v);
    assert_eq!(v.len(), plain.len(), "{what}");
    for (a, b) in v.iter().zip(&plain) {
        assert!(
            a.cmp(b).is_eq() && a.weight() == b.weight() && a.health() == b.health(),
            "{what}: {v:?} != {plain:?}"
        );
    }
    assert_eq!(
        InstanceSet::new_counting(v),
        InstanceSet::new_counting(unsorted),
        "{what}"
    );
}

#[test]
fn sort_equals_the_plain_sort_on_every_small_answer_sequence() {
    let small = answers(3);
    let mut cases = 0;
    for a in &small {
        for b in &small {
            let mut reuse = InstanceReuse::new();
            check(&mut reuse, a, false, &format!("{a:?}"));
            check(&mut reuse, b, false, &format!("{a:?} then {b:?}"));
            // The first answer again, and the second reversed.
            check(
                &mut reuse,
                a,
                false,
                &format!("{a:?} then {b:?} then {a:?}"),
            );
            let rev: Vec<usize> = b.iter().rev().copied().collect();
            check(&mut reuse, &rev, false, &format!("... then {rev:?}"));
            // A vector other than the answer sorted (its second instance left out), then
            // answers sorted from the places that left.
            check(
                &mut reuse,
                a,
                true,
                &format!("... then {a:?} without its second"),
            );
            check(&mut reuse, b, false, &format!("... then {b:?}"));
            check(&mut reuse, a, false, &format!("... then {a:?}"));
            cases += 1;
        }
    }
    assert_eq!(cases, 259 * 259);
}
