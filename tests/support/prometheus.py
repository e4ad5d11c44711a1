"""Reading a server's Prometheus metrics in tests (Triton's and the model's own), through
the one reader of the text format (`ofa_ve_ops.prometheus`)."""

from __future__ import annotations

from ofa_ve_ops.prometheus import Sample, by_label, scrape

__all__ = ["Sample", "by_label", "metric", "scrape"]


def metric(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert found, f"metric {name}{labels} not exported"
    return sum(found)
