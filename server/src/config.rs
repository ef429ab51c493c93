//! Configuration of `spindle serve`: defaults, a TOML file, `SPINDLE_*`
//! environment variables and command-line flags, merged in that order of
//! increasing precedence (flags over env over file over defaults).
//!
//! Each source is parsed into a [`ConfigLayer`] (every field optional);
//! [`ConfigLayer::over`] stacks two layers and [`ServeConfig::resolve`] fills
//! what no layer set from the defaults and checks the result.
//!
//! **Invariant:** the field names are the same everywhere: `upload_limit_bytes`
//! in the file is `SPINDLE_UPLOAD_LIMIT_BYTES` in the environment and
//! `--upload-limit-bytes` on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spindle_engine::io::BackendChoice;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?} is not valid: {message}")]
    Env {
        name: String,
        value: String,
        message: String,
    },
    #[error("invalid setting {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// One source of settings; `None` means "not set here".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub upload_limit_bytes: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub worker_threads: Option<u32>,
    pub max_connections: Option<u32>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_header_count: Option<u32>,
    pub max_header_bytes: Option<u32>,
    pub shutdown_grace_ms: Option<u64>,
    pub io_backend: Option<String>,
    pub blob_segment_size_bytes_max: Option<u64>,
    pub blob_cache_bytes: Option<u64>,
    pub transcode_pool_min: Option<u32>,
    pub transcode_pool_max: Option<u32>,
    pub transcode_scale_up_depth_jobs: Option<u64>,
    pub transcode_scale_up_age_ms: Option<u64>,
    pub transcode_idle_ms: Option<u64>,
    pub transcode_lease_ms: Option<u64>,
    pub transcode_max_duration_ms: Option<u64>,
    pub transcode_timeout_ms: Option<u64>,
}

macro_rules! over_fields {
    ($top:expr, $bottom:expr, $($f:ident),*) => {
        ConfigLayer { $($f: $top.$f.or($bottom.$f)),* }
    };
}

impl ConfigLayer {
    /// `self` with every unset field taken from `below`.
    pub fn over(self, below: ConfigLayer) -> ConfigLayer {
        over_fields!(
            self,
            below,
            listen,
            data_dir,
            upload_limit_bytes,
            tls_cert,
            tls_key,
            worker_threads,
            max_connections,
            header_read_timeout_ms,
            body_read_timeout_ms,
            idle_timeout_ms,
            max_header_count,
            max_header_bytes,
            shutdown_grace_ms,
            io_backend,
            blob_segment_size_bytes_max,
            blob_cache_bytes,
            transcode_pool_min,
            transcode_pool_max,
            transcode_scale_up_depth_jobs,
            transcode_scale_up_age_ms,
            transcode_idle_ms,
            transcode_lease_ms,
            transcode_max_duration_ms,
            transcode_timeout_ms
        )
    }

    /// Parses a TOML document (the config file's text).
    pub fn from_toml(text: &str, path: &Path) -> Result<ConfigLayer, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The settings among `vars` named `SPINDLE_<FIELD>` (upper case).
    /// Other variables, and `SPINDLE_CONFIG` (the file's path, see
    /// [`config_path_from_env`]), are ignored.
    pub fn from_env(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ConfigLayer, ConfigError> {
        let mut layer = ConfigLayer::default();
        for (name, value) in vars {
            let Some(field) = name.strip_prefix("SPINDLE_") else {
                continue;
            };
            let bad = |message: String| ConfigError::Env {
                name: name.clone(),
                value: value.clone(),
                message,
            };
            fn num<T: std::str::FromStr>(v: &str) -> Result<T, String>
            where
                T::Err: std::fmt::Display,
            {
                v.trim().parse::<T>().map_err(|e| e.to_string())
            }
            match field {
                "LISTEN" => layer.listen = Some(num(&value).map_err(bad)?),
                "DATA_DIR" => layer.data_dir = Some(PathBuf::from(&value)),
                "UPLOAD_LIMIT_BYTES" => layer.upload_limit_bytes = Some(num(&value).map_err(bad)?),
                "TLS_CERT" => layer.tls_cert = Some(PathBuf::from(&value)),
                "TLS_KEY" => layer.tls_key = Some(PathBuf::from(&value)),
                "WORKER_THREADS" => layer.worker_threads = Some(num(&value).map_err(bad)?),
                "MAX_CONNECTIONS" => layer.max_connections = Some(num(&value).map_err(bad)?),
                "HEADER_READ_TIMEOUT_MS" => {
                    layer.header_read_timeout_ms = Some(num(&value).map_err(bad)?)
                }
                "BODY_READ_TIMEOUT_MS" => {
                    layer.body_read_timeout_ms = Some(num(&value).map_err(bad)?)
                }
                "IDLE_TIMEOUT_MS" => layer.idle_timeout_ms = Some(num(&value).map_err(bad)?),
                "MAX_HEADER_COUNT" => layer.max_header_count = Some(num(&value).map_err(bad)?),
                "MAX_HEADER_BYTES" => layer.max_header_bytes = Some(num(&value).map_err(bad)?),
                "SHUTDOWN_GRACE_MS" => layer.shutdown_grace_ms = Some(num(&value).map_err(bad)?),
                "IO_BACKEND" => layer.io_backend = Some(value.clone()),
                "BLOB_SEGMENT_SIZE_BYTES_MAX" => {
                    layer.blob_segment_size_bytes_max = Some(num(&value).map_err(bad)?)
                }
                "BLOB_CACHE_BYTES" => layer.blob_cache_bytes = Some(num(&value).map_err(bad)?),
                "TRANSCODE_POOL_MIN" => layer.transcode_pool_min = Some(num(&value).map_err(bad)?),
                "TRANSCODE_POOL_MAX" => layer.transcode_pool_max = Some(num(&value).map_err(bad)?),
                "TRANSCODE_SCALE_UP_DEPTH_JOBS" => {
                    layer.transcode_scale_up_depth_jobs = Some(num(&value).map_err(bad)?)
                }
                "TRANSCODE_SCALE_UP_AGE_MS" => {
                    layer.transcode_scale_up_age_ms = Some(num(&value).map_err(bad)?)
                }
                "TRANSCODE_IDLE_MS" => layer.transcode_idle_ms = Some(num(&value).map_err(bad)?),
                "TRANSCODE_LEASE_MS" => layer.transcode_lease_ms = Some(num(&value).map_err(bad)?),
                "TRANSCODE_MAX_DURATION_MS" => {
                    layer.transcode_max_duration_ms = Some(num(&value).map_err(bad)?)
                }
                "TRANSCODE_TIMEOUT_MS" => {
                    layer.transcode_timeout_ms = Some(num(&value).map_err(bad)?)
                }
                _ => {}
            }
        }
        Ok(layer)
    }
}

/// The config file named by `SPINDLE_CONFIG` among `vars`, if any.
pub fn config_path_from_env(vars: impl IntoIterator<Item = (String, String)>) -> Option<PathBuf> {
    vars.into_iter()
        .find(|(k, _)| k == "SPINDLE_CONFIG")
        .map(|(_, v)| PathBuf::from(v))
}

/// The resolved settings of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port (the bound address is
    /// logged, printed and written to `<data_dir>/serve.addr`).
    pub listen: SocketAddr,
    /// Where the stores, the token file and `serve.addr` live.
    pub data_dir: PathBuf,
    /// Largest accepted upload body.
    pub upload_limit_bytes: u64,
    /// PEM certificate chain and private key; TLS is on when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Runtime worker threads; 1 runs a current-thread runtime.
    pub worker_threads: u32,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: u32,
    /// Time a client has to send a whole request head.
    pub header_read_timeout_ms: u64,
    /// Longest gap between two pieces of a request body.
    pub body_read_timeout_ms: u64,
    /// A connection that moves no byte either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// Most header fields in a request (431 beyond).
    pub max_header_count: u32,
    /// Most bytes of header fields in a request (431 beyond).
    pub max_header_bytes: u32,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Storage backend of the stores.
    pub io_backend: BackendChoice,
    /// A blob segment file is sealed at this size; only sealed segments are
    /// compacted, so tests set it small to see garbage reclaimed.
    pub blob_segment_size_bytes_max: u64,
    /// Memory for hot blob chunks, verified once and then served without a
    /// read or a checksum pass (0 = none; see the engine's chunk cache).
    pub blob_cache_bytes: u64,
    /// The in-process transcode pool and per-job bounds (`transcode_*`
    /// settings; `transcode_pool_max = 0` leaves transcoding to remote
    /// `spindle worker`s).
    pub transcode: crate::worker::WorkerConfig,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "./spindle-data";
/// Default size at which blob segments are sealed: 1 GiB.
pub const DEFAULT_BLOB_SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 30;
/// Default upload limit: 2 GiB.
pub const DEFAULT_UPLOAD_LIMIT_BYTES: u64 = 2 << 30;

impl ServeConfig {
    /// Fills what `layer` leaves unset from the defaults and validates.
    pub fn resolve(layer: ConfigLayer) -> Result<ServeConfig, ConfigError> {
        let default_listen = DEFAULT_LISTEN.parse().map_err(|_| ConfigError::Invalid {
            field: "listen",
            message: "bad built-in default".into(),
        })?;
        let io_backend = match &layer.io_backend {
            None => BackendChoice::Auto,
            Some(s) => s
                .parse::<BackendChoice>()
                .map_err(|message| ConfigError::Invalid {
                    field: "io_backend",
                    message,
                })?,
        };
        let worker_threads = match layer.worker_threads {
            Some(0) | None => std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            Some(n) => n,
        };
        let config = ServeConfig {
            listen: layer.listen.unwrap_or(default_listen),
            data_dir: layer
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            upload_limit_bytes: layer
                .upload_limit_bytes
                .unwrap_or(DEFAULT_UPLOAD_LIMIT_BYTES),
            tls_cert: layer.tls_cert,
            tls_key: layer.tls_key,
            worker_threads,
            max_connections: layer.max_connections.unwrap_or(1024),
            header_read_timeout_ms: layer.header_read_timeout_ms.unwrap_or(10_000),
            body_read_timeout_ms: layer.body_read_timeout_ms.unwrap_or(30_000),
            idle_timeout_ms: layer.idle_timeout_ms.unwrap_or(60_000),
            max_header_count: layer.max_header_count.unwrap_or(100),
            max_header_bytes: layer.max_header_bytes.unwrap_or(16 * 1024),
            shutdown_grace_ms: layer.shutdown_grace_ms.unwrap_or(10_000),
            io_backend,
            blob_segment_size_bytes_max: layer
                .blob_segment_size_bytes_max
                .unwrap_or(DEFAULT_BLOB_SEGMENT_SIZE_BYTES_MAX),
            blob_cache_bytes: layer
                .blob_cache_bytes
                .unwrap_or(spindle_engine::blob::BlobConfig::default().read_cache_bytes),
            transcode: {
                let d = crate::worker::WorkerConfig::default();
                let pool_max = layer.transcode_pool_max.unwrap_or(worker_threads.min(4));
                crate::worker::WorkerConfig {
                    pool_min: layer.transcode_pool_min.unwrap_or(d.pool_min).min(pool_max),
                    pool_max,
                    scale_up_depth_jobs: layer
                        .transcode_scale_up_depth_jobs
                        .unwrap_or(d.scale_up_depth_jobs),
                    scale_up_age_ms: layer.transcode_scale_up_age_ms.unwrap_or(d.scale_up_age_ms),
                    idle_ms: layer.transcode_idle_ms.unwrap_or(d.idle_ms),
                    lease_ms: layer.transcode_lease_ms.unwrap_or(d.lease_ms),
                    max_duration_ms: layer.transcode_max_duration_ms.unwrap_or(d.max_duration_ms),
                    timeout_ms: layer.transcode_timeout_ms.unwrap_or(d.timeout_ms),
                    ..d
                }
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert", "tls_cert and tls_key must be set together");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.max_header_count == 0 {
            return invalid("max_header_count", "must be at least 1");
        }
        if !(1024..=1 << 20).contains(&self.max_header_bytes) {
            return invalid("max_header_bytes", "must be within 1 KiB ..= 1 MiB");
        }
        for (field, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if ms == 0 {
                return invalid(field, "must be at least 1 ms");
            }
        }
        if self.blob_segment_size_bytes_max < 1 << 20 {
            return invalid("blob_segment_size_bytes_max", "must be at least 1 MiB");
        }
        if self.worker_threads > 1024 {
            return invalid("worker_threads", "at most 1024");
        }
        if self.transcode.pool_max > 256 {
            return invalid("transcode_pool_max", "at most 256");
        }
        if self.transcode.lease_ms < 100 {
            return invalid("transcode_lease_ms", "must be at least 100 ms");
        }
        Ok(())
    }

    /// TLS is on.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The token file: `<data_dir>/tokens.toml`.
    pub fn tokens_path(&self) -> PathBuf {
        self.data_dir.join("tokens.toml")
    }

    /// The file the bound address is written to: `<data_dir>/serve.addr`.
    pub fn addr_path(&self) -> PathBuf {
        self.data_dir.join("serve.addr")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = ServeConfig::resolve(ConfigLayer::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./spindle-data"));
        assert_eq!(c.upload_limit_bytes, 2 << 30);
        assert!(!c.tls_enabled());
        assert!(c.worker_threads >= 1);
        assert_eq!(c.tokens_path(), PathBuf::from("./spindle-data/tokens.toml"));
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = ConfigLayer::from_toml(
            "listen = \"127.0.0.1:1111\"\ndata_dir = \"/file\"\nupload_limit_bytes = 1\nmax_connections = 7\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let env = ConfigLayer::from_env(env(&[
            ("SPINDLE_LISTEN", "127.0.0.1:2222"),
            ("SPINDLE_DATA_DIR", "/env"),
            ("SPINDLE_UPLOAD_LIMIT_BYTES", "2"),
            ("PATH", "/usr/bin"),
        ]))
        .unwrap();
        let flags = ConfigLayer {
            listen: Some("127.0.0.1:3333".parse().unwrap()),
            ..ConfigLayer::default()
        };
        let c = ServeConfig::resolve(flags.over(env.over(file))).unwrap();
        assert_eq!(c.listen.port(), 3333, "flag wins");
        assert_eq!(c.data_dir, PathBuf::from("/env"), "env beats file");
        assert_eq!(c.upload_limit_bytes, 2, "env beats file");
        assert_eq!(c.max_connections, 7, "file beats default");
        assert_eq!(c.idle_timeout_ms, 60_000, "default");
    }

    #[test]
    fn bad_sources_are_reported() {
        assert!(matches!(
            ConfigLayer::from_env(env(&[("SPINDLE_LISTEN", "nowhere")])),
            Err(ConfigError::Env { .. })
        ));
        assert!(matches!(
            ConfigLayer::from_toml("listen = 5", Path::new("x.toml")),
            Err(ConfigError::ParseFile { .. })
        ));
        assert!(matches!(
            ConfigLayer::from_toml("no_such_setting = 1", Path::new("x.toml")),
            Err(ConfigError::ParseFile { .. })
        ));
        let only_cert = ConfigLayer {
            tls_cert: Some("c.pem".into()),
            ..ConfigLayer::default()
        };
        assert!(matches!(
            ServeConfig::resolve(only_cert),
            Err(ConfigError::Invalid {
                field: "tls_cert",
                ..
            })
        ));
        let bad_backend = ConfigLayer {
            io_backend: Some("floppy".into()),
            ..ConfigLayer::default()
        };
        assert!(ServeConfig::resolve(bad_backend).is_err());
    }

    #[test]
    fn config_path_comes_from_spindle_config() {
        assert_eq!(
            config_path_from_env(env(&[("SPINDLE_CONFIG", "/etc/s.toml")])),
            Some(PathBuf::from("/etc/s.toml"))
        );
        assert_eq!(config_path_from_env(env(&[])), None);
    }
}
