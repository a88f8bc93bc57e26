//! The control socket: a Unix stream socket (mode 0600) that only root or the socket's owner
//! may use, carrying the typed JSON-lines protocol of [`protocol`]. [`server`] answers it in
//! the daemon; [`client`] is how the CLI calls it.

pub mod client;
pub mod protocol;
pub mod server;
