"""Reading a server's Prometheus metrics (Triton's `nv_*` and the model's own `ofa_ve_*`).

Why here: the GPU check, the tests and operators' scripts read the same text format;
one reader keeps them from parsing it three ways.
"""

from __future__ import annotations

import re
import urllib.request

Sample = tuple[str, dict[str, str], float]
"""(metric name, labels, value)."""
_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[Sample]:
    """Prometheus text format -> samples (comments and blank lines skipped)."""
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def scrape(url: str, timeout: float = 10.0) -> list[Sample]:
    """The samples a /metrics endpoint serves now."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode())


def by_label(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    """`name`'s values summed per value of `label` (over instances and other labels)."""
    out: dict[str, float] = {}
    for metric, labels, value in samples:
        if metric == name and label in labels:
            out[labels[label]] = out.get(labels[label], 0.0) + value
    return out
