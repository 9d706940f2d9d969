//! Checks on NATS keys and the anonymous user's derived password, shared
//! by validation and authentication. A leaf.

use sha2::{Digest, Sha256};

/// Whether `k` is a public user nkey.
pub fn is_user_nkey(k: &str) -> bool {
    k.starts_with('U') && nkeys::KeyPair::from_public_key(k).is_ok()
}

/// Whether `k` is a public account nkey.
pub fn is_account_key(k: &str) -> bool {
    k.starts_with('A') && nkeys::KeyPair::from_public_key(k).is_ok()
}

/// The anonymous user's password. nats-server hands a credential-less
/// client the `no_auth_user`'s *stored* password and then checks it, so it
/// must be plain, not a bcrypt hash. It guards nothing (whoever could use
/// it may connect without credentials anyway), and is derived from the
/// account so the rendered file stays the same.
pub fn anonymous_password(account: &str) -> String {
    hex::encode(Sha256::digest(format!("natsmesh anonymous {account}")))
}
