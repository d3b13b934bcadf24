"""The simulator's "observe" adapter: the runtime's events become the policy's `Observation`.

Every statistic comes from the one builder both worlds use (`policies.observe`): the
actions, walkers and replicas of the simulated runtime emit their events to it as they
happen (`Runtime.observations`). Here only the state that is not an event is added at the
moment of looking -- each action's placement, desired placement and transition, and the
node's memory in use -- and the builder reads its window.
"""

from __future__ import annotations

from jsorc_sim.runtime import Runtime
from policies import Observation


class Observer:
    """Reads the runtime's observation builder once per control interval."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def observe(self, interval_s: float) -> Observation:
        runtime = self.runtime
        now = runtime.env.now
        builder = runtime.observations
        builder.node.memory(now, runtime.memory_used_mb)
        for name, action in runtime.actions.items():
            builder.action(name).state(now, action.placement, action.desired,
                                       action.in_transition)
        observation: Observation = builder.observe(now, interval_s)
        return observation
