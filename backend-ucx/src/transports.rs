//! Which UCX transports this host's configuration enabled, and which UCX selects for an
//! endpoint made as [`UcxBackend`](crate::UcxBackend) makes them: what `ferry probe` shows.
//!
//! UCX 1.13 has no query for either (`ucp_ep_query` names no transports), so this reads what
//! UCX itself prints: `ucp_context_print_info`'s `resource` lines and `ucp_ep_print_info`'s
//! `lane[N]` lines, for an endpoint between two workers of one context in this process, with
//! the backend's context options (`UCP_FEATURE_WAKEUP`) and error handling: peer error mode,
//! or none where no transport supports it ([`ErrorHandling::PeerIfSupported`], so that the
//! probe shows what an opted-in backend would use where the default cannot connect). A peer in another process on this host offers the same
//! transports, so UCX selects from the same set; a peer on another host offers others.

use crate::config::{self, ErrorHandling};
use crate::error::Error;
use crate::safe::{Context, ContextOptions};

/// One lane of an endpoint: a transport on a device, and what UCX sends over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// `transport/device`, as UCX names it: `tcp/lo`, `posix/memory`, `cma/memory`.
    pub transport: String,
    /// What the lane carries, as UCX prints it: `am`, `am_bw#0`, `rma_bw#0`, `wireup`, ...
    pub uses: Vec<String>,
}

/// What UCX enabled and selected here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transports {
    /// Every `UCX_*` environment variable set in this process (`UCX_TLS`, `UCX_NET_DEVICES`,
    /// ...), which UCX reads when a context is made.
    pub environment: Vec<(String, String)>,
    /// The `transport/device` pairs the context's configuration enabled.
    pub enabled: Vec<String>,
    /// The lanes UCX selected for an endpoint made as the backend makes them.
    pub selected: Vec<Lane>,
}

/// Makes a context and two workers as the backend does, connects one to the other, lets the
/// wire-up run (bounded by half a second), and reports what UCX printed about them.
/// [`Error::NotInstalled`] in a build without UCX.
pub fn transports() -> Result<Transports, Error> {
    let context = Context::new(&ContextOptions { wakeup: true })?;
    let enabled = resources(&context.info()?);
    let passive = context.create_worker()?;
    let active = context.create_worker()?;
    let (endpoint, _) = config::connect_wired(&active, &passive, ErrorHandling::PeerIfSupported)?;
    let selected = lanes(&endpoint.info()?);
    Ok(Transports {
        environment: std::env::vars()
            .filter(|(name, _)| name.starts_with("UCX_"))
            .collect(),
        enabled,
        selected,
    })
}

/// The `transport/device` of each `resource` line of `ucp_context_print_info`'s text, e.g.
/// `#      resource 1  :  md 1  dev 1  flags -- tcp/lo`.
fn resources(info: &str) -> Vec<String> {
    info.lines()
        .filter(|line| line.trim_start_matches(['#', ' ']).starts_with("resource "))
        .filter_map(|line| line.split_whitespace().last())
        .filter(|name| name.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// The lanes of `ucp_ep_print_info`'s text, e.g.
/// `#   lane[0]:  1:tcp/lo.0 md[1]   -> md[1]/tcp/sysdev[255] am am_bw#0 keepalive wireup`:
/// the transport without its resource index (`1:`) and path index (`.0`), and every word
/// after the remote memory domain.
fn lanes(info: &str) -> Vec<Lane> {
    info.lines()
        .filter_map(|line| {
            let rest = line.trim_start_matches(['#', ' ']).strip_prefix("lane[")?;
            let (_, rest) = rest.split_once("]:")?;
            let mut words = rest.split_whitespace();
            let resource = words.next()?;
            let named = resource.split_once(':').map_or(resource, |(_, name)| name);
            let transport = match named.rsplit_once('.') {
                Some((name, path)) if path.chars().all(|c| c.is_ascii_digit()) => name,
                _ => named,
            };
            let uses = words
                .skip_while(|word| *word != "->")
                .skip(2)
                .map(str::to_owned)
                .collect();
            Some(Lane {
                transport: transport.to_owned(),
                uses,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_ucx_1_13_prints() {
        let context = "#\n# UCP context\n#\n#     component 1  :  tcp\n#            md 1  :  \
                       component 1  tcp \n#\n#      resource 0  :  md 0  dev 0  flags -- \
                       self/memory0\n#      resource 1  :  md 1  dev 1  flags -- tcp/lo\n";
        assert_eq!(resources(context), ["self/memory0", "tcp/lo"]);
        let endpoint = "#\n# UCP endpoint \n#\n#               peer: <no debug data>\n\
            #                 lane[0]:  3:sysv/memory.0 md[2]           -> md[2]/sysv/sysdev[255] am am_bw#0\n\
            #                 lane[2]:  5:cma/memory.0 md[4]            -> md[4]/cma/sysdev[255] rma_bw#0\n\
            #                  put[0]: 0..<short>..4294967296..<bcopy>..(inf)\n";
        assert_eq!(
            lanes(endpoint),
            [
                Lane {
                    transport: "sysv/memory".into(),
                    uses: vec!["am".into(), "am_bw#0".into()],
                },
                Lane {
                    transport: "cma/memory".into(),
                    uses: vec!["rma_bw#0".into()],
                },
            ]
        );
        assert!(lanes("garbage\n# lane[x\n").is_empty());
    }

    #[test]
    fn finds_transports_where_ucx_is_installed() {
        match transports() {
            Ok(found) => {
                assert!(!found.enabled.is_empty(), "{found:?}");
                assert!(!found.selected.is_empty(), "{found:?}");
            }
            Err(Error::NotInstalled { reason }) => println!("skipped: {reason}"),
            Err(other) => panic!("{other}"),
        }
    }
}
