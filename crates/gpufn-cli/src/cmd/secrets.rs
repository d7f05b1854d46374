//! `gpufn secret set | list | delete` (admin).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::json;

use crate::client::Api;
use crate::table;

#[derive(Debug, clap::Subcommand)]
pub enum SecretCmd {
    /// Store a secret; its value is read from standard input (one trailing newline dropped), so it
    /// never appears in a command line or the shell history.
    Set {
        /// The secret's name (1..63 of a-z 0-9 . _ -), as specs name it in `env_from_secrets` or
        /// `registry_auth: {secret: NAME}` (whose value is `user:password`).
        name: String,
    },
    /// List secret names (never values).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret (functions that use it fail to start until it is set again).
    Delete {
        /// The secret's name.
        name: String,
    },
}

pub async fn run(api: &Api, cmd: SecretCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCmd::Set { name } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the secret's value from standard input")?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            anyhow::ensure!(!value.is_empty(), "the value on standard input is empty");
            let v = api
                .json(
                    api.request(Method::PUT, &format!("/api/v1/secrets/{name}"))
                        .json(&json!({ "value": value })),
                )
                .await?;
            eprintln!(
                "secret {} {}",
                v["name"].as_str().unwrap_or_default(),
                if v["created"] == true {
                    "created"
                } else {
                    "replaced"
                }
            );
        }
        SecretCmd::List { json: as_json } => {
            let v = api
                .json(api.request(Method::GET, "/api/v1/secrets"))
                .await?;
            table::print_list(
                &v,
                as_json,
                &[
                    ("NAME", "name"),
                    ("CREATED", "created_at"),
                    ("UPDATED", "updated_at"),
                ],
            )?;
        }
        SecretCmd::Delete { name } => {
            api.json(api.request(Method::DELETE, &format!("/api/v1/secrets/{name}")))
                .await?;
            eprintln!("secret {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
