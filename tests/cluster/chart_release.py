"""The chart installed on the test control plane the way Helm would: rendered by the Helm engine
(``tests/chart/chart.py``), its ``crds/`` applied and Established first, then every rendered
object applied server-side into the release namespace.

``uninstall`` removes every object it applied, webhook configurations first: they intercept
writes in every other namespace and would refuse them (``failurePolicy: Fail``) once the
operator that answers them is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tests.chart.chart import CHART, find, one, render
from tests.cluster.kube import KubeCluster

__all__ = ["ChartRelease"]

Obj = dict[str, Any]

_WEBHOOK_KINDS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")


@dataclass
class ChartRelease:
    kube: KubeCluster
    name: str
    namespace: str
    objects: list[Obj]
    """What the chart rendered (and what was applied)."""

    @classmethod
    def install(
        cls, kube: KubeCluster, name: str, namespace: str, values: Mapping[str, Any]
    ) -> ChartRelease:
        """``helm install name --namespace namespace --create-namespace`` with ``values``."""
        crds = str(CHART / "crds")
        kube.kubectl("apply", "--server-side", "--field-manager=helm", "-f", crds)
        kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
        release = cls(kube, name, namespace, render(values, release=name, namespace=namespace))
        kube.create_namespace(namespace)
        try:
            kube.apply(release.objects)
        except BaseException:
            release.uninstall()  # half an install may hold webhooks that refuse everything
            raise
        return release

    def one(self, kind: str, name: str) -> Obj:
        """The rendered object of ``kind`` named ``name``."""
        return one(self.objects, kind, name)

    def find(self, kind: str) -> list[Obj]:
        return find(self.objects, kind)

    def uninstall(self) -> None:
        """``helm uninstall``: every rendered object deleted, webhook configurations first, and
        waited for: other tests' operators watch the whole cluster (MeshService names are
        mesh-wide; descriptor-set ConfigMaps teach any operator the methods). Then the
        namespace, not waited for."""
        webhooks = [o for o in self.objects if o["kind"] in _WEBHOOK_KINDS]
        rest = [o for o in self.objects if o["kind"] not in _WEBHOOK_KINDS]
        for batch in (webhooks, rest):
            self.kube.kubectl(
                "delete", "--ignore-not-found", "-f", "-",
                stdin=yaml.safe_dump_all(batch), timeout=120,
            )  # fmt: skip
        self.kube.kubectl("delete", "namespace", self.namespace, "--wait=false")
