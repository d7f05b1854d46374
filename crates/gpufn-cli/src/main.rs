//! `gpufn`: `serve` runs the platform; every other subcommand talks to a running server's API.

mod client;
mod cmd;
mod specfile;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// glibc's malloc showed ~10 % of the gateway's user time under load (malloc, free, consolidate);
// mimalloc's thread-local free lists are cheaper for hyper's many short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gpufn: serverless GPU functions on your own machines.
#[derive(Debug, Parser)]
#[command(name = "gpufn", version, about)]
struct Cli {
    /// Server URL for client subcommands.
    #[arg(
        long,
        global = true,
        env = "GPUFN_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// API token (after $GPUFN_TOKEN; without either, <data-dir>/admin.token is used for a server
    /// on this machine).
    #[arg(long, global = true, hide_env_values = true)]
    token: Option<String>,
    /// gpufn's data directory: `serve` keeps its store there; client commands read its
    /// admin.token when they talk to a server on this machine.
    #[arg(
        long,
        global = true,
        env = "GPUFN_DATA_DIR",
        default_value = "./gpufn-data"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: control API, HTTP trigger and health on one address.
    Serve(Box<ServeArgs>),
    /// Create or update a function from a YAML spec.
    Deploy {
        /// The spec file (gpufn.yaml).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List deployed functions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one function (its spec with defaults, and its status).
    Get {
        /// Function name.
        name: String,
        /// Print JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
    /// Delete a function (requests in flight finish, instances stop).
    Delete {
        /// Function name.
        name: String,
    },
    /// List a function's instances.
    Instances {
        /// Function name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call a function through the HTTP trigger; the body goes to stdout, a summary to stderr.
    Invoke(cmd::invoke::InvokeArgs),
    /// List the images in gpufn's cache (container functions).
    Images {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pull an image into gpufn's cache, with progress (what `deploy` does for containers).
    Pull {
        /// Image reference, e.g. registry.example.com/team/app:1.0.
        image: String,
    },
    /// List GPU cards and who holds them.
    Gpus {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show or set the GPU-card quota.
    Quota {
        /// New quota, in cards.
        #[arg(long)]
        set: Option<u32>,
    },
    /// Billing per function: invocations, billed seconds, GB-seconds, cost.
    Bill {
        /// Only this function.
        #[arg(long)]
        function: Option<String>,
        /// Window start: RFC 3339 or Unix seconds.
        #[arg(long)]
        from: Option<String>,
        /// Window end: RFC 3339 or Unix seconds.
        #[arg(long)]
        to: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Daily cost of a workload on gpufn vs a dedicated GPU server (no server needed).
    Estimate(cmd::cost::EstimateArgs),
    /// List asynchronous tasks, newest first.
    Tasks {
        /// Only this function's.
        #[arg(long)]
        function: Option<String>,
        /// Only tasks in this state (queued, running, succeeded, failed, cancelled, expired).
        #[arg(long)]
        state: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one asynchronous task (its state, attempts and result).
    Task {
        /// Task id.
        id: String,
        /// Wait until it reaches a final state.
        #[arg(long)]
        wait: bool,
        /// Cancel it (if queued or running).
        #[arg(long, conflicts_with = "wait")]
        cancel: bool,
    },
    /// Replay a trace through gpufn's scaling and keep-alive policies (no server needed).
    Simulate(cmd::simulate::SimulateArgs),
    /// Send a time-compressed slice of a trace to a running gpufn and compare with the simulation.
    Replay(cmd::replay::ReplayArgs),
    /// A minimal function (health after READY_DELAY_MS, /work?ms=N), used by replay.
    #[command(hide = true)]
    SleepApp,
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(cmd::tokens::TokenCmd),
    /// Store, list and delete secrets (admin): values are sealed at rest and never shown again.
    #[command(subcommand)]
    Secret(cmd::secrets::SecretCmd),
    /// Print a link that opens the web console signed in with this CLI's token.
    Console,
    /// The audit log: every change, with the token that made it (admin).
    Audit {
        /// How many entries, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an instance's log.
    Logs {
        /// Function name.
        name: String,
        /// Instance id.
        instance: String,
        /// Lines from the end.
        #[arg(long, default_value_t = 200)]
        tail: usize,
    },
}

/// `gpufn serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address for the API, the HTTP trigger and health.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// GPU-card quota (default: the stored quota, else 30).
    #[arg(long)]
    quota_cards: Option<u32>,
    /// Declare simulated cards instead of using NVML, e.g. 2xtesla-t4:16,1xada-1:48.
    #[arg(long, conflicts_with = "simulate_gpus_if_none")]
    simulate_gpus: Option<String>,
    /// Use real GPUs if NVML finds any, else these simulated ones.
    #[arg(long)]
    simulate_gpus_if_none: Option<String>,
    /// Where instances run: `local` (this machine) or `kubernetes` (one Pod per instance; the
    /// kubeconfig from --kubeconfig, $KUBECONFIG, ~/.kube/config or the in-cluster account).
    #[arg(long, default_value = "local", value_parser = ["local", "kubernetes"])]
    backend: String,
    /// Kubernetes backend: a kubeconfig file to use instead of the usual search.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Kubernetes backend: the namespace of function Pods.
    #[arg(long, default_value = "gpufn-functions")]
    kube_namespace: String,
    /// Kubernetes backend: the GPU's extended resource. `nvidia.com/gpu` asks for one whole card;
    /// another (`aliyun.com/gpu-mem`) for the function's gpu.memory_gb.
    #[arg(long, default_value = "nvidia.com/gpu")]
    kube_gpu_resource: String,
    /// Kubernetes backend: the node label that carries the GPU type.
    #[arg(long, default_value = "nvidia.com/gpu.product")]
    kube_gpu_type_label: String,
    /// Kubernetes backend: TYPE=VALUE, the label value of a gpufn GPU type where the cluster
    /// labels differently (repeatable; e.g. tesla-t4=Tesla-T4).
    #[arg(long = "kube-gpu-type")]
    kube_gpu_types: Vec<String>,
    /// Seconds SIGTERM waits for requests in flight before stopping instances.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_s: u64,
    /// Seconds an instance gets between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10)]
    instance_stop_grace_s: u64,
    /// Seconds after which a client connection with no request in flight that starts none is
    /// closed (idle keep-alive connections, request heads that never complete); closed within
    /// twice this.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    client_idle_timeout_s: u64,
    /// Seconds a request body may send nothing before it is answered 408 and its slot freed
    /// (like nginx's client_body_timeout; the time between two reads, not the whole upload).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    client_body_timeout_s: u64,
    /// An instance's log is rotated when it grows past this many MiB (checked every few seconds).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    log_max_mb: u64,
    /// Rotated logs kept per instance (`<id>.log.1` … `.N`); 0 keeps none.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=100))]
    log_keep: u64,
    /// Lets callbacks and async destinations reach this range (CIDR, repeatable): by default
    /// gpufn calls no loopback, private or link-local address on a caller's say-so.
    #[arg(long, value_name = "CIDR")]
    allow_callback_to: Vec<String>,
    /// How `/function/` requests are proxied: `direct` (heads parsed with httparse, bodies
    /// relayed as bytes, anything unusual handed to hyper) or `hyper` (hyper's server and client
    /// for every request).
    #[arg(long, default_value = "direct", value_parser = ["direct", "hyper"])]
    gateway: String,
    /// Deploy this spec at start (repeatable).
    #[arg(long)]
    deploy: Vec<PathBuf>,
    /// Largest share of a function's slots that asynchronous tasks may hold at once.
    #[arg(long, default_value_t = 0.5)]
    async_max_share: f64,
    /// Days finished asynchronous tasks (and their results) are kept.
    #[arg(long, default_value_t = 7.0)]
    task_retention_days: f64,
    /// Result bodies up to this size are kept in the store; larger ones as files.
    #[arg(long, default_value_t = 65_536)]
    task_result_inline_bytes: usize,
    /// Largest request body an asynchronous invocation accepts.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    task_max_body_bytes: usize,
    /// Most MiB of request bodies of all asynchronous tasks queued or running at once (past it,
    /// submissions get 507).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    task_max_pending_mb: u64,
    /// First retry delay of a failed task attempt, doubling each time.
    #[arg(long, default_value_t = 1000)]
    task_retry_base_ms: u64,
    /// OCI runtime binary for `runtime: container` functions (runc; crun or youki take the same
    /// command line).
    #[arg(long, default_value = "runc")]
    oci_runtime: PathBuf,
    /// Image cache limit in MB: least-recently-used images not in use are evicted past it.
    #[arg(long, default_value_t = 51_200)]
    image_cache_max_mb: u64,
    /// An access key for the FC-compatible API (`/2023-03-30`), as ID:SECRET or ID:SECRET:ROLE
    /// (viewer, invoker, developer, admin; admin when absent). Repeatable; also
    /// GPUFN_ACCESS_KEYS=id:secret,id2:secret2. Without one, that API refuses every request.
    #[arg(
        long = "access-key",
        env = "GPUFN_ACCESS_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    access_keys: Vec<String>,
    /// Maps an FC gpuType to a local card type, as FC_TYPE=LOCAL_TYPE (e.g.
    /// fc.gpu.ada.1=ada-1). Repeatable; defaults: fc.gpu.tesla.1=tesla-t4, fc.gpu.ampere.1=ampere-a10,
    /// fc.gpu.ada.1=ada-l20, fc.gpu.hopper.1=hopper-h100.
    #[arg(long = "fc-gpu-type")]
    fc_gpu_types: Vec<String>,
    /// A host name besides localhost, 127.0.0.1 and [::1] that requests may carry in `Host` while
    /// gpufn listens on loopback (other names are refused: DNS rebinding). Repeatable.
    #[arg(long = "public-host")]
    public_hosts: Vec<String>,
    /// An origin (https://app.example.com) whose web pages may call gpufn from a browser (CORS).
    /// None by default. Repeatable.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// An environment variable of this server that specs may name in
    /// `registry_auth.username_env`/`password_env` (no other is ever read for them). Repeatable.
    #[arg(long = "registry-env")]
    registry_env: Vec<String>,
    /// Serve HTTPS (rustls) with this certificate chain, PEM. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The account `runtime: process` instances run as (when gpufn runs as root). Default: a
    /// `gpufn-fn` system user, created if missing (else `nobody`). Its workdir must be readable
    /// by that user.
    #[arg(long)]
    process_user: Option<String>,
    /// The key that seals secrets at rest (64 hex digits, mode 0600); created when missing.
    /// Default: <data-dir>/secret.key. Keep it off the store's backups.
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// A registry (host:port) reached over plain HTTP; loopback registries always are. Repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Async runtime worker threads (default: one per CPU). On a small machine shared with the
    /// functions themselves, fewer threads mean fewer context switches (see BENCHMARKS.md).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Active price, USD per GB-second of GPU memory.
    #[arg(long, default_value_t = 0.000_018)]
    price_active_usd_per_gb_s: f64,
    /// Idle price of provisioned instances, USD per GB-second.
    #[arg(long, default_value_t = 0.000_007)]
    price_idle_usd_per_gb_s: f64,
    /// Testing: the wall clock scheduled provisioning reads starts at this RFC 3339 time.
    #[arg(long, hide = true)]
    clock_start: Option<String>,
    /// Testing: that clock runs this many times faster than real time (with --clock-start).
    #[arg(long, hide = true, default_value_t = 1.0, requires = "clock_start")]
    clock_rate: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command
        && let Some(n) = &args.worker_threads
    {
        if *n == 0 {
            eprintln!("error: --worker-threads: must be >= 1");
            return ExitCode::FAILURE;
        }
        builder.worker_threads(*n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Serve(args) = cli.command {
        return cmd::serve::run(*args, cli.data_dir).await;
    }
    let token = client::resolve_token(cli.token.as_deref(), &cli.server, &cli.data_dir);
    let api = client::Api::new(&cli.server, token);
    match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Token(cmd) => cmd::tokens::run(&api, cmd).await,
        Command::Secret(cmd) => cmd::secrets::run(&api, cmd).await,
        Command::Console => cmd::tokens::console_link(&api),
        Command::Audit { limit, json } => cmd::tokens::audit(&api, limit, json).await,
        Command::Deploy { file } => cmd::functions::deploy(&api, &file).await,
        Command::Images { json } => cmd::images::list(&api, json).await,
        Command::Pull { image } => cmd::images::pull(&api, &image, None)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::List { json } => cmd::functions::list(&api, json).await,
        Command::Get { name, json } => cmd::functions::get(&api, &name, json).await,
        Command::Delete { name } => cmd::functions::delete(&api, &name).await,
        Command::Instances { name, json } => cmd::functions::instances(&api, &name, json).await,
        Command::Invoke(args) => cmd::invoke::run(&api, args).await,
        Command::Gpus { json } => cmd::cluster::gpus(&api, json).await,
        Command::Quota { set } => cmd::cluster::quota(&api, set).await,
        Command::Bill {
            function,
            from,
            to,
            json,
        } => cmd::cost::bill(&api, function, from, to, json).await,
        Command::Estimate(args) => cmd::cost::estimate(&args),
        Command::Simulate(args) => cmd::simulate::run(&args),
        Command::Replay(args) => cmd::replay::run(&api, &args).await,
        Command::SleepApp => cmd::sleep_app::run().await,
        Command::Tasks {
            function,
            state,
            limit,
            json,
        } => cmd::tasks::list(&api, function, state, limit, json).await,
        Command::Task { id, wait, cancel } => cmd::tasks::show(&api, &id, wait, cancel).await,
        Command::Logs {
            name,
            instance,
            tail,
        } => cmd::functions::logs(&api, &name, &instance, tail).await,
    }
}
