//! The DNS backend against a small authoritative DNS server in the test,
//! answering as a Kubernetes headless service does: A records per ready pod,
//! SRV records per pod naming `<pod>.<service>`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_discovery::dns::{Dns, DnsConfig};
use courier_discovery::{Discovery, Instance, Instances, OnFailure, Tier};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record};
use tokio::sync::watch;

type Zone = Arc<Mutex<HashMap<String, Vec<RData>>>>;

/// Serves `zone` over UDP until dropped.
struct Server {
    addr: SocketAddr,
    zone: Zone,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let zone: Zone = Arc::default();
        let records = zone.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buffer).await else { return };
                let Ok(query) = Message::from_vec(&buffer[..n]) else { continue };
                let answer = answer(&query, &records);
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Self { addr, zone, task }
    }

    fn set(&self, name: &str, records: Vec<RData>) {
        let mut zone = self.zone.lock().expect("zone");
        if records.is_empty() {
            zone.remove(name);
        } else {
            zone.insert(name.to_owned(), records);
        }
    }
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    let zone = zone.lock().expect("zone");
    for question in &query.queries {
        response.add_query(question.clone());
        let name = question.name().to_ascii().to_lowercase();
        match zone.get(&name) {
            None => response.metadata.response_code = ResponseCode::NXDomain,
            Some(records) => {
                for data in records.iter().filter(|d| d.record_type() == question.query_type()) {
                    response.add_answer(Record::from_rdata(question.name().clone(), 0, data.clone()));
                }
            }
        }
    }
    response
}

fn a(ip: [u8; 4]) -> RData {
    RData::A(A(Ipv4Addr::from(ip)))
}

fn srv(port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(0, 100, port, Name::from_ascii(target).expect("name")))
}

fn dns(server: &Server, logic: Option<&str>, connect: Option<&str>) -> Dns {
    dns_counting(server, logic, connect, OnFailure::default())
}

fn dns_counting(server: &Server, logic: Option<&str>, connect: Option<&str>, on_failure: OnFailure) -> Dns {
    Dns::new(DnsConfig {
        logic: logic.map(str::to_owned),
        connect: connect.map(str::to_owned),
        refresh: Duration::from_millis(100),
        server: Some(server.addr),
        on_failure,
    })
    .expect("resolver")
}

async fn until(watch: &mut watch::Receiver<Instances>, wanted: &[Instance]) {
    let reached = matches!(
        tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|set| set[..] == *wanted)).await,
        Ok(Ok(_))
    );
    assert!(reached, "the set never became {wanted:?}; it is {:?}", watch.borrow());
}

#[tokio::test]
async fn logic_is_every_address_of_its_name() {
    let server = Server::start().await;
    server.set("courier-logic.courier.svc.", vec![a([10, 0, 0, 2]), a([10, 0, 0, 1])]);
    let dns = dns(&server, Some("courier-logic.courier.svc.:7170"), None);
    let mut logic = dns.watch(Tier::Logic);
    until(
        &mut logic,
        &[Instance::new("10.0.0.1:7170", "10.0.0.1:7170"), Instance::new("10.0.0.2:7170", "10.0.0.2:7170")],
    )
    .await;
    // A pod becomes unready: its address leaves the service.
    server.set("courier-logic.courier.svc.", vec![a([10, 0, 0, 2])]);
    until(&mut logic, &[Instance::new("10.0.0.2:7170", "10.0.0.2:7170")]).await;
    // No ready pod at all: the name has no records, and there is no instance.
    server.set("courier-logic.courier.svc.", Vec::new());
    until(&mut logic, &[]).await;
}

#[tokio::test]
async fn connect_nodes_are_srv_records_named_by_their_pod() {
    let server = Server::start().await;
    let name = "_push._tcp.courier-connect.courier.svc.";
    server.set(
        name,
        vec![
            srv(7270, "courier-connect-0.courier-connect.courier.svc."),
            srv(7270, "courier-connect-1.courier-connect.courier.svc."),
        ],
    );
    server.set("courier-connect-0.courier-connect.courier.svc.", vec![a([10, 0, 1, 10])]);
    server.set("courier-connect-1.courier-connect.courier.svc.", vec![a([10, 0, 1, 11])]);
    let dns = dns(&server, None, Some(name));
    let mut connect = dns.watch(Tier::Connect);
    until(
        &mut connect,
        &[Instance::new("courier-connect-0", "10.0.1.10:7270"), Instance::new("courier-connect-1", "10.0.1.11:7270")],
    )
    .await;
    // connect-1 rescheduled onto another address keeps its serverId.
    server.set("courier-connect-1.courier-connect.courier.svc.", vec![a([10, 0, 2, 7])]);
    until(
        &mut connect,
        &[Instance::new("courier-connect-0", "10.0.1.10:7270"), Instance::new("courier-connect-1", "10.0.2.7:7270")],
    )
    .await;
    assert!(dns.watch(Tier::Logic).borrow().is_empty(), "no name configured for logic");
}

#[tokio::test]
async fn a_silent_name_server_keeps_the_last_known_set() {
    let server = Server::start().await;
    server.set("courier-logic.courier.svc.", vec![a([10, 0, 0, 1])]);
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = failures.clone();
    let on_failure = OnFailure::new(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let dns = dns_counting(&server, Some("courier-logic.courier.svc.:7170"), None, on_failure);
    let mut logic = dns.watch(Tier::Logic);
    until(&mut logic, &[Instance::new("10.0.0.1:7170", "10.0.0.1:7170")]).await;
    drop(server);
    // Lookups time out and are counted; the set stays.
    courier_testkit::eventually("two failed lookups", Duration::from_secs(30), || async {
        (failures.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    assert!(!logic.has_changed().unwrap_or(true), "the set changed while DNS was silent: {:?}", logic.borrow());
    assert_eq!(logic.borrow().len(), 1);
}

#[test]
fn a_logic_name_without_a_port_is_refused() {
    let config = DnsConfig { logic: Some("courier-logic".into()), ..DnsConfig::default() };
    let refused = Dns::new(config).expect_err("no port");
    assert!(refused.to_string().contains("HOST:PORT"), "{refused}");
}
