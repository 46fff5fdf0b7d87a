//! librdkafka settings both Kafka stages share: the user's options checked against the
//! memory share weir gives the client, and errors sorted into "retry" and "stop".

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

/// A user option that cannot be honoured, named with why.
#[derive(Debug, thiserror::Error)]
#[error("option `{key}` = `{value}`: {why}")]
pub struct OptionError {
    pub key: String,
    pub value: String,
    pub why: String,
}

/// librdkafka's settings that size its buffers, with the value weir derives from the
/// budget; a user's value may lower them, never raise them.
pub struct Bounded {
    pub key: &'static str,
    pub value: u64,
}

/// A setting weir owns outright because at-least-once depends on it: key, value, why.
pub type Fixed = (&'static str, &'static str, &'static str);

/// Builds a client configuration from weir's settings, the budget-bound ones and the
/// user's options (which may set anything else, and lower a bound).
pub fn client_config(
    brokers: &str,
    fixed: &[Fixed],
    bounded: &[Bounded],
    defaults: &[(&str, &str)],
    user: &[(String, String)],
) -> Result<ClientConfig, OptionError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for b in bounded {
        config.set(b.key, b.value.to_string());
    }
    for (key, value) in user {
        let err = |why: String| OptionError {
            key: key.clone(),
            value: value.clone(),
            why,
        };
        if key == "bootstrap.servers" {
            return Err(err("set `brokers` instead".into()));
        }
        if let Some((_, ours, why)) = fixed.iter().find(|(k, _, _)| k == key) {
            if value != ours {
                return Err(err(format!("weir sets it to `{ours}`: {why}")));
            }
            continue;
        }
        if let Some(b) = bounded.iter().find(|b| b.key == key) {
            let n: u64 = value
                .parse()
                .map_err(|_| err("not a whole number".into()))?;
            if n > b.value {
                return Err(err(format!(
                    "over the {} this pipeline's memory_budget leaves it; raise memory_budget or leave the option out",
                    b.value
                )));
            }
        }
        config.set(key, value);
    }
    for (k, v, _) in fixed {
        config.set(*k, *v);
    }
    Ok(config)
}

/// Whether retrying can help: a broker down, a topic not created yet, a leader moving.
/// Authentication, authorisation and configuration errors cannot heal by themselves.
pub fn is_fatal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => return true,
        other => other.rdkafka_error_code(),
    };
    matches!(
        code,
        Some(
            C::Fatal
                | C::InvalidArgument
                | C::Authentication
                | C::SaslAuthenticationFailed
                | C::UnsupportedSASLMechanism
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::InvalidConfig
                | C::InvalidGroupId
                | C::InvalidRecord
                | C::MessageSizeTooLarge
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(user: &[(&str, &str)]) -> Result<ClientConfig, OptionError> {
        let user: Vec<(String, String)> = user
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        client_config(
            "127.0.0.1:9092",
            &[(
                "enable.auto.commit",
                "false",
                "offsets are committed only once the sink has acked",
            )],
            &[Bounded {
                key: "fetch.max.bytes",
                value: 1000,
            }],
            &[("auto.offset.reset", "earliest")],
            &user,
        )
    }

    #[test]
    fn a_bound_may_be_lowered_never_raised() {
        let c = build(&[("fetch.max.bytes", "500"), ("session.timeout.ms", "6000")]).unwrap();
        assert_eq!(c.get("fetch.max.bytes"), Some("500"));
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        let e = build(&[("fetch.max.bytes", "5000")]).unwrap_err();
        assert_eq!(e.key, "fetch.max.bytes");
        assert!(e.to_string().contains("memory_budget"), "{e}");
    }

    #[test]
    fn auto_commit_is_refused_and_defaults_yield_to_the_user() {
        let e = build(&[("enable.auto.commit", "true")]).unwrap_err();
        assert!(
            e.to_string().contains("only once the sink has acked"),
            "{e}"
        );
        let c = build(&[("auto.offset.reset", "latest")]).unwrap();
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }
}
