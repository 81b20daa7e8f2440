//! `[sink]` for NATS and RabbitMQ, and `[intake]`.

use super::*;

#[test]
fn a_nats_sink_has_subject_defaults_per_event_kind() {
    let config = ok("[sink]\ntype = \"nats\"\nstream = \"INBOXD\"", &[]);
    let SinkConfig::Nats(nats) = &config.sink else {
        panic!("expected a NATS sink, got {:?}", config.sink);
    };
    assert_eq!(nats.connection.url, "nats://127.0.0.1:4222");
    assert!(matches!(nats.connection.auth, NatsAuth::None));
    assert_eq!(
        nats.subjects.message.render("support@contoso.com"),
        "inboxd.message.support@contoso%2Ecom"
    );
    assert_eq!(
        nats.subjects.for_schema("inboxd.outbound.v1").render("a.b@c.d"),
        "inboxd.outbound.a%2Eb@c%2Ed"
    );
    assert_eq!(
        nats.subjects.for_schema("inboxd.mailbox_state.v1").as_str(),
        "inboxd.mailbox_state.{mailbox}"
    );
    assert!(!nats.create_stream);
    assert_eq!(
        nats.stream_settings.subjects,
        ["inboxd.message.*", "inboxd.outbound.*", "inboxd.mailbox_state.*"]
    );
    assert_eq!(nats.stream_settings.duplicate_window, Duration::from_secs(120));
    assert_eq!(nats.stream_settings.retention, Retention::Limits);
    assert_eq!(nats.timeout, Duration::from_secs(10));
}

#[test]
fn mailbox_tokens_never_collide_and_hold_no_subject_separators() {
    let a = mailbox_token("a.b@contoso.com");
    let b = mailbox_token("a_b@contoso.com");
    let c = mailbox_token("a%2Eb@contoso.com");
    assert_ne!(a, b);
    assert_ne!(a, c);
    for t in [a, b, c, mailbox_token("we ird*>@x.y")] {
        assert!(!t.contains(['.', '*', '>', ' ']), "{t}");
    }
}

#[test]
fn nats_credentials_are_secret_references_and_exactly_one_kind() {
    let config = ok(
        "[sink]\ntype = \"nats\"\nstream = \"S\"\nurl = \"tls://nats.example:4222\"\nuser = \"inboxd\"\npassword = \"env:NATS_PW\"",
        &[("NATS_PW", "pw-value")],
    );
    let SinkConfig::Nats(nats) = &config.sink else { panic!() };
    let NatsAuth::UserPassword { user, password } = &nats.connection.auth else {
        panic!("expected user and password")
    };
    assert_eq!(user, "inboxd");
    assert_eq!(password.expose_secret(), "pw-value");
    assert!(!format!("{config:?}").contains("pw-value"));

    assert_only(
        "[sink]\ntype = \"nats\"\nstream = \"S\"\ntoken = \"literal-token\"",
        &[],
        "sink.token",
        "literal",
    );
    let lines = lines(
        "[sink]\ntype = \"nats\"\nstream = \"S\"\ntoken = \"dev:t\"\ncreds = \"dev:c\"",
        &[],
    );
    assert_has(&lines, "sink", "exactly one kind of NATS credentials");
    assert_only(
        "[sink]\ntype = \"nats\"\nstream = \"S\"\nurl = \"nats://u:p@host:4222\"",
        &[],
        "sink.url",
        "without credentials",
    );
}

#[test]
fn bad_nats_settings_are_listed_by_key() {
    let lines = lines(
        "[sink]\ntype = \"nats\"\nsubject = \"inboxd..{mailbox}\"\noutbound_subject = \"x.{box}\"\n\
         retention = \"forever\"\nduplicate_window = \"0s\"\nexchange = \"x\"\nstream_subjects = [\"a b\"]",
        &[],
    );
    assert_has(&lines, "sink.stream", "missing required key");
    assert_has(&lines, "sink.subject", "empty token");
    assert_has(&lines, "sink.outbound_subject", "only placeholder is {mailbox}");
    assert_has(&lines, "sink.retention", "'forever' is not a retention policy");
    assert_has(&lines, "sink.duplicate_window", "longer than 0s");
    assert_has(&lines, "sink.exchange", "applies only to type = \"rabbitmq\"");
    assert_has(&lines, "sink.stream_subjects[0]", "whitespace");
    assert_eq!(lines.len(), 7, "{}", lines.join("\n"));
}

#[test]
fn a_rabbitmq_sink_reads_its_keys_and_refuses_a_password_in_the_url() {
    let config = ok(
        "[sink]\ntype = \"rabbitmq\"\nurl = \"amqps://mq.example/prod\"\nexchange = \"routing\"\n\
         routing_key = \"mail.{mailbox}\"\ndeclare = true\nusername = \"inboxd\"\npassword = \"env:MQ_PW\"",
        &[("MQ_PW", "mq-pw")],
    );
    let SinkConfig::Rabbitmq(mq) = &config.sink else {
        panic!()
    };
    assert_eq!(mq.exchange, "routing");
    assert!(mq.declare);
    assert_eq!(mq.routing_keys.message.render("x@y.z"), "mail.x@y%2Ez");
    assert_eq!(mq.routing_keys.outbound.as_str(), "inboxd.outbound.{mailbox}");
    assert_eq!(mq.connection.password.as_ref().unwrap().expose_secret(), "mq-pw");

    let lines = lines(
        "[sink]\ntype = \"rabbitmq\"\nurl = \"amqp://guest:guest@localhost\"\nstream = \"S\"",
        &[],
    );
    assert_has(&lines, "sink.url", "without a password");
    assert_has(&lines, "sink.exchange", "missing required key");
    assert_has(&lines, "sink.stream", "applies only to type = \"nats\"");
    assert_eq!(lines.len(), 3, "{}", lines.join("\n"));
}

#[test]
fn broker_keys_are_refused_on_a_file_sink() {
    assert_only(
        "[sink]\npath = \"./x\"\nexchange = \"e\"",
        &[],
        "sink.exchange",
        "applies only to type = \"nats\" or \"rabbitmq\"",
    );
}

#[test]
fn intake_is_optional_and_typed() {
    assert!(ok(BASE, &[]).intake.is_none());
    let config = ok(
        "[intake]\ntype = \"nats\"\nstream = \"REQ\"\nconsumer = \"inboxd\"",
        &[],
    );
    let Some(IntakeConfig::Nats(n)) = &config.intake else {
        panic!()
    };
    assert_eq!(n.subject, "inboxd.requests.>");
    assert_eq!(n.dead_letter_subject, "inboxd.requests_dead");
    let config = ok(
        "[intake]\ntype = \"rabbitmq\"\nqueue = \"requests\"\ndead_letter_exchange = \"dead\"",
        &[],
    );
    let Some(IntakeConfig::Rabbitmq(r)) = &config.intake else {
        panic!()
    };
    assert_eq!(r.queue, "requests");
    assert_eq!(r.dead_letter_routing_key, "inboxd.requests_dead");
    let lines = lines("[intake]\ntype = \"rabbitmq\"\nconsumer = \"c\"", &[]);
    assert_has(&lines, "intake.queue", "missing required key");
    assert_has(&lines, "intake.dead_letter_exchange", "missing required key");
    assert_has(&lines, "intake.consumer", "applies only to type = \"nats\"");
    assert_only("[intake]\nqueue = \"q\"", &[], "intake.type", "missing required key");
}
