use super::*;

fn grant(role: Role, prefix: Option<&str>) -> Grant {
    Grant {
        token_id: "t".into(),
        role,
        prefix: prefix.map(str::to_string),
    }
}

#[test]
fn the_role_matrix() {
    use Action::*;
    let table = [
        // action, viewer, invoker, developer, admin
        (Read, [true, false, true, true]),
        (Invoke, [false, true, true, true]),
        (Deploy { process: false }, [false, false, true, true]),
        (Deploy { process: true }, [false, false, false, true]),
        (ManageTasks, [false, false, true, true]),
        (PullImage, [false, false, true, true]),
        (Administer, [false, false, false, true]),
    ];
    for (action, want) in table {
        for (role, want) in Role::ALL.into_iter().zip(want) {
            assert_eq!(allows(role, action), want, "{role} {action:?}");
        }
    }
}

#[test]
fn a_prefix_limits_function_actions_and_refuses_administration() {
    let g = grant(Role::Admin, Some("team-a-"));
    assert!(g.check(Action::Invoke, Some("team-a-embed")).is_ok());
    assert_eq!(
        g.check(Action::Invoke, Some("team-b-embed")),
        Err(Denied::Scope {
            prefix: "team-a-".into()
        })
    );
    assert!(g.check(Action::Administer, None).is_err());
    assert!(g.check(Action::Read, None).is_ok());
    assert!(
        grant(Role::Admin, None)
            .check(Action::Administer, None)
            .is_ok()
    );
    assert!(g.covers("team-a-x") && !g.covers("team-b"));
}

#[test]
fn a_role_refusal_names_the_role_needed() {
    let e = grant(Role::Developer, None)
        .check(Action::Deploy { process: true }, Some("f"))
        .unwrap_err();
    assert_eq!(
        e,
        Denied::Role {
            role: Role::Developer,
            needed: Role::Admin
        }
    );
    assert!(e.to_string().contains("admin"), "{e}");
}

#[test]
fn tokens_round_trip_and_only_the_hash_is_kept() {
    let m = mint_from(&[1, 2, 3, 4, 5, 6], &[7; 32]);
    assert!(m.token.starts_with("gpufn_010203040506_"));
    assert_eq!(token_id(&m.token), Some("010203040506"));
    assert_eq!(m.hash, hash(&m.token));
    assert!(!m.hash.contains(&m.token[19..]));
    assert!(matches(&m.hash, &m.token));
    assert!(!matches(&m.hash, &format!("{}x", m.token)));
    assert!(!format!("{m:?}").contains(&m.token));
    let r = mint().unwrap();
    let s = mint().unwrap();
    assert_ne!(r.token, s.token);
    assert_eq!(token_id(&r.token), Some(r.id.as_str()));
}

#[test]
fn malformed_tokens_have_no_id() {
    for t in [
        "",
        "gpufn_",
        "gpufn_0102030405_aaaa",
        "gpufn_0102030405zz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "xgpufn_010203040506_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "gpufn_010203040506_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
    ] {
        assert_eq!(token_id(t), None, "{t:?}");
    }
}

#[test]
fn admit_checks_hash_then_revocation_then_expiry() {
    let m = mint_from(&[9; 6], &[1; 32]);
    let mut rec = TokenRecord {
        id: m.id.clone(),
        hash: m.hash.clone(),
        role: Role::Invoker,
        functions: Some("a".into()),
        name: None,
        created_ms: 0,
        expires_ms: Some(1_000),
        revoked_ms: None,
        created_by: "bootstrap".into(),
    };
    let g = rec.admit(&m.token, 999).unwrap();
    assert_eq!((g.role, g.prefix.as_deref()), (Role::Invoker, Some("a")));
    assert_eq!(rec.admit(&m.token, 1_000), Err(Rejected::Expired));
    assert_eq!(rec.admit("gpufn_x", 0), Err(Rejected::Invalid));
    rec.revoked_ms = Some(5);
    assert_eq!(rec.admit(&m.token, 0), Err(Rejected::Revoked));
}

#[test]
fn may_invoke_agrees_with_admit_and_check() {
    let m = mint_from(&[3; 6], &[4; 32]);
    let rec = |role, functions: Option<&str>, expires_ms, revoked_ms| TokenRecord {
        id: m.id.clone(),
        hash: m.hash.clone(),
        role,
        functions: functions.map(str::to_string),
        name: None,
        created_ms: 0,
        expires_ms,
        revoked_ms,
        created_by: "t".into(),
    };
    for role in Role::ALL {
        for functions in [None, Some("a-")] {
            for expires in [None, Some(10), Some(1_000)] {
                for revoked in [None, Some(1)] {
                    for f in ["a-x", "b-x"] {
                        let r = rec(role, functions, expires, revoked);
                        let slow = r
                            .admit(&m.token, 500)
                            .is_ok_and(|g| g.check(Action::Invoke, Some(f)).is_ok());
                        assert_eq!(r.may_invoke(&m.token, f, || 500), slow, "{r:?} {f}");
                        assert!(!r.may_invoke("gpufn_nope", f, || 500));
                    }
                }
            }
        }
    }
}

#[test]
fn bearer_headers() {
    assert_eq!(bearer(b"Bearer abc"), Some("abc"));
    assert_eq!(bearer(b"bearer  abc "), Some("abc"));
    assert_eq!(bearer(b"Basic abc"), None);
    assert_eq!(bearer(b"Bearer "), None);
    assert_eq!(bearer(b"Bearer"), None);
    assert_eq!(bearer(&[0xff, b' ', b'a']), None);
}

#[test]
fn lifetimes() {
    assert_eq!(parse_lifetime("30d"), Ok(Duration::from_secs(30 * 86_400)));
    assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3_600)));
    assert!(parse_lifetime("30").is_err());
    assert!(parse_lifetime("10s").is_err());
    assert!(parse_lifetime("100y").is_err());
    assert!(parse_lifetime("soon").unwrap_err().contains("soon"));
}

#[test]
fn prefixes() {
    assert!(check_prefix("team-a-").is_ok());
    assert!(check_prefix("").is_err());
    assert!(check_prefix("Team").is_err());
    assert!(check_prefix(&"a".repeat(64)).is_err());
}

#[test]
fn loopback_hosts() {
    let none: &[String] = &[];
    for ok in [
        "localhost",
        "localhost:8080",
        "127.0.0.1:1",
        "[::1]:8080",
        "[::1]",
        "LOCALHOST",
    ] {
        assert!(loopback_host_allowed(Some(ok.as_bytes()), none), "{ok}");
    }
    for bad in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "[::2]:80",
        "",
    ] {
        assert!(!loopback_host_allowed(Some(bad.as_bytes()), none), "{bad}");
    }
    assert!(loopback_host_allowed(None, none));
    let public = vec!["gpu.lan".to_string()];
    assert!(loopback_host_allowed(Some(b"gpu.lan:8080"), &public));
    assert!(!loopback_host_allowed(Some(&[0xff]), &public));
}

#[test]
fn write_content_types() {
    assert!(write_content_type_ok(Some(b"application/json")));
    assert!(write_content_type_ok(Some(
        b"application/json; charset=utf-8"
    )));
    assert!(write_content_type_ok(Some(b"Application/YAML")));
    for bad in [
        &b"text/plain"[..],
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"",
    ] {
        assert!(!write_content_type_ok(Some(bad)));
    }
    assert!(!write_content_type_ok(None));
}

proptest::proptest! {
    #[test]
    fn no_role_outranks_itself_wrongly(r in 0usize..4, a in 0usize..7) {
        use Action::*;
        let actions = [Read, Invoke, Deploy { process: false }, Deploy { process: true }, ManageTasks, PullImage, Administer];
        let role = Role::ALL[r];
        let action = actions[a];
        // Admin may do everything; nothing below admin may administer or deploy processes.
        if role == Role::Admin { proptest::prop_assert!(allows(role, action)); }
        if matches!(action, Administer | Deploy { process: true }) {
            proptest::prop_assert_eq!(allows(role, action), role == Role::Admin);
        }
    }

    #[test]
    fn bearer_never_panics(v in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
        let _ = bearer(&v);
        let _ = loopback_host_allowed(Some(&v), &[]);
        let _ = token_id(&String::from_utf8_lossy(&v));
    }
}
