"""An allocation's parameters (`AllocConfig`) and the names and defaults of the policies, apart from the policy
functions (`policies.py`) that read them and the package (`__init__.py`) that runs them."""

from __future__ import annotations

from dataclasses import dataclass

from headprof import validation
from headprof.errors import HeadprofError

ROUNDINGS = ("largest-remainder", "round")
DEFAULT_BETA = {"headkv": 1.2, "pyramid": 20.0, "uniform": 1.0, "duo": 1.0, "headkv-floor": 1.2, "mix": 1.2}
GQA_LAYOUTS = ("query", "kv")
ROUNDING = {
    "headkv": "largest remainder, ties to lower head index",
    "headkv-round": "torch.round per head (half to even), as FYYFU/HeadKV",
    "uniform": "none",
    "pyramid": "KVCache-Factory integer schedule (prompts longer than the bottom layer's budget)",
    "duo": "largest remainder, ties to lower head index",
    "headkv-floor": "largest remainder, ties to lower head index",
    "mix": "largest remainder, ties to lower head index",
}
# the parameters each policy uses (recorded in the artifact; the others are left out)
PARAMETERS = {
    "headkv": ("beta", "temp"),
    "uniform": (),
    "pyramid": ("beta",),
    "duo": ("top", "sinks", "stream"),
    "headkv-floor": ("beta", "temp", "layer_floor"),
    "mix": ("beta", "temp", "mix"),
}

POLICIES = tuple(PARAMETERS)  # `policies.POLICY_FUNCTIONS` has one function per name


@dataclass(frozen=True)
class AllocConfig:
    """Parameters of one allocation: mean budget `B`, policy, window `w`, policy knobs, GQA layout.

    Knobs of the newer policies: `top` (duo: heads that keep the long context), `sinks` (duo: entries the
    other heads keep beyond the window), `stream` (duo: the other heads' budget instead, may be below the
    window), `layer_floor` (headkv-floor: share of the pool split evenly over layers), `mix` (mix: weight of
    the retrieval score against r2). `votes` (every policy): how many of the last prompt queries vote for the
    kept entries when more than the window (0: the window's own, every reference); recorded in the artifact
    and used by the runtime (`SnapKVOptions.votes`): at small budgets the window is the chat template's tail,
    and a longer voting span lets the question choose what a short window cannot.

    `gqa` defaults to "query" here, the HeadKV paper's layout, because this pure config carries no model: a
    "kv" allocation needs the model's KV head count (`allocate(..., n_kv_heads)`). Every entry point that has a
    model (`allocate` the command, `BudgetSource`, `run`, `eval`, `tune`) defaults to "kv", the memory-honest
    layout.
    """

    budget: int
    policy: str = "headkv"
    window: int = 32
    beta: float | None = None
    temp: float = 1.0
    gqa: str = "query"
    rounding: str = "largest-remainder"
    top: int = 8
    sinks: int = 4
    layer_floor: float = 0.5
    mix: float = 0.5
    stream: int = 0
    votes: int = 0

    @property
    def beta_value(self) -> float:
        return DEFAULT_BETA[self.policy] if self.beta is None else self.beta

    def validate(self, max_context: int = 0) -> None:
        if self.policy not in POLICIES:
            raise HeadprofError(f"unknown policy '{self.policy}' ({', '.join(POLICIES)})")
        if self.rounding not in ROUNDINGS:
            raise HeadprofError(f"unknown rounding '{self.rounding}' ({', '.join(ROUNDINGS)})")
        if self.gqa not in GQA_LAYOUTS:
            raise HeadprofError(f"unknown gqa layout '{self.gqa}' ({', '.join(GQA_LAYOUTS)})")
        # duo's streaming heads may sit below the window (`stream`): then the mean need only exceed theirs
        validation.budget_and_window(self.budget, self.stream if self.policy == "duo" and self.stream else self.window)
        if max_context and self.budget > max_context:
            raise HeadprofError(f"budget {self.budget} is larger than any context the model takes ({max_context})")
        validation.finite(self.temp, "temp")
        if self.beta is not None:
            validation.finite(self.beta, "beta")
        if self.beta_value < 1:
            raise HeadprofError(f"beta must be >= 1, got {self.beta_value}")
        if self.temp <= 0:
            raise HeadprofError(f"temp must be positive, got {self.temp}")
        if self.top < 1 or self.sinks < 0 or self.stream < 0:
            raise HeadprofError(f"top must be >= 1, sinks and stream >= 0, got {self.top}, {self.sinks}, {self.stream}")
        if self.votes < 0 or 0 < self.votes <= self.window:
            raise HeadprofError(f"votes must be 0 or above the window {self.window}, got {self.votes}")
        for name in ("layer_floor", "mix"):
            value = getattr(self, name)
            validation.finite(value, name.replace("_", "-"))
            if not 0 <= value <= 1:
                raise HeadprofError(f"{name.replace('_', '-')} must lie in [0, 1], got {value}")

    def parameters(self) -> dict[str, float | int]:
        """The knobs this policy uses, by name (what an artifact records next to the policy)."""
        values = {
            "beta": self.beta_value,
            "temp": self.temp,
            "top": self.top,
            "sinks": self.sinks,
            "stream": self.stream,
        }
        values |= {"layer_floor": self.layer_floor, "mix": self.mix}
        return {name: values[name] for name in PARAMETERS[self.policy]}
