"""GCRA and the monthly quota in process: the whole limiter in `tenantry dev` (no Redis), and
the `local` failure mode while Redis is away (then without the quota, which only Redis
counts across replicas)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tenantry.api.limiter.decision import Decision
from tenantry.api.limiter.spec import QUOTA_POLICY, ROUTE_POLICY, TENANT_POLICY, LimitSpec
from tenantry.contract.months import CurrentMonth
from tenantry.contract.policy import GcraParams, gcra_decide


@dataclass
class InProcessLimits:
    processes: int  # sharing each tenant's rate: 1 alone, every API process in `local` mode
    tats: dict[tuple[str, str], int] = field(default_factory=dict)
    quota_used: dict[tuple[str, str], int] = field(default_factory=dict)
    _scaled: dict[GcraParams, GcraParams] = field(default_factory=dict)

    def scale(self, params: GcraParams) -> GcraParams:
        """Each of N processes gets 1/N of the rate and of the burst."""
        if self.processes == 1:
            return params
        scaled = self._scaled.get(params)
        if scaled is None:
            interval = params.emission_interval_us * self.processes
            burst = params.burst_tolerance_us // params.emission_interval_us // self.processes
            scaled = self._scaled[params] = GcraParams(interval, interval * burst)
        return scaled

    def decide(
        self, spec: LimitSpec, now_us: int, month: CurrentMonth, with_quota: bool
    ) -> Decision:
        violated: list[str] = []
        retry = 0
        decision = Decision(allowed=True, source="local")
        updates: list[tuple[tuple[str, str], int]] = []
        for policy, params, field_name in (
            (TENANT_POLICY, spec.tenant_rate, ""),
            (ROUTE_POLICY, spec.route_rate, spec.route),
        ):
            if params is None:
                continue
            cell = (spec.tenant_id, field_name)
            step = gcra_decide(self.scale(params), self.tats.get(cell), now_us)
            if policy == TENANT_POLICY:
                decision.tenant_remaining = step.remaining
                decision.tenant_reset_us = step.reset_after_us
            else:
                decision.route_remaining = step.remaining
                decision.route_reset_us = step.reset_after_us
            if step.allowed:
                updates.append((cell, step.tat_us))
            else:
                violated.append(policy)
                retry = max(retry, step.retry_after_us)
        quota_cell = (spec.tenant_id, month.name)
        if with_quota:
            used = self.quota_used.get(quota_cell, 0)
            decision.quota_used = used
            if spec.monthly_quota is not None and used >= spec.monthly_quota:
                violated.append(QUOTA_POLICY)
        if violated:
            decision.allowed = False
            decision.violated = tuple(violated)
            decision.retry_after_us = retry
            return decision
        for cell, tat in updates:
            self.tats[cell] = tat
        if with_quota:
            decision.quota_used = self.quota_used[quota_cell] = (
                self.quota_used.get(quota_cell, 0) + 1
            )
        return decision
