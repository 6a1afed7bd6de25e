//! NIXL's prepared descriptor lists, kept for regions that operations use again.
//!
//! `create_xfer_req` looks every region of both lists up in the registrations (local) and in
//! the loaded metadata (remote) on every call. NIXL's other way, `prep_xfer_dlist` once per
//! list and `make_xfer_req` per transfer, does that lookup once. An active operation over
//! regions whose lists were prepared before (a registration cache on both sides, the hot path
//! of a worker that reuses its buffers) makes its request from them; otherwise it prepares the
//! lists, which costs about what `create_xfer_req` does, and keeps them.
//!
//! A prepared list refers to the registrations and loaded metadata it was prepared against,
//! so it is released before either changes:
//! - every local list, and every list prepared against this agent's own name (a Connector
//!   that reads from itself: NIXL's section for its own agent is its registrations), before
//!   any local deregistration ([`Prepared::forget_local`]);
//! - a remote agent's lists before its metadata is unloaded ([`Prepared::forget_remote`]),
//!   and before a blob of its metadata is loaded ([`Prepared::loaded`]; a load that fails
//!   may have erased an agent's metadata without saying whose, so then every remote list).
//!
//! The callers hold the `Prepared` lock across those NIXL calls, and every list is prepared
//! and used under it, so no list outlives what it refers to. A request made from a list
//! holds copies of its descriptors, so releasing a list does not touch requests made from it.

use std::collections::HashMap;

use ferry_core::Device;
use nixl_sys::{Agent, NixlError, OptArgs, XferDescList, XferDlistHandle, XferOp, XferRequest};

/// One region of a list: address, length, device.
pub(crate) type Span = (usize, usize, Device);

/// The most lists kept per side (local) or per remote agent; past it that map starts over.
const CAPACITY: usize = 64;

/// Indices for lists of up to this many descriptors without allocating.
const INDICES: [i32; 64] = {
    let mut indices = [0i32; 64];
    let mut i = 0;
    while i < indices.len() {
        indices[i] = i as i32;
        i += 1;
    }
    indices
};

/// Where making a request failed.
#[derive(Debug)]
pub(crate) enum Stage {
    /// Building a descriptor list, or preparing the local one.
    Local,
    /// Preparing the remote list: its regions are not in the metadata held for the agent.
    Remote,
    /// `make_xfer_req`.
    Make,
}

/// A list NIXL prepared for this backend's agent.
struct PreparedList(XferDlistHandle);

// SAFETY: the handle is an opaque pointer to a list NIXL allocated for this backend's agent,
// plus a pointer to that agent. Moving it to another thread is sound: NIXL's agent API is
// called from several threads already (owners and the progress thread), and a list is
// prepared, used and released only under the `Prepared` mutex, never by two threads at once.
// `Shared` declares its `Prepared` before its `Agent`, so every list is released while the
// agent lives.
unsafe impl Send for PreparedList {}

/// The prepared lists of one backend.
pub(crate) struct Prepared {
    /// This backend's own agent name.
    own: String,
    local: HashMap<Vec<Span>, PreparedList>,
    remote: HashMap<String, HashMap<Vec<Span>, PreparedList>>,
    /// Lists prepared since the backend started.
    pub(crate) made: u64,
}

impl Prepared {
    /// No lists yet, for the agent named `own`.
    pub(crate) fn new(own: String) -> Prepared {
        Prepared {
            own,
            local: HashMap::new(),
            remote: HashMap::new(),
            made: 0,
        }
    }

    /// Releases every list that refers to local registrations (the local ones, and those
    /// prepared against this agent's own name); call before deregistering memory, lock held.
    pub(crate) fn forget_local(&mut self) {
        self.local.clear();
        self.remote.remove(&self.own);
    }

    /// Releases `agent`'s lists; call before unloading its metadata, lock held.
    pub(crate) fn forget_remote(&mut self, agent: &str) {
        self.remote.remove(agent);
    }

    /// After a load of remote metadata (lock held across it): releases the lists of the
    /// agent it loaded, or every remote list where it failed.
    pub(crate) fn loaded<T>(&mut self, load: &Result<String, T>) {
        match load {
            Ok(agent) => self.forget_remote(agent),
            Err(_) => self.remote.clear(),
        }
    }

    /// Lists held now.
    pub(crate) fn len(&self) -> usize {
        self.local.len() + self.remote.values().map(HashMap::len).sum::<usize>()
    }

    /// A request moving `local` to or from `remote` of `remote_agent`, made from prepared
    /// lists (prepared now where none is kept).
    pub(crate) fn request(
        &mut self,
        agent: &Agent,
        op: XferOp,
        local: &[Span],
        remote_agent: &str,
        remote: &[Span],
        args: &OptArgs,
    ) -> Result<XferRequest, (Stage, NixlError)> {
        if !self.local.contains_key(local) {
            let list = descriptor_list(local).map_err(|e| (Stage::Local, e))?;
            let handle = agent
                .prepare_xfer_dlist("", &list, None)
                .map_err(|e| (Stage::Local, e))?;
            if self.local.len() >= CAPACITY {
                self.local.clear();
            }
            self.local.insert(local.to_vec(), PreparedList(handle));
            self.made += 1;
        }
        let kept = self
            .remote
            .get(remote_agent)
            .is_some_and(|lists| lists.contains_key(remote));
        if !kept {
            let list = descriptor_list(remote).map_err(|e| (Stage::Local, e))?;
            let handle = agent
                .prepare_xfer_dlist(remote_agent, &list, None)
                .map_err(|e| (Stage::Remote, e))?;
            let lists = self.remote.entry(remote_agent.to_owned()).or_default();
            if lists.len() >= CAPACITY {
                lists.clear();
            }
            lists.insert(remote.to_vec(), PreparedList(handle));
            self.made += 1;
        }
        let (Some(local_list), Some(remote_list)) = (
            self.local.get(local),
            self.remote.get(remote_agent).and_then(|l| l.get(remote)),
        ) else {
            // Both were inserted above.
            return Err((Stage::Local, NixlError::InvalidParam));
        };
        let (mut local_owned, mut remote_owned) = (Vec::new(), Vec::new());
        let local_indices = indices(local.len(), &mut local_owned);
        let remote_indices = indices(remote.len(), &mut remote_owned);
        agent
            .make_xfer_req(
                op,
                &local_list.0,
                local_indices,
                &remote_list.0,
                remote_indices,
                Some(args),
            )
            .map_err(|e| (Stage::Make, e))
    }
}

/// The indices `0..n`, borrowed from [`INDICES`] where it is long enough.
fn indices(n: usize, owned: &mut Vec<i32>) -> &[i32] {
    match INDICES.get(..n) {
        Some(indices) => indices,
        None => {
            *owned = (0..n).map(|i| i as i32).collect();
            owned
        }
    }
}

/// A transfer list over `spans`. NIXL takes one memory type per list, the first span's;
/// validation has refused lists that mix devices.
pub(crate) fn descriptor_list<'d>(spans: &[Span]) -> Result<XferDescList<'d>, NixlError> {
    let (mem, _) = crate::mem_of(spans.first().map_or(Device::Cpu, |(_, _, device)| *device));
    let mut list = XferDescList::new(mem)?;
    for &(addr, len, device) in spans {
        list.add_desc(addr, len, crate::mem_of(device).1);
    }
    Ok(list)
}
