"""Membership changes of the node's groups: the operator's side of the Raft core.

Every operation runs on the group's leader. A node that hosts the group but does not
lead it answers NotLeader (a 307 to the leader); a node that does not host it forwards
the call to the group's members as the controller lists them. The operations:

- ``add_learner(id, address)``: the node starts receiving the log (or a snapshot);
- ``promote(id)``: once the learner holds every entry committed when the promotion was
  asked for, it becomes a voter (one voter at a time, the core refuses anything else);
- ``add(id, address, promote=True)``: both, waiting for the catch-up in between;
- ``remove(id)``: a voter or a learner leaves; removing the leader works (it steps down
  once the change commits and hands over to the most caught-up voter);
- ``transfer(to)``: leadership moves to voter ``to``.

After a change commits, the group's leader reports its voters to the controller
(:meth:`MembershipMixin.report_members`, also run periodically to repair a report lost
to a crash), so that ``shardctl show`` and the clients' routing follow the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvraft import errors
from kvraft.addresses import split_hostport
from kvraft.raft import ConfState, Role

if TYPE_CHECKING:
    from kvraft.runtime.migration import ConfigSource
    from kvraft.runtime.node import NodeConfig
    from kvraft.runtime.peers import GroupCaller
    from kvraft.runtime.replica import Replica

log = logging.getLogger("kvraft.membership")

MEMBER_OPS = ("add", "add-learner", "promote", "remove")


def _check_address(addr: str) -> str:
    try:
        split_hostport(addr)
    except ValueError as e:
        raise errors.InvalidArgument(str(e)) from None
    return addr


def _with_addr(conf: ConfState, nid: int, addr: str | None,
               known: dict[int, str]) -> tuple[tuple[int, str], ...]:
    """Every member's address (a membership from before addresses were recorded lacks
    them: fill in what this node knows), with ``nid`` at ``addr``."""
    addrs = {n: a for n, a in known.items() if n in conf.all_nodes()}
    addrs.update(conf.addresses)
    if addr is not None:
        addrs[nid] = addr
    return tuple(sorted(addrs.items()))


def members_doc(r: Replica, address_of: Any) -> dict[str, Any]:
    """The group's membership as this replica sees it (with progress on the leader)."""
    core = r._ready_core()
    st = core.status()
    addrs = core.conf.address_map()
    doc: dict[str, Any] = {
        "group": r.group_id, "node": r.node_id, "role": st.role.name.lower(),
        "term": st.term, "leader": st.leader or None,
        "leader_address": address_of(st.leader) if st.leader else None,
        "voters": list(st.voters), "learners": list(st.learners),
        "addresses": {str(n): addrs.get(n) or address_of(n)
                      for n in sorted(core.conf.all_nodes())},
        "commit": st.commit, "pending_conf_index": st.pending_conf_index,
        "committed_voters": sorted(core.conf_at(st.commit).voters),
    }
    if st.role == Role.LEADER:
        doc["progress"] = {str(p): {"match": m, "next": n, "state": s.lower(),
                                    "behind": max(0, st.commit - m)}
                           for p, (m, n, s) in st.progress.items()}
    return doc


class MembershipMixin:
    cfg: NodeConfig
    replicas: dict[int, Replica]
    configs: ConfigSource
    caller: GroupCaller
    addresses: dict[int, str]
    controller_addrs: Callable[[], list[str]]

    def _member_replica(self, gid: int) -> Replica | None:
        return self.replicas.get(gid)

    async def _forward(self, gid: int, method: str, path: str, doc: dict[str, Any] | None,
                       params: dict[str, str] | None, timeout_s: float) -> dict[str, Any]:
        """Send a membership call to group ``gid``'s members (it is not hosted here)."""
        members = self.configs.latest.members(gid)
        if not members:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.configs.refresh(), 2.0)
            members = self.configs.latest.members(gid)
        if not members:
            raise errors.NotFound(f"group {gid} is not hosted on this node and the controller "
                                  "lists no members for it")
        return await self.caller.call([a for _, a in sorted(members.items())], method, path,
                                      body=doc, params=params, timeout_s=timeout_s,
                                      attempt_timeout_s=timeout_s)

    async def members(self, gid: int, *, timeout_s: float) -> dict[str, Any]:
        r = self._member_replica(gid)
        if r is None:
            return await self._forward(gid, "GET", "/v1/admin/members", None,
                                       {"group": str(gid)}, timeout_s)
        return members_doc(r, self.addresses.get)

    async def change_member(self, doc: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        gid = doc["group"]
        r = self._member_replica(gid)
        if r is None:
            return await self._forward(gid, "POST", "/v1/admin/members", doc, None, timeout_s)
        op, nid = doc["op"], doc["id"]
        addr = doc.get("address")
        if op in ("add", "add-learner"):
            if addr is None:
                raise errors.InvalidArgument(f"{op} needs the new node's address")
            _check_address(addr)
        core = r._ready_core()
        if core.role != Role.LEADER:
            raise r._not_leader(core.leader)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def left() -> float:
            return max(0.1, deadline - loop.time())

        if op in ("add", "add-learner"):
            assert addr is not None
            conf = core.conf
            if nid in conf.voters:
                if op == "add" and conf.address_map().get(nid) in (None, addr):
                    return self._member_result(r, f"node {nid} is already a voter")
                raise errors.InvalidArgument(f"node {nid} is already a voter of group {gid}")
            if nid not in conf.learners or conf.address_map().get(nid) != addr:
                await r.change_conf(lambda c: ConfState(
                    c.voters, c.learners | {nid}, _with_addr(c, nid, addr, self.addresses)),
                    timeout_s=left())
            if op == "add-learner" or doc.get("promote") is False:
                return self._member_result(r, f"node {nid} added to group {gid} as a learner")
            op = "promote"
        if op == "promote":
            if nid not in core.conf.learners:
                raise errors.InvalidArgument(f"node {nid} is not a learner of group {gid}")
            reached = await r.wait_caught_up(nid, timeout_s=left())
            log.info("group %d: learner %d caught up to %d; promoting", gid, nid, reached)
            await r.change_conf(lambda c: ConfState(
                c.voters | {nid}, c.learners - {nid}, _with_addr(c, nid, None, self.addresses)),
                timeout_s=left())
            self._member_changed(gid)
            return self._member_result(r, f"node {nid} is a voter of group {gid}")
        if op == "remove":
            conf = core.conf
            if nid not in conf.all_nodes():
                raise errors.InvalidArgument(f"node {nid} is not a member of group {gid}")
            await r.change_conf(lambda c: ConfState(
                c.voters - {nid}, c.learners - {nid},
                tuple(p for p in _with_addr(c, nid, None, self.addresses) if p[0] != nid)),
                timeout_s=left())
            self._member_changed(gid)
            return self._member_result(r, f"node {nid} removed from group {gid}")
        raise errors.InvalidArgument(f"op must be one of {', '.join(MEMBER_OPS)}")

    def _member_result(self, r: Replica, message: str) -> dict[str, Any]:
        conf = r.committed_conf()
        return {"ok": True, "message": message, "group": r.group_id,
                "voters": sorted(conf.voters), "learners": sorted(conf.learners)}

    async def transfer_leader(self, gid: int, to: int, *, timeout_s: float) -> dict[str, Any]:
        r = self._member_replica(gid)
        if r is None:
            return await self._forward(gid, "POST", "/v1/admin/transfer-leader",
                                       {"group": gid, "to": to}, None, timeout_s)
        core = r._ready_core()
        if core.role != Role.LEADER:
            if core.leader == to:
                return {"ok": True, "message": f"node {to} already leads group {gid}"}
            raise r._not_leader(core.leader)
        await r.transfer_leadership(to, timeout_s=timeout_s)
        return {"ok": True, "message": f"node {to} now leads group {gid}",
                "leader_address": self.addresses.get(to)}

    # --- keeping the controller's view in step --------------------------------------------

    def _member_changed(self, gid: int) -> None:
        if gid != 0:
            asyncio.get_running_loop().create_task(self._report_quietly(gid))

    async def _report_quietly(self, gid: int) -> None:
        with contextlib.suppress(Exception):
            await self.report_members(gid)

    async def report_members(self, gid: int) -> bool:
        """If this node leads data group ``gid`` and the controller lists other voters for
        it than the group's committed membership, tell the controller. True if sent."""
        r = self.replicas.get(gid)
        if gid == 0 or r is None or r.core is None or r.core.role != Role.LEADER:
            return False
        listed = self.configs.latest.members(gid)
        if not listed:
            return False  # not joined (or left): the operator decides that, not the group
        conf = r.committed_conf()
        want = {n: conf.address_map().get(n) or self.addresses.get(n) for n in conf.voters}
        if any(a is None for a in want.values()) or want == listed:
            return False
        await self.caller.call(self.controller_addrs(), "POST", "/v1/ctrl/command",
                               body={"op": "members", "gid": gid,
                                     "members": {str(n): a for n, a in sorted(want.items())}},
                               timeout_s=5.0)
        log.info("group %d: reported voters %s to the controller", gid, sorted(want))
        await self.configs.refresh()
        return True

