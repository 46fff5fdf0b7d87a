//! Removes the route's upstream key from every byte forwarded to a client, even split
//! across chunks: an upstream that echoes the key back (in an error body, in a token)
//! must not hand it to whoever holds only a client key.

use std::sync::Arc;
use std::task::{ready, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use memchr::memmem;

/// What a client sees where the key was.
pub const SCRUBBED: &[u8] = b"[upstream key removed]";

/// One response's scrubber: holds back only a tail that could start the key.
pub struct Scrubber {
    secret: Arc<[u8]>,
    held: Vec<u8>,
}

impl Scrubber {
    /// A scrubber for `secret`, which must not be empty.
    pub fn new(secret: Arc<[u8]>) -> Self {
        Scrubber {
            secret,
            held: Vec::new(),
        }
    }

    /// Appends to `out` what of `input` can be sent now, the key replaced.
    pub fn pass(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.held.extend_from_slice(input);
        let held = std::mem::take(&mut self.held);
        let mut rest = &held[..];
        while let Some(at) = memmem::find(rest, &self.secret) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(SCRUBBED);
            rest = &rest[at + self.secret.len()..];
        }
        let keep = self.partial_key_at_end(rest);
        out.extend_from_slice(&rest[..rest.len() - keep]);
        self.held.extend_from_slice(&rest[rest.len() - keep..]);
    }

    /// Appends what is still held: the response ended, so it was not the key.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }

    /// The length of the longest end of `text` that is a beginning of the key.
    fn partial_key_at_end(&self, text: &[u8]) -> usize {
        let longest = text.len().min(self.secret.len() - 1);
        (1..=longest)
            .rev()
            .find(|&k| text.ends_with(&self.secret[..k]))
            .unwrap_or(0)
    }
}

/// `body` with `secret` removed from it, when there is one.
pub fn scrub_body<E>(
    body: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    secret: Option<Arc<[u8]>>,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static {
    let mut body = Box::pin(body);
    let mut scrubber = secret.map(Scrubber::new);
    futures::stream::poll_fn(move |cx| loop {
        let Some(s) = scrubber.as_mut() else {
            return body.poll_next_unpin(cx);
        };
        let mut out = Vec::new();
        match ready!(body.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => s.pass(&chunk, &mut out),
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => {
                s.finish(&mut out);
                scrubber = None;
                if out.is_empty() {
                    return Poll::Ready(None);
                }
            }
        }
        if !out.is_empty() {
            return Poll::Ready(Some(Ok(Bytes::from(out))));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrub_in_pieces(text: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = Scrubber::new(Arc::from(&b"sk-secret-42"[..]));
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([text.len()].iter()) {
            s.pass(&text[from..cut], &mut out);
            from = cut;
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn the_key_is_removed_wherever_the_chunks_split_it() {
        let text = b"data: {\"error\": \"bad key sk-secret-42\"} sk-secret-42sk-secret-4 sk-sk-secret-42\n\n";
        let whole = scrub_in_pieces(text, &[]);
        let expected =
            b"data: {\"error\": \"bad key [upstream key removed]\"} [upstream key removed]sk-secret-4 sk-[upstream key removed]\n\n";
        assert_eq!(whole, expected.to_vec());
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(scrub_in_pieces(text, &[a, b]), whole, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn only_a_possible_start_of_the_key_is_held_back() {
        let mut s = Scrubber::new(Arc::from(&b"sk-secret-42"[..]));
        let mut out = Vec::new();
        s.pass(b"event: x\ndata: 1\n\n", &mut out);
        assert_eq!(out, b"event: x\ndata: 1\n\n");
        out.clear();
        s.pass(b"tail sk-sec", &mut out);
        assert_eq!(out, b"tail ");
        out.clear();
        s.pass(b"ond", &mut out);
        assert_eq!(out, b"sk-second");
    }
}
