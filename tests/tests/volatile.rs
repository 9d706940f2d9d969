//! The filesystem that loses what was not fsynced, mounted for real
//! (FUSE; needs root and /dev/fuse): files written through the kernel
//! without fsync are gone after a power loss, fsynced ones are kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Seek, SeekFrom, Write};

use natsmesh_harness::volatile::{Unsynced, Volatile};

fn mounted() -> (tempfile::TempDir, Volatile) {
    assert!(
        natsmesh_harness::is_root(),
        "mounting FUSE needs root (and /dev/fuse)"
    );
    let dir = tempfile::Builder::new()
        .prefix("natsmesh-volatile-")
        .tempdir()
        .unwrap();
    let fs = Volatile::mount(dir.path()).unwrap();
    (dir, fs)
}

#[test]
fn a_write_without_fsync_is_lost_with_the_power_and_an_fsynced_one_is_kept() {
    let (_dir, fs) = mounted();
    let root = fs.path().to_owned();
    std::fs::create_dir(root.join("jetstream")).unwrap();
    let kept = root.join("jetstream/kept.blk");
    let lost = root.join("jetstream/lost.blk");

    let mut f = std::fs::File::create(&kept).unwrap();
    f.write_all(b"fsynced").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" and then not").unwrap();
    drop(f); // close(2) makes nothing durable
    let mut g = std::fs::File::create(&lost).unwrap();
    g.write_all(b"never fsynced").unwrap();
    g.sync_data().unwrap(); // fdatasync counts too…
    g.seek(SeekFrom::Start(0)).unwrap();
    g.write_all(b"NEVER").unwrap(); // …for what was there then
    drop(g);
    assert_eq!(std::fs::read(&kept).unwrap(), b"fsynced and then not");
    assert_eq!(
        fs.unsynced(),
        Unsynced {
            files: 2,
            bytes: 13 + 5
        }
    );
    assert_eq!(fs.fsyncs(), 2);

    let took = fs.power_loss();
    assert_eq!(took.files, 2);
    assert_eq!(std::fs::read(&kept).unwrap(), b"fsynced");
    assert_eq!(std::fs::metadata(&kept).unwrap().len(), 7);
    assert_eq!(std::fs::read(&lost).unwrap(), b"never fsynced");

    // Metadata is durable at once: a renamed and a removed file stay so;
    // the data of a new name is lost, that of a file renamed over another
    // is kept (ext4's auto_da_alloc).
    std::fs::write(root.join("jetstream/new"), b"unsynced").unwrap();
    std::fs::rename(root.join("jetstream/new"), root.join("jetstream/fresh")).unwrap();
    std::fs::write(root.join("jetstream/replacement"), b"replaced").unwrap();
    std::fs::rename(root.join("jetstream/replacement"), &kept).unwrap();
    std::fs::remove_file(&lost).unwrap();
    // A file opened O_SYNC (as nats-server writes its Raft snapshots):
    // durable at each write.
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut s = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(nix::libc::O_SYNC)
            .open(root.join("jetstream/snap"))
            .unwrap();
        s.write_all(b"snapshot").unwrap();
    }
    fs.power_loss();
    assert_eq!(std::fs::read(root.join("jetstream/fresh")).unwrap(), b"");
    assert_eq!(std::fs::read(&kept).unwrap(), b"replaced");
    assert_eq!(
        std::fs::read(root.join("jetstream/snap")).unwrap(),
        b"snapshot"
    );
    assert!(!lost.exists());
    let names: Vec<_> = std::fs::read_dir(root.join("jetstream"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["fresh", "kept.blk", "snap"]);
}
