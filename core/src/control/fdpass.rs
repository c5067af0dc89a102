//! Open files handed over a control connection.
//!
//! The VM process is confined to its own bundle and images (see `vivarium_vm::confine`), so it
//! cannot open a file the user picks later, such as a disc inserted while the VM runs. The CLI
//! or the app opens it, with the user's rights, and sends the open file along with the request
//! (`SCM_RIGHTS` ancillary data on the request's first bytes); the VM process reads requests
//! through a [`FileReader`], which keeps the files that arrived for the request that names
//! them. `vmm-sys-util`'s `ScmSocket` does the `sendmsg`/`recvmsg` work.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Files a connection may have waiting at once; more are closed as they arrive (a client
/// that sends files with requests that take none cannot make the VM process hoard them).
const MAX_WAITING_FILES: usize = 4;

/// Reads a stream socket like `Read`, keeping the files that come with the bytes.
#[derive(Debug)]
pub struct FileReader {
    stream: UnixStream,
    files: VecDeque<File>,
}

impl FileReader {
    /// Reads from `stream`.
    pub fn new(stream: UnixStream) -> FileReader {
        FileReader {
            stream,
            files: VecDeque::new(),
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &UnixStream {
        &self.stream
    }

    /// The oldest file received and not taken yet.
    pub fn take_file(&mut self) -> Option<File> {
        self.files.pop_front()
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, file) = self
            .stream
            .recv_with_fd(buf)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if let Some(file) = file {
            // Not inherited by anything the VM process starts.
            // SAFETY: fcntl on a descriptor this function owns (in `file`), with constant
            // arguments.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            if self.files.len() < MAX_WAITING_FILES {
                self.files.push_back(file);
            }
        }
        Ok(n)
    }
}

/// Writes all of `bytes` to `stream` without raising SIGPIPE when the other end has gone (the
/// write fails with `BrokenPipe` instead): the CLI leaves SIGPIPE's default on, so that
/// `vivarium list | head` ends quietly, and a VM process that ends while a client talks to it
/// must not kill the client.
pub fn write_all_no_sigpipe(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: send(2) reads `bytes.len()` bytes from a live slice on an open socket.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// `send`'s flag that turns SIGPIPE into an EPIPE error (Linux; macOS sockets get the same
/// from `SO_NOSIGPIPE`, set by [`no_sigpipe`]).
#[cfg(target_os = "linux")]
const MSG_NOSIGNAL: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const MSG_NOSIGNAL: libc::c_int = 0;

/// Makes writes on `stream` fail with EPIPE instead of raising SIGPIPE, on platforms where that
/// is a socket option (macOS); Linux passes a flag on each send instead.
pub fn no_sigpipe(stream: &UnixStream) {
    #[cfg(target_os = "macos")]
    {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads an int from a live local on an open socket.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(target_os = "macos"))]
    let _ = stream;
}

/// Writes `bytes` to `stream` with `file` attached to the first of them.
pub fn send_with_file(stream: &mut UnixStream, bytes: &[u8], file: &File) -> io::Result<()> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a file must travel with at least one byte",
        ));
    }
    let sent = loop {
        match stream.send_with_fd(bytes, file.as_raw_fd()) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    write_all_no_sigpipe(stream, &bytes[sent..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Seek, Write};

    #[test]
    fn a_file_sent_with_a_line_arrives_with_it_and_reads_the_same() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"the disc").unwrap();
        file.rewind().unwrap();
        send_with_file(&mut client, b"{\"type\":\"insert\"}\n", &file).unwrap();
        client.write_all(b"{\"type\":\"status\"}\n").unwrap();
        let mut reader = BufReader::new(FileReader::new(server));
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"type\":\"insert\"}\n");
        let mut received = reader.get_mut().take_file().expect("the file came along");
        let mut text = String::new();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "the disc");
        // SAFETY: fcntl F_GETFD on an open descriptor.
        let flags = unsafe { libc::fcntl(received.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"type\":\"status\"}\n");
        assert!(reader.get_mut().take_file().is_none());
    }

    /// With SIGPIPE's default on (as in the CLI), writing to a socket whose VM process has
    /// gone fails with BrokenPipe instead of killing the writer.
    #[test]
    fn a_write_to_a_closed_socket_fails_instead_of_raising_sigpipe() {
        let (client, server) = UnixStream::pair().unwrap();
        drop(server);
        // SAFETY: changing SIGPIPE's disposition for this test and back; no other test in
        // this crate writes to a closed pipe or socket in between without MSG_NOSIGNAL.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let result = write_all_no_sigpipe(&client, b"hello");
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGPIPE, previous) };
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_client_sending_many_files_leaves_at_most_a_few_waiting() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        for _ in 0..20 {
            send_with_file(&mut client, b"x", &file).unwrap();
        }
        drop(client);
        let mut reader = FileReader::new(server);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 20);
        let mut kept = 0;
        while reader.take_file().is_some() {
            kept += 1;
        }
        assert!(kept <= MAX_WAITING_FILES, "{kept} files kept");
        assert!(kept >= 1);
    }
}
