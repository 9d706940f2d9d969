//! Addresses derived from listeners, shared by the prober, the `$SYS`
//! client, metrics and the gate. A leaf.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use natsmesh_broker::model::{Listen, Port};

/// The address a local prober dials for a listener: its bind address, or
/// loopback when it binds every address.
pub fn local_addr(l: &Listen) -> Option<SocketAddr> {
    let Port::Fixed(port) = l.port else {
        return None;
    };
    let ip = match l.host {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(SocketAddr::new(ip, port))
}

/// The broker's own gateway listener behind a gate on `public`: the same
/// port on loopback (127.0.0.1, or 127.0.0.2 when the gate itself is on
/// 127.0.0.1), or, behind a gate on every address, `internal_port` on
/// 127.0.0.1.
pub fn broker_listener(public: SocketAddr, internal_port: u16) -> SocketAddr {
    let lo = IpAddr::from([127, 0, 0, 1]);
    match public.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(lo, internal_port),
        ip if ip == lo => SocketAddr::new(IpAddr::from([127, 0, 0, 2]), public.port()),
        _ => SocketAddr::new(lo, public.port()),
    }
}
