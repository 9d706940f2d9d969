//! RFC 2136 dynamic update signed with TSIG (RFC 8945), for self-hosted
//! DNS (BIND, Knot, PowerDNS). Adds and deletes are per record and by
//! content (RFC 2136 §2.5.1 and §2.5.4), so a peer's records at the same
//! name are never touched; listing is a plain query to the primary.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::ResponseCode;
use hickory_net::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_net::proto::rr::rdata::{A, AAAA, SRV, TXT};
use hickory_net::proto::rr::{DNSClass, Name, RData, RecordType, TSigner};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::xfer::DnsMultiplexer;

use super::record::normal;
use super::secret::Secret;
use super::{Data, Present, PublishError, Record};
pub use crate::config::settings::publish::ALGORITHMS;
use crate::provider::DnsZone;

/// Per request, and for the TCP connection.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Allowed clock difference for TSIG (BIND's default fudge is 300 s).
const FUDGE: u16 = 300;

/// One primary server and its key.
pub struct Rfc2136 {
    server: SocketAddr,
    key_name: String,
    algorithm: String,
    secret_file: PathBuf,
    zone: String,
}

impl Rfc2136 {
    /// Nothing is read or contacted until the first call.
    pub fn new(
        server: SocketAddr,
        key_name: &str,
        algorithm: &str,
        secret_file: PathBuf,
        zone: &str,
    ) -> Self {
        Self {
            server,
            key_name: key_name.to_owned(),
            algorithm: algorithm.to_owned(),
            secret_file,
            zone: normal(zone),
        }
    }

    /// A TCP connection whose requests are TSIG-signed; the secret is read
    /// now, so a rotated credential takes effect on the next pass.
    async fn connect(&self) -> Result<Client<TokioRuntimeProvider>, PublishError> {
        let what = || format!("connecting to {}", self.server);
        let secret = Secret::read(&self.secret_file, "TSIG secret")?;
        let key = decode_base64(tsig_secret(secret.expose())).ok_or_else(|| {
            PublishError::new(
                "reading the TSIG secret",
                format!("{} is not base64", self.secret_file.display()),
            )
        })?;
        let algorithm = algorithm(&self.algorithm).ok_or_else(|| {
            PublishError::new(
                what(),
                format!("unsupported TSIG algorithm {:?}", self.algorithm),
            )
        })?;
        let key_name = name(&self.key_name)?;
        let signer = TSigner::new(key, algorithm, key_name, FUDGE)
            .map_err(|e| PublishError::new(what(), e.to_string()))?;
        let (connect, handle) = TcpClientStream::new(
            self.server,
            None,
            Some(TIMEOUT),
            TokioRuntimeProvider::default(),
        );
        let stream = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| PublishError::new(what(), "timed out"))?
            .map_err(|e| PublishError::new(what(), e.to_string()))?;
        let mux = DnsMultiplexer::new(stream, handle)
            .with_timeout(TIMEOUT)
            .with_signer(signer);
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(mux);
        tokio::spawn(background);
        Ok(client)
    }

    /// The SRV, A, AAAA and TXT records at `names`, as the primary answers.
    async fn list_names(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        let mut client = self.connect().await?;
        let mut out = Vec::new();
        for n in names {
            let qname = name(n)?;
            for qtype in [
                RecordType::SRV,
                RecordType::A,
                RecordType::AAAA,
                RecordType::TXT,
            ] {
                let what = || format!("query {n} {qtype} at {}", self.server);
                let answer = match client.query(qname.clone(), DNSClass::IN, qtype).await {
                    Ok(a) => a,
                    Err(e) if e.is_no_records_found() => continue,
                    Err(e) => return Err(PublishError::new(what(), e.to_string())),
                };
                let code = answer.metadata.response_code;
                if code != ResponseCode::NoError && code != ResponseCode::NXDomain {
                    return Err(PublishError::new(what(), code.to_string()));
                }
                for r in &answer.answers {
                    if normal(&r.name.to_ascii()) != *n {
                        continue; // a CNAME chain or glue: not a record at this name
                    }
                    if let Some(record) = from_rdata(n, &r.data) {
                        out.push(Present {
                            record,
                            id: String::new(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds one record (a duplicate is ignored by the server, §2.5.1).
    async fn add_record(&mut self, record: &Record, ttl: u32) -> Result<(), PublishError> {
        let rr = to_record(record, ttl)?;
        let mut client = self.connect().await?;
        let answer = client.append(rr, name(&self.zone)?, false).await;
        self.outcome(&format!("update: add {record}"), answer)
    }

    /// Deletes exactly this record (§2.5.4).
    async fn remove_record(&mut self, record: &Record) -> Result<(), PublishError> {
        let rr = to_record(record, 0)?;
        let mut client = self.connect().await?;
        let answer = client.delete_by_rdata(rr, name(&self.zone)?).await;
        self.outcome(&format!("update: delete {record}"), answer)
    }

    fn outcome(
        &self,
        what: &str,
        answer: Result<hickory_net::proto::op::DnsResponse, hickory_net::NetError>,
    ) -> Result<(), PublishError> {
        let what = format!("{what} at {}", self.server);
        match answer {
            Ok(a) if a.metadata.response_code == ResponseCode::NoError => Ok(()),
            Ok(a) => Err(PublishError::new(
                what,
                refused_why(a.metadata.response_code),
            )),
            Err(e) => Err(PublishError::new(what, net_why(&e))),
        }
    }
}

/// Deletes by content (RFC 2136 §2.5.4), so `Present`'s id is unused.
#[async_trait::async_trait]
impl DnsZone for Rfc2136 {
    async fn list(&mut self, names: &BTreeSet<String>) -> Result<Vec<Present>, PublishError> {
        self.list_names(names).await
    }

    async fn add(&mut self, record: &Record, ttl: u32) -> Result<(), PublishError> {
        self.add_record(record, ttl).await
    }

    async fn remove(&mut self, present: &Present) -> Result<(), PublishError> {
        self.remove_record(&present.record).await
    }
}

/// hickory's words, except where a refused signature comes back as a
/// protocol error (BIND answers a bad key with NOTAUTH and a TSIG record
/// whose MAC is empty, which hickory cannot parse).
fn net_why(e: &hickory_net::NetError) -> String {
    let text = e.to_string();
    if text.contains("HMAC") || text.contains("TSIG") {
        format!(
            "the server refused the TSIG signature: the key name, secret or algorithm does not match the server's key ({text})"
        )
    } else {
        text
    }
}

/// RCODEs an operator meets, in words that say what to fix.
fn refused_why(code: ResponseCode) -> String {
    match code {
        ResponseCode::NotAuth => {
            "NOTAUTH: the server does not accept this key (name, secret or algorithm) or is not authoritative for the zone".into()
        }
        ResponseCode::Refused => "REFUSED: the zone's update policy does not allow this key".into(),
        ResponseCode::NotZone => "NOTZONE: the record is outside the zone".into(),
        other => other.to_string(),
    }
}

fn name(s: &str) -> Result<Name, PublishError> {
    let mut n = Name::from_ascii(s)
        .map_err(|e| PublishError::new(format!("DNS name {s:?}"), e.to_string()))?;
    n.set_fqdn(true);
    Ok(n)
}

fn algorithm(s: &str) -> Option<TsigAlgorithm> {
    match s.to_ascii_lowercase().as_str() {
        "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
        _ => None,
    }
}

fn to_record(r: &Record, ttl: u32) -> Result<hickory_net::proto::rr::Record, PublishError> {
    let rdata = match &r.data {
        Data::A { address } => RData::A(A(*address)),
        Data::Aaaa { address } => RData::AAAA(AAAA(*address)),
        Data::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        Data::Txt { text } => RData::TXT(TXT::new(vec![text.clone()])),
    };
    let mut rr = hickory_net::proto::rr::Record::from_rdata(name(&r.name)?, ttl, rdata);
    rr.dns_class = DNSClass::IN;
    Ok(rr)
}

fn from_rdata(name: &str, data: &RData) -> Option<Record> {
    let data = match data {
        RData::A(a) => Data::A { address: a.0 },
        RData::AAAA(a) => Data::Aaaa { address: a.0 },
        RData::SRV(s) => Data::Srv {
            priority: s.priority,
            weight: s.weight,
            port: s.port,
            target: normal(&s.target.to_ascii()),
        },
        RData::TXT(t) => Data::Txt {
            text: t
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect::<String>(),
        },
        _ => return None,
    };
    Some(Record {
        name: name.to_owned(),
        data,
    })
}

/// The secret itself, from either a bare base64 line or the key clause
/// `tsig-keygen` prints (`key "n" { algorithm …; secret "…"; };`).
pub fn tsig_secret(text: &str) -> &str {
    text.split_once("secret")
        .and_then(|(_, rest)| rest.split('"').nth(1))
        .unwrap_or(text)
}

/// Standard base64 (as `tsig-keygen` writes), padding optional.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use data_encoding::BASE64;
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let padded = match s.len() % 4 {
        0 => s,
        2 => s + "==",
        3 => s + "=",
        _ => return None,
    };
    BASE64
        .decode(padded.as_bytes())
        .ok()
        .filter(|k| !k.is_empty())
}
