//! `heimdex index`: the operator's commands on the vector collections, through the admin
//! endpoints (`/admin/index`) with the admin token (`HEIMDEX_ADMIN_TOKEN`). The work runs in
//! the service (a worker's indexer), so the same commands serve the embedded store, whose shard
//! only the serving process may open, and a Qdrant server.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use heimdex::settings::Settings;

use super::Client;

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Base URL of the API.
    #[arg(
        long,
        global = true,
        env = "HEIMDEX_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
    #[command(subcommand)]
    pub action: IndexAction,
}

#[derive(Subcommand, Debug)]
pub enum IndexAction {
    /// Show the collections: live, being built (and how far), kept for a rollback.
    Status,
    /// Rebuild the index from the log into a new collection, showing progress until it is
    /// built and compared with the live one (a build under way is watched, not begun again).
    Rebuild {
        /// Begin the build and return at once.
        #[arg(long)]
        no_wait: bool,
        /// Switch reads to the build once it is built.
        #[arg(long)]
        switch: bool,
        /// Change the model: embed the texts of the `--from` models with this one in the new
        /// collection; it becomes the default model at the switch.
        #[arg(long)]
        model: Option<String>,
        /// The models `--model` takes over (repeat the flag; default: the live default model).
        #[arg(long, requires = "model")]
        from: Vec<String>,
    },
    /// Move reads to the built collection (the live one is kept up to date, for a rollback).
    Switch,
    /// Move reads back to the collection live before the last switch.
    Rollback,
    /// Stop a build, or stop keeping the previous collection.
    Drop,
}

pub async fn run(args: IndexArgs, settings: &Settings) -> anyhow::Result<()> {
    let token = settings
        .api
        .admin_token
        .as_ref()
        .context("set HEIMDEX_ADMIN_TOKEN (or --admin-token) to the service's admin token")?;
    let client = Client::with_token(&args.url, token.expose_secret().to_owned())?;
    match args.action {
        IndexAction::Status => print_state(&client.get("/admin/index").await?),
        IndexAction::Switch => {
            let state = client.post("/admin/index/switch", &json!({})).await?;
            println!("switched: reads and writes now go to {}", state["live"]);
            print_state(&state);
        }
        IndexAction::Rollback => {
            let state = client.post("/admin/index/rollback", &json!({})).await?;
            println!("rolled back: reads and writes now go to {}", state["live"]);
            print_state(&state);
        }
        IndexAction::Drop => {
            let dropped = client.post("/admin/index/drop", &json!({})).await?;
            println!("dropped {}: it takes no more writes", dropped["dropped"]);
            print_state(&dropped["index"]);
        }
        IndexAction::Rebuild {
            no_wait,
            switch,
            model,
            from,
        } => {
            let mut request = json!({});
            if let Some(model) = model {
                request["model"] = json!(model);
                if !from.is_empty() {
                    request["from"] = json!(from);
                }
            }
            let state = client.get("/admin/index").await?;
            let state = match state.get("building") {
                Some(build) if build.is_object() => {
                    println!(
                        "a build into {} is under way; watching it",
                        build["collection"]
                    );
                    state
                }
                _ => client.post("/admin/index/rebuild", &request).await?,
            };
            let collection = state["building"]["collection"].clone();
            println!(
                "rebuilding {collection} from the log (through sequence {}) while {} serves",
                state["building"]["through"], state["live"]
            );
            if no_wait {
                return Ok(());
            }
            let built = watch(&client).await?;
            print_comparison(&built);
            if switch {
                let state = client.post("/admin/index/switch", &json!({})).await?;
                println!("switched: reads and writes now go to {}", state["live"]);
            } else {
                println!("switch reads to it with `heimdex index switch`");
            }
        }
    }
    Ok(())
}

/// Polls until the build is built, drawing a progress bar with the rate; returns the build.
async fn watch(client: &Client) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let state = client.get("/admin/index").await?;
        let build = state
            .get("building")
            .filter(|b| b.is_object())
            .cloned()
            .context("the build was dropped")?;
        let jobs = build["jobs"].as_u64().unwrap_or(0);
        let replayed = build["replayed"].as_u64().unwrap_or(0);
        let (since, base) = *first.get_or_insert((Instant::now(), replayed));
        let secs = since.elapsed().as_secs_f64();
        let rate = if secs > 0.5 {
            (replayed.saturating_sub(base)) as f64 / secs
        } else {
            0.0
        };
        eprint!(
            "\r{} {replayed}/{jobs} jobs · {rate:.0} jobs/s · {:.0} s{}",
            bar(replayed, jobs, 30),
            started.elapsed().as_secs_f64(),
            build["error"]
                .as_str()
                .map(|e| format!(" · retrying: {e}"))
                .unwrap_or_default()
        );
        let _ = std::io::stderr().flush();
        if build["phase"] == "built" {
            eprintln!();
            return Ok(build);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done.min(total) as f64 / total as f64) * width as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn print_comparison(build: &Value) {
    let c = &build["comparison"];
    println!(
        "built {}: {} points; live {}: missing {}, extra {}, payloads differ {}, vectors differ {} of {} compared{}",
        build["collection"],
        c["built"],
        c["live"],
        c["missing"],
        c["extra"],
        c["payload_differs"],
        c["vectors_differ"],
        c["vectors_checked"],
        if c["identical"] == true {
            " (identical)"
        } else {
            ""
        }
    );
    if build["skipped"].as_u64().unwrap_or(0) > 0 {
        println!(
            "{} replayed jobs could not be written again (see the service's log)",
            build["skipped"]
        );
    }
}

fn print_state(state: &Value) {
    println!(
        "live      {} (default model {})",
        state["live"], state["default_model"]
    );
    if let Some(build) = state.get("building").filter(|b| b.is_object()) {
        println!(
            "building  {} ({}: {}/{} jobs replayed, {} skipped)",
            build["collection"], build["phase"], build["replayed"], build["jobs"], build["skipped"]
        );
        if let Some(change) = build.get("model_change").filter(|c| c.is_object()) {
            println!(
                "          model change: {} takes over {}; {} jobs without text keep their model",
                change["to"], change["from"], build["not_reembeddable"]
            );
        }
        if let Some(error) = build["error"].as_str() {
            println!("          last error: {error}");
        }
    }
    if let Some(previous) = state.get("previous").filter(|p| p.is_string()) {
        println!("previous  {previous} (kept up to date for a rollback)");
    }
    println!(
        "followed  {} of {} log events",
        state["followed"], state["log_seq"]
    );
}
