//! Machines that lose power: a node's state directory (its JetStream
//! store with it) on a filesystem that forgets whatever was not fsynced
//! (`natsmesh_harness::volatile`), so a drill can kill a machine's
//! processes and then take its unsynced writes too.

use std::collections::BTreeMap;

use natsmesh_harness::volatile::{Unsynced, Volatile};

use super::mesh::Mesh;

/// The volatile stores of some of a mesh's nodes. Drop it after the mesh
/// (declare it first): the nodes must be gone before their stores are
/// unmounted.
pub struct Stores {
    /// Before `dir`: fields drop in order, and the mounts must be gone
    /// before their directory is removed.
    mounts: BTreeMap<String, Volatile>,
    dir: tempfile::TempDir,
}

impl Default for Stores {
    fn default() -> Self {
        Self::new()
    }
}

impl Stores {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("natsmesh-power-")
            .tempdir()
            .unwrap();
        Self {
            dir,
            mounts: BTreeMap::new(),
        }
    }

    /// Puts `node`'s state directory on a volatile filesystem of its own
    /// (before the node starts).
    pub fn attach(&mut self, mesh: &mut Mesh, node: &str) {
        let at = self.dir.path().join(node);
        std::fs::create_dir_all(&at).unwrap();
        let fs = Volatile::mount(&at)
            .unwrap_or_else(|e| panic!("mounting a FUSE filesystem on {}: {e}", at.display()));
        mesh.state_dirs.insert(node.to_owned(), at.join("state"));
        self.mounts.insert(node.to_owned(), fs);
    }

    /// `node`'s power goes (its processes must already be dead): its store
    /// reverts to what was fsynced. Returns what was lost.
    pub fn power_loss(&self, node: &str) -> Unsynced {
        self.store(node).power_loss()
    }

    pub fn store(&self, node: &str) -> &Volatile {
        self.mounts
            .get(node)
            .unwrap_or_else(|| panic!("{node} has no volatile store"))
    }
}
