//! Clients that control what goes on the wire (python3 in the client namespace): a request in
//! exactly two segments, a request that completes the TCP handshake (the client delays its
//! final ACK until it has data, TCP_DEFER_ACCEPT on the connecting socket), a request in the
//! SYN (TCP Fast Open), segments with a forged source address; and the upload sink nginx
//! proxies `/upload` to.

use std::{
    io::Write as _,
    process::{Child, Stdio},
    time::Duration,
};

use crate::{
    nginx::UPLOAD_SINK_PORT,
    testbed::{SERVER_IP4, Testbed},
};

/// What a raw client saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first line of a response.
    Response(String),
    /// The connection was reset.
    Reset,
    /// Nothing within the wait, or the connection closed without a response.
    Nothing,
}

/// The python snippet that reads the response on socket `s` and prints the outcome.
const READ_RESPONSE: &str = "try:\n  data=b''\n  while b'\\r\\n' not in data:\n    b=s.recv(4096)\n    if not b: break\n    data+=b\n  print('RESPONSE '+data.split(b'\\r\\n')[0].decode() if data else 'NOTHING')\nexcept ConnectionResetError: print('RESET')\nexcept OSError: print('NOTHING')\n";

fn outcome(stdout: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().unwrap_or("").trim();
    if let Some(r) = line.strip_prefix("RESPONSE ") {
        Outcome::Response(r.to_string())
    } else if line == "RESET" {
        Outcome::Reset
    } else {
        Outcome::Nothing
    }
}

impl Testbed {
    fn python_in(&self, ns: &str, script: &str, stdin: &[u8]) -> std::process::Output {
        let mut child = self
            .command_in(ns, "python3".as_ref())
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("writing to python3");
        child.wait_with_output().expect("python3")
    }

    /// Sends `first`, waits until it has been acknowledged (so it travelled alone), then
    /// `second`, on one connection (Nagle off); returns what came back within `wait`.
    pub fn two_segments(&self, port: u16, first: &[u8], second: &[u8], wait: Duration) -> Outcome {
        let script = format!(
            "import socket,sys,time\n\
             d=sys.stdin.buffer.read(); n={n}\n\
             s=socket.create_connection(('{SERVER_IP4}',{port}),timeout={t})\n\
             s.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n\
             s.sendall(d[:n])\n\
             for _ in range(200):\n\
             \x20 i=s.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,104)\n\
             \x20 if int.from_bytes(i[24:28],'little')==0: break\n\
             \x20 time.sleep(0.005)\n\
             s.sendall(d[n:])\n{READ_RESPONSE}",
            n = first.len(),
            t = wait.as_secs_f64()
        );
        outcome(
            &self
                .python_in(self.client_ns(), &script, &[first, second].concat())
                .stdout,
        )
    }

    /// Connects with TCP_DEFER_ACCEPT on the client socket, which holds back the last ACK of
    /// the handshake until there is data: `payload` then completes the handshake. Returns what
    /// came back within `wait`.
    pub fn handshake_request(&self, port: u16, payload: &[u8], wait: Duration) -> Outcome {
        let script = format!(
            "import socket,sys\n\
             d=sys.stdin.buffer.read()\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_STREAM)\n\
             s.setsockopt(socket.IPPROTO_TCP,socket.TCP_DEFER_ACCEPT,5)\n\
             s.settimeout({t})\n\
             s.connect(('{SERVER_IP4}',{port}))\n\
             s.sendall(d)\n{READ_RESPONSE}",
            t = wait.as_secs_f64()
        );
        outcome(&self.python_in(self.client_ns(), &script, payload).stdout)
    }

    /// Sends `payload` in the SYN (TCP Fast Open, `MSG_FASTOPEN`; the namespaces' sysctls must
    /// allow it without a cookie) and returns what came back within `wait`.
    pub fn fast_open_request(&self, port: u16, payload: &[u8], wait: Duration) -> Outcome {
        let script = format!(
            "import socket,sys\n\
             d=sys.stdin.buffer.read()\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_STREAM)\n\
             s.settimeout({t})\n\
             try:\n\
             \x20 s.sendto(d,socket.MSG_FASTOPEN,('{SERVER_IP4}',{port}))\n\
             except ConnectionRefusedError: print('RESET'); sys.exit(0)\n\
             except ConnectionResetError: print('RESET'); sys.exit(0)\n{READ_RESPONSE}",
            t = wait.as_secs_f64()
        );
        outcome(&self.python_in(self.client_ns(), &script, payload).stdout)
    }

    /// Sends one TCP segment (PSH|ACK, arbitrary sequence numbers) carrying `payload` to the
    /// server from the forged address `src`, with no connection behind it.
    pub fn forged_segment(&self, src: &str, port: u16, payload: &[u8]) {
        let script = format!(
            "import socket,struct,sys,random\n\
             d=sys.stdin.buffer.read()\n\
             src=socket.inet_aton('{src}'); dst=socket.inet_aton('{SERVER_IP4}')\n\
             def csum(b):\n\
             \x20 if len(b)%2: b+=b'\\0'\n\
             \x20 s=sum(struct.unpack('!%dH'%(len(b)//2),b)); s=(s>>16)+(s&0xffff); s+=s>>16\n\
             \x20 return ~s&0xffff\n\
             sp=random.randint(20000,60000)\n\
             tcp=struct.pack('!HHIIBBHHH',sp,{port},random.getrandbits(32),random.getrandbits(32),5<<4,0x18,65535,0,0)+d\n\
             c=csum(src+dst+struct.pack('!BBH',0,6,len(tcp))+tcp)\n\
             tcp=tcp[:16]+struct.pack('!H',c)+tcp[18:]\n\
             ip=struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(tcp),1,0,64,6,0,src,dst)\n\
             ip=ip[:10]+struct.pack('!H',csum(ip))+ip[12:]\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n\
             s.sendto(ip+tcp,('{SERVER_IP4}',0))\n"
        );
        let out = self.python_in(self.client_ns(), &script, payload);
        assert!(
            out.status.success(),
            "forging a segment: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the upload sink in the server namespace: it reads each POST's whole body and
    /// answers `200` with `got <n> bytes`.
    pub fn start_upload_sink(&self) -> UploadSink {
        let script = format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20 protocol_version='HTTP/1.1'\n\
             \x20 def do_POST(self):\n\
             \x20   n=len(self.rfile.read(int(self.headers['Content-Length'])))\n\
             \x20   b=('got %d bytes\\n'%n).encode()\n\
             \x20   self.send_response(200); self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)\n\
             \x20 def log_message(self,*a): pass\n\
             s=http.server.HTTPServer(('127.0.0.1',{UPLOAD_SINK_PORT}),H)\n\
             print('ready',flush=True)\n\
             s.serve_forever()\n"
        );
        let mut child = self
            .command_in(self.server_ns(), "python3".as_ref())
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut ready = [0u8; 6];
        use std::io::Read as _;
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut ready)
            .expect("the upload sink starts");
        UploadSink(child)
    }

    /// Runs a command in the server namespace (e.g. `sysctl`), failing on error.
    pub fn in_server(&self, argv: &[&str]) -> anyhow::Result<std::process::Output> {
        self.run_in(self.server_ns(), argv)
    }

    /// Runs a command in the client namespace, failing on error.
    pub fn in_client(&self, argv: &[&str]) -> anyhow::Result<std::process::Output> {
        self.run_in(self.client_ns(), argv)
    }
}

/// The running upload sink; killed on drop.
pub struct UploadSink(Child);

impl Drop for UploadSink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
