//! The bounded-load rendezvous choice: stable, spilling past the factor, respecting
//! `max_concurrency`, and moving few sessions when a copy leaves.

use std::collections::BTreeMap;

use plans::fleet::LoadFactor;

use super::*;

const NEURONS: [&str; 4] = ["n0", "n1", "n2", "n3"];

fn idle(count: usize) -> Vec<(&'static str, u32)> {
    NEURONS[..count].iter().map(|&n| (n, 0)).collect()
}

/// Where `key` goes among `copies`, by neuron name.
fn goes(key: u64, copies: &[(&str, u32)], limit: u32) -> Option<(String, bool)> {
    choose(Key(key), copies, limit, LoadFactor::default()).map(|(i, first)| (copies[i].0.to_owned(), first))
}

/// A key whose first choice among `copies` is `neuron`.
fn key_preferring(neuron: &str, copies: &[(&str, u32)]) -> u64 {
    (0..).find(|&k| goes(k, copies, u32::MAX).is_some_and(|(n, _)| n == neuron)).unwrap_or(0)
}

#[test]
fn the_choice_is_stable_and_independent_of_order_and_load_below_the_bound() {
    for key in 0..200 {
        let (first, hit) = goes(key, &idle(3), u32::MAX).expect("a copy");
        assert!(hit);
        let reversed: Vec<(&str, u32)> = idle(3).into_iter().rev().collect();
        assert_eq!(goes(key, &reversed, u32::MAX).map(|(n, _)| n), Some(first.clone()), "order of copies");
        // One request in flight on each copy: still under the bound, still the same copy.
        let busy: Vec<(&str, u32)> = idle(3).into_iter().map(|(n, _)| (n, 1)).collect();
        assert_eq!(goes(key, &busy, u32::MAX).map(|(n, _)| n), Some(first));
    }
}

#[test]
fn keys_spread_over_the_copies() {
    let mut per_copy: BTreeMap<String, usize> = BTreeMap::new();
    for key in 0..4_000 {
        let (neuron, _) = goes(key, &idle(4), u32::MAX).expect("a copy");
        *per_copy.entry(neuron).or_default() += 1;
    }
    for (neuron, count) in &per_copy {
        assert!((800..=1_200).contains(count), "{neuron} got {count} of 4000 keys");
    }
}

/// (case, load of n0, load of n1, max_concurrency, where it goes, whether first choice)
type Case = (&'static str, u32, u32, u32, Option<&'static str>, bool);

#[test]
fn a_copy_above_the_bound_or_full_is_passed_by() {
    let copies = idle(2);
    let key = key_preferring("n0", &copies);
    // (case, load of n0, load of n1, max_concurrency, where it goes, whether first choice)
    let cases: [Case; 7] = [
        ("idle", 0, 0, u32::MAX, Some("n0"), true),
        // in flight 2 (+1) over 2 copies, bound ceil(1.25 * 3 / 2) = 2: n0 at 2 spills.
        ("over the bound", 2, 0, u32::MAX, Some("n1"), false),
        // in flight 2 (+1), bound 2: n0 at 1 is under it.
        ("under the bound", 1, 1, u32::MAX, Some("n0"), true),
        // in flight 10 (+1), bound ceil(1.25 * 11 / 2) = 7: n0 at 6 takes it.
        ("within the factor of the mean", 6, 4, u32::MAX, Some("n0"), true),
        ("past the factor of the mean", 7, 3, u32::MAX, Some("n1"), false),
        ("max_concurrency full", 1, 0, 1, Some("n1"), false),
        ("every copy full", 1, 1, 1, None, false),
    ];
    for (case, n0, n1, limit, expected, first) in cases {
        let copies = [("n0", n0), ("n1", n1)];
        let got = goes(key, &copies, limit);
        assert_eq!(got.as_ref().map(|(n, _)| n.as_str()), expected, "{case}");
        if let Some((_, hit)) = got {
            assert_eq!(hit, first, "{case}");
        }
    }
}

#[test]
fn one_request_always_fits_somewhere_under_the_bound() {
    for factor in [1000, 1250, 3000] {
        for loads in [[0, 0, 0], [5, 5, 5], [9, 0, 0], [1, 2, 3], [100, 100, 0]] {
            let copies: Vec<(&str, u32)> = NEURONS[..3].iter().copied().zip(loads).collect();
            for key in 0..50 {
                assert!(
                    choose(Key(key), &copies, u32::MAX, LoadFactor(factor)).is_some(),
                    "{loads:?} {factor}"
                );
            }
        }
    }
    assert_eq!(choose(Key(1), &[], u32::MAX, LoadFactor::default()), None, "no copy");
}

#[test]
fn a_copy_leaving_moves_only_its_own_keys_and_one_joining_takes_its_share() {
    // (copies before, copies after)
    let cases: [(usize, usize); 3] = [(4, 3), (3, 2), (3, 4)];
    let keys = 6_000u64;
    for (before, after) in cases {
        let mut moved = 0u64;
        for key in 0..keys {
            let was = goes(key, &idle(before), u32::MAX).map(|(n, _)| n);
            let is = goes(key, &idle(after), u32::MAX).map(|(n, _)| n);
            if was != is {
                moved += 1;
                let left = after < before && was.as_deref() == Some(NEURONS[before - 1]);
                let joined = after > before && is.as_deref() == Some(NEURONS[after - 1]);
                assert!(left || joined, "key {key} moved from {was:?} to {is:?} without cause");
            }
        }
        // About 1/N of the keys (N the larger count of copies) move; allow a tenth of slack.
        let expected = keys / before.max(after) as u64;
        assert!(
            moved.abs_diff(expected) <= expected / 10,
            "{before}→{after}: {moved} moved, about {expected} expected"
        );
    }
}
