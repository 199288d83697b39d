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


def segments(offsets: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The cells after the pixel itself on the straight segment to each offset, nearest first:
    the cells whose strongest boundary is the pair's affinity."""
    out = []
    for dy, dx in offsets:
        steps = max(abs(dy), abs(dx))
        out.append([(round(s / steps * dy), round(s / steps * dx)) for s in range(1, steps + 1)])
    return out
