"""``TrainingRun.status.spares``: the run's warm spares (spec.capacity.warmSpares) as the
operator last set them, and what their nodes cost.

A spare bills its whole node from the moment it is bound to one (``spec.nodeName``) until
it ends: each bound spare is listed in ``pods`` with its node's price key (instance type,
zone, capacity type), so the price survives the node; once the spare is gone its seconds
and dollars are folded into the ``ended*`` totals, which later price changes never rewrite.
"""

from __future__ import annotations

from pydantic import Field

from spotrun_api.base import ApiModel, Int32, Time, crd_extra


class SparePod(ApiModel):
    """A spare pod bound to a node, billed since ``since``."""

    name: str = Field(description="Pod name.")
    uid: str = Field(description="Pod UID.")
    node: str = Field(description="The node the spare holds.")
    instance_type: str | None = Field(None, description="The node's instance type.")
    zone: str | None = Field(None, description="The node's zone.")
    capacity_type: str | None = Field(None, description="spot or on-demand.")
    since: Time = Field(description="When the spare was bound to the node (PodScheduled).")


class SparesStatus(ApiModel):
    replicas: Int32 | None = Field(
        None, description="Spares the operator last asked for (its Deployment <run>-spares)."
    )
    image: str | None = Field(None, description="The image the spares last ran.")
    requested: Int32 | None = Field(
        None,
        description="Nodes the operator last asked an autoscaler for: pending placeholders "
        "(Deployment <run>-capacity) for the nodes the next attempt lacks.",
    )
    pods: list[SparePod] | None = Field(
        None,
        description="Spare pods bound to a node now, each billing its node.",
        json_schema_extra=crd_extra(list_type="map", list_map_keys=["uid"]),
    )
    ended_node_seconds: float | None = Field(
        None, description="Node-seconds of the spares that ended."
    )
    ended_usd: float | None = Field(
        None, alias="endedUSD", description="USD of the node-seconds of the spares that ended."
    )
