//! The `weir` command line: `run`, `proxy`, `control`, `check`, `demo` and `ctl`.

mod bootstrap;
mod ctl;
mod demo;
mod fleet;
mod reload;
mod render;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// weir: a progressive-delivery proxy that splits, matches and measures each version.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy and, for services with an `analysis`, the controller.
    Run {
        /// Path to weir.yaml.
        #[arg(short, long, default_value = "weir.yaml")]
        config: PathBuf,
    },
    /// Run the data plane only: the file's services, or, with a controller (--controller
    /// or `controller:` in the file), a replica that takes all routing from it.
    Proxy {
        /// Path to weir.yaml (a replica's: listeners, admin, limits, TLS, `controller:`).
        #[arg(short, long, default_value = "weir.yaml")]
        config: PathBuf,
        /// The controller's control API (`host:port`, `http://...`, `https://...`).
        #[arg(long, value_name = "ADDR")]
        controller: Option<String>,
        /// The replica's name (default: $POD_NAME, else the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Run the controller alone: services, analyses and the control API; replicas
    /// (`weir proxy --controller`) serve the traffic.
    Control {
        /// Path to weir.yaml.
        #[arg(short, long, default_value = "weir.yaml")]
        config: PathBuf,
    },
    /// Validate a weir.yaml and explain every error.
    Check {
        /// Path to weir.yaml.
        #[arg(short, long, default_value = "weir.yaml")]
        config: PathBuf,
    },
    /// A self-contained demo: two built-in versions, a load loop, the proxy and the
    /// controller rolling v2 out (or back, with --faulty) with a live view.
    Demo(demo::DemoArgs),
    /// Talk to a running weir's control API: status, watch, start, promote, abort, ...
    Ctl(ctl::CtlArgs),
    /// Print a bootstrap for a data plane weir drives (an Envoy node).
    #[command(subcommand)]
    Bootstrap(bootstrap::BootstrapCommand),
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and ctl print their own lines; only errors go to the log there.
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::Ctl(_) | Command::Bootstrap(_)
    );
    init_logging(cli.log_format, if quiet { "error" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run::run(&config, true).await,
            Command::Proxy {
                config,
                controller,
                name,
            } => fleet::proxy(&config, controller.as_deref(), name.as_deref()).await,
            Command::Control { config } => fleet::control(&config).await,
            Command::Check { config } => run::check(&config),
            Command::Demo(args) => demo::demo(args).await,
            Command::Ctl(args) => ctl::ctl(args).await,
            Command::Bootstrap(what) => bootstrap::bootstrap(what),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}
