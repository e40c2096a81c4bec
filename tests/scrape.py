"""Read a Prometheus /metrics page the way Prometheus does (the client library's parser)."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def fetch(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


async def scrape(address: str) -> str:
    return await asyncio.to_thread(fetch, address)


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels``; 0.0 when absent."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
