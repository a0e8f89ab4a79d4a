//! The `nara-gateway` binary: parses the command line and dispatches.

use std::{os::unix::process::CommandExt, path::PathBuf};

use clap::{Parser, Subcommand};

/// mimalloc: the gateway allocates many small, short-lived JSON nodes per
/// request; glibc malloc spent a quarter of the mapping benchmark's time.
/// Built with `no_thp`: with transparent huge pages its arenas are touched in
/// 2 MiB pages, and peak RSS under audited reads was 84 MB instead of 49 MB
/// (same throughput).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// The PDL audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Registered machine clients.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Mapping definitions: check them, run their fixtures
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// The NPÖ coverage registry
    #[command(subcommand)]
    Npo(NpoCommand),
    /// Push municipal records from JSON-array or NDJSON files straight into the store
    Import {
        /// The mapping the records are in (e.g. funktionsstatus)
        #[arg(long)]
        mapping: String,
        /// Files of records: a JSON array or one record per line
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NpoCommand {
    /// Declared and observed NPÖ production per municipality, from the store
    Report {
        /// Only this delregion (malmo, mellersta, nordvast, unknown)
        #[arg(long)]
        delregion: Option<String>,
        /// table, csv or json
        #[arg(long, default_value = "table")]
        format: String,
        /// Days of observed production to count
        #[arg(long, default_value_t = 90)]
        window: u32,
    },
}

#[derive(Subcommand)]
enum MappingCommand {
    /// Load and validate the mapping files; every mistake is printed as file:line: what
    Check {
        /// Mappings folder (default: mappings.dir)
        dir: Option<PathBuf>,
    },
    /// Run each mapping's fixtures (mappings/<name>/fixtures/) and show a diff where the output differs
    Test {
        /// Mappings folder (default: mappings.dir)
        dir: Option<PathBuf>,
        /// Write the actual output as the expected files instead of comparing
        #[arg(long)]
        update: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain of the audit log; fails when an entry was changed, removed or inserted.
    Verify,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client in the configuration file (validates its key first).
    Add {
        /// Client id: the `iss` and `sub` of its assertions.
        #[arg(long)]
        id: String,
        /// HSA-id of the client's organisation.
        #[arg(long)]
        organization: String,
        /// Kommunkod, for municipal clients (omit for region clients).
        #[arg(long)]
        municipality: Option<String>,
        /// Scopes the client may ask for, space-separated (e.g. "system/Observation.rs nara/ingest").
        #[arg(long)]
        scopes: String,
        /// The client's public key: a JWKS file or a PEM public key file.
        #[arg(long)]
        key: PathBuf,
        /// The configuration file to add it to (default: the --config file, else nara-gateway.toml).
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Generate a key pair for a new client: the private key (PEM) and its public JWKS.
    Keygen {
        /// ES384 (P-384) or RS384 (RSA 3072).
        #[arg(long, default_value = "ES384")]
        alg: String,
        /// Where to write `<out>.key` (private, keep it at the client) and `<out>.jwks.json` (public).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an access token for a registered client, signed with the gateway's key.
    Issue {
        #[arg(long)]
        client: String,
        /// Scopes to ask for (space-separated); default: all the client is registered for.
        #[arg(long)]
        scope: Option<String>,
    },
}

/// What the two allocators read from the environment once, as the process
/// starts: the server's settings, each kept when already set
/// (docs/PERFORMANCE.md, item 56, measured them under load).
/// - mimalloc 3 keeps freed memory for a second before giving it back, and a
///   thread that went idle keeps it until it allocates again. After 25 ms
///   instead, peak RSS fell by 15–25 MB; at once (0) by a few MB more, for
///   13 % more processor time per ingested record.
/// - SQLite allocates through glibc's malloc, which gives each thread that
///   calls it an arena of its own (up to 16 on two cores); the read
///   connections run on whichever thread asks, so each connection's pages
///   spread over all of them. One arena: 20–30 MB less, no slower.
const ALLOCATOR_ENV: [(&str, &str); 2] = [("MIMALLOC_PURGE_DELAY", "25"), ("MALLOC_ARENA_MAX", "1")];

/// Runs this program again in the same process (same id, arguments and
/// program name) with the [`ALLOCATOR_ENV`] it lacks: the allocators read it
/// only at start-up, and setting it from inside would need `unsafe` calls
/// into both. Returns when nothing was missing, or when the restart failed
/// (the gateway then runs with the allocators' own defaults).
fn restart_with_allocator_env() {
    let missing: Vec<(&str, &str)> =
        ALLOCATOR_ENV.into_iter().filter(|(name, _)| std::env::var_os(name).is_none()).collect();
    if missing.is_empty() {
        return;
    }
    let error = match std::env::current_exe() {
        Ok(exe) => {
            let mut args = std::env::args_os();
            let mut command = std::process::Command::new(exe);
            if let Some(name) = args.next() {
                command.arg0(name);
            }
            command.args(args).envs(missing).exec()
        }
        Err(e) => e,
    };
    eprintln!("warning: could not restart with the allocator settings ({error}); running without them");
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, None | Some(Command::Serve)) {
        restart_with_allocator_env();
    }
    let config = nara_gateway::cli::load_config(cli.config.as_deref())?;
    nara_gateway::cli::init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => nara_gateway::cli::serve(config).await,
            Command::Migrate => nara_gateway::cli::migrate(config).await,
            Command::Audit(AuditCommand::Verify) => nara_gateway::cli::audit_verify(config).await,
            Command::Client(ClientCommand::Add { id, organization, municipality, scopes, key, to }) => {
                let file = to.or(cli.config).unwrap_or_else(|| PathBuf::from("nara-gateway.toml"));
                nara_gateway::cli::client_add(&file, &id, &organization, municipality.as_deref(), &scopes, &key)
            }
            Command::Client(ClientCommand::Keygen { alg, out }) => nara_gateway::cli::client_keygen(&alg, &out),
            Command::Token(TokenCommand::Issue { client, scope }) => {
                nara_gateway::cli::token_issue(&config, &client, scope.as_deref())
            }
            Command::Mapping(MappingCommand::Check { dir }) => {
                nara_gateway::cli::mapping_check(&config, dir.as_deref())
            }
            Command::Mapping(MappingCommand::Test { dir, update }) => {
                nara_gateway::cli::mapping_test(&config, dir.as_deref(), update)
            }
            Command::Npo(NpoCommand::Report { delregion, format, window }) => {
                nara_gateway::cli::npo_report(config, delregion.as_deref(), &format, window).await
            }
            Command::Import { mapping, files } => nara_gateway::cli::import(config, &mapping, &files).await,
        }
    })
}
