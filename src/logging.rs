//! How ferry writes its log: plain text (colour codes only on a terminal) or one JSON object
//! per line with stable field names — `timestamp`, `level`, `target`, `message`, then the
//! event's own fields (`transport`, `connection`, `error`, ...) — for a cluster's log
//! pipeline. The operator passes its format on to the workers it creates.

/// `--log-format` (`FERRY_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// As the flag and the environment variable spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Install the process's log subscriber: `RUST_LOG` filters (default `ferry=info`), stderr.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ferry=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Colour codes only on a terminal: a file or a pod's log gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
