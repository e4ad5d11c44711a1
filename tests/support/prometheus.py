"""Reading a server's Prometheus metrics in tests (Triton's and the model's own)."""

from __future__ import annotations

import re
import urllib.request

Sample = tuple[str, dict[str, str], float]
_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> list[Sample]:
    """Prometheus text format -> (name, labels, value) samples."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def metric(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert found, f"metric {name}{labels} not exported"
    return sum(found)
