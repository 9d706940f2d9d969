//! `natsmeshd run`: the daemon. Wires the supervisor, the control socket,
//! signals and systemd together and turns the outcome into an exit code.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use std::path::PathBuf;

use crate::config::Settings;
use crate::control;
use crate::notify::Notifier;
use crate::shutdown::{GRACE, Tasks};
use crate::supervisor::{Command, Exit, Supervisor};

/// Runs until stopped; returns the process exit code.
pub async fn run(config_path: Option<PathBuf>, settings: Settings) -> i32 {
    let notifier = Notifier::from_env();
    // Every task below runs on these, with the supervisor's own work: when
    // supervision ends they end together, within the grace.
    let tasks = Tasks::default();
    let socket = settings.control_socket.clone();
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
    // starts: a taken port is a clear start-up failure — unless a broker
    // is handed over, which may be one a natsmeshd without the gate
    // started, still listening there itself: the gate then takes the
    // address when that broker restarts (`gate::bind_when_free`).
    let gate = match settings.gate.clone() {
        None => None,
        Some(g) => match tokio::net::TcpListener::bind(g.listen).await {
            Ok(l) => {
                tracing::info!(listen = %g.listen, broker = %g.broker, "gateway gate: a peer's claimed region must match its certificate");
                Some((Some(l), g))
            }
            Err(e) if handoff.is_some() && e.kind() == std::io::ErrorKind::AddrInUse => {
                Some((None, g))
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
            Ok(l) => Some((l, m.clone())),
            Err(e) => {
                tracing::warn!(listen = %m.listen, error = %e, "cannot serve /metrics; running without");
                None
            }
        },
    };
    // Signal handlers are installed before anything is spawned: failing
    // here leaves nothing running.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("natsmeshd: cannot install signal handlers: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    // What DNS finds, followed from its first answer.
    let (found_tx, found_rx) = match followed {
        Some((discovery, found, _)) => {
            let (tx, rx) = tokio::sync::watch::channel(found);
            (Some((discovery, tx)), Some(rx))
        }
        None => (None, None),
    };
    let (mut supervisor, status) = match Supervisor::new(
        config_path,
        settings,
        found_rx,
        notifier.clone(),
        tasks.clone(),
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("natsmeshd: {e}");
            notifier.status(&format!("failed: {e}"));
            // As before the error had kinds: a start refused here is the
            // configuration's exit code.
            return crate::EXIT_CONFIG;
        }
    };
    // The settings the broker runs with (the validated ones with what DNS
    // found and natsmeshd's logins), for the tasks that start with them.
    let settings = supervisor.spine().settings.borrow().clone();
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
    // Nothing fails from here on: the tasks start.
    match gate {
        Some((Some(l), g)) => {
            tasks.spawn(crate::gate::serve(l, g));
        }
        Some((None, g)) => {
            tasks.spawn(crate::gate::serve_when_free(g));
        }
        None => {}
    }
    let discovery_health = found_tx
        .as_ref()
        .map(|_| std::sync::Arc::new(crate::discovery::Health::default()));
    if let Some((discovery, tx)) = found_tx {
        let health = discovery_health.clone().unwrap_or_default();
        tasks.spawn(crate::discovery::follow(discovery, tx, health));
    }
    if let Some(p) = publish {
        let (up_tx, up_rx) = tokio::sync::watch::channel(crate::supervisor::Announced::default());
        supervisor.announce(crate::supervisor::Pointer::Dns, up_rx, p.withdraw_timeout);
        tasks.spawn(crate::publish::follow(
            p,
            status.clone(),
            up_tx,
            bootstrapped,
        ));
    }
    if let Some(l) = ready_listener {
        tasks.spawn(crate::balancer::ready::serve(l, status.clone()));
    }
    if let Some((l, m)) = metrics
        && let Some(broker) = crate::metrics::broker_monitor(&settings)
    {
        let gateways = settings
            .server
            .gateway
            .as_ref()
            .map(|g| g.gateways.iter().filter(|r| r.name != g.name).count() as u64);
        let sources = crate::metrics::Sources {
            status: status.clone(),
            broker,
            discovery: discovery_health.clone(),
            gateways_configured: gateways,
        };
        tasks.spawn(crate::metrics::serve(l, m, sources));
    }
    if let Some(b) = balancer {
        let (tx, rx) = tokio::sync::watch::channel(crate::supervisor::Announced::default());
        // Until the balancer is read, its health check is unknown.
        let budget = crate::balancer::stop_budget(&b, None);
        supervisor.announce(crate::supervisor::Pointer::LoadBalancer, rx, budget);
        tasks.spawn(crate::balancer::follow(b, status.clone(), tx));
    }
    // Every node's reports, heard in the system account (which needs
    // natsmeshd's system user).
    let fleet_table = settings.system_user.is_some().then(|| {
        let (tx, rx) = tokio::sync::watch::channel(crate::fleet::report::Table::default());
        tasks.spawn(crate::fleet::heartbeat::run(
            Settings::clone(&settings),
            status.clone(),
            tx,
        ));
        rx
    });
    // The fleet pause: followed beside the supervisor (seeded with the
    // last word kept, so a pause holds from the first moment), written
    // through the control socket.
    let access = crate::fleet::pause::Access::new(&settings);
    if let Ok(a) = access.as_ref() {
        let (tx, rx) =
            tokio::sync::watch::channel(crate::fleet::pause::cached(&settings.state_dir));
        supervisor.follow_fleet_pause(rx);
        tasks.spawn(crate::fleet::pause::watch(a.clone(), tx));
    }
    let (commands, rx) = mpsc::channel(16);
    // Operators' temporary users (`fleet creds`) expire beside the loop:
    // the task only sends the loop a reload, as `natsmeshd reload` does.
    if crate::fleet::creds::check_mode(settings.system_user.as_ref()).is_ok() {
        tasks.spawn(crate::fleet::creds::expire(
            settings.state_dir.clone(),
            commands.clone(),
        ));
    }
    // A maintenance or drain lease of this node goes back once it serves
    // with JetStream current: at start (after the reboot), and when told.
    let settle = std::sync::Arc::new(tokio::sync::Notify::new());
    tasks.spawn(crate::fleet::maintenance::settle(
        Settings::clone(&settings),
        status.clone(),
        settle.clone(),
    ));
    let ops = std::sync::Arc::new(control::FleetOps {
        pause: access,
        settings: Settings::clone(&settings),
        settle,
    });
    // Coordinated reboots: the reboot-required file is looked for beside
    // the supervisor, which only hears what to show and the maintenance.
    if let Some(r) = ops.settings.maintenance.reboot.clone() {
        tasks.spawn(crate::fleet::reboot::watch(
            ops.clone(),
            r,
            commands.clone(),
            status.clone(),
        ));
    }
    tasks.spawn(control::serve(
        listener,
        commands.clone(),
        status,
        fleet_table,
        ops,
    ));
    tasks.spawn(signals.forward(commands.clone()));
    drop(commands);
    // The supervisor shuts the tasks down as supervision ends (its own
    // awaited work, a lease release, may need the others no more); this
    // second call only confirms they are gone, and waits for nothing new.
    let exit = supervisor.run(rx).await;
    if !tasks.shutdown(GRACE).await {
        tracing::warn!("some of natsmeshd's tasks did not end within {GRACE:?}; left behind");
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

/// The signals natsmeshd answers, installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// SIGTERM and SIGINT stop (drain first); SIGHUP reloads. Runs until
    /// the supervisor stops listening (or the task is cancelled).
    async fn forward(mut self, commands: mpsc::Sender<Command>) {
        loop {
            let cmd = tokio::select! {
                _ = self.term.recv() => Command::Stop,
                _ = self.int.recv() => Command::Stop,
                _ = self.hup.recv() => Command::Reload { reply: None },
            };
            if commands.send(cmd).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time: a signal arrives from the OS, which paused time would not
    // wait for (its timeout would fire first, as it auto-advances).
    #[tokio::test]
    async fn signals_are_forwarded_until_the_shutdown_ends_the_task() {
        let tasks = Tasks::default();
        let (tx, mut rx) = mpsc::channel(4);
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => panic!("cannot install signal handlers: {e}"),
        };
        tasks.spawn(signals.forward(tx));
        let hup = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGHUP);
        assert!(hup.is_ok(), "{hup:?}");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(got, Ok(Some(Command::Reload { reply: None }))),
            "SIGHUP was not forwarded as a reload"
        );
        let t = tokio::time::Instant::now();
        assert!(tasks.shutdown(GRACE).await, "the forwarder did not end");
        assert!(t.elapsed() < GRACE);
        // Ended: its sender is gone.
        assert!(rx.recv().await.is_none());
    }
}
