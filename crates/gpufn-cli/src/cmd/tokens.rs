//! `gpufn token create | list | revoke` and `gpufn audit` (admin).

use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Api;
use crate::table;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is printed once and never shown again.
    Create {
        /// viewer (read-only), invoker (call functions), developer (deploy container functions),
        /// admin (everything).
        #[arg(long)]
        role: String,
        /// Limit the token to functions whose names start with this prefix.
        #[arg(long)]
        functions: Option<String>,
        /// Lifetime, e.g. 30d, 12h, 90m (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        /// A label, e.g. who or what uses it.
        #[arg(long)]
        name: Option<String>,
        /// Print JSON (the token is in its `token` field).
        #[arg(long)]
        json: bool,
    },
    /// List tokens: ids, roles, scopes and states (never the tokens).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id (it stops working at once; it stays listed as revoked).
    Revoke {
        /// The token's id (`gpufn token list`).
        id: String,
    },
}

pub async fn run(api: &Api, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create {
            role,
            functions,
            expires,
            name,
            json: as_json,
        } => {
            let body =
                json!({"role": role, "functions": functions, "expires": expires, "name": name});
            let v = api
                .json(api.request(Method::POST, "/api/v1/tokens").json(&body))
                .await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                // The token alone on stdout (for `$(gpufn token create ...)`), the rest on stderr.
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "created token {} ({}{}{}); it is shown only this once",
                    v["id"].as_str().unwrap_or_default(),
                    v["role"].as_str().unwrap_or_default(),
                    v["functions"]
                        .as_str()
                        .map(|f| format!(", functions {f}*"))
                        .unwrap_or_default(),
                    v["expires_at"]
                        .as_str()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default(),
                );
            }
        }
        TokenCmd::List { json: as_json } => {
            let v = api.json(api.request(Method::GET, "/api/v1/tokens")).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let text = |v: &Value, k: &str| table::cell(v, &[k]);
            let rows: Vec<Vec<String>> = table::items(&v)
                .iter()
                .map(|t| {
                    vec![
                        text(t, "id"),
                        text(t, "role"),
                        t["functions"]
                            .as_str()
                            .map(|f| format!("{f}*"))
                            .unwrap_or_else(|| "all".into()),
                        text(t, "state"),
                        text(t, "expires_at"),
                        text(t, "name"),
                    ]
                })
                .collect();
            table::print(
                &["ID", "ROLE", "FUNCTIONS", "STATE", "EXPIRES", "NAME"],
                &rows,
            );
        }
        TokenCmd::Revoke { id } => {
            let v = api
                .json(api.request(Method::DELETE, &format!("/api/v1/tokens/{id}")))
                .await?;
            println!("token {} revoked", v["id"].as_str().unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(api: &Api, limit: usize, as_json: bool) -> anyhow::Result<ExitCode> {
    let v = api
        .json(
            api.request(Method::GET, "/api/v1/audit")
                .query(&[("limit", limit)]),
        )
        .await?;
    table::print_list(
        &v,
        as_json,
        &[
            ("AT", "at"),
            ("TOKEN", "token_id"),
            ("ROLE", "role"),
            ("ACTION", "action"),
            ("TARGET", "target"),
            ("DETAIL", "detail"),
        ],
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `gpufn console`: the console's address with this CLI's token in the fragment (which the
/// browser never sends to a server; the console moves it to sessionStorage and clears it).
pub fn console_link(api: &Api) -> anyhow::Result<ExitCode> {
    match api.token() {
        Some(t) => println!("{}#token={t}", api.url("/console")),
        None => {
            println!("{}", api.url("/console"));
            eprintln!("(no token found: the console will ask for one)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
