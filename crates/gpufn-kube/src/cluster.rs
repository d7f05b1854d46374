//! The cluster's GPU cards: what each node can allocate of the GPU resource, with its type label.
//! gpufn's card allocator is built from them (the card quota still bounds gpufn's Pods); which
//! node a Pod lands on is the cluster scheduler's choice.

use gpufn_gpu::Card;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::{KubeError, KubeSettings};

/// GPU Feature Discovery's label for a card's memory, in MiB.
pub const MEMORY_LABEL: &str = "nvidia.com/gpu.memory";
/// A card's memory when its node says nothing of it, GB.
const DEFAULT_MEMORY_GB: u32 = 16;

/// The cards of `nodes`, numbered in node-name order. With whole cards, a node's allocatable
/// `nvidia.com/gpu` cards; with a memory resource (`aliyun.com/gpu-mem`), one card per
/// allocatable `nvidia.com/gpu` (one when the node does not say) sharing the node's GB.
/// Unschedulable (cordoned) nodes bring none.
pub fn cards_of(nodes: &[Node], settings: &KubeSettings) -> Vec<Card> {
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut cards = Vec::new();
    for node in nodes {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            continue;
        }
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let amount = |resource: &str| -> u64 {
            allocatable
                .and_then(|a| a.get(resource))
                .and_then(|q| q.0.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let labels = node.metadata.labels.as_ref();
        let card_type = labels
            .and_then(|l| l.get(&settings.gpu_type_label))
            .map(|v| settings.type_of_value(v))
            .unwrap_or_else(|| "gpu".into());
        let (count, memory_gb) = if settings.whole_cards() {
            let mib = labels
                .and_then(|l| l.get(MEMORY_LABEL))
                .and_then(|v| v.parse::<u64>().ok());
            let gb = mib.map_or(DEFAULT_MEMORY_GB, |m| {
                u32::try_from(m.div_ceil(1024)).unwrap_or(u32::MAX)
            });
            (amount(crate::pod::WHOLE_CARD), gb)
        } else {
            let total = amount(&settings.gpu_resource);
            let n = amount(crate::pod::WHOLE_CARD).max(1);
            (
                if total == 0 { 0 } else { n },
                u32::try_from(total / n).unwrap_or(u32::MAX),
            )
        };
        for _ in 0..count.min(1024) {
            cards.push(Card {
                index: u32::try_from(cards.len()).unwrap_or(u32::MAX),
                card_type: card_type.clone(),
                memory_gb,
                simulated: false,
                node: Some(name.clone()),
                shared: !settings.whole_cards(),
            });
        }
    }
    cards
}

/// The cluster's GPU cards now.
pub async fn cards(client: kube::Client, settings: &KubeSettings) -> Result<Vec<Card>, KubeError> {
    let nodes: Api<Node> = Api::all(client);
    let list = nodes.list(&ListParams::default()).await?;
    Ok(cards_of(&list.items, settings))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn node(name: &str, labels: serde_json::Value, allocatable: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": allocatable},
        }))
        .unwrap()
    }

    #[test]
    fn whole_cards_come_from_each_nodes_allocatable_gpus_with_its_type_and_memory() {
        let nodes = [
            node(
                "b",
                json!({"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.memory": "15360"}),
                json!({"nvidia.com/gpu": "2", "cpu": "16"}),
            ),
            node(
                "a",
                json!({"nvidia.com/gpu.product": "a10"}),
                json!({"nvidia.com/gpu": "1"}),
            ),
            node("cpu-only", json!({}), json!({"cpu": "8"})),
        ];
        let settings = KubeSettings {
            gpu_type_values: [("tesla-t4".to_string(), "Tesla-T4".to_string())].into(),
            ..KubeSettings::default()
        };
        let cards = cards_of(&nodes, &settings);
        let got: Vec<(u32, &str, u32, &str)> = cards
            .iter()
            .map(|c| {
                (
                    c.index,
                    c.card_type.as_str(),
                    c.memory_gb,
                    c.node.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, "a10", 16, "a"),
                (1, "tesla-t4", 15, "b"),
                (2, "tesla-t4", 15, "b")
            ]
        );
    }

    #[test]
    fn memory_sharing_nodes_split_their_gigabytes_over_their_cards() {
        let nodes = [node(
            "m",
            json!({"nvidia.com/gpu.product": "a10"}),
            json!({"nvidia.com/gpu": "2", "aliyun.com/gpu-mem": "48"}),
        )];
        let settings = KubeSettings {
            gpu_resource: "aliyun.com/gpu-mem".into(),
            ..KubeSettings::default()
        };
        let cards = cards_of(&nodes, &settings);
        assert_eq!(cards.len(), 2);
        assert!(cards.iter().all(|c| c.memory_gb == 24));
    }
}
