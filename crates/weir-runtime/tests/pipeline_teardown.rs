//! The first failure (an error or a panic, in any stage) or a cancellation from outside
//! stops every stage, and every file and socket the stages held is closed before `run`
//! returns; the error names the stage.
//!
//! One test function, so no other test of this process opens descriptors meanwhile.

mod common;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::open_fds;
use weir_runtime::{
    BoxError, CancellationToken, Emit, FailureKind, Pipeline, Sink, Source, Transform,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    Error,
    Panic,
}

/// Every stage holds a file and a socket, and fails at its 20th item if told to.
struct Held {
    _file: File,
    _socket: TcpStream,
    fault: Fault,
    seen: u64,
}

impl Held {
    fn new(listener: &TcpListener, fault: Fault) -> Self {
        Held {
            _file: tempfile::tempfile().expect("temp file"),
            _socket: TcpStream::connect(listener.local_addr().expect("addr")).expect("connect"),
            fault,
            seen: 0,
        }
    }

    fn step(&mut self) -> Result<(), BoxError> {
        self.seen += 1;
        if self.seen == 20 {
            match self.fault {
                Fault::None => {}
                Fault::Error => return Err("injected failure".into()),
                Fault::Panic => panic!("injected panic"),
            }
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Slow to release, so a `run` that returned before every stage was dropped
        // would be caught with descriptors still open.
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct HeldSource(Held);
impl Source for HeldSource {
    type Item = Vec<u8>;
    async fn next(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        self.0.step()?;
        tokio::task::yield_now().await;
        Ok(Some(vec![0; 100]))
    }
}

struct HeldTransform(Held);
impl Transform for HeldTransform {
    type In = Vec<u8>;
    type Out = Vec<u8>;
    async fn apply(&mut self, item: Vec<u8>, out: &mut Emit<'_, Vec<u8>>) -> Result<(), BoxError> {
        self.0.step()?;
        out.send(item).await
    }
}

struct HeldSink(Held);
impl Sink for HeldSink {
    type Item = Vec<u8>;
    async fn write(&mut self, _item: Vec<u8>) -> Result<(), BoxError> {
        self.0.step()?;
        tokio::time::sleep(Duration::from_micros(100)).await;
        Ok(())
    }
}

fn build(
    listener: &TcpListener,
    faulty: usize,
    fault: Fault,
    token: &CancellationToken,
) -> Pipeline {
    let f = |i| if i == faulty { fault } else { Fault::None };
    Pipeline::builder()
        .buffer(1000)
        .cancel_token(token)
        .source("src", HeldSource(Held::new(listener, f(0))))
        .transform("t1", HeldTransform(Held::new(listener, f(1))))
        .transform("t2", HeldTransform(Held::new(listener, f(2))))
        .sink("sink", HeldSink(Held::new(listener, f(3))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_cancellation_release_everything() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let names = ["src", "t1", "t2", "sink"];
    let baseline = open_fds();
    let mut accepted = Vec::new();

    for fault in [Fault::Error, Fault::Panic] {
        for (faulty, name) in names.iter().enumerate() {
            let pipeline = build(&listener, faulty, fault, &CancellationToken::new());
            accepted.extend((0..4).map(|_| listener.accept().expect("accept").0));
            assert_eq!(
                open_fds(),
                baseline + accepted.len() + 4 * 2,
                "each stage holds a file and a socket"
            );
            let err = pipeline
                .run()
                .await
                .expect_err("the fault stops the pipeline");
            assert_eq!(
                open_fds(),
                baseline + accepted.len(),
                "{fault:?} in {name}: {err}"
            );
            assert_eq!(err.stage, *name, "{fault:?} in {name}: {err}");
            assert_eq!(err.stage_index, Some(faulty));
            match (&err.kind, fault) {
                (FailureKind::Failed(e), Fault::Error) => {
                    assert_eq!(e.to_string(), "injected failure")
                }
                (FailureKind::Panicked(m), Fault::Panic) => assert_eq!(m, "injected panic"),
                (other, _) => panic!("{fault:?} in {name} reported as {other:?}"),
            }
            assert!(
                err.to_string().contains(&format!("stage `{name}`")),
                "{err}"
            );
        }
    }

    let outside = CancellationToken::new();
    let pipeline = build(&listener, 0, Fault::None, &outside);
    accepted.extend((0..4).map(|_| listener.accept().expect("accept").0));
    let stats = pipeline.stats();
    let run = tokio::spawn(pipeline.run());
    while stats[3].snapshot().items_in < 50 {
        tokio::task::yield_now().await;
    }
    outside.cancel();
    let err = run
        .await
        .expect("joined")
        .expect_err("cancelled from outside");
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(open_fds(), baseline + accepted.len());

    // The peers see every stage's socket closed.
    for mut peer in accepted {
        peer.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = std::io::Read::read(&mut peer, &mut [0u8; 1]).expect("read EOF");
        assert_eq!(n, 0);
    }
}
