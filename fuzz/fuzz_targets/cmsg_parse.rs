//! Raw bytes as a received control-message buffer (what `recvmsg` leaves in `msg_control`).
//!
//! Checks: the parser never panics or reads out of bounds (it is safe code, so that would be a
//! panic), and what it returns is something the kernel could have said: a positive GRO segment
//! size, an ECN codepoint (never Not-ECT, which is "no ECN"), and a canonical destination address
//! (an IPv4 peer on a dual-stack socket is reported as IPv4, never as `::ffff:a.b.c.d`).
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ecn, dst_ip, segment_size) = ringquic::fuzzing::parse_cmsgs(data);
    if let Some(ecn) = ecn {
        assert!((1..=3).contains(&ecn), "ECN codepoint out of range: {ecn}");
    }
    if let Some(seg) = segment_size {
        assert!(seg > 0 && seg <= i32::MAX as usize, "GRO segment size {seg}");
    }
    if let Some(IpAddr::V6(v6)) = dst_ip {
        assert!(
            v6.to_ipv4_mapped().is_none(),
            "v4-mapped destination {v6} not canonicalised"
        );
    }
    // A buffer shorter than one header holds no message.
    if data.len() < 16 {
        assert_eq!((ecn, dst_ip, segment_size), (None, None, None));
    }
});
