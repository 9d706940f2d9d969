//! The natsmeshd command line. Everything but argument parsing lives in the
//! library.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natsmesh::config::{self, Problems, Sources};
use natsmesh::control::{self, Request};
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

    /// Control socket of the running daemon (status, reload, drain).
    /// Default: control.socket from the configuration, else
    /// /run/natsmesh/control.sock.
    #[arg(long, global = true, value_name = "PATH", env = "NATSMESH_SOCKET")]
    socket: Option<PathBuf>,

    /// Run nats-server as this user (and its group, no other), not as
    /// natsmeshd's own: natsmeshd needs CAP_SETUID, CAP_SETGID and CAP_KILL
    /// and membership of the user's group. The packaged unit passes
    /// natsmesh-broker. `check` only looks the user up.
    #[arg(long, global = true, value_name = "USER")]
    broker_user: Option<String>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run and supervise nats-server (the daemon).
    Run,
    /// Check the configuration: exit 0, or 2 listing every problem.
    Check,
    /// Print the nats-server config natsmeshd would run.
    Render {
        /// Also show every effective setting and where it came from.
        #[arg(long)]
        explain: bool,
    },
    /// Show the running daemon's state on one screen.
    Status {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its configuration.
    Reload {
        /// Wait for the outcome; exit non-zero, saying why, if refused.
        #[arg(long)]
        wait: bool,
    },
    /// Take the node out of service (out of DNS and the load balancer,
    /// then lame duck); natsmeshd keeps running. Refused when the
    /// JetStream meta group or a stream of three or more replicas with
    /// one here would lose its majority (counting nodes already out).
    Drain {
        /// Drain even when the majority rule refuses (or cannot be
        /// checked: a region that lost its JetStream quorum).
        #[arg(long)]
        force: bool,
    },
    /// Put a drained node back into service.
    Undrain,
    /// Hold planned restarts (configuration changes, upgrades) back;
    /// a crashed broker is still restarted.
    Pause,
    /// Let planned restarts go ahead again.
    Resume,
    /// Leave the region for good: re-place this node's JetStream replicas,
    /// remove it from the JetStream group, leave DNS and the balancer,
    /// stop, and never rejoin with the old state.
    Decommission,
    /// The whole supercluster, from any node, over NATS.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Take this node down for maintenance (a reboot, OS work) under a
    /// lease that outlives natsmeshd and the reboot, and bring it back.
    #[command(subcommand)]
    Maintenance(MaintenanceCmd),
    /// Offline certificate authority tasks (run on an operator's machine).
    #[command(subcommand)]
    Ca(CaCmd),
    /// Client users.
    #[command(subcommand)]
    User(UserCmd),
    /// Print cloud-init user-data that makes a new machine a member of its
    /// region (secrets included: paste it only into the creation form).
    UserData(Box<natsmesh::user_data::Request>),
    /// Print what must exist besides the machines, as Terraform for the
    /// provider's official provider (VPCs, balancers, firewalls, DNS), and
    /// a script making each region's user-data. Embeds no secret.
    Plan(Box<natsmesh::plan::Request>),
    /// Print the natsmeshd(8) manual page (roff), for the packages.
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, Subcommand)]
enum FleetCmd {
    /// Every natsmesh node of the supercluster as this node hears them
    /// (each reports every 5 s in the system account): state and why,
    /// versions, restart pending, paused, lease, certificate, balancer,
    /// DNS, last seen; `missing` after two silent intervals, `stopped`
    /// when it said it was leaving.
    Status {
        /// Machine-readable JSON: an array of nodes (schema in the docs).
        #[arg(long)]
        json: bool,
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
    },
    /// Hold planned restarts back on every node of the supercluster (or
    /// of one region), kept in JetStream: it outlives restarts and holds
    /// for nodes that join later. A crashed broker is still restarted.
    Pause {
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Why, shown with the pause on every node.
        #[arg(long, default_value = "")]
        why: String,
    },
    /// Lift `fleet pause` (the same scope: every region, or --region).
    Resume {
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
    },
    /// The JetStream meta group as its leader sees it: leader, peers,
    /// current / behind / offline (or not answering), lag.
    Peers {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a server that is gone for good from the JetStream meta
    /// group; refused for a server that answers or that the group counts
    /// as current.
    RemovePeer {
        /// Its server name.
        server: String,
    },
    /// A time-limited user of the system account for the NATS CLI
    /// (`nats server list`, `nats server report jetstream`): added by a
    /// reload, removed when it expires; no node's own password is shown.
    /// Writes a NATS CLI context (0600, never over an existing file).
    /// Accounts mode only.
    Creds {
        /// How long the user lives (at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Where to write the context (default: the NATS CLI's context
        /// directory, `~/.config/nats/context/<context>.json`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The context's name (default: the new user's name).
        #[arg(long)]
        context: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum MaintenanceCmd {
    /// Take the maintenance lease (held `[maintenance] max_down`, through
    /// natsmeshd restarts and the reboot) under the majority rule, wait as
    /// a planned restart does, leave DNS and the balancer, lame duck, stop
    /// the broker, and say "safe to reboot".
    Start {
        /// Wait until the rule allows it instead of being refused.
        #[arg(long)]
        wait: bool,
        /// Why, kept with the lease and shown in `status`.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Bring the node back; the lease goes back once JetStream is current
    /// (the next boot does the same by itself).
    Stop,
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Make a user, print its secret once, and append only its public key
    /// or bcrypt hash to a drop-in.
    Add {
        /// The account.
        #[arg(long)]
        account: String,
        /// The user name (password users).
        #[arg(long, default_value = "")]
        name: String,
        /// An nkey user (prints the seed) instead of a password user.
        #[arg(long)]
        nkey: bool,
        /// Subjects the user may publish to (repeatable; none: any).
        #[arg(long = "publish", value_name = "SUBJECT")]
        publish: Vec<String>,
        /// Subjects the user may subscribe to (repeatable; none: any).
        #[arg(long = "subscribe", value_name = "SUBJECT")]
        subscribe: Vec<String>,
        /// May reply to requests it receives.
        #[arg(long)]
        allow_responses: bool,
        /// A leaf node's login at this hub's leafnode listener, its traffic
        /// landing in --account (a password user, no permissions).
        #[arg(long, conflicts_with_all = ["nkey", "publish", "subscribe", "allow_responses"])]
        leafnode: bool,
        /// The drop-in to append to (keep an account's users in one file).
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Create the offline root CA: DIR/root.crt and DIR/root.key (0600).
    Init {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Common name of the root.
        #[arg(long, default_value = "natsmesh root CA")]
        name: String,
        /// Validity.
        #[arg(long, default_value = "3650days", value_parser = humantime::parse_duration)]
        validity: std::time::Duration,
    },
    /// Create a region's intermediate, limited to the region's own names
    /// (<region>.<domain> and below), the --permit-name names and private
    /// address ranges: OUT/<region>.crt and OUT/<region>.key (0600).
    Intermediate {
        /// Directory holding root.crt and root.key.
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// The region (natsmesh's region label).
        #[arg(long)]
        region: String,
        /// The supercluster's DNS domain (node.domain).
        #[arg(long)]
        domain: String,
        /// A name all regions share that clients use (repeatable), e.g.
        /// nats.example.com: permitted besides the region's own names
        /// (<region>.<domain> and below).
        #[arg(long = "permit-name", value_name = "NAME")]
        permit_name: Vec<String>,
        /// Another permitted address range (repeatable), e.g. a public /24
        /// the gateways advertise.
        #[arg(long = "permit-ip", value_name = "CIDR")]
        permit_ip: Vec<String>,
        /// Do not permit the private ranges and loopback by default.
        #[arg(long)]
        no_default_ranges: bool,
        /// Validity.
        #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
        validity: std::time::Duration,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// The manual page, from the same definitions as `--help`.
fn manpage() -> ExitCode {
    use clap::CommandFactory as _;
    let page = clap_mangen::Man::new(Cli::command()).section("8");
    match page.render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natsmeshd: cannot write the manual page: {e}");
            ExitCode::from(EXIT_FAILURE as u8)
        }
    }
}

/// `natsmeshd plan`: printed, or written into `--out`.
fn plan(req: &natsmesh::plan::Request) -> ExitCode {
    let p = match natsmesh::plan::plan(req) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("natsmeshd: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let Some(dir) = &req.out else {
        print!("{}", p.printed());
        return ExitCode::SUCCESS;
    };
    let write = |f: &natsmesh::plan::File| -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(f.name);
        std::fs::write(&path, &f.text)?;
        let mode = if f.executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(path)
    };
    for f in &p.files {
        match write(f) {
            Ok(path) => eprintln!("natsmeshd: wrote {}", path.display()),
            Err(e) => {
                eprintln!(
                    "natsmeshd: cannot write {}: {e}",
                    dir.join(f.name).display()
                );
                return ExitCode::from(EXIT_FAILURE as u8);
            }
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Manpage = cli.command {
        return manpage();
    }
    if let Cmd::UserData(req) = &cli.command {
        return match natsmesh::user_data::render(req) {
            Ok((text, note)) => {
                print!("{text}");
                eprint!("{note}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("natsmeshd: {e}");
                ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
            }
        };
    }
    if let Cmd::Plan(req) = &cli.command {
        return plan(req);
    }
    natsmesh::logging::init();
    // One thread: the broker is forked from it, and PR_SET_PDEATHSIG is tied
    // to the forking thread, which must live as long as the broker.
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
    if let Cmd::User(UserCmd::Add {
        account,
        name,
        nkey,
        publish,
        subscribe,
        allow_responses,
        leafnode,
        file,
    }) = &cli.command
    {
        let user = natsmesh::user_cli::NewUser {
            account,
            name,
            nkey: *nkey,
            publish,
            subscribe,
            allow_responses: *allow_responses,
            leafnode: *leafnode,
        };
        return match natsmesh::user_cli::add(&user, file) {
            Ok(msg) => {
                print!("{msg}");
                0
            }
            Err(e) => {
                eprintln!("natsmeshd: {e}");
                EXIT_FAILURE
            }
        };
    }
    if let Cmd::Ca(ca) = &cli.command {
        // What the operator typed is checked first, and refused as a usage
        // error, before any file is read or written.
        if let CaCmd::Intermediate {
            region,
            domain,
            permit_name,
            permit_ip,
            ..
        } = ca
            && let Err(e) =
                natsmesh::ca_cli::intermediate_args(region, domain, permit_name, permit_ip)
        {
            eprintln!("natsmeshd: {e}");
            return EXIT_CONFIG;
        }
        let done = match ca {
            CaCmd::Init {
                out,
                name,
                validity,
            } => natsmesh::ca_cli::init(out, name, *validity),
            CaCmd::Intermediate {
                root,
                region,
                domain,
                permit_name,
                permit_ip,
                no_default_ranges,
                validity,
                out,
            } => natsmesh::ca_cli::intermediate(
                root,
                region,
                domain,
                natsmesh::ca_cli::Permits {
                    names: permit_name,
                    extra_ranges: permit_ip,
                    default_ranges: !no_default_ranges,
                },
                *validity,
                out,
            ),
        };
        return match done {
            Ok(msg) => {
                println!("{msg}");
                0
            }
            Err(e) => {
                eprintln!("natsmeshd: {e}");
                EXIT_FAILURE
            }
        };
    }
    let sources = match config::discover(cli.config.as_deref()) {
        Ok(s) => s,
        Err(p) => return report(&p),
    };
    // The control socket, for the commands that talk to the daemon.
    let socket = || {
        cli.socket
            .clone()
            .unwrap_or_else(|| config::control_socket(&sources))
    };
    match cli.command {
        Cmd::Status { json } => {
            let socket = socket();
            return query(&socket, &Request::Status, |r| {
                r.status
                    .map(|s| if json { json_text(&s) } else { s.screen() })
            })
            .await;
        }
        Cmd::Fleet(FleetCmd::Status { json, region }) => {
            let socket = socket();
            return query(&socket, &Request::Fleet { region }, |r| {
                let rows = r.fleet.unwrap_or_default();
                Some(if json {
                    json_text(&rows)
                } else {
                    natsmesh::fleet::report::render(
                        &rows,
                        natsmesh::unix_ms(std::time::SystemTime::now()),
                    )
                })
            })
            .await;
        }
        Cmd::Fleet(FleetCmd::Pause { region, why }) => {
            let socket = socket();
            let request = Request::FleetPause {
                pause: true,
                region,
                why,
            };
            return simple_request(&socket, &request).await;
        }
        Cmd::Fleet(FleetCmd::Resume { region }) => {
            let socket = socket();
            let request = Request::FleetPause {
                pause: false,
                region,
                why: String::new(),
            };
            return simple_request(&socket, &request).await;
        }
        Cmd::Fleet(FleetCmd::Peers { json }) => {
            let socket = socket();
            return query(&socket, &Request::FleetPeers, |r| {
                let group = r.peers.unwrap_or_default();
                Some(if json {
                    json_text(&group)
                } else {
                    natsmesh::fleet::peers::render(&group)
                })
            })
            .await;
        }
        Cmd::Fleet(FleetCmd::Creds { ttl, out, context }) => {
            let socket = socket();
            return fleet_creds(&socket, ttl, out, context).await;
        }
        Cmd::Fleet(FleetCmd::RemovePeer { server }) => {
            let socket = socket();
            return simple_request(&socket, &Request::FleetRemovePeer { server }).await;
        }
        Cmd::Reload { wait } => {
            let socket = socket();
            return simple_request(&socket, &Request::Reload { wait }).await;
        }
        Cmd::Maintenance(m) => {
            let socket = socket();
            let request = match m {
                MaintenanceCmd::Start { wait, reason } => Request::Maintenance {
                    start: true,
                    wait,
                    reason,
                },
                MaintenanceCmd::Stop => Request::Maintenance {
                    start: false,
                    wait: false,
                    reason: String::new(),
                },
            };
            return simple_request(&socket, &request).await;
        }
        Cmd::Drain { .. } | Cmd::Undrain | Cmd::Pause | Cmd::Resume | Cmd::Decommission => {
            let socket = socket();
            let request = match cli.command {
                Cmd::Drain { force } => Request::Drain { force },
                Cmd::Undrain => Request::Undrain,
                Cmd::Pause => Request::Pause,
                Cmd::Decommission => Request::Decommission,
                _ => Request::Resume,
            };
            return simple_request(&socket, &request).await;
        }
        _ => {}
    }
    // Before the configuration is validated: with the broker as its own
    // user, the files it reads are natsmeshd's copies (see broker_user).
    if let Some(name) = &cli.broker_user {
        let chosen = natsmesh::broker_user::resolve(name).and_then(|u| {
            if matches!(cli.command, Cmd::Run) {
                natsmesh::broker_user::check_this_process(&u)?;
            }
            Ok(u)
        });
        match chosen {
            Ok(u) if matches!(cli.command, Cmd::Run) => natsmesh::broker_user::choose(u),
            Ok(_) => {}
            Err(e) => {
                eprintln!("natsmeshd: {e}");
                return EXIT_CONFIG;
            }
        }
    }
    if matches!(cli.command, Cmd::Run) && sources == Sources::Embedded && natsmesh::under_systemd()
    {
        eprintln!(
            "natsmeshd: no configuration at {} (nor drop-ins in {}); under systemd natsmeshd does not fall back to its embedded default. Write a configuration (see `natsmeshd render --explain`).",
            config::load::DEFAULT_PATH,
            config::load::dropin_dir(Path::new(config::load::DEFAULT_PATH)).display()
        );
        return EXIT_CONFIG;
    }
    // `run` waits for the metadata service as configured; `check` and
    // `render` answer within seconds.
    let patience = match cli.command {
        Cmd::Run => config::Patience::Configured,
        _ => config::Patience::AtMost(std::time::Duration::from_secs(5)),
    };
    // Outside the unit (`sudo natsmeshd check` over SSH) credential names are
    // found where the unit loads them from; `run` is the unit itself.
    let credentials_source = match cli.command {
        Cmd::Run => None,
        _ => config::unit_credentials(&sources),
    };
    let shown_source = credentials_source.clone();
    let (loaded, settings) =
        match natsmesh::provider::identity::load_settings(&sources, patience, credentials_source)
            .await
        {
            Ok(v) => v,
            Err(p) => return report(&p),
        };
    match cli.command {
        Cmd::Run => {
            if loaded.embedded {
                tracing::info!(
                    state_dir = %settings.state_dir.display(),
                    "no configuration found: running the embedded default (one standalone node on loopback)"
                );
            }
            natsmesh::run::run(cli.config.clone(), settings).await
        }
        Cmd::Render { explain } => {
            let (prepared, _scratch, checked) = match check_in_scratch(&settings).await {
                Ok(v) => v,
                Err(code) => return code,
            };
            // Shown with the state directory's paths, and the accounts as
            // checked (the system user's hash is a throwaway one until the
            // first start makes the real password).
            let mut shown = settings.clone();
            shown.server.accounts = checked.server.accounts.clone();
            if explain {
                print!("{}", config::explain::explain(&loaded, &settings));
                println!();
            }
            // Shown as it will be written in the state directory.
            match natsmesh_broker::model::render(
                &shown.server,
                &prepared.version,
                &settings.state_dir,
            ) {
                Ok(r) => {
                    print!("{}", r.text);
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    EXIT_CONFIG
                }
            }
        }
        _ => {
            let (prepared, _scratch, _) = match check_in_scratch(&settings).await {
                Ok(v) => v,
                Err(code) => return code,
            };
            let files: Vec<String> = loaded.files.iter().map(ToString::to_string).collect();
            println!(
                "configuration OK ({}); nats-server {} at {} accepts the rendered file",
                files.join(", "),
                prepared.version,
                settings.binary.display()
            );
            if let Some(dir) = &shown_source {
                eprintln!(
                    "credentials: relative names were read from {} (as the unit loads them with LoadCredential=)",
                    dir.display()
                );
            }
            // Told, not refused: these listeners are meant to answer anyone.
            for n in config::notice::notices(&settings) {
                eprintln!("{n}");
            }
            0
        }
    }
}

/// Renders and checks with `-t` in a scratch directory (the state directory
/// may not exist or be writable for the person running `check`).
async fn check_in_scratch(
    settings: &config::Settings,
) -> Result<
    (
        natsmesh::prepare::Prepared,
        tempfile::TempDir,
        config::Settings,
    ),
    i32,
> {
    let scratch = tempfile::Builder::new()
        .prefix("natsmesh-check-")
        .tempdir()
        .map_err(|e| {
            eprintln!("natsmeshd: cannot create a scratch directory: {e}");
            EXIT_FAILURE
        })?;
    // With natsmeshd issuing certificates, issue a throwaway one here: it
    // proves the intermediate, the roots and the names, and lets `-t` read
    // real files.
    let mut settings = settings.with_issued_tls_in(scratch.path());
    // natsmeshd's system password is created on the first real start; a
    // check works with a throwaway one.
    if let Some(config::validate::SystemUser::Password {
        file,
        generate: true,
    }) = &mut settings.system_user
        && !file.exists()
    {
        *file = scratch.path().join("system.password");
    }
    let system = match natsmesh::auth::system_account(&settings, scratch.path()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("system user: {e}");
            return Err(EXIT_CONFIG);
        }
    };
    let certs = match &settings.tls {
        None => None,
        Some(tls) => match natsmesh::tls::ensure(tls, std::time::SystemTime::now(), true) {
            Ok((current, _)) => Some(natsmesh::tls::CertSet::new(tls, current)),
            Err(e) => {
                eprintln!("TLS: {e}");
                return Err(EXIT_CONFIG);
            }
        },
    };
    // The same function builds the daemon's configuration (no DNS answer
    // here: the seeds and configured gateways are shown).
    let settings = natsmesh::prepare::effective(&settings, None, certs.as_ref(), system.as_ref());
    match prepare_in(&settings, scratch.path(), "nats-server.conf").await {
        Ok(p) => Ok((p, scratch, settings)),
        Err(e) => {
            eprintln!("{e}");
            Err(if e.is_config_error() {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            })
        }
    }
}

/// Sends `request` to the daemon and prints what `show` makes of its
/// answer (`None`: the answer lacks what was asked).
async fn query(
    socket: &Path,
    request: &Request,
    show: impl FnOnce(control::Reply) -> Option<String>,
) -> i32 {
    match control::request(socket, request).await {
        Ok(r) if r.ok => match show(r) {
            Some(text) => {
                print!("{text}");
                0
            }
            None => {
                eprintln!("natsmeshd: the daemon's answer lacks what was asked");
                EXIT_FAILURE
            }
        },
        Ok(r) => {
            eprintln!("natsmeshd: {}", r.message);
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("natsmeshd: is natsmeshd running? {e}");
            EXIT_FAILURE
        }
    }
}

/// Pretty JSON and a final line break.
fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

async fn simple_request(socket: &Path, req: &Request) -> i32 {
    match control::request(socket, req).await {
        Ok(r) => {
            if r.ok {
                println!("{}", r.message);
                0
            } else {
                eprintln!("natsmeshd: {}", r.message);
                EXIT_FAILURE
            }
        }
        Err(e) => {
            eprintln!("natsmeshd: is natsmeshd running? {e}");
            EXIT_FAILURE
        }
    }
}

/// Whether `name` may name a NATS CLI context (a file in its directory).
fn context_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The NATS CLI's context directory (`$XDG_CONFIG_HOME/nats/context`, else
/// `~/.config/nats/context`).
fn nats_context_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("nats").join("context"))
}

/// `natsmeshd fleet creds`: asks the daemon for a temporary system user and
/// writes it as a NATS CLI context; the password goes only into that file.
async fn fleet_creds(
    socket: &Path,
    ttl: std::time::Duration,
    out: Option<PathBuf>,
    context: Option<String>,
) -> i32 {
    if let Some(name) = &context
        && !context_name_ok(name)
    {
        eprintln!("natsmeshd: --context {name:?}: use letters, digits, '-', '_' and '.'");
        return EXIT_FAILURE;
    }
    // Refused before a user is made: its password would have nowhere to go.
    if let Some(path) = &out
        && std::fs::symlink_metadata(path).is_ok()
    {
        eprintln!(
            "natsmeshd: {} exists; fleet creds never overwrites a file",
            path.display()
        );
        return EXIT_FAILURE;
    }
    // Where the context goes is settled before a user is made, too.
    let context_dir = match &out {
        Some(_) => None,
        None => match nats_context_dir() {
            Some(dir) => Some(dir),
            None => {
                eprintln!("natsmeshd: no HOME or XDG_CONFIG_HOME for the context; pass --out");
                return EXIT_FAILURE;
            }
        },
    };
    if let (Some(dir), Some(name)) = (&context_dir, &context) {
        let file = dir.join(format!("{name}.json"));
        if std::fs::symlink_metadata(&file).is_ok() {
            eprintln!(
                "natsmeshd: {} exists; fleet creds never overwrites a file",
                file.display()
            );
            return EXIT_FAILURE;
        }
    }
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let issued = match control::request(socket, &Request::FleetCreds { ttl_ms }).await {
        Ok(r) if r.ok => match r.creds {
            Some(c) => c,
            None => {
                eprintln!("natsmeshd: the daemon sent no credential");
                return EXIT_FAILURE;
            }
        },
        Ok(r) => {
            eprintln!("natsmeshd: {}", r.message);
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("natsmeshd: is natsmeshd running? {e}");
            return EXIT_FAILURE;
        }
    };
    let name = context.unwrap_or_else(|| issued.user.clone());
    let path = match (out, context_dir) {
        (Some(p), _) => p,
        (None, Some(dir)) => {
            use std::os::unix::fs::DirBuilderExt as _;
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
            {
                eprintln!("natsmeshd: cannot create {}: {e}", dir.display());
                return EXIT_FAILURE;
            }
            dir.join(format!("{name}.json"))
        }
        (None, None) => return EXIT_FAILURE,
    };
    let expires = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(issued.expires_ms),
    );
    let description = format!("natsmesh system account, {} until {expires}", issued.user);
    let text = natsmesh::fleet::creds::context_json(&issued, &description);
    if let Err(e) = natsmesh::fleet::creds::write_new(&path, &text) {
        eprintln!(
            "natsmeshd: cannot write {}: {e}; the user {} expires unused at {expires}",
            path.display(),
            issued.user
        );
        return EXIT_FAILURE;
    }
    let in_dir = nats_context_dir().is_some_and(|d| {
        path.parent() == Some(d.as_path()) && path.file_stem().is_some_and(|s| s == name.as_str())
    });
    println!("user {} in the system account until {expires}", issued.user);
    println!("NATS CLI context written to {} (0600)", path.display());
    if !in_dir {
        println!(
            "copy it to ~/.config/nats/context/{name}.json on the machine running the NATS CLI"
        );
    }
    println!("  nats --context {name} server list");
    println!("  nats --context {name} server report jetstream");
    0
}
