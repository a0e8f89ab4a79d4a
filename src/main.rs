//! The `nara-gateway` binary: parses the command line and dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// nara-gateway: municipal records to FHIR R4, for region systems and NPÖ.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); default `nara-gateway.toml` if present, else built-in defaults.
    /// Every key can be overridden by NARA_SECTION__KEY environment variables.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = nara_gateway::cli::load_config(cli.config.as_deref())?;
    nara_gateway::cli::init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => nara_gateway::cli::serve(config).await,
            Command::Migrate => nara_gateway::cli::migrate(config).await,
        }
    })
}
