//! A client's connection as the gateway's HTTP/1.1 server reads and writes it: a TCP socket,
//! cleartext or under TLS, split into its reading half (which the request body shares) and its
//! writing half, and put back together when hyper's server takes the connection over.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection. The TLS stream is boxed: it is several times larger than a socket, and
/// the value travels in the future of every connection.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The reading half of a [`ClientStream`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The writing half of a [`ClientStream`].
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
}

/// Makes the call on whichever stream `$self` holds (the cleartext and TLS types share the
/// method names of [`AsyncRead`] and [`AsyncWrite`]).
macro_rules! dispatch {
    ($ty:ident, $self:expr, $io:ident => $call:expr) => {
        match $self {
            $ty::Plain($io) => $call,
            $ty::Tls($io) => $call,
        }
    };
}

impl ClientStream {
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            ClientStream::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (ReadHalf::Plain(read), WriteHalf::Plain(write))
            }
            ClientStream::Tls(tls) => {
                let (read, write) = tokio::io::split(tls);
                (ReadHalf::Tls(read), WriteHalf::Tls(write))
            }
        }
    }

    /// The stream again, from the two halves [`ClientStream::split`] made of it.
    pub fn reunite(read: ReadHalf, write: WriteHalf) -> Option<ClientStream> {
        match (read, write) {
            (ReadHalf::Plain(read), WriteHalf::Plain(write)) => {
                read.reunite(write).ok().map(ClientStream::Plain)
            }
            (ReadHalf::Tls(read), WriteHalf::Tls(write)) if read.is_pair_of(&write) => {
                Some(ClientStream::Tls(read.unsplit(write)))
            }
            _ => None,
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        dispatch!(ReadHalf, self.get_mut(), io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        dispatch!(WriteHalf, self.get_mut(), io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        dispatch!(WriteHalf, self.get_mut(), io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        dispatch!(WriteHalf, self.get_mut(), io => Pin::new(io).poll_shutdown(cx))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        dispatch!(ClientStream, self.get_mut(), io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        dispatch!(ClientStream, self.get_mut(), io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        dispatch!(ClientStream, self.get_mut(), io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        dispatch!(ClientStream, self, io => io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        dispatch!(ClientStream, self.get_mut(), io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        dispatch!(ClientStream, self.get_mut(), io => Pin::new(io).poll_shutdown(cx))
    }
}
