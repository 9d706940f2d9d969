//! Roots and region intermediates made with the real `natsmeshd ca`, in a
//! scratch directory (`<root>/root.{crt,key}`, `<out>/<region>.{crt,key}`,
//! domain `nats.test`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use natsmesh_harness::scratch;

use super::NATSMESHD;

pub fn ca(args: &[&str]) {
    let out = Command::new(NATSMESHD)
        .arg("ca")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `[tls]` table of a node that issues its own certificate from an
/// intermediate (`issue` mode), trusting `ca_file`.
pub fn issue_config(
    ca_file: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    validity: &str,
) -> String {
    format!(
        "[tls]\nmode = \"issue\"\nca_file = \"{}\"\nintermediate_cert = \"{}\"\nintermediate_key = \"{}\"\nvalidity = \"{validity}\"\n",
        ca_file.display(),
        cert.display(),
        key.display()
    )
}

/// Roots and intermediates made with `natsmeshd ca`.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        Self { dir: scratch() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A root in `<name>/`.
    pub fn root(&self, name: &str) -> &Self {
        ca(&[
            "init",
            "--out",
            self.path(name).to_str().unwrap(),
            "--name",
            name,
        ]);
        self
    }

    /// An intermediate `<out>/<region>.{crt,key}` under root `<root>/`.
    pub fn intermediate(&self, root: &str, region: &str, out: &str) -> &Self {
        self.intermediate_with(root, region, out, &[])
    }

    /// The same with more `ca intermediate` arguments.
    pub fn intermediate_with(&self, root: &str, region: &str, out: &str, more: &[&str]) -> &Self {
        let (root, out) = (self.path(root), self.path(out));
        let mut args = vec![
            "intermediate",
            "--root",
            root.to_str().unwrap(),
            "--region",
            region,
            "--domain",
            "nats.test",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        ca(&args);
        self
    }

    /// What an attacker holding an intermediate's key mints with openssl
    /// (no natsmesh code involved): a server-and-client leaf for `san`
    /// (openssl's subjectAltName syntax, e.g. `DNS:a,IP:127.0.0.1`) signed
    /// by `<inter>.{crt,key}`, written as `<file>.key`, `<file>.leaf` (the
    /// leaf alone) and `<file>.crt` (leaf then issuer); returns the leaf.
    pub fn mint_with_openssl(&self, inter: &str, san: &str, file: &str) -> PathBuf {
        let p = |f: &str| self.path(f).to_str().unwrap().to_owned();
        let (key, csr, leaf) = (
            p(&format!("{file}.key")),
            p(&format!("{file}.csr")),
            p(&format!("{file}.leaf")),
        );
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-subj",
            "/CN=minted",
            "-addext",
            &format!("subjectAltName={san}"),
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth",
            "-out",
            &csr,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &p(&format!("{inter}.crt")),
            "-CAkey",
            &p(&format!("{inter}.key")),
            "-set_serial",
            "7",
            "-days",
            "1",
            "-copy_extensions",
            "copyall",
            "-out",
            &leaf,
        ]);
        let chain = std::fs::read_to_string(&leaf).unwrap()
            + &std::fs::read_to_string(self.path(&format!("{inter}.crt"))).unwrap();
        std::fs::write(self.path(&format!("{file}.crt")), chain).unwrap();
        self.path(&format!("{file}.leaf"))
    }

    /// Concatenates PEM files into `dest`.
    pub fn bundle(&self, dest: &str, parts: &[&str]) -> PathBuf {
        let text: String = parts
            .iter()
            .map(|p| std::fs::read_to_string(self.path(p)).unwrap())
            .collect();
        std::fs::write(self.path(dest), text).unwrap();
        self.path(dest)
    }
}

/// Runs openssl; fails the test with its message when it fails.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
