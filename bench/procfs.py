"""What the benchmarks read of the kernel's counters under /proc."""

from __future__ import annotations

from pathlib import Path


def udp_drops(port: int) -> int | None:
    """Datagrams the kernel dropped at the UDP socket bound to ``port`` (its
    receive buffer full), from /proc/net/udp; None when no socket has it."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            return int(fields[-1])
    return None
