//! The `spindle` binary. Subcommands are added as the layers under them land.
//!
//! `spindle serve` resolves its settings from, in decreasing precedence:
//! command-line flags, `SPINDLE_*` environment variables, the TOML file named
//! by `--config` (or `SPINDLE_CONFIG`), and the built-in defaults (see
//! `spindle_server::config`). Logs go to stderr (`RUST_LOG` filters them,
//! default `info`); stdout carries only `listening on http://ADDR`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use spindle_server::config::{config_path_from_env, ConfigLayer, ServeConfig};

mod upload;
mod worker;

#[derive(Debug, Parser)]
#[command(
    name = "spindle",
    version,
    about = "A self-hosted music and audio platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP origin: uploads, streaming, metrics.
    Serve(Box<ServeArgs>),
    /// Upload audio files or folders to a running server.
    Upload(upload::UploadArgs),
    /// Rebuild the search index from the metadata store (server stopped).
    Reindex(ReindexArgs),
    /// Transcode jobs of a remote server (`--server URL --token ADMIN_TOKEN`).
    Worker(worker::WorkerArgs),
}

/// Flags of `spindle reindex`.
#[derive(Debug, Args)]
struct ReindexArgs {
    /// Data directory [default: ./spindle-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Storage backend: auto, portable or uring.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    io_backend: String,
}

fn reindex(args: ReindexArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(spindle_server::config::DEFAULT_DATA_DIR));
    let backend = args
        .io_backend
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--io-backend: {e}"))?;
    if !data_dir.is_dir() {
        anyhow::bail!("no data directory at {}", data_dir.display());
    }
    // The same lock `serve` holds: rebuilding the index under a running
    // server would race its indexer.
    let _lock = spindle_server::dirlock::DirLock::acquire(&data_dir)?;
    let started = std::time::Instant::now();
    let report = spindle_server::search::reindex_data_dir(&data_dir, backend)
        .with_context(|| format!("reindexing {}", data_dir.display()))?;
    println!(
        "reindexed {} documents up to lsn {} in {:.1} s",
        report.documents,
        report.lsn,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Flags of `spindle serve`; each overrides `SPINDLE_<NAME>` and the file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (also `SPINDLE_CONFIG`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./spindle-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Largest accepted upload [default: 2147483648].
    #[arg(long, value_name = "BYTES")]
    upload_limit_bytes: Option<u64>,
    /// PEM certificate chain; TLS is on when set with --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Runtime worker threads; 0 = one per core, 1 = current-thread runtime.
    #[arg(long, value_name = "N")]
    worker_threads: Option<u32>,
    /// Connections served at once [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Time allowed for a request head [default: 10000].
    #[arg(long, value_name = "MS")]
    header_read_timeout_ms: Option<u64>,
    /// Longest gap between pieces of a request body [default: 30000].
    #[arg(long, value_name = "MS")]
    body_read_timeout_ms: Option<u64>,
    /// Close connections idle this long [default: 60000].
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// Most header fields per request [default: 100].
    #[arg(long, value_name = "N")]
    max_header_count: Option<u32>,
    /// Most header bytes per request [default: 16384].
    #[arg(long, value_name = "BYTES")]
    max_header_bytes: Option<u32>,
    /// How long shutdown waits for in-flight requests [default: 10000].
    #[arg(long, value_name = "MS")]
    shutdown_grace_ms: Option<u64>,
    /// Storage backend: auto, portable or uring [default: auto].
    #[arg(long, value_name = "BACKEND")]
    io_backend: Option<String>,
    /// Blob segment files are sealed (and become compactable) at this size
    /// [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    blob_segment_size_bytes_max: Option<u64>,
    /// Memory for hot blob chunks, verified once and then served from
    /// memory; 0 turns the cache off [default: 134217728].
    #[arg(long, value_name = "BYTES")]
    blob_cache_bytes: Option<u64>,
    /// Transcode threads kept when idle [default: 1].
    #[arg(long, value_name = "N")]
    transcode_pool_min: Option<u32>,
    /// Most transcode threads; 0 leaves transcoding to `spindle worker`s
    /// [default: min(worker threads, 4)].
    #[arg(long, value_name = "N")]
    transcode_pool_max: Option<u32>,
    /// Grow the pool when this many jobs wait and all threads are busy [default: 2].
    #[arg(long, value_name = "N")]
    transcode_scale_up_depth_jobs: Option<u64>,
    /// Grow the pool when the oldest job has waited this long [default: 5000].
    #[arg(long, value_name = "MS")]
    transcode_scale_up_age_ms: Option<u64>,
    /// An extra transcode thread idle this long exits [default: 30000].
    #[arg(long, value_name = "MS")]
    transcode_idle_ms: Option<u64>,
    /// Job lease, extended every third of it while a job runs [default: 30000].
    #[arg(long, value_name = "MS")]
    transcode_lease_ms: Option<u64>,
    /// Longest audio accepted [default: 21600000, 6 h].
    #[arg(long, value_name = "MS")]
    transcode_max_duration_ms: Option<u64>,
    /// Wall-clock bound of one transcode attempt [default: 7200000].
    #[arg(long, value_name = "MS")]
    transcode_timeout_ms: Option<u64>,
}

impl ServeArgs {
    fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            upload_limit_bytes: self.upload_limit_bytes,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            worker_threads: self.worker_threads,
            max_connections: self.max_connections,
            header_read_timeout_ms: self.header_read_timeout_ms,
            body_read_timeout_ms: self.body_read_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            max_header_count: self.max_header_count,
            max_header_bytes: self.max_header_bytes,
            shutdown_grace_ms: self.shutdown_grace_ms,
            io_backend: self.io_backend.clone(),
            blob_segment_size_bytes_max: self.blob_segment_size_bytes_max,
            blob_cache_bytes: self.blob_cache_bytes,
            transcode_pool_min: self.transcode_pool_min,
            transcode_pool_max: self.transcode_pool_max,
            transcode_scale_up_depth_jobs: self.transcode_scale_up_depth_jobs,
            transcode_scale_up_age_ms: self.transcode_scale_up_age_ms,
            transcode_idle_ms: self.transcode_idle_ms,
            transcode_lease_ms: self.transcode_lease_ms,
            transcode_max_duration_ms: self.transcode_max_duration_ms,
            transcode_timeout_ms: self.transcode_timeout_ms,
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let file = match args
        .config
        .clone()
        .or_else(|| config_path_from_env(env.clone()))
    {
        Some(path) => ConfigLayer::from_file(&path)?,
        None => ConfigLayer::default(),
    };
    let env_layer = ConfigLayer::from_env(env)?;
    let config = ServeConfig::resolve(args.layer().over(env_layer.over(file)))?;
    spindle_server::serve::run_blocking(config).context("cannot serve")?;
    Ok(())
}

/// One line for an error and its causes, each cause once. Error types here
/// often show their source in their own message as well, which would
/// otherwise print the same sentence once per level.
fn one_line(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if out.contains(&message) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&message);
    }
    out
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // tantivy logs every index commit at info, which would bury spindle's
        // own lines (where it listens, where the tokens are) for a newcomer.
        // The decoders log what they find wrong in a bad upload (symphonia
        // at error level, lofty at warn); the failed track carries the reason
        // already, so by default they stay quiet.
        .unwrap_or_else(|_| {
            // (Targets match by prefix: `symphonia` covers all its crates.)
            tracing_subscriber::EnvFilter::new("info,tantivy=warn,symphonia=off,lofty=off")
        });
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not for a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(*args),
        Command::Upload(args) => upload::run(args),
        Command::Reindex(args) => reindex(args),
        Command::Worker(args) => worker::run(args),
    }
}
