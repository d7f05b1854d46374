//! `gpufn serve`.

use std::process::ExitCode;
use std::time::Duration;

use gpufn_metering::Prices;
use gpufn_server::{Config, ContainerSettings, GatewayPath, GpuSource, TaskConfig};

use crate::ServeArgs;
use crate::specfile;

pub async fn run(args: ServeArgs, data_dir: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for (flag, v) in [
        (
            "--price-active-usd-per-gb-s",
            args.price_active_usd_per_gb_s,
        ),
        ("--price-idle-usd-per-gb-s", args.price_idle_usd_per_gb_s),
    ] {
        anyhow::ensure!(v.is_finite() && v >= 0.0, "{flag}: must be >= 0 (got {v})");
    }
    anyhow::ensure!(
        args.async_max_share > 0.0 && args.async_max_share <= 1.0,
        "--async-max-share: must be in (0, 1] (got {})",
        args.async_max_share
    );
    anyhow::ensure!(
        args.task_retention_days.is_finite() && args.task_retention_days > 0.0,
        "--task-retention-days: must be > 0 (got {})",
        args.task_retention_days
    );
    let gpus = match (args.simulate_gpus, args.simulate_gpus_if_none) {
        (Some(s), _) => GpuSource::Simulated(s),
        (None, Some(s)) => GpuSource::NvmlOrSimulated(s),
        (None, None) => GpuSource::Nvml,
    };
    let deploy = args
        .deploy
        .iter()
        .map(|f| specfile::load_all(f))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .map(|l| l.spec)
        .collect();
    let pair = |flag: &str, sep: char, v: &str| -> anyhow::Result<(String, String)> {
        match v.split_once(sep) {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
            _ => anyhow::bail!("{flag}: expected A{sep}B (got {v:?})"),
        }
    };
    let access_keys = args
        .access_keys
        .iter()
        .map(|k| access_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for h in &args.public_hosts {
        anyhow::ensure!(
            !h.is_empty() && !h.contains([':', '/', ' ']),
            "--public-host: a host name without port or scheme (got {h:?})"
        );
    }
    for o in &args.cors_origins {
        anyhow::ensure!(
            (o.starts_with("http://") || o.starts_with("https://"))
                && !o
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .contains('/')
                && o != "*",
            "--cors-origin: an origin such as https://app.example.com (scheme, host, optional port; got {o:?})"
        );
    }
    let backend = if args.backend == "kubernetes" {
        gpufn_server::Backend::Kubernetes(gpufn_server::KubeSettings {
            namespace: args.kube_namespace.clone(),
            gpu_resource: args.kube_gpu_resource.clone(),
            gpu_type_label: args.kube_gpu_type_label.clone(),
            gpu_type_values: args
                .kube_gpu_types
                .iter()
                .map(|k| pair("--kube-gpu-type", '=', k))
                .collect::<anyhow::Result<_>>()?,
            kubeconfig: args.kubeconfig.clone(),
        })
    } else {
        gpufn_server::Backend::Local
    };
    let fc_gpu_types = args
        .fc_gpu_types
        .iter()
        .map(|k| pair("--fc-gpu-type", '=', k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let clock = match &args.clock_start {
        None => gpufn_server::clock::WallClock::real(),
        Some(t) => {
            let start = super::rfc3339_flag("--clock-start", t)?;
            anyhow::ensure!(
                args.clock_rate.is_finite() && args.clock_rate > 0.0,
                "--clock-rate: must be > 0"
            );
            gpufn_server::clock::WallClock::starting_at(start, args.clock_rate)
        }
    };
    let config = Config {
        clock,
        access_keys,
        fc_gpu_types,
        listen: args.listen,
        secret_key_file: args.secret_key_file,
        process_user: args.process_user,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(gpufn_server::TlsFiles { cert, key }),
            _ => None,
        },
        data_dir,
        access: gpufn_server::auth::AccessConfig {
            public_hosts: args.public_hosts,
            cors_origins: args.cors_origins,
        },
        quota_cards: args.quota_cards,
        gpus,
        backend,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_s),
        instance_stop_grace: Duration::from_secs(args.instance_stop_grace_s),
        client_idle_timeout: Duration::from_secs(args.client_idle_timeout_s),
        client_body_timeout: Duration::from_secs(args.client_body_timeout_s),
        log_max_bytes: args.log_max_mb << 20,
        log_keep: usize::try_from(args.log_keep).unwrap_or(2),
        allow_callback_to: args.allow_callback_to.clone(),
        gateway: if args.gateway == "hyper" {
            GatewayPath::Hyper
        } else {
            GatewayPath::Direct
        },
        deploy,
        tasks: TaskConfig {
            max_share: args.async_max_share,
            inline_result_bytes: args.task_result_inline_bytes,
            max_body_bytes: args.task_max_body_bytes,
            max_pending_bytes: args.task_max_pending_mb << 20,
            retention: Duration::from_secs_f64(args.task_retention_days * 86_400.0),
            retry_base: Duration::from_millis(args.task_retry_base_ms),
        },
        containers: ContainerSettings {
            oci_runtime: args.oci_runtime,
            image_cache_max_mb: args.image_cache_max_mb,
            insecure_registries: args.insecure_registries,
            registry_env: args.registry_env,
        },
        prices: Prices {
            active_usd_per_gb_s: args.price_active_usd_per_gb_s,
            idle_usd_per_gb_s: args.price_idle_usd_per_gb_s,
        },
    };
    gpufn_server::run(config, gpufn_server::serve::signal(), |_| {}).await?;
    Ok(ExitCode::SUCCESS)
}

/// `ID:SECRET[:ROLE]` (role admin when absent).
fn access_key(v: &str) -> anyhow::Result<(String, String, gpufn_auth::Role)> {
    let (rest, role) = match v.rsplit_once(':') {
        Some((rest, role)) if rest.contains(':') => match role.parse() {
            Ok(r) => (rest, r),
            Err(e) => anyhow::bail!("--access-key: the role {e}"),
        },
        _ => (v, gpufn_auth::Role::Admin),
    };
    match rest.split_once(':') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok((id.to_string(), secret.to_string(), role))
        }
        _ => anyhow::bail!("--access-key: expected ID:SECRET or ID:SECRET:ROLE"),
    }
}

#[cfg(test)]
mod tests {
    use super::access_key;
    use gpufn_auth::Role;

    #[test]
    fn access_keys_take_an_optional_role() {
        assert_eq!(
            access_key("id:secret").unwrap(),
            ("id".into(), "secret".into(), Role::Admin)
        );
        assert_eq!(
            access_key("id:secret:invoker").unwrap(),
            ("id".into(), "secret".into(), Role::Invoker)
        );
        assert!(access_key("id:secret:boss").is_err());
        assert!(access_key("id").is_err());
        assert!(access_key(":s").is_err());
    }
}
