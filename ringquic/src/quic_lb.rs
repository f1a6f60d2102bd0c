//! Connection IDs a QUIC-LB load balancer can route: the plaintext algorithm of
//! draft-ietf-quic-load-balancers-21 (§2 "First CID octet", §4 "Server ID Encoding"), with the
//! endpoint's shard number after the server ID.
//!
//! Layout of every CID [`QuicLbCidGenerator`] issues:
//!
//! ```text
//! first octet:  config rotation (3 bits) | CID length − 1, or random (5 bits)
//! server ID:    QuicLbConfig::server_id, as the load balancer was configured
//! shard:        one byte, the I/O thread (shard) of this host that owns the connection
//! nonce:        QuicLbConfig::nonce_len random bytes (at least 4)
//! ```
//!
//! A load balancer configured with this config rotation value and server ID length reads the
//! server ID from the octets after the first and routes every packet of the connection to
//! this host, whatever the client's address; to it, the shard byte and the nonce together are
//! the draft's nonce field. On the host, the shard byte is at a fixed offset, so the kernel can
//! steer each datagram to its shard's socket without any key.
//!
//! Privacy: with the plaintext algorithm an observer can read the server ID, and so link the
//! CIDs of one server (the draft says as much). The shard byte adds which core on that server;
//! the nonce stays random, so two CIDs of one connection are no more linkable than two of
//! different connections on the same core.
//!
//! Written by hand: no crate implements QUIC-LB CID generation for quinn-proto.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::{Rng, RngExt};

/// The longest connection ID QUIC version 1 allows.
const MAX_CID_LEN: usize = 20;

/// The config rotation codepoint reserved for unroutable CIDs (draft §2.2): never configured.
const UNROUTABLE_CONFIG: u8 = 0b111;

/// A QUIC-LB plaintext configuration, as a deployment's configuration agent hands it to every
/// host behind the load balancer (each host with its own server ID, the rest the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicLbConfig {
    /// The config rotation codepoint, 0 to 6 (7 is reserved for unroutable CIDs).
    pub config_id: u8,
    /// This host's server ID (at least 1 octet).
    pub server_id: Vec<u8>,
    /// Random octets after the shard byte (at least 4).
    pub nonce_len: usize,
    /// Whether the first octet's low 5 bits carry the CID's length minus one (draft §2.3),
    /// rather than random bits.
    pub encode_length: bool,
}

/// A [`QuicLbConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuicLbConfigError {
    /// The config rotation codepoint is not 0 to 6.
    #[error("config rotation codepoint {0} is not 0 to 6 (7 means unroutable)")]
    ConfigId(u8),
    /// The server ID is empty.
    #[error("the server ID must be at least one octet")]
    EmptyServerId,
    /// The nonce is shorter than the draft allows.
    #[error("the nonce must be at least 4 octets, not {0}")]
    NonceTooShort(usize),
    /// First octet, server ID, shard byte and nonce exceed QUIC v1's 20-octet limit.
    #[error("a {0}-octet connection ID is longer than QUIC v1's 20")]
    TooLong(usize),
}

impl QuicLbConfig {
    /// Check the configuration: the length of the CIDs it makes, or what is wrong with it.
    pub fn validate(&self) -> Result<usize, QuicLbConfigError> {
        if self.config_id >= UNROUTABLE_CONFIG {
            return Err(QuicLbConfigError::ConfigId(self.config_id));
        }
        if self.server_id.is_empty() {
            return Err(QuicLbConfigError::EmptyServerId);
        }
        if self.nonce_len < 4 {
            return Err(QuicLbConfigError::NonceTooShort(self.nonce_len));
        }
        let len = 1 + self.server_id.len() + 1 + self.nonce_len;
        if len > MAX_CID_LEN {
            return Err(QuicLbConfigError::TooLong(len));
        }
        Ok(len)
    }

    /// Where the shard byte sits in a CID of this configuration (for the kernel's steering).
    pub fn shard_offset(&self) -> usize {
        1 + self.server_id.len()
    }
}

/// Issues QUIC-LB plaintext connection IDs naming this host's server ID and one shard.
/// Install it with `EndpointConfig::cid_generator`.
#[derive(Debug, Clone)]
pub struct QuicLbCidGenerator {
    config: QuicLbConfig,
    shard: u8,
    len: usize,
    lifetime: Option<Duration>,
}

impl QuicLbCidGenerator {
    /// A generator for `config`, naming shard 0.
    pub fn new(config: QuicLbConfig) -> Result<Self, QuicLbConfigError> {
        let len = config.validate()?;
        Ok(Self {
            config,
            shard: 0,
            len,
            lifetime: None,
        })
    }

    /// The generator a sharded endpoint uses when no load balancer is configured
    /// ([`EndpointBuilder::shards`](crate::EndpointBuilder::shards) without
    /// [`quic_lb`](crate::EndpointBuilder::quic_lb)): the draft's codepoint for a server with no
    /// configuration (0b111, length self-encoded), no server ID, the shard octet and 7 random
    /// octets, 9 in all.
    pub(crate) fn unconfigured() -> Self {
        let config = QuicLbConfig {
            config_id: UNROUTABLE_CONFIG,
            server_id: Vec::new(),
            nonce_len: 7,
            encode_length: true,
        };
        Self {
            len: 1 + 1 + config.nonce_len,
            config,
            shard: 0,
            lifetime: None,
        }
    }

    /// The same configuration, naming `shard`.
    pub fn for_shard(&self, shard: u8) -> Self {
        Self {
            shard,
            ..self.clone()
        }
    }

    /// Retire each CID after `lifetime` (quinn-proto then issues a fresh one).
    pub fn set_lifetime(&mut self, lifetime: Duration) -> &mut Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &QuicLbConfig {
        &self.config
    }

    /// The shard its CIDs name.
    pub fn shard(&self) -> u8 {
        self.shard
    }
}

impl ConnectionIdGenerator for QuicLbCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut cid = [0u8; MAX_CID_LEN];
        let mut rng = rand::rng();
        let low = if self.config.encode_length {
            (self.len - 1) as u8
        } else {
            rng.random::<u8>()
        };
        cid[0] = (self.config.config_id << 5) | (low & 0x1f);
        let sid = self.config.server_id.len();
        cid[1..1 + sid].copy_from_slice(&self.config.server_id);
        cid[1 + sid] = self.shard;
        rng.fill_bytes(&mut cid[2 + sid..self.len]);
        ConnectionId::new(&cid[..self.len])
    }

    /// A CID of ours has our length, config rotation bits, server ID and shard: packets for
    /// anything else (a client's random Initial DCID aside, which quinn-proto routes before it
    /// asks) are dropped before any lookup.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let sid = self.config.server_id.len();
        let ours = cid.len() == self.len
            && cid[0] >> 5 == self.config.config_id
            && cid[1..1 + sid] == self.config.server_id[..]
            && cid[1 + sid] == self.shard;
        if ours {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        self.len
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QuicLbConfig {
        QuicLbConfig {
            config_id: 2,
            server_id: vec![0xc4, 0x60, 0x5e],
            nonce_len: 4,
            encode_length: true,
        }
    }

    #[test]
    fn refuses_what_the_draft_forbids() {
        let bad = |f: fn(&mut QuicLbConfig)| {
            let mut c = config();
            f(&mut c);
            QuicLbCidGenerator::new(c).unwrap_err()
        };
        assert_eq!(bad(|c| c.config_id = 7), QuicLbConfigError::ConfigId(7));
        assert_eq!(bad(|c| c.server_id.clear()), QuicLbConfigError::EmptyServerId);
        assert_eq!(bad(|c| c.nonce_len = 3), QuicLbConfigError::NonceTooShort(3));
        assert_eq!(bad(|c| c.server_id = vec![1; 15]), QuicLbConfigError::TooLong(21));
        let longest = QuicLbConfig {
            server_id: vec![1; 14],
            ..config()
        };
        assert_eq!(longest.validate(), Ok(20));
    }

    #[test]
    fn lays_out_first_octet_server_id_shard_and_random_nonce() {
        let mut g = QuicLbCidGenerator::new(config()).unwrap().for_shard(3);
        assert_eq!(g.cid_len(), 9);
        let a = g.generate_cid();
        let b = g.generate_cid();
        for cid in [&a, &b] {
            assert_eq!(cid.len(), 9);
            assert_eq!(cid[0], (2 << 5) | 8, "config 2, length 9 − 1");
            assert_eq!(&cid[1..4], &[0xc4, 0x60, 0x5e]);
            assert_eq!(cid[4], 3);
            assert!(g.validate(cid).is_ok());
        }
        assert_ne!(a[5..], b[5..], "the nonce is random");
        assert!(
            g.for_shard(4).validate(&a).is_err(),
            "another shard's CID is not ours"
        );
        let other = ConnectionId::new(&[0u8; 9]);
        assert!(g.validate(&other).is_err());
    }

    #[test]
    fn unconfigured_generators_are_marked_unroutable_and_still_name_the_shard() {
        let mut g = QuicLbCidGenerator::unconfigured().for_shard(5);
        let cid = g.generate_cid();
        assert_eq!(cid.len(), 9);
        assert_eq!(cid[0], (0b111 << 5) | 8);
        assert_eq!(cid[g.config().shard_offset()], 5);
        assert!(g.validate(&cid).is_ok());
        assert!(g.for_shard(4).validate(&cid).is_err());
    }

    #[test]
    fn random_low_bits_when_the_length_is_not_encoded() {
        let mut g = QuicLbCidGenerator::new(QuicLbConfig {
            encode_length: false,
            ..config()
        })
        .unwrap();
        let lows: std::collections::HashSet<u8> = (0..64).map(|_| g.generate_cid()[0] & 0x1f).collect();
        assert!(lows.len() > 8, "{lows:?}");
        assert!((0..64).all(|_| g.generate_cid()[0] >> 5 == 2));
    }
}
