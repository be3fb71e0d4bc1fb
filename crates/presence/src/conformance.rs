//! Behavioural tests every sessions and presence backend must pass, run against
//! the in-process and the Redis implementations. `base` namespaces user and room
//! ids so runs can share one Redis.

use crate::{Claim, ClientMsgIds, NodeLease, Presence, SessionUser, Sessions};

fn user(id: u64) -> SessionUser {
    SessionUser { user_id: id, user_name: format!("u{id}") }
}

/// With a cap of two devices, a third login revokes the oldest token; revoked
/// tokens are unknown; revoking twice is harmless; tokens have gochat's shape.
pub async fn device_cap_revokes_the_oldest_token(sessions: &dyn Sessions, base: u64) {
    let me = user(base + 1);
    let active = || async { sessions.active().await.expect("active sessions") };
    let a = sessions.create(me.clone()).await.expect("create");
    let b = sessions.create(me.clone()).await.expect("create");
    assert!(a.revoked.is_empty() && b.revoked.is_empty());
    assert_eq!(active().await, 2);
    let c = sessions.create(me.clone()).await.expect("create");
    assert_eq!(c.revoked, vec![a.token.clone()], "the oldest token goes");
    assert_eq!(active().await, 2, "a revoked token is not active");
    assert_eq!(sessions.get(&a.token).await.expect("get"), None);
    assert_eq!(sessions.get(&b.token).await.expect("get"), Some(me.clone()));
    assert_eq!(c.token.len(), 44, "gochat's token shape");
    assert_eq!(sessions.revoke(&b.token).await.expect("revoke"), Some(me.clone()));
    assert_eq!(sessions.get(&b.token).await.expect("get"), None);
    assert_eq!(active().await, 1, "logged out");
    assert_eq!(sessions.revoke(&b.token).await.expect("revoke"), None);
    assert_eq!(sessions.get("no-such-token").await.expect("get"), None);
    // Another user's logins do not count against this one's cap.
    let other = sessions.create(user(base + 2)).await.expect("create");
    assert!(other.revoked.is_empty());
    assert_eq!(active().await, 2);
    assert_eq!(sessions.get(&c.token).await.expect("get"), Some(me));
    // Many tokens asked at once: each answered in its place.
    let asked = [a.token, c.token.clone(), "no-such-token".to_owned(), other.token, b.token, c.token];
    let live = sessions.live(&asked).await.expect("live");
    assert_eq!(live, [false, true, false, true, false, true]);
    assert_eq!(sessions.live(&[]).await.expect("live"), Vec::<bool>::new());
}

/// Two tabs count once, leaving one keeps the user present, a dead node takes only
/// its own connections, a repeated join or leave changes nothing, and strangers
/// leaving is harmless.
pub async fn presence_counts_users_not_tabs(presence: &dyn Presence, base: u64) {
    let room = base + 1;
    let (u1, u2) = (user(base + 1), user(base + 2));
    let (node_a, node_b) = (format!("a-{base}"), format!("b-{base}"));
    assert!(presence.join(room, &u1, &node_a, 1).await.expect("join"));
    assert!(!presence.join(room, &u1, &node_a, 1).await.expect("join"), "a retried join");
    assert!(!presence.join(room, &u1, &node_b, 1).await.expect("join"), "a second tab");
    assert!(presence.join(room, &u2, &node_a, 2).await.expect("join"));
    assert_eq!(presence.count(room).await.expect("count"), 2);
    assert!(!presence.leave(room, u1.user_id, &node_a, 1).await.expect("leave"), "the tab on b remains");
    assert!(!presence.leave(room, u1.user_id, &node_a, 1).await.expect("leave"), "a retried leave");
    assert_eq!(presence.count(room).await.expect("count"), 2);
    assert_eq!(presence.drop_server(&node_a).await.expect("drop"), vec![room]);
    assert_eq!(presence.members(room, 10).await.expect("members"), vec![(u1.user_id, u1.user_name.clone())]);
    assert!(presence.leave(room, u1.user_id, &node_b, 1).await.expect("leave"));
    assert_eq!(presence.count(room).await.expect("count"), 0);
    assert!(!presence.leave(room + 7, base + 9, "x", 1).await.expect("a stranger leaving is harmless"));
    // The member list is capped and ordered by id.
    for id in 1..=5 {
        presence.join(room, &user(base + id), &node_b, id).await.expect("join");
    }
    let members = presence.members(room, 3).await.expect("members");
    assert_eq!(members.iter().map(|m| m.0).collect::<Vec<_>>(), vec![base + 1, base + 2, base + 3]);
    assert_eq!(presence.count(room).await.expect("count"), 5);
}

/// The first claim of a client message id wins; a retry of the same message gets
/// its message id; the id reused for another message is a conflict; ids are per
/// user.
pub async fn client_msg_ids_return_the_first_claim(ids: &dyn ClientMsgIds, base: u64) {
    assert_eq!(ids.claim(base + 1, "c-1", 100, 7).await.expect("claim"), Claim::New);
    assert_eq!(
        ids.claim(base + 1, "c-1", 200, 7).await.expect("claim"),
        Claim::Retry(100),
        "a retry gets the first id"
    );
    assert_eq!(ids.claim(base + 1, "c-1", 300, 8).await.expect("claim"), Claim::Conflict, "another message");
    assert_eq!(ids.claim(base + 1, "c-2", 400, 7).await.expect("claim"), Claim::New);
    assert_eq!(ids.claim(base + 2, "c-1", 500, 8).await.expect("claim"), Claim::New, "another user's id is their own");
}

/// A claim made in a session is made only while that session is live and
/// its user's: a revoked token, an unknown one, or a token presented for
/// another user claims nothing (and leaves the id free).
pub async fn claims_in_a_session_need_it_live(sessions: &dyn Sessions, ids: &dyn ClientMsgIds, base: u64) {
    let (me, other) = (user(base + 1), user(base + 2));
    let session = sessions.create(me.clone()).await.expect("create");
    let claim = |token: String, who: SessionUser, id: &'static str, msg_id: u64| async move {
        ids.claim_in_session(sessions, &token, &who, id, msg_id, 7).await.expect("claim")
    };
    assert_eq!(claim(session.token.clone(), me.clone(), "s-1", 100).await, Some(Claim::New));
    assert_eq!(claim(session.token.clone(), me.clone(), "s-1", 200).await, Some(Claim::Retry(100)), "a retry");
    assert_eq!(claim(session.token.clone(), other.clone(), "s-2", 300).await, None, "not the other user's token");
    assert_eq!(claim("no-such-token".into(), me.clone(), "s-2", 300).await, None, "an unknown token");
    sessions.revoke(&session.token).await.expect("revoke");
    assert_eq!(claim(session.token.clone(), me.clone(), "s-2", 300).await, None, "a revoked token");
    let again = sessions.create(me.clone()).await.expect("create");
    assert_eq!(claim(again.token, me.clone(), "s-2", 400).await, Some(Claim::New), "nothing was claimed before");
}

/// Node leases: renewals keep a lease's epoch and a lapsed node leases under
/// a new one; another boot of a server is told of the restart and changes
/// nothing; a lapsed node stays due until its reap finishes.
pub async fn node_leases_lapse_until_reaped(presence: &dyn Presence, base: u64) {
    let (a, b) = (format!("node-a-{base}"), format!("node-b-{base}"));
    assert_eq!(presence.renew_node(&a, "boot-1", 1_000).await.expect("renew"), NodeLease::Held { epoch: 1_000 });
    assert_eq!(presence.renew_node(&b, "boot-9", 1_000).await.expect("renew"), NodeLease::Held { epoch: 1_000 });
    assert_eq!(presence.renew_node(&a, "boot-1", 5_000).await.expect("renew"), NodeLease::Held { epoch: 1_000 });
    assert_eq!(presence.renew_node(&a, "boot-2", 9_000).await.expect("renew"), NodeLease::Restarted, "a restart");
    let lapsed = presence.take_lapsed_nodes(2_000).await.expect("lapsed");
    assert!(lapsed.contains(&b) && !lapsed.contains(&a), "boot-1's lease still runs to 5 s: {lapsed:?}");
    assert!(presence.take_lapsed_nodes(2_000).await.expect("lapsed").contains(&b), "due until reaped");
    presence.reap_node(&b).await.expect("reap");
    assert!(!presence.take_lapsed_nodes(2_000).await.expect("lapsed").contains(&b), "reaped");
    assert_eq!(
        presence.renew_node(&b, "boot-9", 7_000).await.expect("renew"),
        NodeLease::Held { epoch: 7_000 },
        "back after its lease lapsed: a new epoch"
    );
}

/// A node that leases again before its reap keeps what it registered; one
/// that does not is reaped whole; a restarted one is dropped and then leased
/// afresh.
pub async fn reaps_spare_nodes_that_came_back(presence: &dyn Presence, base: u64) {
    let (back, gone, restarted) = (format!("back-{base}"), format!("gone-{base}"), format!("again-{base}"));
    let room = base + 1;
    for (i, node) in [&back, &gone, &restarted].into_iter().enumerate() {
        let member = user(base + 10 + i as u64);
        let expires = if *node == restarted { 5_000 } else { 1_000 };
        presence.renew_node(node, "boot-1", expires).await.expect("renew");
        presence.attach(member.user_id, node, 1, 0).await.expect("attach");
        presence.join(room, &member, node, 1).await.expect("join");
    }
    let due = presence.take_lapsed_nodes(2_000).await.expect("lapsed");
    assert!(due.contains(&back) && due.contains(&gone), "{due:?}");
    assert_eq!(presence.renew_node(&back, "boot-1", 9_000).await.expect("renew"), NodeLease::Held { epoch: 9_000 });
    assert_eq!(presence.reap_node(&back).await.expect("reap"), Vec::<u64>::new(), "it came back: nothing removed");
    assert_eq!(presence.reap_node(&gone).await.expect("reap"), vec![room]);
    let routes = presence.routes(&[base + 10, base + 11], &[room]).await.expect("routes");
    assert_eq!(routes.user(base + 10), std::slice::from_ref(&back), "the node that came back keeps its route");
    assert!(routes.user(base + 11).is_empty(), "the reaped node's route is gone");
    assert!(!presence.take_lapsed_nodes(2_000).await.expect("lapsed").contains(&back), "no longer due");

    assert_eq!(presence.renew_node(&restarted, "boot-2", 9_000).await.expect("renew"), NodeLease::Restarted);
    assert_eq!(presence.drop_server(&restarted).await.expect("drop"), vec![room]);
    assert_eq!(
        presence.renew_node(&restarted, "boot-2", 9_500).await.expect("renew"),
        NodeLease::Held { epoch: 9_500 }
    );
    assert_eq!(presence.count(room).await.expect("count"), 1, "only the node that came back holds a member");
}

/// Routes follow connections: a user is routed to every node holding one of
/// their connections, a room to every node holding a member's; a repeated
/// attach or detach changes nothing; a dropped node takes exactly its own routes.
pub async fn routes_follow_connections(presence: &dyn Presence, base: u64) {
    let room = base + 1;
    let (u1, u2, u3) = (user(base + 1), user(base + 2), user(base + 3));
    let (a, b) = (format!("route-a-{base}"), format!("route-b-{base}"));
    for (who, node, conn) in [(&u1, &a, 1), (&u1, &b, 1), (&u1, &b, 2), (&u1, &b, 2), (&u2, &b, 3)] {
        presence.attach(who.user_id, node, conn, 0).await.expect("attach");
    }
    presence.join(room, &u1, &a, 1).await.expect("join");
    presence.join(room, &u2, &b, 3).await.expect("join");
    let users = [u1.user_id, u2.user_id, u3.user_id];
    let routes = presence.routes(&users, &[room, room + 1]).await.expect("routes");
    assert_eq!(routes.user(u1.user_id), [a.as_str(), b.as_str()]);
    assert_eq!(routes.user(u2.user_id), [b.as_str()]);
    assert!(routes.user(u3.user_id).is_empty() && routes.room(room + 1).is_empty(), "{routes:?}");
    assert_eq!(routes.room(room), [a.as_str(), b.as_str()]);

    // Connection 2 was attached twice: detaching it once leaves connection 1 on b.
    presence.detach(u1.user_id, &b, 2).await.expect("detach");
    presence.detach(u1.user_id, &b, 2).await.expect("a retried detach");
    let routes = presence.routes(&users, &[]).await.expect("routes");
    assert_eq!(routes.user(u1.user_id), [a.as_str(), b.as_str()], "connection 1 is still on b");
    presence.detach(u1.user_id, &b, 1).await.expect("detach");
    presence.detach(u3.user_id, &a, 9).await.expect("a stranger detaching is harmless");
    presence.attach(u3.user_id, &a, 9, 0).await.expect("attach");
    let routes = presence.routes(&users, &[]).await.expect("routes");
    assert_eq!(routes.user(u1.user_id), [a.as_str()]);
    assert_eq!(routes.user(u3.user_id), [a.as_str()]);

    presence.leave(room, u1.user_id, &a, 1).await.expect("leave");
    assert_eq!(presence.routes(&[], &[room]).await.expect("routes").room(room), [b.as_str()]);
    presence.join(room, &u1, &a, 1).await.expect("join");
    assert_eq!(presence.drop_server(&b).await.expect("drop"), vec![room], "u2 left the room with b");
    let routes = presence.routes(&users, &[room]).await.expect("routes");
    assert!(routes.user(u2.user_id).is_empty(), "{routes:?}");
    assert_eq!(routes.user(u1.user_id), [a.as_str()]);
    assert_eq!(routes.room(room), [a.as_str()]);
}

/// A user's connections are capped over every node together: a connection
/// beyond the cap is refused and registers nothing, one attached again is not
/// counted twice, and a detach makes room.
pub async fn connections_per_user_are_capped(presence: &dyn Presence, base: u64) {
    let user_id = base + 1;
    let (a, b) = (format!("cap-a-{base}"), format!("cap-b-{base}"));
    assert!(presence.attach(user_id, &a, 1, 3).await.expect("attach"));
    assert!(presence.attach(user_id, &b, 1, 3).await.expect("attach"));
    assert!(presence.attach(user_id, &b, 2, 3).await.expect("attach"));
    assert!(presence.attach(user_id, &b, 2, 3).await.expect("attach again"), "a retried attach is not refused");
    assert!(!presence.attach(user_id, &a, 2, 3).await.expect("attach"), "a fourth connection is refused");
    presence.detach(user_id, &a, 1).await.expect("detach");
    let routes = presence.routes(&[user_id], &[]).await.expect("routes");
    assert_eq!(routes.user(user_id), [b.as_str()], "the refused connection registered nothing");
    assert!(presence.attach(user_id, &a, 2, 3).await.expect("attach"), "a detach made room");
    assert!(presence.attach(base + 2, &a, 1, 3).await.expect("attach"), "other users have their own count");
    assert!(presence.attach(user_id, &a, 9, 0).await.expect("attach"), "0: no cap");
}

/// A node holding many connections is dropped whole (the Redis backend removes
/// it in slices): every member leaves, every route goes, other nodes stay.
pub async fn a_big_node_is_dropped_whole(presence: &dyn Presence, base: u64) {
    let (big, other) = (format!("big-{base}"), format!("other-{base}"));
    let rooms = [base + 1, base + 2, base + 3];
    let users = 1_600u64;
    for id in 0..users {
        let member = user(base + 10 + id);
        presence.attach(member.user_id, &big, id, 0).await.expect("attach");
        presence.join(rooms[(id % 3) as usize], &member, &big, id).await.expect("join");
    }
    presence.join(rooms[0], &user(base + 5), &other, 1).await.expect("join");
    assert_eq!(presence.drop_server(&big).await.expect("drop"), rooms.to_vec());
    assert_eq!(presence.count(rooms[0]).await.expect("count"), 1, "the other node's member stays");
    assert_eq!(presence.count(rooms[1]).await.expect("count"), 0);
    let ids: Vec<u64> = (0..users).map(|id| base + 10 + id).collect();
    let routes = presence.routes(&ids, &rooms).await.expect("routes");
    assert!(routes.users.is_empty(), "{} users still routed", routes.users.len());
    assert_eq!(routes.room(rooms[0]), [other]);
    assert!(routes.room(rooms[2]).is_empty());
}
