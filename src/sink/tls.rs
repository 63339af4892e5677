//! TLS for the native destinations (PostgreSQL, MQTT): one rustls client
//! configuration with certificate and host name verification always on.
//! Trusted roots are the bundled Mozilla set, the system's, and an
//! optional `ca_file`; `client_cert_file` + `client_key_file` give an X.509
//! client identity (AWS IoT Core, a broker that requires one). There is no
//! key that turns verification off.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsFiles;

/// The client configuration for `files`, or what is wrong with them.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system's roots too, as a browser would trust them; an unreadable
    // system store is not an error (the bundled roots remain).
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca_file) = &files.ca_file {
        let certificates = read_certificates(ca_file, "ca_file")?;
        let (added, _) = roots.add_parsable_certificates(certificates);
        if added == 0 {
            return Err(format!(
                "ca_file {} holds no usable CA certificate",
                ca_file.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot set up TLS: {error}"))?
        .with_root_certificates(roots);
    match &files.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_file, key_file)) => {
            let chain = read_certificates(cert_file, "client_cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| {
                format!(
                    "client_key_file {} holds no usable private key: {error}",
                    key_file.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| {
                    format!(
                        "client_cert_file {} and client_key_file {} do not make a client identity: {error}",
                        cert_file.display(),
                        key_file.display()
                    )
                })
        }
    }
}

/// The certificates of a PEM file; at least one.
fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read {key} {}: {error}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{key} {} is not a PEM certificate: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{key} {} is not a PEM certificate (no -----BEGIN CERTIFICATE----- block)",
            path.display()
        ));
    }
    Ok(certificates)
}
