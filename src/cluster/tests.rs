//! The split of mailboxes among replicas.

use super::fair_share;

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}")).collect()
}

#[test]
fn shares_differ_by_at_most_one_and_add_up_to_the_total() {
    for total in [0, 1, 2, 9, 10, 11, 10_000] {
        for n in 1..=5 {
            let live = ids(n);
            let shares: Vec<usize> = live.iter().map(|me| fair_share(total, &live, me)).collect();
            assert_eq!(shares.iter().sum::<usize>(), total, "{total} over {n}: {shares:?}");
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1, "{total} over {n}: {shares:?}");
        }
    }
}

#[test]
fn a_replica_missing_from_the_membership_claims_nothing() {
    assert_eq!(fair_share(10, &ids(3), "elsewhere"), 0);
    assert_eq!(fair_share(10, &[], "r0"), 0);
}
