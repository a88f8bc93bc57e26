//! tokenwall: eBPF-accelerated enforcement of revoked bearer tokens on API-gateway hosts.

use tokenwall::{
    cli::commands as client,
    cli::{self, Command},
    daemon,
};

fn main() {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err((code, msg)) => {
            if code == 0 {
                print!("{msg}");
            } else {
                eprintln!("{msg}");
            }
            std::process::exit(code);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokenwall: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => daemon::run(*args).await,
            Command::Revoke(args) => client::revoke(args).await,
            Command::Unrevoke(args) => client::unrevoke(args).await,
            Command::Status(args) => client::status(args).await,
            Command::Events(args) => client::events(args).await,
            Command::Fingerprint(args) => client::fingerprint(args).await,
            Command::Detach(args) => client::detach(args).await,
            Command::Clients(cmd) => client::clients(cmd).await,
            Command::Introspect(args) => client::introspect(args).await,
            Command::Keys(cmd) => client::keys(cmd).await,
            Command::Apikeys(cmd) => client::apikeys(cmd).await,
            Command::Audit(cmd) => client::audit(cmd),
            Command::Watch(args) => client::watch(args).await,
            Command::Top(args) => tokenwall::cli::top::run(args).await,
            Command::Monitoring { state, client } => client::monitoring(state, client).await,
            Command::Tokens(cmd) => client::tokens(cmd).await,
        }
    });
    if let Err(e) = result {
        // One line: the chain of causes joined with ": ".
        eprintln!("tokenwall: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
