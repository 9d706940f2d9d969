//! The appliance image (`make image`) boots to a ready natsmeshd from
//! user-data alone: a copy of the raw disk, its root partition booted with
//! systemd as PID 1 in systemd-nspawn, a NoCloud seed of `natsmeshd
//! user-data` on it. natsmesh, its broker, cloud-init and time sync come
//! with the image; cloud-init picks its datasource from the image's list.
//!
//! The root partition is loop-mounted and booted with `-D`: `systemd-nspawn
//! --image=` needs udev on the host, which this machine (itself a
//! container) does not have ("--image= requires access to the host's /run/
//! hierarchy"). The bootloader is checked when the image is built
//! (`scripts/build-image`) and booted whole under QEMU by the last test.
//! Runs in the nextest `serial` group (root, containers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cloud::{nocloud_user_data, repo_and_pki, wait_ready};
use natsmesh_harness::container::{Container, MountedImage, Network};

/// The raw disk `make image` wrote; fails the test when there is none.
fn image() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image");
    let raw = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "raw"));
    raw.unwrap_or_else(|| panic!("no image in {}: run `make image`", dir.display()))
}

#[test]
fn the_appliance_image_boots_to_a_ready_member_from_its_user_data() {
    let (_, pki) = repo_and_pki();
    // natsmesh comes with the image: no repository, no package.
    let user_data = nocloud_user_data(&pki, "appliance-1", &["--appliance".to_owned()]);

    // A copy: booting writes to it.
    let copy = tempfile::Builder::new()
        .prefix("natsmesh-image-")
        .suffix(".raw")
        .tempfile()
        .unwrap();
    let ok = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image())
        .arg(copy.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "copy the image");
    let mounted = MountedImage::mount(copy.path());
    let root = mounted.path();
    let put = |path: &str, text: &str| {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    // The machine's medium: a NoCloud seed.
    put(
        "/var/lib/cloud/seed/nocloud/meta-data",
        "instance-id: appliance-1\nlocal-hostname: appliance-1\n",
    );
    put("/var/lib/cloud/seed/nocloud/user-data", &user_data);

    let c = Container::boot_dir(root, &Network::Private, &[]);
    wait_ready(&c, Duration::from_secs(90));

    // What the image brought: the built packages.
    let versions = c.ok(&[
        "dpkg-query",
        "-W",
        "-f",
        "${Package} ${Version}\n",
        "natsmesh",
        "natsmesh-broker",
    ]);
    assert!(
        versions.contains("natsmesh 0.1.0-1") && versions.contains("natsmesh-broker 2.15.1-1"),
        "{versions}"
    );
    assert_eq!(
        c.ok(&["systemctl", "is-enabled", "systemd-timesyncd"])
            .trim(),
        "enabled"
    );
    // cloud-init took the seed through the image's own datasource list,
    // which also has the clouds the image is for.
    let status = c.ok(&["cloud-init", "status", "--long"]);
    assert!(status.contains("DataSourceNoCloud"), "{status}");
    let cfg = c.ok(&["cat", "/etc/cloud/cloud.cfg.d/90-natsmesh.cfg"]);
    assert!(
        cfg.contains("DigitalOcean") && cfg.contains("Akamai"),
        "{cfg}"
    );
    c.ok(&[
        "python3",
        "-c",
        "import cloudinit.sources.DataSourceAkamai, cloudinit.sources.DataSourceDigitalOcean",
    ]);
    // A new machine: its own machine id, not the build's (empty in the image).
    assert_eq!(c.ok(&["cat", "/etc/machine-id"]).trim().len(), 32);
    let screen = c.ok(&["natsmeshd", "status"]);
    assert!(screen.contains("appliance-1 (region fra1)"), "{screen}");
    drop(c);
    drop(mounted);
}

/// The same image booted whole, by its own bootloader, in QEMU with
/// software emulation (`scripts/image-qemu`, as `make image-qemu`): a
/// bigger disk than the image (cloud-init grows the root file system), a
/// NoCloud seed volume of appliance user-data, QEMU's user-mode network
/// reaching nothing outside; natsmeshd must report ready (a unit ordered
/// after it marks the kernel log) within the bound.
#[test]
fn the_appliance_image_boots_in_qemu_to_a_ready_natsmeshd() {
    let _ = image();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("scripts/image-qemu"))
        .env("NATSMESH_QEMU_TIMEOUT", "420")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    print!("{said}");
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("natsmeshd ready"), "{said}");
}
