"""The width solver: each M range raised to where the bottleneck condition M >= sum K_i holds.

Section 3.2's condition (`nestzoo.theory.bottleneck_condition`) is checked on the
search space itself, before any trial: for the largest K searched and, in per-stage
mode, the other stages at their upper bounds (a stage's K_0 is the previous stage's
width). An upper bound that no width satisfies is an error naming the width the
depths need.
"""
from nestzoo import theory

_SEARCH_LIMIT = 2 ** 20  # widths tried when telling the user which M the depths need


def _first(predicate, low, high):
    """The smallest integer in [low, high] for which `predicate` holds, or None."""
    return next((m for m in range(low, high + 1) if predicate(m)), None)


def _needed(predicate, low):
    """The smallest width >= low for which `predicate` holds (doubling, then bisection), or None."""
    high = max(low, 1)
    while not predicate(high):
        if high > _SEARCH_LIMIT:
            return None
        low, high = high + 1, 2 * high
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if predicate(middle) else (middle + 1, high)
    return high


def condition(space, input_shape, widths, features):
    """The bottleneck condition of the network of `space` with these widths and K."""
    return theory.bottleneck_condition(space.spec(widths, features), input_shape)


def width_bounds(space, input_shape):
    """{"M": (min, max)}, or {"M0": ..., "M1": ...} per stage: the M ranges where the condition holds."""
    k = space.stage_features(space.feature_range[1] if space.feature_range else None)
    if space.per_stage:
        return _stage_bounds(space, input_shape, k)
    low, high = space.width
    if space.allow_violations:
        return {"M": (low, high)}

    def holds(m):
        return condition(space, input_shape, space.stage_widths(m), k).holds
    first = _first(holds, low, high)
    if first is None:
        needed = _needed(holds, high + 1)
        need = (f"these depths need M >= {needed}" if needed else
                "no M satisfies it with these stage ratios (each stage must be wider than the one before)")
        raise ValueError(f"no M in [{low}, {high}] satisfies the bottleneck condition M >= sum K_i for "
                         f"blocks={space.blocks}, K={k}: {need}")
    broken = [m for m in range(first, high + 1) if not holds(m)]
    if broken:
        raise ValueError(f"the bottleneck condition holds at M={first} but not at M={broken[0]}; narrow the range")
    return {"M": (first, high)}


def _stage_bounds(space, input_shape, k):
    bounds, uppers = {}, [high for _, high in space.width]
    for s, (low, high) in enumerate(space.width):
        def holds(m, s=s):
            widths = tuple(uppers[:s]) + (m,) + tuple(uppers[s + 1:])
            return condition(space, input_shape, widths, k).stages[s].holds
        first = low if space.allow_violations else _first(holds, low, high)
        if first is None:
            raise ValueError(f"no M in [{low}, {high}] for stage {s} satisfies the bottleneck condition for "
                             f"blocks={space.blocks}, K={k} (the previous stage up to its maximum): "
                             f"it needs M >= {_needed(holds, high + 1)}")
        bounds[f"M{s}"] = (first, high)
    return bounds
