//! gochat's TCP framing: the two bytes `v1`, a big-endian `i16` holding the whole
//! frame's length (4 + payload), then the payload.
//!
//! gochat trusted the length field and crashed on a short or negative one; here a
//! frame that is malformed is a [`FrameError`] for that connection alone, and the
//! decoder never allocates more than one maximal frame.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Version bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"v1";
/// Bytes of magic plus length.
pub const HEADER_LEN: usize = 4;
/// The largest frame (header included) the `i16` length can describe.
pub const MAX_FRAME_LEN: usize = i16::MAX as usize;
/// The largest payload of one frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;

/// Why a TCP frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame does not start with the version bytes \"v1\"")]
    BadMagic,
    #[error("frame length {0} is outside 4..=32767")]
    BadLength(i64),
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_LEN}-byte frame limit")]
    TooLarge(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes `v1` frames; payloads are raw bytes (JSON or `ping msg`).
#[derive(Debug, Default, Clone, Copy)]
pub struct V1Codec;

impl Decoder for V1Codec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < HEADER_LEN {
            // Refuse a wrong magic as soon as its bytes are here.
            if src.len() >= 2 && src[..2] != MAGIC {
                return Err(FrameError::BadMagic);
            }
            return Ok(None);
        }
        if src[..2] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let len = i16::from_be_bytes([src[2], src[3]]);
        let len = usize::try_from(len).map_err(|_| FrameError::BadLength(len.into()))?;
        if len < HEADER_LEN {
            return Err(FrameError::BadLength(len as i64));
        }
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len - HEADER_LEN)))
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for V1Codec {
    type Error = FrameError;

    fn encode(&mut self, payload: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let payload = payload.as_ref();
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge(payload.len()));
        }
        let len = i16::try_from(payload.len() + HEADER_LEN).map_err(|_| FrameError::TooLarge(payload.len()))?;
        dst.reserve(HEADER_LEN + payload.len());
        dst.put_slice(&MAGIC);
        dst.put_i16(len);
        dst.put_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        V1Codec.encode(payload, &mut buf).expect("encodes");
        buf
    }

    #[test]
    fn round_trips_split_and_coalesced_frames() {
        let mut wire = encoded(b"{\"op\":6}");
        wire.extend_from_slice(&encoded(b"ping msg"));
        // Feed one byte at a time: every prefix is either incomplete or one frame.
        let mut codec = V1Codec;
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = codec.decode(&mut buf).expect("valid stream") {
                frames.push(frame.to_vec());
            }
        }
        assert_eq!(frames, vec![b"{\"op\":6}".to_vec(), b"ping msg".to_vec()]);
    }

    #[test]
    fn empty_payload_is_a_frame() {
        let mut buf = encoded(b"");
        assert_eq!(V1Codec.decode(&mut buf).expect("valid").map(|f| f.len()), Some(0));
    }

    #[test]
    fn refuses_short_negative_and_unversioned_frames() {
        for (bytes, what) in [
            (&b"v1\x00\x03"[..], "length below header"),
            (&b"v1\xff\xff"[..], "negative length"),
            (&b"v2\x00\x08abcd"[..], "wrong version"),
            (&b"GE"[..], "HTTP on the TCP port"),
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(V1Codec.decode(&mut buf).is_err(), "{what} must be refused");
        }
    }

    #[test]
    fn refuses_to_encode_oversized_payloads() {
        let mut buf = BytesMut::new();
        assert!(V1Codec.encode(vec![b'x'; MAX_PAYLOAD_LEN], &mut buf).is_ok());
        assert!(matches!(V1Codec.encode(vec![b'x'; MAX_PAYLOAD_LEN + 1], &mut buf), Err(FrameError::TooLarge(_))));
    }
}
