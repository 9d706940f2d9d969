//! `natsmeshd run`: the daemon. Wires the supervisor, the control socket,
//! signals and systemd together and turns the outcome into an exit code.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use std::path::PathBuf;

use crate::config::Settings;
use crate::control;
use crate::notify::Notifier;
use crate::supervisor::{Command, Exit, Supervisor};

/// Runs until stopped; returns the process exit code.
pub async fn run(config_path: Option<PathBuf>, settings: Settings) -> i32 {
    let notifier = Notifier::from_env();
    let socket = settings.control_socket.clone();
    let mut settings = settings;
    // The image this one replaced (a natsmeshd upgrade) hands its broker
    // over; the node kept serving, so its DNS records stand.
    let handoff = match crate::upgrade::take_handoff() {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot read the previous natsmeshd's handoff");
            None
        }
        None => None,
    };
    if let Some(p) = &settings.publish
        && handoff.is_none()
    {
        crate::publish::reconcile_at_start(p).await;
    }
    let followed = match &settings.discovery {
        None => None,
        Some(d) => match first_answer(d, &settings, &notifier).await {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("natsmeshd: {e}");
                notifier.status(&format!("failed: {e}"));
                return crate::EXIT_FAILURE;
            }
        },
    };
    if let Some((_, found, _)) = &followed {
        // A milestone of a machine's first boot (the boot benchmark reads it).
        tracing::info!(routes = found.routes.len(), regions = ?found.regions, "first DNS answer taken");
        crate::discovery::apply(&mut settings, found);
    }
    let bootstrapped = followed.as_ref().is_some_and(|(_, _, b)| *b);
    let publish = settings.publish.clone();
    let balancer = settings.balancer.clone();
    // The health check's endpoint binds before anything starts, so a taken
    // port is a clear start-up failure.
    let ready_listener = match &balancer {
        None => None,
        Some(b) => match crate::balancer::ready::bind(b.ready).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "natsmeshd: cannot listen for the load balancer's health check on {}: {e}",
                    b.ready
                );
                return crate::EXIT_FAILURE;
            }
        },
    };
    // The gateway gate takes the gateway's address before the broker
    // starts: a taken port is a clear start-up failure.
    let gate = match settings.gate.clone() {
        None => None,
        Some(g) => match tokio::net::TcpListener::bind(g.listen).await {
            Ok(l) => {
                tracing::info!(listen = %g.listen, broker = %g.broker, "gateway gate: a peer's claimed region must match its certificate");
                Some(tokio::spawn(crate::gate::serve(l, g)))
            }
            Err(e) => {
                eprintln!("natsmeshd: cannot listen for gateways on {}: {e}", g.listen);
                return crate::EXIT_FAILURE;
            }
        },
    };
    // Metrics are for people: a port already taken is a warning, not a
    // reason to keep a broker from serving.
    let metrics = match &settings.metrics {
        None => None,
        Some(m) => match tokio::net::TcpListener::bind(m.listen).await {
            Ok(l) => {
                let gateways = settings
                    .server
                    .gateway
                    .as_ref()
                    .map(|g| g.gateways.iter().filter(|r| r.name != g.name).count() as u64);
                Some((
                    l,
                    m.clone(),
                    crate::metrics::broker_monitor(&settings),
                    gateways,
                ))
            }
            Err(e) => {
                tracing::warn!(listen = %m.listen, error = %e, "cannot serve /metrics; running without");
                None
            }
        },
    };
    let fleet_settings = settings.clone();
    let pause_settings = settings.clone();
    let (mut supervisor, status) =
        match Supervisor::new(config_path, settings, notifier.clone()).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("natsmeshd: {e:#}");
                notifier.status(&format!("failed: {e}"));
                return crate::EXIT_CONFIG;
            }
        };
    if let Some(h) = handoff {
        supervisor.take_over(h);
    }
    let listener = match control::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("natsmeshd: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    let discovery_health = followed
        .as_ref()
        .map(|_| std::sync::Arc::new(crate::discovery::Health::default()));
    let follower = followed.map(|(discovery, found, _)| {
        let (tx, rx) = tokio::sync::watch::channel(found);
        supervisor.follow(rx);
        let health = discovery_health.clone().unwrap_or_default();
        tokio::spawn(crate::discovery::follow(discovery, tx, health))
    });
    let publisher = publish.map(|p| {
        let (up_tx, up_rx) = tokio::sync::watch::channel(crate::supervisor::Announced::default());
        supervisor.announce(crate::supervisor::Pointer::Dns, up_rx, p.withdraw_timeout);
        tokio::spawn(crate::publish::follow(
            p,
            status.clone(),
            up_tx,
            bootstrapped,
        ))
    });
    let ready =
        ready_listener.map(|l| tokio::spawn(crate::balancer::ready::serve(l, status.clone())));
    let metrics = metrics.and_then(|(l, m, broker, gateways)| {
        let sources = crate::metrics::Sources {
            status: status.clone(),
            broker: broker?,
            discovery: discovery_health.clone(),
            gateways_configured: gateways,
        };
        Some(tokio::spawn(crate::metrics::serve(l, m, sources)))
    });
    let member = balancer.map(|b| {
        let (tx, rx) = tokio::sync::watch::channel(crate::supervisor::Announced::default());
        // Until the balancer is read, its health check is unknown.
        let budget = crate::balancer::stop_budget(&b, None);
        supervisor.announce(crate::supervisor::Pointer::LoadBalancer, rx, budget);
        tokio::spawn(crate::balancer::follow(b, status.clone(), tx))
    });
    // Every node's reports, heard in the system account (which needs
    // natsmeshd's system user).
    let fleet = fleet_settings.system_user.is_some().then(|| {
        let (tx, rx) = tokio::sync::watch::channel(crate::fleet::report::Table::default());
        (
            tokio::spawn(crate::fleet::heartbeat::run(
                fleet_settings,
                status.clone(),
                tx,
            )),
            rx,
        )
    });
    let (heartbeat, fleet_table) = fleet.map_or((None, None), |(t, rx)| (Some(t), Some(rx)));
    // The fleet pause: followed beside the supervisor (seeded with the
    // last word kept, so a pause holds from the first moment), written
    // through the control socket.
    let access = crate::fleet::pause::Access::new(&pause_settings);
    let pause_watch = access.as_ref().ok().map(|a| {
        let (tx, rx) =
            tokio::sync::watch::channel(crate::fleet::pause::cached(&pause_settings.state_dir));
        supervisor.follow_fleet_pause(rx);
        tokio::spawn(crate::fleet::pause::watch(a.clone(), tx))
    });
    let (commands, rx) = mpsc::channel(16);
    // Operators' temporary users (`fleet creds`) expire beside the loop:
    // the task only sends the loop a reload, as `natsmeshd reload` does.
    let expiry = crate::fleet::creds::check_mode(pause_settings.system_user.as_ref())
        .is_ok()
        .then(|| {
            tokio::spawn(crate::fleet::creds::expire(
                pause_settings.state_dir.clone(),
                commands.clone(),
            ))
        });
    // A maintenance or drain lease of this node goes back once it serves
    // with JetStream current: at start (after the reboot), and when told.
    let settle = std::sync::Arc::new(tokio::sync::Notify::new());
    let settler = tokio::spawn(crate::fleet::maintenance::settle(
        pause_settings.clone(),
        status.clone(),
        settle.clone(),
    ));
    let ops = std::sync::Arc::new(control::FleetOps {
        pause: access,
        settings: pause_settings,
        settle,
    });
    // Coordinated reboots: the reboot-required file is looked for beside
    // the supervisor, which only hears what to show and the maintenance.
    let rebooter = ops.settings.maintenance.reboot.clone().map(|r| {
        tokio::spawn(crate::fleet::reboot::watch(
            ops.clone(),
            r,
            commands.clone(),
            status.clone(),
        ))
    });
    let control = tokio::spawn(control::serve(
        listener,
        commands.clone(),
        status,
        fleet_table,
        ops,
    ));
    let signals = match forward_signals(commands.clone()) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("natsmeshd: cannot install signal handlers: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    drop(commands);
    let exit = supervisor.run(rx).await;
    control.abort();
    if let Some(e) = expiry {
        e.abort();
    }
    if let Some(h) = heartbeat {
        h.abort();
    }
    if let Some(g) = gate {
        g.abort();
    }
    signals.abort();
    if let Some(f) = follower {
        f.abort();
    }
    settler.abort();
    if let Some(r) = rebooter {
        r.abort();
    }
    for task in [publisher, member, ready, metrics, pause_watch]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket);
    match exit {
        Exit::Stopped => 0,
        Exit::CrashLoop(why) | Exit::Failed(why) => {
            eprintln!("natsmeshd: {why}");
            crate::EXIT_FAILURE
        }
    }
}

/// The first DNS answer, waiting for the region's servers before
/// JetStream's first start when asked (that start fixes the group size).
async fn first_answer(
    d: &crate::config::validate::Discovered,
    settings: &Settings,
    notifier: &Notifier,
) -> Result<
    (crate::discovery::Discovery, crate::discovery::Found, bool),
    crate::discovery::StartError,
> {
    let discovery = crate::discovery::Discovery::new(d.settings.clone())?;
    let first_jetstream_start =
        settings.server.jetstream.is_some() && !settings.state_dir.join("jetstream").exists();
    if d.bootstrap_expect > 1 && first_jetstream_start {
        notifier.status(&format!(
            "waiting for {} servers of the region in DNS (JetStream's first start)",
            d.bootstrap_expect
        ));
        // With self-publication every waiting server must show itself, or
        // all of them would wait for each other.
        let announcer = settings
            .publish
            .clone()
            .map(|p| tokio::spawn(crate::publish::announce_for_bootstrap(p)));
        let found = {
            let wait = crate::discovery::wait_for_peers(
                &discovery,
                d.bootstrap_expect,
                d.bootstrap_timeout,
            );
            tokio::pin!(wait);
            // The wait is bounded by bootstrap_timeout, which may be far
            // beyond the unit's TimeoutStartSec (machines of a new region
            // come up minutes apart): systemd is told the start goes on.
            let mut tick = tokio::time::interval(crate::supervisor::EXTEND_EVERY);
            loop {
                tokio::select! {
                    found = &mut wait => break found,
                    _ = tick.tick() => notifier.extend_timeout(crate::supervisor::EXTEND_EVERY * 3),
                }
            }
        };
        let mut announced = false;
        if let (Some(a), Some(p)) = (announcer, &settings.publish) {
            if found.is_ok() {
                // Peers still counting must see this node: finish the
                // announcement (bounded) before starting.
                announced = matches!(
                    tokio::time::timeout(p.withdraw_timeout, a).await,
                    Ok(Ok(()))
                );
            } else {
                // Not starting after all: take the announcement back.
                a.abort();
                crate::publish::reconcile_at_start(p).await;
            }
        }
        return Ok((discovery, found?, announced));
    }
    let found = match discovery.lookup().await {
        Ok((found, _)) => found,
        Err(e) => {
            tracing::warn!(error = %e, "no DNS answer at start; using the seeds");
            discovery.seeds_and_regions().await
        }
    };
    Ok((discovery, found, false))
}

/// SIGTERM and SIGINT stop (drain first); SIGHUP reloads.
fn forward_signals(
    commands: mpsc::Sender<Command>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            let cmd = tokio::select! {
                _ = term.recv() => Command::Stop,
                _ = int.recv() => Command::Stop,
                _ = hup.recv() => Command::Reload { reply: None },
            };
            if commands.send(cmd).await.is_err() {
                return;
            }
        }
    }))
}
