//! Passwords out of URIs before they are shown (logs, errors, status page, events).

/// `s` with the password of every `scheme://user:password@host` in it replaced by `***` (an
/// RTSP URI, or one inside a `gst://` pipeline's text).
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, the query, or where the pipeline text goes on.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                out.push_str(user);
                out.push_str(":***@");
                out.push_str(host);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_uris_inside_pipeline_text() {
        assert_eq!(
            redact("gst://rtspsrc location=rtsp://a:b%40c@h:554/x ! decodebin ! appsink"),
            "gst://rtspsrc location=rtsp://a:***@h:554/x ! decodebin ! appsink"
        );
        assert_eq!(
            redact("gst://souphttpsrc location=\"http://u:p@h\" ! appsink"),
            "gst://souphttpsrc location=\"http://u:***@h\" ! appsink"
        );
        // Nothing to hide: unchanged.
        for s in [
            "rtsp://h/p?x=1",
            "rtsp://user@h",
            "gst://videotestsrc ! appsink",
            "a",
        ] {
            assert_eq!(redact(s), s);
        }
    }
}
