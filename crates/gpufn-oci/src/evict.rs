//! The image cache's eviction policy: a pure function of what is cached, what is in use and the
//! size limit.
//!
//! Size counts each layer blob once (layers are shared between images) plus each unpacked root
//! filesystem. Images not in use go least-recently-used first until the total fits; a layer is
//! removed only when no image left in the cache lists it.

use std::collections::{HashMap, HashSet};

/// One cached image, as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedImage {
    /// Manifest digest.
    pub digest: String,
    /// Layer digests and sizes.
    pub layers: Vec<(String, u64)>,
    /// Bytes of the unpacked root filesystem.
    pub rootfs_bytes: u64,
    /// Last use, ms since the epoch.
    pub last_used_ms: u64,
}

/// What to remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvictionPlan {
    /// Images (manifest digests), oldest first.
    pub images: Vec<String>,
    /// Layers no remaining image needs.
    pub layers: Vec<String>,
}

/// Total bytes of a set of images, each layer counted once.
pub fn cache_bytes<'a>(images: impl IntoIterator<Item = &'a CachedImage>) -> u64 {
    let mut layers: HashMap<&str, u64> = HashMap::new();
    let mut total = 0u64;
    for i in images {
        total = total.saturating_add(i.rootfs_bytes);
        for (d, size) in &i.layers {
            layers.insert(d.as_str(), *size);
        }
    }
    layers
        .values()
        .fold(total, |acc, size| acc.saturating_add(*size))
}

/// Decides which images and layers to remove so the cache fits in `max_bytes`.
pub fn plan_eviction(
    images: &[CachedImage],
    in_use: &HashSet<String>,
    max_bytes: u64,
) -> EvictionPlan {
    let mut kept: Vec<&CachedImage> = images.iter().collect();
    let mut plan = EvictionPlan::default();
    let mut candidates: Vec<&CachedImage> = images
        .iter()
        .filter(|i| !in_use.contains(&i.digest))
        .collect();
    candidates.sort_by(|a, b| {
        a.last_used_ms
            .cmp(&b.last_used_ms)
            .then_with(|| a.digest.cmp(&b.digest))
    });
    for victim in candidates {
        if cache_bytes(kept.iter().copied()) <= max_bytes {
            break;
        }
        kept.retain(|i| i.digest != victim.digest);
        plan.images.push(victim.digest.clone());
    }
    let needed: HashSet<&str> = kept
        .iter()
        .flat_map(|i| i.layers.iter().map(|(d, _)| d.as_str()))
        .collect();
    let mut dropped: Vec<String> = images
        .iter()
        .filter(|i| plan.images.contains(&i.digest))
        .flat_map(|i| i.layers.iter().map(|(d, _)| d.clone()))
        .filter(|d| !needed.contains(d.as_str()))
        .collect();
    dropped.sort();
    dropped.dedup();
    plan.layers = dropped;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(digest: &str, layers: &[(&str, u64)], rootfs: u64, used: u64) -> CachedImage {
        CachedImage {
            digest: digest.into(),
            layers: layers.iter().map(|(d, s)| ((*d).into(), *s)).collect(),
            rootfs_bytes: rootfs,
            last_used_ms: used,
        }
    }

    #[test]
    fn shared_layers_count_once() {
        let a = img("a", &[("base", 100), ("x", 10)], 200, 1);
        let b = img("b", &[("base", 100), ("y", 20)], 220, 2);
        assert_eq!(cache_bytes([&a, &b]), 100 + 10 + 20 + 200 + 220);
    }

    #[test]
    fn nothing_goes_while_the_cache_fits() {
        let a = img("a", &[("l", 100)], 100, 1);
        assert_eq!(
            plan_eviction(&[a], &HashSet::new(), 1_000),
            EvictionPlan::default()
        );
    }

    #[test]
    fn least_recently_used_goes_first_and_shared_layers_stay() {
        let old = img("old", &[("base", 100), ("x", 10)], 200, 1);
        let mid = img("mid", &[("base", 100), ("y", 20)], 220, 2);
        let new = img("new", &[("z", 30)], 50, 3);
        // Total 100+10+20+30+200+220+50 = 630; limit 400 needs old gone (→ 420) and then mid.
        let plan = plan_eviction(
            &[new.clone(), old.clone(), mid.clone()],
            &HashSet::new(),
            400,
        );
        assert_eq!(plan.images, ["old", "mid"]);
        assert_eq!(plan.layers, ["base", "x", "y"]);
        // With a larger limit only `old` goes, and `base` stays because `mid` still needs it.
        let plan = plan_eviction(&[new, old, mid], &HashSet::new(), 450);
        assert_eq!(plan.images, ["old"]);
        assert_eq!(plan.layers, ["x"]);
    }

    #[test]
    fn images_in_use_are_never_evicted_even_over_the_limit() {
        let a = img("a", &[("l1", 500)], 500, 1);
        let b = img("b", &[("l2", 500)], 500, 2);
        let in_use: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        assert_eq!(
            plan_eviction(&[a.clone(), b.clone()], &in_use, 10),
            EvictionPlan::default()
        );
        let in_use: HashSet<String> = ["a".to_string()].into();
        let plan = plan_eviction(&[a, b], &in_use, 10);
        assert_eq!(plan.images, ["b"]);
        assert_eq!(plan.layers, ["l2"]);
    }
}
