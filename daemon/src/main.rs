//! The natsmeshd command line. Everything but argument parsing and logging
//! set-up lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natsmesh::config::{self, Problems, Sources};
use natsmesh::prepare::prepare_in;
use natsmesh::{EXIT_CONFIG, EXIT_FAILURE};

/// natsmeshd runs the real nats-server as a member of a secure,
/// multi-region NATS supercluster.
#[derive(Debug, Parser)]
#[command(name = "natsmeshd", version, about, long_about = None)]
struct Cli {
    /// Main config file; drop-ins are read from `<name>.d/*.toml` beside it
    /// in lexical order. Default: /etc/natsmesh/natsmesh.toml, or the
    /// embedded default when no configuration exists (not under systemd).
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run nats-server with the configuration.
    Run,
    /// Check the configuration: exit 0, or 2 listing every problem.
    Check,
    /// Print the nats-server config natsmeshd would run.
    Render {
        /// Also show every effective setting and where it came from.
        #[arg(long)]
        explain: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NATSMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natsmeshd: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE as u8);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn report(problems: &Problems) -> i32 {
    for p in &problems.0 {
        eprintln!("{p}");
    }
    EXIT_CONFIG
}

async fn dispatch(cli: Cli) -> i32 {
    let sources = match config::discover(cli.config.as_deref()) {
        Ok(s) => s,
        Err(p) => return report(&p),
    };
    if matches!(cli.command, Command::Run)
        && sources == Sources::Embedded
        && natsmesh::under_systemd()
    {
        eprintln!(
            "natsmeshd: no configuration at {} (nor drop-ins in {}); under systemd natsmeshd does not fall back to its embedded default. Write a configuration (see `natsmeshd render --explain`).",
            config::load::DEFAULT_PATH,
            config::load::dropin_dir(std::path::Path::new(config::load::DEFAULT_PATH)).display()
        );
        return EXIT_CONFIG;
    }
    let (loaded, settings) = match config::load_settings(&sources) {
        Ok(v) => v,
        Err(p) => return report(&p),
    };
    match cli.command {
        Command::Run => {
            if loaded.embedded {
                tracing::info!(
                    state_dir = %settings.state_dir.display(),
                    "no configuration found: running the embedded default (one standalone node on loopback)"
                );
            }
            match natsmesh::run::run(settings).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("natsmeshd: {e:#}");
                    EXIT_FAILURE
                }
            }
        }
        Command::Check | Command::Render { .. } => {
            let scratch = match tempfile::Builder::new().prefix("natsmesh-check-").tempdir() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("natsmeshd: cannot create a scratch directory: {e}");
                    return EXIT_FAILURE;
                }
            };
            let prepared = match prepare_in(&settings, scratch.path(), "nats-server.conf").await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return if e.is_config_error() {
                        EXIT_CONFIG
                    } else {
                        EXIT_FAILURE
                    };
                }
            };
            match cli.command {
                Command::Render { explain } => {
                    if explain {
                        print!("{}", config::explain::explain(&loaded, &settings));
                        println!();
                    }
                    // Shown as it will be written in the state directory.
                    match natsmesh_broker::model::render(
                        &settings.server,
                        &prepared.version,
                        &settings.state_dir,
                    ) {
                        Ok(r) => print!("{}", r.text),
                        Err(e) => {
                            eprintln!("{e}");
                            return EXIT_CONFIG;
                        }
                    }
                }
                _ => {
                    let files: Vec<String> = loaded.files.iter().map(ToString::to_string).collect();
                    println!(
                        "configuration OK ({}); nats-server {} at {} accepts the rendered file",
                        files.join(", "),
                        prepared.version,
                        settings.binary.display()
                    );
                }
            }
            0
        }
    }
}
