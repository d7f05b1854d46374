use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::discovery::parse_simulated;

fn req<'a>(instance: &'a str, card_type: Option<&'a str>, memory_gb: u32) -> AllocRequest<'a> {
    AllocRequest {
        instance,
        function: "f",
        card_type,
        memory_gb,
    }
}

fn alloc(spec: &str, quota: u32) -> Allocator {
    Allocator::new(parse_simulated(spec).expect("spec"), quota)
}

#[test]
fn picks_the_smallest_fitting_card_and_gives_it_back_on_drop() {
    let a = alloc("1xada-1:48,1xtesla-t4:16", 30);
    let l = a.allocate(req("i1", None, 4)).expect("card");
    assert_eq!((l.index(), l.card_type()), (1, "tesla-t4"));
    let snap = a.snapshot();
    assert_eq!(snap[1].instance.as_deref(), Some("i1"));
    assert_eq!(snap[1].allocated_gb, 4);
    assert_eq!(a.used(), 1);
    drop(l);
    assert_eq!(a.used(), 0);
    assert_eq!(a.snapshot()[1].instance, None);
}

#[test]
fn quota_and_exhaustion_are_distinct_errors() {
    let a = alloc("3xt4:16", 2);
    let _l1 = a.allocate(req("i1", None, 1)).expect("1");
    let _l2 = a.allocate(req("i2", None, 1)).expect("2");
    assert_eq!(
        a.allocate(req("i3", None, 1)).expect_err("quota"),
        AllocError::QuotaExceeded { used: 2, quota: 2 }
    );
    a.set_quota(5);
    let _l3 = a.allocate(req("i3", None, 1)).expect("3");
    assert!(matches!(
        a.allocate(req("i4", None, 1)),
        Err(AllocError::NoFreeCard { .. })
    ));
}

#[test]
fn fit_errors_name_the_field() {
    let a = alloc("2xtesla-t4:16", 30);
    let e = a.check_fits(Some("ada-1"), 4).expect_err("type");
    assert_eq!(e.field(), "gpu.type");
    assert!(e.to_string().contains("it has: tesla-t4"), "{e}");
    let e = a.check_fits(None, 17).expect_err("size");
    assert_eq!(e.field(), "gpu.memory_gb");
    assert_eq!(
        Allocator::new(vec![], 30).check_fits(None, 1),
        Err(FitError::NoGpus)
    );
    assert!(a.check_fits(Some("tesla-t4"), 16).is_ok());
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { typed: bool, memory_gb: u32 },
    Release(usize),
    Quota(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<bool>(), 1u32..=50).prop_map(|(typed, memory_gb)| Op::Alloc { typed, memory_gb }),
        (0usize..16).prop_map(Op::Release),
        (0u32..6).prop_map(Op::Quota),
    ]
}

proptest! {
    /// Whatever the sequence of allocations, releases and quota changes: no card is ever held by
    /// two leases, the allocator's view matches the live leases, a new allocation never passes the
    /// quota, and every card comes back once the leases are gone.
    #[test]
    fn never_double_allocates_and_always_gets_cards_back(ops in proptest::collection::vec(op(), 1..80)) {
        let a = alloc("2xtesla-t4:16,1xada-1:48,1xh100:80", 3);
        let mut live: Vec<GpuLease> = Vec::new();
        let mut n = 0;
        for op in ops {
            match op {
                Op::Alloc { typed, memory_gb } => {
                    n += 1;
                    let id = format!("i{n}");
                    let card_type = typed.then_some("tesla-t4");
                    let before = a.used();
                    match a.allocate(req(&id, card_type, memory_gb)) {
                        Ok(l) => {
                            prop_assert!(before < a.quota());
                            let card = &a.snapshot()[l.index() as usize];
                            prop_assert!(card.memory_gb >= memory_gb);
                            prop_assert_eq!(card.instance.as_deref(), Some(id.as_str()));
                            live.push(l);
                        }
                        Err(AllocError::QuotaExceeded { .. }) => prop_assert!(before >= a.quota()),
                        Err(_) => {}
                    }
                }
                Op::Release(i) => {
                    if !live.is_empty() {
                        let i = i % live.len();
                        live.swap_remove(i);
                    }
                }
                Op::Quota(q) => a.set_quota(q),
            }
            let mut seen = HashMap::new();
            for l in &live {
                prop_assert!(seen.insert(l.index(), ()).is_none(), "card {} held twice", l.index());
            }
            prop_assert_eq!(a.used() as usize, live.len());
            let held = a.snapshot().iter().filter(|c| c.instance.is_some()).count();
            prop_assert_eq!(held, live.len());
        }
        live.clear();
        prop_assert_eq!(a.used(), 0);
        prop_assert!(a.snapshot().iter().all(|c| c.instance.is_none() && c.allocated_gb == 0));
    }
}

#[test]
fn shared_cards_take_instances_while_their_gigabytes_fit() {
    let mut cards = parse_simulated("2xa10:24").expect("spec");
    for c in &mut cards {
        c.shared = true;
    }
    let a = Allocator::new(cards, 1);
    let l1 = a.allocate(req("i1", None, 10)).expect("1");
    let l2 = a
        .allocate(req("i2", None, 10))
        .expect("2: room on the same card");
    assert_eq!(l1.index(), l2.index());
    assert_eq!(a.used(), 1, "one card in use for the quota");
    let snap = a.snapshot();
    assert_eq!(snap[0].allocated_gb, 20);
    assert_eq!(snap[0].instances, ["i1", "i2"]);
    // 10 more GB do not fit the first card; the second would exceed the quota of 1.
    assert_eq!(
        a.allocate(req("i3", None, 10)).err(),
        Some(AllocError::QuotaExceeded { used: 1, quota: 1 })
    );
    // 4 GB still fit beside them.
    let l4 = a.allocate(req("i4", None, 4)).expect("4 GB fit");
    assert_eq!(l4.index(), l1.index());
    // Giving one back frees exactly its share.
    drop(l2);
    assert_eq!(a.snapshot()[0].instances, ["i1", "i4"]);
    assert_eq!(a.snapshot()[0].allocated_gb, 14);
    let l3 = a.allocate(req("i3", None, 10)).expect("fits again");
    assert_eq!(l3.index(), l1.index());
    drop((l1, l3, l4));
    assert_eq!(a.used(), 0);
}
