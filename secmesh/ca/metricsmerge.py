"""One `/metrics` for `ca serve --workers N`: the workers' Prometheus texts merged into one.

Counters and histograms are summed (the CA issued what all its workers issued). Gauges take
the minimum: every CA gauge is a time-to-expiry, and the fleet is as close to expiry as its
worst worker. `*_created` timestamps take the earliest. Families the parent owns (how many
workers are up, restarts) come from the parent alone. Pure: text in, text out.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


class _Static:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge(worker_texts: Iterable[bytes | str], parent_text: bytes | str, parent_families: frozenset[str]) -> bytes:
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in worker_texts:
        for family in text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text):
            if family.name in parent_families:
                continue
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            table = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in table:
                    table[key] = sample.value
                elif family.type == "gauge" or sample.name.endswith("_created"):
                    table[key] = min(table[key], sample.value)
                else:
                    table[key] += sample.value
    families = []
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        families.append(family)
    for family in text_string_to_metric_families(parent_text.decode() if isinstance(parent_text, bytes)
                                                 else parent_text):
        if family.name in parent_families:
            families.append(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(families))  # type: ignore[arg-type]
    return generate_latest(registry)
