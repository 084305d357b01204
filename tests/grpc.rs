//! End to end: gRPC (unary, bidirectional streaming, error statuses) through the real
//! `weir` binary to a real tonic server, over HTTP/2 both ways.

mod support;

use std::pin::Pin;

use support::*;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weir_protos::echo::echo_client::EchoClient;
use weir_protos::echo::echo_server::{Echo, EchoServer};
use weir_protos::echo::{EchoReply, EchoRequest};

struct EchoService {
    name: &'static str,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        if req.fail_with != 0 {
            return Err(Status::new(
                tonic::Code::from(req.fail_with),
                format!("failed on purpose: {}", req.message),
            ));
        }
        Ok(Response::new(EchoReply {
            message: req.message,
            served_by: self.name.to_string(),
        }))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

    async fn stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let name = self.name;
        let out = req.into_inner().map(move |m| {
            m.map(|m| EchoReply {
                message: m.message,
                served_by: name.to_string(),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

async fn start_echo(name: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService { name }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_errors_cross_the_proxy() {
    let primary = start_echo("primary").await;
    let canary = start_echo("canary").await;
    let weir = Weir::start(&format!(
        r#"services:
  - name: echo
    versions:
      primary: {{ endpoints: ["{primary}"], http2: true }}
      canary: {{ endpoints: ["{canary}"], http2: true }}
    routes:
      - match: {{ headers: {{ x-canary: {{ exact: always }} }} }}
        to: canary
      - to: primary
"#
    ));
    let mut client = EchoClient::connect(weir.url(""))
        .await
        .expect("connect through weir");
    let reply = client
        .unary(EchoRequest {
            message: "hi".into(),
            fail_with: 0,
        })
        .await
        .expect("unary call")
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.served_by.as_str()),
        ("hi", "primary")
    );

    let mut req = Request::new(EchoRequest {
        message: "to canary".into(),
        fail_with: 0,
    });
    req.metadata_mut()
        .insert("x-canary", "always".parse().expect("metadata"));
    assert_eq!(
        client
            .unary(req)
            .await
            .expect("unary call")
            .into_inner()
            .served_by,
        "canary"
    );

    // A gRPC error travels in trailers: status and message arrive intact.
    let status = client
        .unary(EchoRequest {
            message: "boom".into(),
            fail_with: tonic::Code::FailedPrecondition as i32,
        })
        .await
        .expect_err("the server fails the call");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "failed on purpose: boom");

    let outbound = tokio_stream::iter((0..50).map(|i| EchoRequest {
        message: format!("m{i}"),
        fail_with: 0,
    }));
    let mut inbound = client
        .stream(outbound)
        .await
        .expect("stream call")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = inbound.next().await {
        got.push(m.expect("stream message").message);
    }
    assert_eq!(got, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(
        weir.metric(
            "weir_requests_total",
            &[
                ("service", "echo"),
                ("version", "primary"),
                ("code_class", "2xx")
            ]
        )
        .await,
        3.0
    );
}
