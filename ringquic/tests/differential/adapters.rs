//! `adapter_common!(crate)`: the connect/accept helpers every scenario uses, written once on
//! top of the per-implementation `imp` module (endpoint creation, stream limits).

macro_rules! adapter_common {
    ($q:ident) => {
        /// Helpers for the scenarios, on top of `imp`.
        #[allow(dead_code)]
        pub mod h {
            use std::{net::SocketAddr, sync::Arc};

            use crate::differential::support::*;
            use $q::{
                ClientConfig, Connection, Dir, Endpoint, EndpointConfig, RecvStream, SendStream,
                ServerConfig, TransportConfig, VarInt,
            };

            pub use super::imp;

            /// An endpoint on the socket `at` names, serving with `server` if given, connecting
            /// with `client` by default if given.
            pub fn endpoint(
                config: EndpointConfig,
                server: Option<ServerConfig>,
                client: Option<ClientConfig>,
                at: impl Into<Bind>,
            ) -> Endpoint {
                let mut e = imp::endpoint(config, server, at.into());
                if let Some(c) = client {
                    e.set_default_client_config(c);
                }
                e
            }

            /// A server endpoint on 127.0.0.1.
            pub fn server(cfg: ServerConfig) -> Endpoint {
                endpoint(EndpointConfig::default(), Some(cfg), None, localhost())
            }

            /// A client endpoint on 127.0.0.1 with `cfg` as its default client configuration.
            pub fn client(cfg: ClientConfig) -> Endpoint {
                client_at(cfg, localhost())
            }

            /// A client endpoint bound to `addr`.
            pub fn client_at(cfg: ClientConfig, addr: SocketAddr) -> Endpoint {
                endpoint(EndpointConfig::default(), None, Some(cfg), addr)
            }

            /// Connect `client` to `to` and accept on `server`: (client side, server side).
            pub async fn connect_via(
                server: &Endpoint,
                client: &Endpoint,
                to: SocketAddr,
            ) -> (Connection, Connection) {
                let connecting = client.connect(to, "localhost").expect("connect");
                let (c, s) = within(10, "handshake", async {
                    tokio::join!(connecting, async {
                        server.accept().await.expect("incoming").await
                    })
                })
                .await;
                (c.expect("client handshake"), s.expect("server handshake"))
            }

            /// [`connect_via`] straight to the server's address.
            pub async fn connect(server: &Endpoint, client: &Endpoint) -> (Connection, Connection) {
                connect_via(server, client, server.local_addr().unwrap()).await
            }

            /// Two endpoints and one established connection between them.
            pub struct Pair {
                pub server_ep: Endpoint,
                pub client_ep: Endpoint,
                /// The client's side of the connection.
                pub client: Connection,
                /// The server's side of the connection.
                pub server: Connection,
                pub cert: Cert,
            }

            /// A connected [`Pair`] with the suite's default transport.
            pub async fn pair() -> Pair {
                pair_with(|_| {}, |_| {}).await
            }

            /// A connected [`Pair`]; `st` and `ct` adjust the server's and the client's transport.
            pub async fn pair_with(
                st: impl FnOnce(&mut TransportConfig),
                ct: impl FnOnce(&mut TransportConfig),
            ) -> Pair {
                let cert = cert();
                let server_ep = server(server_cfg(&cert, transport(st)));
                let client_ep = client(client_cfg(&cert, transport(ct)));
                let (client, server) = connect(&server_ep, &client_ep).await;
                Pair {
                    server_ep,
                    client_ep,
                    client,
                    server,
                    cert,
                }
            }

            /// A connected [`Pair`] whose server lets the client open only `n` concurrent
            /// streams of direction `dir`.
            pub async fn pair_with_stream_limit(dir: Dir, n: u32) -> Pair {
                let limit = move |t: &mut TransportConfig| {
                    match dir {
                        Dir::Bi => t.max_concurrent_bidi_streams(VarInt::from_u32(n)),
                        Dir::Uni => t.max_concurrent_uni_streams(VarInt::from_u32(n)),
                    };
                };
                pair_with(limit, |_| {}).await
            }

            /// A server endpoint and a client endpoint that trust it, not connected.
            pub fn endpoints() -> (Endpoint, Endpoint, Cert) {
                endpoints_with(|_| {})
            }

            /// [`endpoints`], `tweak` adjusting both sides' transport.
            pub fn endpoints_with(tweak: impl Fn(&mut TransportConfig)) -> (Endpoint, Endpoint, Cert) {
                let cert = cert();
                let s = server(server_cfg(&cert, transport(&tweak)));
                let c = client(client_cfg(&cert, transport(&tweak)));
                (s, c, cert)
            }

            /// Open a unidirectional stream on `p`'s client and write `data` on it (and finish
            /// it if `finish`).
            pub async fn sent_uni(p: &Pair, data: &[u8], finish: bool) -> SendStream {
                let mut s = p.client.open_uni().await.unwrap();
                s.write_all(data).await.unwrap();
                if finish {
                    s.finish().unwrap();
                }
                s
            }

            /// [`sent_uni`], and the stream accepted on `p`'s server (5 s at most).
            pub async fn uni_stream(p: &Pair, data: &[u8], finish: bool) -> (SendStream, RecvStream) {
                let s = sent_uni(p, data, finish).await;
                let r = within(5, "accept_uni", p.server.accept_uni())
                    .await
                    .unwrap();
                (s, r)
            }

            /// A client configuration for `cert` with an adjusted transport.
            pub fn client_cfg_with(cert: &Cert, t: impl FnOnce(&mut TransportConfig)) -> ClientConfig {
                client_cfg(cert, transport(t))
            }

            /// A server configuration for `cert` with an adjusted transport.
            pub fn server_cfg_with(cert: &Cert, t: impl FnOnce(&mut TransportConfig)) -> ServerConfig {
                server_cfg(cert, transport(t))
            }

            pub fn arc<T>(t: T) -> Arc<T> {
                Arc::new(t)
            }
        }
    };
}
