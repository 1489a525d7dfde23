//! `heimdex`: one binary for every role. `serve` runs the API, projector and worker together
//! (with its own nats-server unless `NATS_URL` is set); `api`, `worker` and `projector` run one
//! role each for scale-out; `ingest` and `search` are clients of a running service; the rest
//! are tools.

mod bench;
mod client;

/// mimalloc instead of the system allocator: the embedder allocates and frees large tensors on
/// every forward pass, and glibc hands those back to the kernel (`munmap`) each time, so every
/// pass paid for fresh zeroed pages (page faults were ~8% of a profile of `bench embed`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use uuid::Uuid;

use heimdex::settings::{self, Settings};
use heimdex::{infra, serve, shutdown};

#[derive(Parser)]
#[command(
    name = "heimdex",
    version,
    about = "Event-sourced vector ingestion and semantic search"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, projector and worker in one process (embedded NATS and Qdrant by default).
    Serve,
    /// Run only the HTTP API.
    Api,
    /// Run only the embedding worker.
    Worker,
    /// Run the projector, or rebuild the status projection.
    Projector {
        #[command(subcommand)]
        action: Option<ProjectorAction>,
    },
    /// Print a development JWT signed with JWT_SECRET.
    Token {
        /// The tenant (a UUID).
        #[arg(long)]
        org: Uuid,
        /// The user id (`sub`).
        #[arg(long, default_value = "dev")]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Send .txt/.md files (or directories of them) to a running service as chunked documents;
    /// with --sync, make the index equal a folder of PDF, DOCX, HTML, Markdown and text files.
    Ingest(client::ingest::IngestArgs),
    /// Search a running service and print a results table.
    Search(client::search::SearchArgs),
    /// List the documents a running service holds (asset, state, chunks, version).
    Documents(client::documents::DocumentsArgs),
    /// The vector collections of a running service: rebuild from the log, switch, roll back,
    /// drop (with the admin token).
    Index(client::index::IndexArgs),
    /// Benchmarks against a running service.
    Bench {
        #[command(subcommand)]
        action: bench::BenchCommand,
    },
    /// Print the configuration table (every setting, its variable, flag and default) as
    /// Markdown: the README's "Configuration" table is this output.
    Settings,
}

/// The `heimdex` command: the derived subcommands, and every setting as a global flag.
fn command() -> clap::Command {
    Cli::command().args(settings::args())
}

/// The README's configuration table.
fn settings_table() -> String {
    let command = command();
    let client_args: Vec<&clap::Arg> = command
        .find_subcommand("search")
        .into_iter()
        .flat_map(|search| search.get_arguments())
        .filter(|arg| arg.get_env().is_some())
        .collect();
    settings::markdown_table(&client_args)
}

#[derive(Subcommand)]
enum ProjectorAction {
    /// Replay the whole stream into a fresh bucket and compare it with the live one.
    Rebuild {
        /// The bucket to rebuild into (replaced if it exists).
        #[arg(long, default_value = "HEIMDEX_JOB_STATUS_REBUILD")]
        bucket: String,
    },
}

/// How long a stopping process waits for blocking tasks still running once its services have
/// stopped (see `main`).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

fn main() -> std::process::ExitCode {
    if let Err(err) = settings::load_dotenv() {
        eprintln!("heimdex: configuration error: {err:#}");
        return std::process::ExitCode::from(2);
    }
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let settings = match Settings::from_vars(&settings::given(&matches)) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("heimdex: configuration error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("heimdex: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli, settings));
    // Every service has stopped, and every write a store answered is flushed. A blocking task
    // may still run that nothing waits for: the embedded store's index build, which Qdrant Edge
    // cannot cancel and which takes minutes at a million points. The process does not wait for
    // it: the next start removes what the build left and builds again.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "heimdex failed");
            eprintln!("heimdex: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Settings => {
            print!("{}", settings_table());
            Ok(())
        }
        Command::Token { org, user, ttl } => {
            let token = heimdex_api::auth::issue_token(
                &settings.api.jwt,
                org,
                &user,
                Duration::from_secs(ttl),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Bench { action } => bench::run(action, &settings).await,
        Command::Ingest(args) => client::ingest::run(args, &settings).await,
        Command::Search(args) => client::search::run(args, &settings).await,
        Command::Documents(args) => client::documents::run(args, &settings).await,
        Command::Index(args) => client::index::run(args, &settings).await,
        Command::Serve => run_roles(settings, serve::Roles::ALL, "heimdex").await,
        Command::Api => {
            run_roles(
                settings,
                serve::Roles {
                    api: true,
                    ..Default::default()
                },
                "heimdex-api",
            )
            .await
        }
        Command::Worker => {
            run_roles(
                settings,
                serve::Roles {
                    worker: true,
                    ..Default::default()
                },
                "heimdex-worker",
            )
            .await
        }
        Command::Projector { action: None } => {
            run_roles(
                settings,
                serve::Roles {
                    projector: true,
                    ..Default::default()
                },
                "heimdex-projector",
            )
            .await
        }
        Command::Projector {
            action: Some(ProjectorAction::Rebuild { bucket }),
        } => rebuild(settings, &bucket).await,
    }
}

async fn run_roles(
    mut settings: Settings,
    roles: serve::Roles,
    service: &str,
) -> anyhow::Result<()> {
    if settings.telemetry.service_name == "heimdex" {
        settings.telemetry.service_name = service.to_owned();
    }
    let _telemetry = init_telemetry(&settings)?;
    let single_role = !(roles.api && roles.worker && roles.projector);
    if single_role && settings.nats.url.is_none() {
        anyhow::bail!(
            "`{service}` runs one role for scale-out and needs NATS_URL; \
             only `heimdex serve` starts its own nats-server"
        );
    }
    serve::run(settings, roles, shutdown::on_signal()).await
}

async fn rebuild(settings: Settings, bucket: &str) -> anyhow::Result<()> {
    let _telemetry = init_telemetry(&settings)?;
    let url = settings
        .nats
        .url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("set NATS_URL to the server holding HEIMDEX_JOBS"))?;
    let nats =
        infra::connect_nats(&settings, &url, "heimdex-rebuild", &shutdown::on_signal()).await?;
    let report = heimdex_projector::rebuild::rebuild(&nats.js, &nats.defs, bucket).await?;
    println!(
        "rebuilt {} from {} events (through sequence {}): {} jobs; {}: {} documents",
        report.bucket,
        report.events,
        report.last_seq,
        report.jobs,
        report.documents_bucket,
        report.documents
    );
    let rebuilt = nats.js.get_key_value(bucket).await?;
    let differing = heimdex_projector::rebuild::compare(&nats.status, &rebuilt).await?;
    print_comparison(
        "statuses",
        heimdex_event_store::jetstream::STATUS_BUCKET,
        &differing,
    );
    let live = nats
        .js
        .get_key_value(heimdex_event_store::jetstream::DOCUMENT_BUCKET)
        .await?;
    let rebuilt = nats.js.get_key_value(&report.documents_bucket).await?;
    let differing = heimdex_projector::rebuild::compare_documents(&live, &rebuilt).await?;
    print_comparison(
        "documents",
        heimdex_event_store::jetstream::DOCUMENT_BUCKET,
        &differing,
    );
    Ok(())
}

fn print_comparison(what: &str, live: &str, differing: &[String]) {
    if differing.is_empty() {
        println!("{what}: identical to {live}");
    } else {
        println!(
            "{} {what} differ from {live} (the live projection may still be catching up): {}",
            differing.len(),
            differing
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn init_telemetry(settings: &Settings) -> anyhow::Result<heimdex_telemetry::TelemetryGuard> {
    Ok(heimdex_telemetry::init(&settings.telemetry)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    /// The README's "Configuration" table is `heimdex settings`, exactly: a setting added,
    /// renamed or given another default without the README following fails here.
    #[test]
    fn the_readme_lists_every_setting() {
        let readme = include_str!("../../../README.md");
        let table = settings_table();
        assert!(
            readme.contains(&table),
            "README.md's configuration table differs from `heimdex settings`; paste this:\n{table}"
        );
    }

    /// `deploy/.env.example` shows every setting with its default (commented out).
    #[test]
    fn the_env_example_lists_every_setting() {
        let example = include_str!("../../../deploy/.env.example");
        for setting in settings::SETTINGS {
            // A setting without a default may show an example value.
            let line = format!("# {}={}", setting.var, setting.default.unwrap_or(""));
            let shown = |l: &str| match setting.default {
                Some(_) => l == line,
                None => l.starts_with(&line),
            };
            assert!(
                example.lines().any(shown),
                "deploy/.env.example lacks the line {line:?}"
            );
        }
    }
}
