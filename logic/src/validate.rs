//! What logic accepts from a client, checked before anything is stored or
//! queued: user names, passwords, message bodies and client message ids, and
//! the client address a limiter may key on (bounded, whatever was sent).

use courier_wire::MAX_MESSAGE_BYTES;
use tonic::Status;

/// The client address a limiter keys on: what the api tier sent, cut to the
/// longest address text (an IPv6 address with a zone), "" when unknown.
pub(crate) fn client_address(addr: &str) -> &str {
    &addr[..addr.floor_char_boundary(64)]
}

/// User names: 1–20 characters, no control characters, no surrounding whitespace.
pub fn validate_user_name(name: &str) -> Result<(), Status> {
    let chars = name.chars().count();
    if chars == 0 || chars > 20 {
        return Err(Status::invalid_argument("userName must be 1 to 20 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(Status::invalid_argument("userName must not contain control characters"));
    }
    if name.trim() != name {
        return Err(Status::invalid_argument("userName must not start or end with whitespace"));
    }
    Ok(())
}

/// Client message ids: at most `max` bytes, no control characters (they are
/// stored and echoed in acks; a NUL could not be stored).
pub fn validate_client_msg_id(id: &str, max: usize) -> Result<(), Status> {
    if id.len() > max {
        return Err(Status::invalid_argument(format!("clientMsgId is longer than {max} bytes")));
    }
    if id.chars().any(char::is_control) {
        return Err(Status::invalid_argument("clientMsgId must not contain control characters"));
    }
    Ok(())
}

/// Passwords: 1–128 bytes.
pub fn validate_password(password: &str) -> Result<(), Status> {
    if password.is_empty() || password.len() > 128 {
        return Err(Status::invalid_argument("passWord must be 1 to 128 bytes"));
    }
    Ok(())
}

/// Message bodies: not empty, at most [`MAX_MESSAGE_BYTES`] of UTF-8, and no
/// NUL character (PostgreSQL cannot store one in text; admitted, it would be a
/// record the history store refuses).
pub fn validate_body(body: &str) -> Result<(), Status> {
    if body.is_empty() {
        return Err(Status::invalid_argument("msg is empty"));
    }
    if body.contains('\0') {
        return Err(Status::invalid_argument("msg must not contain the NUL character (\\u0000)"));
    }
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Status::invalid_argument(format!(
            "msg is {} bytes; the limit is {MAX_MESSAGE_BYTES} bytes",
            body.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_the_rules() {
        for ok in ["demo", "a", "二十个字符的名字也可以", "Ann Lee", "x".repeat(20).as_str()] {
            assert!(validate_user_name(ok).is_ok(), "{ok:?} is valid");
        }
        for bad in ["", " ann", "ann ", "a\nb", "a\u{7}", &"x".repeat(21)] {
            assert!(validate_user_name(bad).is_err(), "{bad:?} is invalid");
        }
    }

    #[test]
    fn bodies_are_bounded_in_bytes() {
        assert!(validate_body("hi").is_ok());
        assert!(validate_body(&"x".repeat(MAX_MESSAGE_BYTES)).is_ok());
        assert!(validate_body(&"x".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
        // 1,334 three-byte characters exceed 4,000 bytes though they are few chars.
        assert!(validate_body(&"好".repeat(1_334)).is_err());
        assert!(validate_body("").is_err());
    }

    #[test]
    fn text_a_store_cannot_keep_is_refused_at_admission() {
        let refused = validate_body("before\0after").expect_err("a NUL is refused");
        assert!(refused.message().contains("NUL"), "{}", refused.message());
        assert!(validate_body("tabs\tand\nnewlines are fine").is_ok());
        assert!(validate_client_msg_id("abc-1", 64).is_ok());
        assert!(validate_client_msg_id("a\0b", 64).is_err());
        assert!(validate_client_msg_id("a\nb", 64).is_err());
        assert!(validate_client_msg_id(&"x".repeat(65), 64).is_err());
    }
}
