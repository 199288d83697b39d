"""The pixel neighbourhood that IRN's affinities and random walk share (nets.boundary, methods.refine)."""

from __future__ import annotations


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) to the pixels within ``radius`` (Euclidean), one of each +/- pair."""
    out = []
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy == 0 and dx <= 0) or dy * dy + dx * dx > radius * radius:
                continue
            out.append((dy, dx))
    return out
