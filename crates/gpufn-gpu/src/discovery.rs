//! Finding the machine's GPUs: NVML on real hardware, a declared list elsewhere.

use serde::Serialize;

/// One GPU card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Card {
    /// Index as the driver numbers it (what `CUDA_VISIBLE_DEVICES` takes).
    pub index: u32,
    /// Card type slug, e.g. `tesla-t4`.
    #[serde(rename = "type")]
    pub card_type: String,
    /// Card memory in whole GB.
    pub memory_gb: u32,
    /// True when declared with `--simulate-gpus` rather than found on the machine.
    pub simulated: bool,
    /// The cluster node it is on (the Kubernetes backend); `None` on this machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Several instances share it by memory (a memory-sharing cluster's cards).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// Why GPUs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `--simulate-gpus` could not be parsed.
    #[error("--simulate-gpus: {0}")]
    BadSimulatedSpec(String),
    /// NVML loaded but failed to answer.
    #[error("NVML: {0}")]
    Nvml(String),
}

/// Lists the GPU cards available to gpufn.
pub trait GpuDiscovery {
    /// The cards, indexed from 0.
    fn discover(&self) -> Result<Vec<Card>, DiscoveryError>;
}

/// Real GPUs through NVML (`libnvidia-ml.so`, loaded at run time).
#[derive(Debug, Default)]
pub struct NvmlDiscovery;

impl GpuDiscovery for NvmlDiscovery {
    fn discover(&self) -> Result<Vec<Card>, DiscoveryError> {
        // A machine without the NVIDIA driver simply has no GPUs: that is not an error.
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => n,
            Err(e) => {
                tracing::info!("no NVIDIA GPUs found (NVML not available: {e})");
                return Ok(Vec::new());
            }
        };
        let err = |e: nvml_wrapper::error::NvmlError| DiscoveryError::Nvml(e.to_string());
        let count = nvml.device_count().map_err(err)?;
        let mut cards = Vec::new();
        for index in 0..count {
            let device = nvml.device_by_index(index).map_err(err)?;
            let name = device.name().map_err(err)?;
            let bytes = device.memory_info().map_err(err)?.total;
            cards.push(Card {
                index,
                card_type: type_slug(&name),
                memory_gb: bytes_to_gb(bytes),
                simulated: false,
                node: None,
                shared: false,
            });
        }
        Ok(cards)
    }
}

/// GB as users count them on a card: rounded to the nearest whole GB (a T4 reports 15 360 MiB).
fn bytes_to_gb(bytes: u64) -> u32 {
    let gib = 1u64 << 30;
    u32::try_from((bytes + gib / 2) / gib).unwrap_or(u32::MAX)
}

/// `NVIDIA H100 80GB HBM3` → `h100-80gb-hbm3`, `Tesla T4` → `tesla-t4`.
pub fn type_slug(name: &str) -> String {
    let name = name.trim();
    let name = name.strip_prefix("NVIDIA ").unwrap_or(name);
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_string()
}

/// Cards declared on the command line, for machines without GPUs (CI, laptops).
#[derive(Debug, Clone)]
pub struct SimulatedGpus {
    cards: Vec<Card>,
}

impl SimulatedGpus {
    /// Parses `2xtesla-t4:16[,1xada-1:48]`.
    pub fn new(spec: &str) -> Result<Self, DiscoveryError> {
        Ok(Self {
            cards: parse_simulated(spec)?,
        })
    }
}

impl GpuDiscovery for SimulatedGpus {
    fn discover(&self) -> Result<Vec<Card>, DiscoveryError> {
        Ok(self.cards.clone())
    }
}

/// Parses `COUNTxTYPE:GB[,COUNTxTYPE:GB...]`; `COUNTx` may be left out for one card.
pub fn parse_simulated(spec: &str) -> Result<Vec<Card>, DiscoveryError> {
    let bad = |part: &str, why: &str| {
        DiscoveryError::BadSimulatedSpec(format!(
            "{part:?}: {why} (expected COUNTxTYPE:GB, e.g. 2xtesla-t4:16)"
        ))
    };
    let mut cards = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (count, rest) = match part.split_once('x') {
            Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u32 = n.parse().map_err(|_| bad(part, "count is too large"))?;
                (n, rest)
            }
            _ => (1, part),
        };
        let (card_type, gb) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad(part, "missing :GB"))?;
        let memory_gb: u32 = gb
            .parse()
            .map_err(|_| bad(part, "GB must be a whole number"))?;
        if memory_gb == 0 {
            return Err(bad(part, "GB must be >= 1"));
        }
        if card_type.is_empty()
            || !card_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(bad(part, "type must be [A-Za-z0-9._-]+"));
        }
        if count == 0 || cards.len() + count as usize > 1024 {
            return Err(bad(part, "count must be 1..=1024 cards in all"));
        }
        for _ in 0..count {
            cards.push(Card {
                index: u32::try_from(cards.len()).unwrap_or(u32::MAX),
                card_type: card_type.to_string(),
                memory_gb,
                simulated: true,
                node: None,
                shared: false,
            });
        }
    }
    if cards.is_empty() {
        return Err(bad(spec, "no cards declared"));
    }
    Ok(cards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cards = parse_simulated("2xtesla-t4:16,1xada-1:48").expect("parses");
        let got: Vec<(u32, &str, u32)> = cards
            .iter()
            .map(|c| (c.index, c.card_type.as_str(), c.memory_gb))
            .collect();
        assert_eq!(
            got,
            [(0, "tesla-t4", 16), (1, "tesla-t4", 16), (2, "ada-1", 48)]
        );
        assert!(cards.iter().all(|c| c.simulated));
        assert_eq!(parse_simulated("h100:80").expect("one card").len(), 1);
    }

    #[test]
    fn refuses_bad_forms_with_the_part() {
        for bad in [
            "",
            "2xtesla-t4",
            "2xt4:zero",
            "0xt4:16",
            "t4:0",
            "2x:16",
            "t 4:16",
        ] {
            let err = parse_simulated(bad).expect_err(bad).to_string();
            assert!(err.starts_with("--simulate-gpus: "), "{bad}: {err}");
        }
    }

    #[test]
    fn slugs_and_sizes_from_nvml_names() {
        assert_eq!(type_slug("Tesla T4"), "tesla-t4");
        assert_eq!(type_slug("NVIDIA H100 80GB HBM3"), "h100-80gb-hbm3");
        assert_eq!(type_slug("NVIDIA A10"), "a10");
        assert_eq!(bytes_to_gb(15_360 * 1024 * 1024), 15);
        assert_eq!(bytes_to_gb(81_559 * 1024 * 1024), 80);
    }
}
