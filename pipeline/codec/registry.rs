//! How storepulse reaches a Confluent-compatible schema registry: its URL, the certificate
//! authorities trusted for `https://` (the system's, plus an optional CA file for a private
//! one) and the credentials (basic or bearer). Credentials never print: `Debug` redacts them,
//! and they only leave the process in the `Authorization` header.

use base64::Engine;
use std::time::Duration;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

/// Credentials for the registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    /// HTTP basic authentication (Confluent Cloud: API key and secret).
    Basic {
        /// User name or API key.
        username: String,
        /// Password or API secret.
        password: String,
    },
    /// A bearer token (OAuth).
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl RegistryAuth {
    /// The `Authorization` header's value.
    pub fn header(&self) -> String {
        match self {
            RegistryAuth::Basic { username, password } => {
                let pair = format!("{username}:{password}");
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
            }
            RegistryAuth::Bearer(token) => format!("Bearer {token}"),
        }
    }
}

/// A schema registry and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryClient {
    /// Base URL, without trailing slash.
    pub url: String,
    /// PEM certificates trusted besides the system's, for a registry with a private CA.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// Credentials, if the registry asks for them.
    pub auth: Option<RegistryAuth>,
}

impl RegistryClient {
    /// A registry at `url` with the system's roots and no credentials.
    pub fn plain(url: &str) -> Self {
        RegistryClient { url: url.trim_end_matches('/').to_owned(), extra_roots_pem: None, auth: None }
    }

    /// The certificates of a PEM file's text.
    ///
    /// # Errors
    /// A message when the text holds no certificate or a broken one.
    pub fn certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
        let mut certificates = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            if let PemItem::Certificate(certificate) = item.map_err(|e| e.to_string())? {
                certificates.push(certificate);
            }
        }
        if certificates.is_empty() {
            return Err("holds no PEM certificate".to_owned());
        }
        Ok(certificates)
    }

    /// An HTTP agent with timeouts that trusts the system's roots and the extra ones.
    ///
    /// # Errors
    /// A message when the extra roots are not PEM certificates.
    pub fn agent(&self) -> Result<ureq::Agent, String> {
        let roots = match &self.extra_roots_pem {
            None => RootCerts::PlatformVerifier,
            Some(pem) => {
                // A CA file adds to the system's roots: with specific roots native-tls drops
                // its own, so they are loaded here too.
                let system = rustls_native_certs::load_native_certs().certs;
                let mut roots: Vec<Certificate<'static>> =
                    system.iter().map(|der| Certificate::from_der(der.as_ref()).to_owned()).collect();
                roots.extend(Self::certificates(pem)?);
                RootCerts::new_with_certs(&roots)
            }
        };
        Ok(agent_trusting(roots))
    }
}

/// An HTTP agent with timeouts, which returns error statuses as responses, trusting `roots`.
pub(super) fn agent_trusting(roots: RootCerts) -> ureq::Agent {
    let tls = TlsConfig::builder().provider(TlsProvider::NativeTls).root_certs(roots).build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print_and_make_the_standard_headers() {
        let basic = RegistryAuth::Basic { username: "key".into(), password: "hunter2".into() };
        assert_eq!(basic.header(), "Basic a2V5Omh1bnRlcjI=");
        assert!(!format!("{basic:?}").contains("hunter2"));
        let bearer = RegistryAuth::Bearer("t0ken".into());
        assert_eq!(bearer.header(), "Bearer t0ken");
        let client = RegistryClient { auth: Some(bearer), ..RegistryClient::plain("https://registry/") };
        assert_eq!(client.url, "https://registry");
        assert!(!format!("{client:?}").contains("t0ken"));
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        assert!(RegistryClient::certificates(b"not pem").is_err());
        let broken = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(RegistryClient::certificates(broken).is_err());
    }
}
