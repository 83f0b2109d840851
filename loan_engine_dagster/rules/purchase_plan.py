"""Headroom's companion: which loans to hold back so that every limit holds,
losing as little balance as possible (the purchase plan).

Every limit is linear in the loans bought: with `x_i = 1` when to-purchase
loan `i` is bought, a limit reads `c + sum(a_i * x_i) <= 0`, where `c` comes
from the existing base and `a_i` from the loan. The plan is the 0/1 choice
that maximizes the bought balance under every curable limit, per platform.
The rows are built from the very filters and bases the limit checks use, and
the answer is proven by evaluating the limits again on "bought + existing".

The solve follows the shape that scales: the linear relaxation first (at
most one fractional loan per limit), then an exact 0/1 solve over a small
kernel of loans (the fractional ones plus those whose flip costs the least
by the relaxation's reduced costs), everything else fixed. Reduced costs
also prove the answer optimal when the kernel's best plan is closer to the
relaxation's bound than the cost of flipping any loan outside the kernel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .config import Check, Rules
from .eligibility import (
    PopulationArrays, build_population, check_match, evaluate_checks, holds, limit_slack, platform_bases, platform_checks,
)

PLAN_METRICS = ("balance_share", "count_share", "mean", "wavg", "max")
# HiGHS accepts a row about 1e-6 (in its scaled units) past its bound, far more
# than a strict limit's own margin: a strict row is held this far inside, relative to its
# largest loan coefficient, so that a plan landing exactly on it is excluded.
SOLVER_MARGIN = 1e-5
PLAN_COLUMNS = ["seller_loan_number", "platform", "orig_balance", "plan", "binding_checks"]
# Exact sub-solves in turn: how many loans beyond the relaxation's fractional
# ones, and how many branch-and-bound nodes each may use. Node limits, not
# seconds, so that the same batch always gets the same plan.
KERNEL_STEPS = ((64, 500), (512, 500))
WHOLE_PROBLEM_NODES = 1000  # when a kernel holds every loan that may move
CLOSE_ENOUGH = 1.0  # stop refining once the plan is within this balance of the bound
TIME_LIMIT_SECONDS = 30.0  # per platform: a safety net for a very slow machine, not the normal stop
CONFLICT_SECONDS = 10.0  # naming the conflicting limits of an infeasible platform
REPAIR_ATTEMPTS = 4
MARGIN_FREE_SOLVES = 4  # solves of a platform without the solver margin, each shutting out a plan past a limit
MARGIN_FREE_FIRST_GAP = 1e-8  # how far inside (scaled) a row is held after HiGHS first let a plan past it
_INTEGRAL = 1e-6
# Float noise in a scaled row's sum (a limit met exactly came out 1e-16 over):
# far less than a limit's own tolerance allows (LIMIT_TOLERANCE of the limit).
_ROW_NOISE = 1e-9


@dataclass
class LimitRows:
    """One platform's curable limits as `g0 + A @ x <= rhs` over its to-purchase loans."""

    check_ids: list[str]
    g0: np.ndarray  # (m,) the existing base's part
    a: np.ndarray  # (m, n) each loan's part
    rhs: np.ndarray  # (m,) 0, or a little below for a strict limit (SOLVER_MARGIN)
    exact_rhs: np.ndarray  # (m,) the same without the strict limits' solver margin (their own 1e-9 is in a)
    upper: np.ndarray  # (n,) 0 where a max limit forbids the loan
    forbidden: dict[str, np.ndarray]  # max limit id -> the loans it forbids
    not_curable: list[str]
    unconstrained: list[str]  # no_data on the loans-to-buy population: nothing to hold


@dataclass
class Solution:
    buy: np.ndarray  # (n,) bool
    status: str
    upper_bound: float | None
    conflicting: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class PurchasePlan:
    loans: pd.DataFrame  # `purchase_plan.csv`: one row per to-purchase loan
    checks: pd.DataFrame  # the limit checks with `plan_value` and `plan_status`
    platforms: dict[str, dict]  # the top-level `plan` of `eligibility_checks.json`


def _tightened(check: Check) -> float:
    """The limit a strict comparison is held to: a relative margin inside."""
    limit = float(check.limit)
    if check.op in ("<=", ">="):
        return limit
    return limit - limit_slack(limit) if check.op == "<" else limit + limit_slack(limit)


def _weights(check: Check, pop: pd.DataFrame, match: np.ndarray, balance: np.ndarray, limit: float) -> np.ndarray:
    """Each population row's part in `c + sum(a_i x_i) <= 0` (signs follow the op)."""
    if check.metric == "balance_share":
        w = (match - limit) * balance
    elif check.metric == "count_share":
        w = match - limit
    else:
        column = pop[check.column].to_numpy(dtype=float)
        w = column - limit if check.metric == "mean" else (column - limit) * balance
    return w if check.op in ("<", "<=") else -w


def limit_rows(
    pop: pd.DataFrame, platform: str, checks: list[Check], tighten: dict[str, int] | None = None,
    columns: PopulationArrays | None = None,
) -> tuple[LimitRows, np.ndarray]:
    """The platform's limits as linear rows over its to-purchase loans, and
    the population positions of those loans. `tighten` holds a limit further
    inside, ten times more per step (the repair when a solved plan misses it)."""
    tighten = tighten or {}
    columns = columns or PopulationArrays(pop)
    bases = platform_bases(pop, platform, columns)
    base = bases["to_purchase"]
    existing = bases["before"]
    variables = _variables(pop, bases)
    balance = pop["orig_balance"].to_numpy(dtype=float)
    n = len(variables)
    ids, g0, rows, rhs, exact_rhs, upper, forbidden = [], [], [], [], [], np.ones(n), {}
    not_curable, unconstrained = [], []
    for check in checks:
        if check.metric not in PLAN_METRICS or check.limit is None:
            continue
        if not base.any() or balance[base].sum() == 0:
            unconstrained.append(check.id)
            continue
        match = check_match(pop, check, columns)
        if check.metric == "max":
            column = pop[check.column].to_numpy(dtype=float)
            existing_ok = not existing.any() or bool(holds(column[existing].max(), check.op, check.limit))
            allowed = holds(column[variables], check.op, check.limit)
            if check.op in ("<", "<="):
                if not existing_ok:
                    not_curable.append(check.id)
                elif not allowed.all():
                    upper[~allowed] = 0.0
                    forbidden[check.id] = ~allowed
            elif not existing_ok:
                # A floor on the max: at least one loan meeting it must be bought.
                if not allowed.any():
                    not_curable.append(check.id)
                else:
                    ids.append(check.id)
                    g0.append(1.0)
                    rows.append(-allowed.astype(float))
                    rhs.append(0.0)
            continue
        w = _weights(check, pop, match, balance, _tightened(check))
        c, a = float(w[existing].sum()), w[variables]
        best = c + np.minimum(a, 0.0).sum()
        if best > 0 or (check.op in ("<", ">") and best >= 0):  # a strict limit needs its best case strictly inside
            not_curable.append(check.id)
            continue
        tightened = tighten.get(check.id, 0)
        steps = tightened + (check.op in ("<", ">"))
        scale = float(np.abs(a).max()) if n else 0.0
        ids.append(check.id)
        g0.append(c)
        rows.append(a)
        rhs.append(_held_inside(steps, scale))
        exact_rhs.append(_held_inside(tightened, scale))
    a = np.vstack(rows) if rows else np.zeros((0, n))
    return LimitRows(ids, np.asarray(g0, dtype=float), a, np.asarray(rhs, dtype=float),
                     np.asarray(exact_rhs, dtype=float), upper, forbidden, not_curable, unconstrained), variables


def _held_inside(steps: int, scale: float) -> float:
    """A row's right-hand side held `steps` tightenings inside its bound (0: on it)."""
    return -SOLVER_MARGIN * 10 ** (steps - 1) * scale if steps else 0.0


def _variables(pop: pd.DataFrame, bases: dict[str, np.ndarray]) -> np.ndarray:
    """Population positions of the platform's to-purchase loans, the plan's choices."""
    return np.flatnonzero(bases["to_purchase"] & pop["to_purchase"].to_numpy(dtype=bool))


def _no_rows(n: int) -> LimitRows:
    return LimitRows([], np.zeros(0), np.zeros((0, n)), np.zeros(0), np.zeros(0), np.ones(n), {}, [], [])


def _objective(balance: np.ndarray) -> np.ndarray:
    # Among plans of equal balance (to the cent) the one holding back fewer
    # loans wins: a bonus per loan bought, worth less than a cent in total.
    return balance + 0.005 / (len(balance) + 1)


# SciPy is imported where a plan is solved: importing it takes most of a
# second, and most batches pass their limits with every loan bought.


def _sub_milp(obj, a, residual, upper, time_limit, node_limit=None):
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csc_array

    constraints = [LinearConstraint(csc_array(a), -np.inf, residual)] if len(residual) else []
    options = {"time_limit": time_limit, "mip_rel_gap": 0.0}
    if node_limit is not None:
        options["node_limit"] = node_limit
    return milp(-obj, constraints=constraints, integrality=np.ones(len(obj)), bounds=Bounds(0.0, upper), options=options)


def _lp(obj, rows: LimitRows, keep: np.ndarray | None = None):
    from scipy.optimize import linprog
    from scipy.sparse import csc_array

    keep = np.ones(len(rows.g0), dtype=bool) if keep is None else keep
    a, bound = rows.a[keep], rows.rhs[keep] - rows.g0[keep]
    return linprog(
        -obj, A_ub=csc_array(a) if len(bound) else None, b_ub=bound if len(bound) else None,
        bounds=np.column_stack([np.zeros(len(obj)), rows.upper]), method="highs-ds",
    )


def _infeasible(obj, rows: LimitRows, keep: np.ndarray, whole_loans: bool, deadline: float) -> bool:
    if not whole_loans:
        return _lp(obj, rows, keep).status == 2
    result = _sub_milp(np.zeros_like(obj), rows.a[keep], rows.rhs[keep] - rows.g0[keep], rows.upper,
                       max(deadline - time.perf_counter(), 0.2))
    return result.status == 2


def _conflicts(obj, rows: LimitRows, whole_loans: bool = False) -> tuple[list[str], str]:
    """A smallest set of limits that cannot hold together, as far as the
    time allows: drop each limit in turn and keep it out if the rest still
    conflict (a deletion filter). Also says when time cut the search short."""
    deadline = time.perf_counter() + CONFLICT_SECONDS
    keep = np.ones(len(rows.check_ids), dtype=bool)
    for j in range(len(keep)):
        if time.perf_counter() > deadline:
            return [c for c, k in zip(rows.check_ids, keep, strict=True) if k], "; the conflict search stopped at its time limit"
        keep[j] = False
        if not _infeasible(obj, rows, keep, whole_loans, deadline):
            keep[j] = True
    return [c for c, k in zip(rows.check_ids, keep, strict=True) if k], ""


def _infeasible_solution(n: int, obj, rows: LimitRows, whole_loans: bool, why: str) -> Solution:
    conflicting, cut = _conflicts(obj, rows, whole_loans)
    return Solution(np.ones(n, dtype=bool), "infeasible", None, conflicting, why + cut)


def _repair(x: np.ndarray, rows: LimitRows, balance: np.ndarray) -> np.ndarray | None:
    """Fix what the solver's tolerances let through: while a row is over its
    bound in plain float arithmetic, hold back the bought loan that removes
    the most excess per balance lost. None when that does not fix it."""
    x = x.copy()
    for _ in range(100):
        g = rows.g0 + rows.a @ x - rows.rhs
        excess = np.where(g > _ROW_NOISE, g, 0.0).sum()
        if excess == 0:
            return x
        bought = np.flatnonzero(x > 0.5)
        if not len(bought):
            return None
        left = g[:, None] - rows.a[:, bought]
        after = np.where(left > _ROW_NOISE, left, 0.0).sum(axis=0)
        gain = excess - after
        if not (gain > 0).any():
            return None
        x[bought[np.argmax(np.where(gain > 0, gain / balance[bought], -np.inf))]] = 0.0
    return None


def _scaled(rows: LimitRows) -> LimitRows:
    """The same limits with each row divided by its largest loan coefficient.
    A limit row weighs loans by balance times a metric (FICO, price), so rows
    differ by orders of magnitude; HiGHS's presolve was seen to report a
    plan of half the best balance as `optimal` on such unscaled rows."""
    scale = np.abs(rows.a).max(axis=1, initial=0.0) if rows.a.size else np.ones(len(rows.g0))
    scale = np.where(scale > 0, scale, 1.0)
    return replace(rows, g0=rows.g0 / scale, a=rows.a / scale[:, None], rhs=rows.rhs / scale,
                   exact_rhs=rows.exact_rhs / scale)


def _in_cents(balance: np.ndarray) -> bool:
    return bool(np.all(np.abs(balance * 100 - np.round(balance * 100)) < 1e-6))


def solve_rows(rows: LimitRows, balance: np.ndarray, time_limit: float = TIME_LIMIT_SECONDS) -> Solution:
    """The largest-balance 0/1 choice satisfying every row, with its status.

    `optimal` needs a proof: the exact solver finished over every loan, or
    the plan is within a cent of the relaxation's bound (balances in whole
    cents leave no room for a better plan), or no loan outside the exact
    kernel can flip without losing more than the remaining gap."""
    deadline = time.perf_counter() + time_limit
    n = len(balance)
    obj = _objective(balance)
    if n == 0:
        return Solution(np.zeros(0, dtype=bool), "optimal", 0.0)
    rows = _scaled(rows)
    lp = _lp(obj, rows)
    if lp.status == 2:
        return _infeasible_solution(n, obj, rows, False, "the limits cannot hold together even buying fractions of loans")
    if lp.status != 0:
        raise RuntimeError(f"the linear relaxation of the purchase plan failed: {lp.message}")
    x_lp = lp.x
    bound = float(obj @ x_lp)
    # The relaxation's value is concave in the right-hand sides, so its duals
    # price the solver margins: this bounds every plan meeting the limits
    # themselves (the tie-break bonus only adds, so it bounds the balance too).
    duals = -lp.ineqlin.marginals if len(rows.rhs) else np.zeros(0)
    limits_bound = min(bound + float(duals @ -rows.rhs), float(obj.sum()))
    bound_cents = np.floor(limits_bound * 100 + 1e-6) / 100 if _in_cents(balance) else limits_bound
    cost = np.abs(lp.lower.marginals) + np.abs(lp.upper.marginals)  # objective lost by flipping a loan off its bound
    fixed = rows.upper == 0  # loans a max limit forbids never move
    fractional = (x_lp > _INTEGRAL) & (x_lp < 1 - _INTEGRAL)
    order = np.argsort(np.where(fractional, -1.0, np.where(fixed, np.inf, cost)), kind="stable")
    movable = int((~fixed).sum())
    if movable == 0:
        # Max limits forbid every loan: buying none is the only plan, if the other limits allow it.
        broken = [c for c, g, r in zip(rows.check_ids, rows.g0, rows.rhs, strict=True) if g > r]
        if broken:
            return Solution(np.ones(n, dtype=bool), "infeasible", None, sorted(rows.forbidden) + broken,
                            "the max limits forbid every loan and the others need some bought")
        return Solution(np.zeros(n, dtype=bool), "optimal", 0.0)
    rounded = np.round(x_lp)
    best, best_value, proven, last = None, -np.inf, False, None
    for step, (extra, nodes) in enumerate(KERNEL_STEPS + ((movable, WHOLE_PROBLEM_NODES),)):
        if step == len(KERNEL_STEPS) and best is not None:
            break  # the whole problem is the last resort, for when no kernel gave a plan
        size = min(movable, int(fractional.sum()) + extra)
        if size == movable:
            nodes = WHOLE_PROBLEM_NODES  # small enough to solve whole, and to prove it when the nodes suffice
        kernel, outside = order[:size], order[size:]
        residual = rows.rhs - rows.g0 - rows.a[:, outside] @ rounded[outside]
        remaining = deadline - time.perf_counter()
        if remaining <= 0 and best is not None:
            break
        last = _sub_milp(obj[kernel], rows.a[:, kernel], residual, rows.upper[kernel], max(remaining, 0.2), nodes)
        if last.x is not None:
            solved = rounded.copy()
            solved[kernel] = np.round(last.x)
            x = _repair(solved, rows, balance)
            if x is not None and float(balance @ x) > best_value:
                best, best_value = x, float(balance @ x)
            # A kernel solved to the end, untouched by the repair, bounds every plan that keeps the loans outside it.
            kernel_optimum = last.status == 0 and x is not None and np.array_equal(x, solved) and float(balance @ x) >= best_value
            flip_floor = cost[outside][~fixed[outside]].min() if (~fixed[outside]).any() else np.inf
            proven = best_value >= bound_cents - 1e-6 or (kernel_optimum and (
                size == movable or bound - float(obj @ x) < flip_floor - 1e-6))
        if proven or size == movable or bound - best_value < CLOSE_ENOUGH:
            break
    if size == movable and (rows.exact_rhs != rows.rhs).any() and best_value < bound_cents - 1e-6:
        # Only where the whole platform was solved at once (some hundreds of
        # loans at most): there one loan is a large part of the plan, and the
        # solves are quick. In a kernel of a larger platform, near-equal swaps
        # cost about as little as the margin itself (docs/decisions.md).
        best, best_value, proven = _without_margin(obj, rows, balance, nodes, deadline, (best, best_value, proven))
        proven = proven or best_value >= bound_cents - 1e-6
    if best is None:
        if last is not None and last.status == 2 and size == movable:
            return _infeasible_solution(n, obj, rows, True, "no whole-loan choice satisfies the limits together")
        return Solution(np.ones(n, dtype=bool), "infeasible", None, [],
                        "no plan found within the solver's limits (not proven impossible); every loan stays buy")
    return Solution(best > 0.5, "optimal" if proven else "feasible", float(max(bound_cents, best_value)))


def _without_margin(obj, rows: LimitRows, balance, nodes, deadline, found):
    """The platform solved again without the strict limits' solver margin.
    The margin keeps HiGHS's tolerance from letting a plan past a strict
    limit, but it also shuts out plans that meet the limit within it, and with
    whole loans such a plan can be worth a loan more. A plan is taken only if
    it meets every limit in plain float arithmetic: one that HiGHS let past a
    limit by its tolerance is shut out by holding that row further inside,
    and the platform is solved again (a few times at most). The margin
    plan stays proven only if such a solve proves nothing better exists."""
    best, best_value, proven = found
    rhs = rows.exact_rhs.copy()
    for attempt in range(MARGIN_FREE_SOLVES):
        free = _sub_milp(obj, rows.a, rhs - rows.g0, rows.upper, max(deadline - time.perf_counter(), 0.2), nodes)
        if free.x is None:
            return best, best_value, proven and free.status == 2
        x = np.round(free.x)
        over = rows.g0 + rows.a @ x - rows.exact_rhs
        if (over <= _ROW_NOISE).all():
            if float(obj @ x) > (-np.inf if best is None else float(obj @ best)):
                return x, float(balance @ x), free.status == 0
            return best, best_value, proven and free.status == 0
        # HiGHS's tolerance is about 1e-6 of a scaled row: each retry holds a
        # row it let past ten times further inside, up to the solver margin.
        gap = np.maximum(2 * over, MARGIN_FREE_FIRST_GAP * 10.0 ** attempt)
        rhs = np.where(over > _ROW_NOISE, np.maximum(rows.rhs, np.minimum(rhs, rows.exact_rhs - gap)), rhs)
    return best, best_value, False


def _binding(rows: LimitRows, buy: np.ndarray, held: np.ndarray) -> list[str]:
    """For each held-back loan: the limits that buying it back alone would
    break (for a plan not proven optimal, at least the ones it pushes up),
    and any max limit that forbids it outright."""
    names = np.asarray(rows.check_ids, dtype=object)
    if len(names):
        slack = rows.rhs - (rows.g0 + rows.a @ buy.astype(float))
        push = rows.a[:, held]
        breaks, pushes = push > slack[:, None], push > 0
    out = []
    for j, loan in enumerate(held):
        ids = [c for c, mask in rows.forbidden.items() if mask[loan]]
        if len(names):
            hit = breaks[:, j] if breaks[:, j].any() else pushes[:, j]
            ids += list(names[hit])
        out.append(";".join(ids))
    return out


def _plan_checks(checks: pd.DataFrame, evaluated: pd.DataFrame, not_curable: set[tuple[str, str]]) -> pd.DataFrame:
    out = checks.copy()
    by_key = evaluated.set_index(["platform", "check_id"])
    keys = list(zip(out["platform"], out["check_id"], strict=True))
    out["plan_value"] = [by_key.at[k, "value"] for k in keys]
    out["plan_status"] = ["not_curable" if k in not_curable else by_key.at[k, "status"] for k in keys]
    return out


def make_plan(
    loans: pd.DataFrame, existing: pd.DataFrame, checks: pd.DataFrame, rules: Rules, *,
    time_limit: float = TIME_LIMIT_SECONDS,
) -> PurchasePlan:
    """The purchase plan of a batch (per platform), its proof and its report.

    `loans` are the decided buy loans, `checks` the limit checks computed on
    them. A platform whose limits all pass with every loan bought needs no
    plan; a limit no choice of this batch's loans can cure is reported as
    `not_curable` and left out; rejected loans are never added back."""
    pop = build_population(loans, existing)
    # The population's columns as arrays, made once for every evaluation below (600k rows to factorize each time).
    whole = PopulationArrays(pop)
    balance = pop["orig_balance"].to_numpy(dtype=float)
    held = np.zeros(len(pop), dtype=bool)
    binding = pd.Series("", index=pop.index, dtype=object)
    summaries: dict[str, dict] = {}
    not_curable: set[tuple[str, str]] = set()
    tighten: dict[tuple[str, str], int] = {}
    platform_list = platform_checks(rules)
    given_up: dict[str, list[str]] = {}
    for attempt in range(REPAIR_ATTEMPTS + 1):
        solutions = {}
        for platform, platform_rules in platform_list:
            if _passes_on_to_purchase(checks, platform, platform_rules, _no_rows(0)):
                # Every limit, curable or not, already holds with all loans bought: nothing to hold back.
                variables = _variables(pop, platform_bases(pop, platform, whole))
                solution = Solution(np.ones(len(variables), dtype=bool), "not_needed", float(balance[variables].sum()))
                solutions[platform] = (_no_rows(len(variables)), variables, solution)
                held[variables] = False
                binding.iloc[variables] = ""
                continue
            rows, variables = limit_rows(pop, platform, platform_rules, {c: t for (p, c), t in tighten.items() if p == platform},
                                         whole)
            not_curable |= {(platform, c) for c in rows.not_curable}
            if platform in given_up:
                solution = Solution(np.ones(len(variables), dtype=bool), "infeasible", None, given_up[platform],
                                    "no plan passed the re-evaluation of these limits; every loan stays buy")
            elif _passes_on_to_purchase(checks, platform, platform_rules, rows):
                solution = Solution(np.ones(len(variables), dtype=bool), "not_needed", float(balance[variables].sum()))
            else:
                solution = solve_rows(rows, balance[variables], time_limit)
            solutions[platform] = (rows, variables, solution)
            held[variables] = ~solution.buy
            binding.iloc[variables] = ""
            binding.iloc[variables[~solution.buy]] = _binding(rows, solution.buy, np.flatnonzero(~solution.buy))
        kept = ~held & (~pop["is_buy"].to_numpy(dtype=bool) | pop["to_purchase"].to_numpy(dtype=bool))
        evaluated = evaluate_checks(pop, rules, value_only=True, keep=kept, whole=whole)
        missed = [
            (p, c) for p, c, status in zip(evaluated["platform"], evaluated["check_id"], evaluated["status"], strict=True)
            if status == "fail" and (p, c) not in not_curable and solutions[p][2].status in ("optimal", "feasible")
        ]
        if not missed:
            break
        if attempt == REPAIR_ATTEMPTS - 1:
            # Never report a plan the limits' own evaluation rejects.
            for p, c in missed:
                given_up.setdefault(p, []).append(c)
            continue
        # The solver's tolerance let a limit land a hair outside: hold it a little further in and solve again.
        for key in missed:
            tighten[key] = tighten.get(key, 0) + 1
    for platform, (rows, variables, solution) in solutions.items():
        bought = balance[variables][solution.buy]
        held_back = balance[variables][~solution.buy]
        binding_ids = sorted({c for text in binding.iloc[variables[~solution.buy]] for c in text.split(";") if c})
        summaries[platform] = {
            "status": solution.status,
            "bought_balance": round(float(bought.sum()), 2),
            "held_back_balance": round(float(held_back.sum()), 2),
            "held_back_loans": int(len(held_back)),
            "upper_bound_balance": None if solution.upper_bound is None else round(solution.upper_bound, 2),
            "gap_balance": round(solution.upper_bound - float(bought.sum()), 2) if solution.status == "feasible" else None,
            "binding_checks": binding_ids,
            "not_curable_checks": sorted(rows.not_curable),
            "conflicting_checks": solution.conflicting,
            "note": solution.note,
        }
    # Only the report's columns are cut to the plan's loans: the population holds the whole portfolio.
    plan_loans = pop.loc[pop["to_purchase"].to_numpy(dtype=bool), ["seller_loan_number", "platform", "orig_balance"]]
    table = pd.DataFrame(
        {
            "seller_loan_number": plan_loans["seller_loan_number"].to_numpy(),
            "platform": plan_loans["platform"].to_numpy(),
            "orig_balance": plan_loans["orig_balance"].to_numpy(),
            "plan": np.where(held[plan_loans.index], "hold_back", "buy"),
            "binding_checks": binding[plan_loans.index].to_numpy(),
        },
        columns=PLAN_COLUMNS,
    )
    return PurchasePlan(loans=table, checks=_plan_checks(checks, evaluated, not_curable), platforms=summaries)


def _passes_on_to_purchase(checks: pd.DataFrame, platform: str, platform_rules: list[Check], rows: LimitRows) -> bool:
    """Every limit of the platform that `rows` does not leave out (not
    curable, no data) already holds with all loans bought."""
    left_out = set(rows.not_curable) | set(rows.unconstrained)
    curable = {c.id for c in platform_rules if c.metric in PLAN_METRICS and c.limit is not None and c.id not in left_out}
    mine = checks[(checks["platform"] == platform) & checks["check_id"].isin(curable)]
    return all(
        value is None or pd.isna(value) or bool(holds(value, op, limit))
        for value, op, limit in zip(mine["to_purchase"], mine["op"], mine["limit"], strict=True)
    )
