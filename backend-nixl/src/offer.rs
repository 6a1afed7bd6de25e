//! Agent metadata that offers a peer only an operation's regions.
//!
//! `get_local_md` serialises the agent's connection info and **every** region it has
//! registered: whoever loads it may reach them all, not only the operation's. NIXL's
//! `get_local_partial_md` serialises chosen registrations only, but without the connection
//! info unless asked for it (`includeConnInfo`), which the C API of NIXL 1.5 cannot ask. A peer
//! that has not loaded this agent yet (Dynamo drops an agent after each operation) cannot load
//! it without that. So the offered metadata is spliced: the head of the full metadata (agent
//! name, connection info) followed by the memory sections of the partial one. Both are
//! `nixlSerDes` strings, read here only as far as their heads:
//!
//! ```text
//! "nixlSerDes|"  "Agent" len name "|"  "Conns" 8 count "|"  count × ("t" len backend "|" "c" len info "|")
//! "" 10 "MemSection" "|"  sections...
//! ```
//!
//! where every `len` is a native-endian `usize`. A head that does not read so is refused, and
//! the caller offers the full metadata instead (see `Shared::offered_metadata`).

/// Where the memory sections of serialised agent metadata start, and the agent it names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Head<'a> {
    /// The agent's name.
    pub(crate) agent: &'a [u8],
    /// How many backends' connection info it carries.
    pub(crate) conns: usize,
    /// The offset of the `MemSection` entry.
    pub(crate) sections: usize,
}

const MAGIC: &[u8] = b"nixlSerDes|";
const LEN: usize = std::mem::size_of::<usize>();

/// Reads the head of serialised agent metadata, or `None` where it is not as expected.
pub(crate) fn head(metadata: &[u8]) -> Option<Head<'_>> {
    let mut rest = metadata.strip_prefix(MAGIC)?;
    let agent = entry(&mut rest, b"Agent")?;
    let conns = entry(&mut rest, b"Conns")?;
    let conns = usize::from_ne_bytes(conns.try_into().ok()?);
    for _ in 0..conns {
        entry(&mut rest, b"t")?;
        entry(&mut rest, b"c")?;
    }
    let sections = metadata.len() - rest.len();
    (entry(&mut rest, b"")? == b"MemSection").then_some(Head {
        agent,
        conns,
        sections,
    })
}

/// One `tag len value "|"` entry off the front of `rest`: its value.
fn entry<'a>(rest: &mut &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    let after_tag = rest.strip_prefix(tag)?;
    let (len, after_len) = after_tag.split_first_chunk::<LEN>()?;
    let len = usize::from_ne_bytes(*len);
    let value = after_len.get(..len)?;
    let after_value = after_len.get(len..)?.strip_prefix(b"|")?;
    *rest = after_value;
    Some(value)
}

/// `full`'s head (agent and connection info) followed by `partial`'s memory sections, where
/// both read as expected and name the same agent.
pub(crate) fn splice(full: &[u8], partial: &[u8]) -> Option<Vec<u8>> {
    let (full_head, partial_head) = (head(full)?, head(partial)?);
    if full_head.agent != partial_head.agent {
        return None;
    }
    let mut offered = Vec::with_capacity(full_head.sections + partial.len());
    offered.extend_from_slice(&full[..full_head.sections]);
    offered.extend_from_slice(&partial[partial_head.sections..]);
    Some(offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(out: &mut Vec<u8>, tag: &[u8], value: &[u8]) {
        out.extend_from_slice(tag);
        out.extend_from_slice(&value.len().to_ne_bytes());
        out.extend_from_slice(value);
        out.push(b'|');
    }

    fn metadata(agent: &[u8], conns: &[(&[u8], &[u8])], sections: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        push(&mut out, b"Agent", agent);
        push(&mut out, b"Conns", &conns.len().to_ne_bytes());
        for (backend, info) in conns {
            push(&mut out, b"t", backend);
            push(&mut out, b"c", info);
        }
        push(&mut out, b"", b"MemSection");
        out.extend_from_slice(sections);
        out
    }

    #[test]
    fn the_head_is_read_up_to_the_sections() {
        let md = metadata(b"a-1", &[(b"UCX", b"\x00|addr|")], b"SECTIONS");
        let head = head(&md).expect("head");
        assert_eq!(head.agent, b"a-1");
        assert_eq!(head.conns, 1);
        let mut sections = 10usize.to_ne_bytes().to_vec();
        sections.extend_from_slice(b"MemSection|SECTIONS");
        assert_eq!(&md[head.sections..], sections.as_slice());
    }

    #[test]
    fn splicing_keeps_the_connections_and_the_offered_sections() {
        let full = metadata(b"a-1", &[(b"UCX", b"worker")], b"ALL REGIONS");
        let partial = metadata(b"a-1", &[], b"ONE REGION");
        let offered = splice(&full, &partial).expect("spliced");
        assert_eq!(
            offered,
            metadata(b"a-1", &[(b"UCX", b"worker")], b"ONE REGION")
        );
    }

    #[test]
    fn unexpected_metadata_is_not_spliced() {
        let full = metadata(b"a-1", &[(b"UCX", b"worker")], b"ALL");
        let partial = metadata(b"a-1", &[], b"ONE");
        assert_eq!(splice(&full, &metadata(b"b-1", &[], b"ONE")), None);
        assert_eq!(splice(b"nixlSerDes|junk", &partial), None);
        assert_eq!(splice(&full[..20], &partial), None);
        let mut huge = full.clone();
        // A connection count far beyond the entries present.
        let at = MAGIC.len() + 5 + LEN + 3 + 1 + 5 + LEN;
        huge[at..at + LEN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(head(&huge), None);
        let mut long = full.clone();
        // An entry length past the end.
        long[MAGIC.len() + 5..MAGIC.len() + 5 + LEN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(head(&long), None);
        assert_eq!(head(b""), None);
    }
}
