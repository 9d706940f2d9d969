//! `natsmeshd user add`: makes a user's credentials, prints the secret once
//! and writes only its public part (an nkey) or its bcrypt hash into a
//! drop-in.

use std::io::Write as _;
use std::path::Path;

use crate::auth::random_password;

/// What `user add` was asked for.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// The account.
    pub account: &'a str,
    /// The user name (password users).
    pub name: &'a str,
    /// An nkey user instead of a password.
    pub nkey: bool,
    /// Publish allow list.
    pub publish: &'a [String],
    /// Subscribe allow list.
    pub subscribe: &'a [String],
    /// May reply to requests.
    pub allow_responses: bool,
    /// A leaf node's login at the leafnode listener, bound to `account`.
    pub leafnode: bool,
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| toml::Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Appends the user to `file` (a TOML drop-in) and returns what to tell
/// the operator, the secret included. The file is checked to still be
/// valid TOML; on any failure it is left as it was.
pub fn add(user: &NewUser<'_>, file: &Path) -> Result<String, String> {
    if natsmesh_broker::conf::Name::new(user.account).is_none() {
        return Err(format!(
            "account name {:?} may hold letters, digits, '_' and '-'",
            user.account
        ));
    }
    let (entry, secret) = if user.nkey {
        let kp = nkeys::KeyPair::new_user();
        let seed = kp.seed().map_err(|e| e.to_string())?;
        (
            format!("nkey = {}\n", toml::Value::String(kp.public_key())),
            format!("nkey seed: {seed}"),
        )
    } else {
        if user.name.is_empty()
            || user
                .name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("user name {:?} is not usable", user.name));
        }
        let pw = random_password()?;
        let hash = bcrypt::hash(&pw, 11).map_err(|e| format!("bcrypt: {e}"))?;
        (
            format!(
                "name = {}\npassword_hash = {}\n",
                toml::Value::String(user.name.to_owned()),
                toml::Value::String(hash)
            ),
            format!("password: {pw}"),
        )
    };
    let mut text = if user.leafnode {
        format!(
            "\n[[broker.leafnodes.users]]\n{entry}account = {}\n",
            toml::Value::String(user.account.to_owned())
        )
    } else {
        format!("\n[[accounts.{}.users]]\n{entry}", user.account)
    };
    if !user.publish.is_empty() {
        text.push_str(&format!("publish = {}\n", toml_list(user.publish)));
    }
    if !user.subscribe.is_empty() {
        text.push_str(&format!("subscribe = {}\n", toml_list(user.subscribe)));
    }
    if user.allow_responses {
        text.push_str("allow_responses = true\n");
    }
    let before = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let after = format!("{before}{text}");
    toml::from_str::<toml::Table>(&after).map_err(|e| {
        format!(
            "{} would not be valid TOML: {}",
            file.display(),
            e.message()
        )
    })?;
    crate::files::write_atomic(file, after.as_bytes(), crate::files::PLAIN)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let mut out = Vec::new();
    let who = if user.nkey {
        "an nkey user".to_owned()
    } else if user.leafnode {
        format!("leaf node user {:?}", user.name)
    } else {
        format!("user {:?}", user.name)
    };
    let _ = writeln!(
        out,
        "added {who} to account {} in {}",
        user.account,
        file.display()
    );
    let _ = writeln!(out, "{secret}");
    let _ = writeln!(
        out,
        "(shown once: only the public key or a bcrypt hash was written; `natsmeshd reload` to apply)"
    );
    Ok(String::from_utf8_lossy(&out).into_owned())
}
