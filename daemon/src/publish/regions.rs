//! The list of regions keeps itself: each serving node makes sure its
//! region has a TXT record at `_nats-regions.<domain>` (one record per
//! region, added only when no record lists it yet, so any number of nodes
//! may do this at once), and a node leaving for good (decommission) takes
//! its region's record away when no route record of its region is left.
//! A plain stop never does: a region whose nodes restart still exists, and
//! a shrinking list would drop its gateways everywhere.
//!
//! Readers (discovery) take the union of every record at the name, each
//! split at whitespace, so an operator's older single record
//! (`"fra1 nyc3 sgp1"`) and the per-region records coexist; natsmesh never
//! removes a record that lists more than its own region.

use std::collections::BTreeSet;

use super::{Backend, Data, PublishError, Record};
pub use crate::config::settings::publish::RegionListing;

fn lists(record: &Record, region: &str) -> bool {
    matches!(&record.data, Data::Txt { text } if text.split_whitespace().any(|r| r == region))
}

/// Adds this region's record unless some record at the name lists it.
/// Returns whether it added one.
pub async fn list(
    backend: &mut Backend,
    l: &RegionListing,
    ttl: u32,
) -> Result<bool, PublishError> {
    let names = BTreeSet::from([l.record.name.clone()]);
    let present = backend.list(&names).await?;
    if present.iter().any(|p| lists(&p.record, &l.region)) {
        return Ok(false);
    }
    backend.add(&l.record, ttl).await?;
    Ok(true)
}

/// After this node's own records are gone, on a decommission only:
/// removes the region's own record(s) when the region has no route record
/// left. `routes` is the backend of the route records' zone, `regions`
/// the regions record's. Returns how many records it removed.
pub async fn delist_if_last(
    routes: &mut Backend,
    regions: &mut Backend,
    l: &RegionListing,
) -> Result<usize, PublishError> {
    if !l.decommissioned.exists() {
        return Ok(0);
    }
    let left = routes
        .list(&BTreeSet::from([l.route_record.clone()]))
        .await?;
    if left
        .iter()
        .any(|p| matches!(p.record.data, Data::Srv { .. }))
    {
        return Ok(0);
    }
    let present = regions
        .list(&BTreeSet::from([l.record.name.clone()]))
        .await?;
    let mut removed = 0;
    for p in present.iter().filter(|p| p.record == l.record) {
        regions.remove(p).await?;
        removed += 1;
    }
    Ok(removed)
}
