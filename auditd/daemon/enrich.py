"""The enrichment stage, on the event loop: the one place an event learns where it happened (its
cgroup path and service), which executable refused (denials, where the kernel could not say),
and whose namespace a setns target is. Answers come from caches; a miss is looked up in a
worker thread (cgroup walk, /proc reads), so the loop never blocks on the file system."""

from __future__ import annotations

import asyncio
import dataclasses

from auditd.kernel.cgroups import UNKNOWN_SERVICE, CgroupResolver, service_of
from auditd.kernel.processes import ExeCache
from auditd.model.event import Event
from auditd.signals.denials.event import Denial
from auditd.signals.namespaces.event import NamespaceChange
from auditd.signals.namespaces.identity import NamespaceIdentity


class Enricher:
    def __init__(
        self,
        resolver: CgroupResolver,
        exe: ExeCache | None,
        namespaces: NamespaceIdentity | None = None,
    ) -> None:
        self.resolver = resolver
        self.exe = exe
        self.namespaces = namespaces

    async def enrich(self, event: Event) -> Event:
        if self.resolver.cached(event.cgroup_id) is None:
            await asyncio.to_thread(self.resolver.path, event.cgroup_id)
        # The executable comes from the kernel where it can walk the path (BTF); /proc is the
        # fallback (wrong after an exec, gone with the process, unreadable without
        # CAP_SYS_PTRACE for other users' processes): `exe` is None where the kernel reads it.
        if (
            self.exe is not None
            and isinstance(event, Denial)
            and event.exe is None
            and event.pid
            and not event.summary
        ):
            known, exe = self.exe.cached(event.pid)
            if not known:
                exe = await asyncio.to_thread(self.exe.lookup, event.pid)
            event = dataclasses.replace(event, exe=exe)
        elif isinstance(event, NamespaceChange) and self.namespaces is not None:
            if event.target is None:
                event = self.namespaces.attribute(event)  # learns owners only: no /proc read
            else:
                event = await asyncio.to_thread(self.namespaces.attribute, event)
        return self.locate(event)

    def locate(self, event: Event) -> Event:
        """The event with its cgroup path and service, from the cache (never blocks)."""
        path = self.resolver.cached(event.cgroup_id)
        return event.located(path, UNKNOWN_SERVICE if path is None else service_of(path))
