"""Scenario names and mixes, free of Locust so the CLI can reject a bad mix before anything starts."""

from __future__ import annotations

from loadtest.config import LoadTarget

GATEWAY_SCENARIOS = (
    "text",
    "text_rerank10",
    "text_rerank50",
    "image",
    "hybrid",
    "filtered",
    "similar",
    "recommend",  # Recommend for the demo shoppers (u00000...); trending when no recommender is deployed
)
TRITON_SCENARIOS = ("embed_text", "embed_image", "rerank10", "rerank50")

DEFAULT_MIX = {
    LoadTarget.GATEWAY: (
        "text=6,text_rerank10=2,text_rerank50=1,image=2,hybrid=1,filtered=2,similar=1,recommend=1"
    ),
    LoadTarget.TRITON: "embed_text=6,embed_image=2,rerank10=2,rerank50=1",
}
SCENARIOS = {LoadTarget.GATEWAY: GATEWAY_SCENARIOS, LoadTarget.TRITON: TRITON_SCENARIOS}


def parse_mix(text: str, known: tuple[str, ...]) -> dict[str, int]:
    """``"text=3,image=1"`` -> ``{"text": 3, "image": 1}``; a bare name weighs 1."""
    weights: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, raw = part.partition("=")
        name = name.strip()
        if name not in known:
            raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(known)}")
        try:
            weight = int(raw) if raw.strip() else 1
        except ValueError:
            raise ValueError(f"weight of {name!r} is not an integer: {raw!r}") from None
        if weight < 0:
            raise ValueError(f"weight of {name!r} must be >= 0")
        weights[name] = weights.get(name, 0) + weight
    if not any(weights.values()):
        raise ValueError("the mix selects no scenario")
    return {k: v for k, v in weights.items() if v}


def mix_for(target: LoadTarget, text: str) -> dict[str, int]:
    return parse_mix(text or DEFAULT_MIX[target], SCENARIOS[target])
