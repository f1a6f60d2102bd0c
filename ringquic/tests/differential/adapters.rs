//! `adapter_common!(crate)`: the connect/accept helpers every scenario uses, written once on
//! top of the per-implementation `imp` module (endpoint creation, stream limits).

macro_rules! adapter_common {
    ($q:ident) => {
        /// Helpers for the scenarios, on top of `imp`.
        #[allow(dead_code)]
        pub mod h {
            use std::{net::SocketAddr, sync::Arc};

            use crate::differential::support::*;
            use $q::{ClientConfig, Connection, Endpoint, EndpointConfig, ServerConfig, TransportConfig};

            pub use super::imp;

            /// A server endpoint on 127.0.0.1.
            pub fn server(cfg: ServerConfig) -> Endpoint {
                imp::endpoint(EndpointConfig::default(), Some(cfg), None, localhost())
            }

            /// A client endpoint on 127.0.0.1 with `cfg` as its default client configuration.
            pub fn client(cfg: ClientConfig) -> Endpoint {
                imp::endpoint(EndpointConfig::default(), None, Some(cfg), localhost())
            }

            /// A client endpoint bound to `addr`.
            pub fn client_at(cfg: ClientConfig, addr: SocketAddr) -> Endpoint {
                imp::endpoint(EndpointConfig::default(), None, Some(cfg), addr)
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

            /// A server endpoint and a client endpoint that trust it, not connected.
            pub fn endpoints() -> (Endpoint, Endpoint, Cert) {
                let cert = cert();
                let s = server(server_cfg(&cert, transport(|_| {})));
                let c = client(client_cfg(&cert, transport(|_| {})));
                (s, c, cert)
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
