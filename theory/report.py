"""Write theory/REPORT.md: every derivation, condition, limit and check, regenerated from the code.

    python -m bandpo_theory.report            # writes theory/REPORT.md (about 30 s of CPU)
    python -m bandpo_theory.report --check    # exit 1 if the committed file differs from a fresh build

The output is deterministic for a given sympy version (recorded in its header); nothing in it is typed in by
hand except prose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sympy as sp

from bandpo.cli import ArgumentParser, check_out_path

from . import asymptotics as A
from . import checks as C
from .derive import derive_bounds, f_at_zero
from .generators import delta, get_symbolic, list_symbolic, p

REPORT_PATH = Path(__file__).with_name("REPORT.md")
DELTA_SHOWN = sp.Rational(1, 20)
SECTIONS = (
    "## 1. Setup",
    "## 2. Generators",
    "## 3. Properties of g_f for every generator",
    "## 4. Closed forms",
    "## 5. Divergences without a closed form",
    "## 6. Limits: head tokens (p → 1) and tail tokens (p → 0)",
    "## 7. Small-δ expansion: the unified view",
    "## 8. Summary of checks",
    "## 9. DPPO's binary trust region is the band",
)


def _tex(expr) -> str:
    return sp.latex(expr)


def _m(expr) -> str:
    """Inline math, safe inside a Markdown table cell (| is written as \\vert)."""
    return "$" + _tex(expr).replace("\\left|", "\\left\\vert ").replace("\\right|", "\\right\\vert ").replace("|", "\\vert ") + "$"


def _num(value, digits: int = 12) -> str:
    return sp.N(value, digits).__str__()


def _closed_and_open():
    closed, missing = [], {}
    for name in list_symbolic():
        try:
            derive_bounds(name)
            closed.append(name)
        except NotImplementedError as exc:
            missing[name] = str(exc)
    return closed, missing


def _section_setup() -> list[str]:
    return [
        SECTIONS[0],
        "",
        "For a generator $f$ (convex, $f(1) = 0$) the f-divergence is $D_f(Q\\|P) = \\sum_a P(a) f(Q(a)/P(a))$, with "
        "$Q = \\pi_\\text{new}$ and $P = \\pi_\\text{old}$. For the sampled token with old probability $p$ and ratio "
        "$r = Q(a)/P(a)$, the smallest divergence of any $Q$ with that ratio rescales the rest of the vocabulary "
        "proportionally, which leaves the two-point function",
        "",
        "$$g_f(p, r) = p\\, f(r) + (1 - p)\\, f\\!\\left(\\frac{1 - p r}{1 - p}\\right), \\qquad 0 \\le r \\le 1/p,$$",
        "",
        "and the Band is $\\{r : g_f(p, r) \\le \\delta\\}$: its lower end is the root in $(0, 1)$ or $0$ (saturated), "
        "its upper end is the root in $(1, 1/p)$ or $1/p$ (saturated). The full-vocabulary version of this "
        "statement is certified numerically by `python -m bandpo_theory.certify`.",
        "",
        "Every expression below was produced by sympy from the generator alone (`theory/derive.py`, "
        "`theory/asymptotics.py`), and every identity was checked by `theory/checks.py` (section 8). "
        "Symbols: $p \\in (0, 1)$, $\\delta > 0$, $r$ the ratio, $q = r p$ the new probability of the token.",
        "",
    ]


def _section_generators() -> list[str]:
    rows = [
        SECTIONS[1],
        "",
        "Built from the names by a small registry (`theory/generators.py`) and checked against bandpo's float64 "
        "torch generators at 13 points in $[10^{-6}, 10^{6}]$ (relative error $\\le 10^{-12}$).",
        "",
        "| divergence | $f(u)$ | $f(0^+)$ | $c = \\lim_{u\\to\\infty} f(u)/u$ | $f''(1)$ | $f'''(1)$ | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in list_symbolic():
        gen = get_symbolic(name)
        d = A.generator_derivatives(name)
        f2, f3 = (_m(d[1]), _m(d[2])) if d else ("not defined (kink)", "—")
        rows.append(
            f"| `{name}` | {_m(gen.f)} | {_m(f_at_zero(gen.f))} | {_m(A.slope_at_infinity(gen.f))} | {f2} | {f3} | {gen.note} |"
        )
    return rows + [""]


def _section_properties() -> list[str]:
    rows = [
        SECTIONS[2],
        "",
        "* $g_f(p, 1) = 0$: the old policy is always allowed.",
        "* Convexity in $r$ on $(0, 1/p)$: on each side of $r = 1$ (generator refined there, so $|u-1|$ is linear) "
        "$\\partial_r^2 g_f \\ge 0$ is decided by sympy after $r = t/(1+t)$ or $r = 1 + m t/(1+t)$ and $p = 1/(1+m)$ "
        "($t, m > 0$); at $r = 1$ the right derivative minus the left one must be $\\ge 0$. Hence $g_f$ decreases on "
        "$[0, 1]$, increases on $[1, 1/p]$, and each side has at most one root.",
        "* Mirror: $g_f(p, r) = g_f\\big(1 - p, \\tfrac{1 - p r}{1 - p}\\big)$ (the token and the rest swap roles), so "
        "$\\text{lower}(p) = \\big(1 - (1-p)\\,\\text{upper}(1-p)\\big)/p$ for every $f$.",
        "",
        "| divergence | $g_f(p,1)$ | $\\partial_r^2 g_f$, lower side ($r = t/(1+t)$, $p = 1/(1+m)$) | jump of $\\partial_r g_f$ at 1 | mirror | method |",
        "|---|---|---|---|---|---|",
    ]
    for name in list_symbolic():
        unit, conv, mirror = C.check_unit(name), C.check_convexity(name), C.check_g_mirror(name)
        second = conv.result["lower"] if isinstance(conv.result, dict) else conv.result
        jump = conv.extra.get("derivative_jump_at_1", "—")
        rows.append(
            f"| `{name}` | {_m(unit.result)} | {_m(second)} | {_m(jump)} | {'holds' if mirror.passed else 'FAILS'} "
            f"| {conv.method} |"
        )
    return rows + [""]


def _threshold(sd) -> str:
    if sd.saturation_value == sp.oo:
        return "never ($f(0^+) = \\infty$)"
    try:
        sols = sp.solve(sp.Eq(sd.saturation_value, delta), p)
    except NotImplementedError:
        sols = []
    cond = f"{_m(sd.saturation_value)} $\\le \\delta$"
    if sols:
        cond += ", boundary $p = " + ",\\ ".join(_tex(s) for s in sols) + "$"
    return cond


def _section_closed(closed) -> list[str]:
    rows = [
        SECTIONS[3],
        "",
        "Recipe (`theory/derive.py`): refine $f$ to the side, `sympy.solve(g_side - delta, r)`, keep the one root that "
        "is real, on the right side of 1 and solves $g_f = \\delta$ (40 digits) at every unsaturated rational sample "
        "point $p \\in \\{1/10, 1/4, 1/2, 3/4, 9/10\\}$, $\\delta \\in \\{1/200, 1/50, 1/10, 1/4\\}$; saturation when "
        "$g_f(p, 1/p) \\le \\delta$ (upper) or $g_f(p, 0) \\le \\delta$ (lower).",
        "",
    ]
    for name in closed:
        d = derive_bounds(name)
        rows += [f"### `{name}`: $f(u) = {_tex(d.f)}$", ""]
        for sd in (d.lower_side, d.upper_side):
            rows += [
                f"**{sd.side} bound.** On this side $g_f(p, r) = {_tex(sp.simplify(sd.g_side))}$.",
                "",
                "sympy's roots of $g_f = \\delta$: " + ", ".join(_m(c) for c in sd.candidates) + ".",
                "",
                f"Picked (the only valid one at all {len(sd.pick_points)} unsaturated sample points): "
                f"$r = {_tex(sd.root)}$.",
                "",
                f"Saturated at {_m(sd.end)} iff {_threshold(sd)}.",
                "",
            ]
        rows += [
            "Result:",
            "",
            f"$$\\text{{lower}}(p, \\delta) = {_tex(d.lower)}$$",
            "",
            f"$$\\text{{upper}}(p, \\delta) = {_tex(d.upper)}$$",
            "",
        ]
        for side in ("lower", "upper"):
            res = C.check_root_identity(name, side)
            rows.append(f"* $g_f(p, \\text{{{side}}}) - \\delta = {_tex(res.result)}$ where unsaturated ({res.method}).")
            if "p" in res.extra:
                rows.append(
                    f"  Region map used: $p = {_tex(res.extra['p'])}$, $\\delta = {_tex(res.extra['delta'])}$ "
                    f"($y, z > 0$); inside the region since the saturation margin is ${_tex(res.extra['margin'])} > 0$."
                )
        mirror = C.check_mirror(name)
        rows += [
            f"* Mirror identity $\\text{{lower}}(p) - (1 - (1-p)\\,\\text{{upper}}(1-p))/p = {_tex(mirror.result)}$ "
            f"({mirror.method}).",
            "",
        ]
    return rows


def _section_missing(missing) -> list[str]:
    rows = [SECTIONS[4], ""]
    for name, message in missing.items():
        rows += [f"* `{name}`: {message}", ""]
    rows += [
        "Their limits and small-δ expansion are still derived below (sections 6 and 7); the numeric bands come from "
        "`bandpo.band` and are certified by `python -m bandpo_theory.certify`.",
        "",
    ]
    return rows


def _limit_value(res) -> str:
    if res.value is not None:
        return _m(res.value)
    return "no closed form (implicit)"


def _section_limits() -> list[str]:
    rows = [
        SECTIONS[5],
        "",
        "Head tokens: for fixed $r < 1$, $L_1(r) = \\lim_{p\\to1} g_f(p, r) = f(r) + (1 - r)\\,c$, so "
        "$\\lim_{p\\to1}\\text{lower}$ solves $L_1(r) = \\delta$. Tail tokens: with $r = q/p$, "
        "$L_0(q) = \\lim_{p\\to0} g_f(p, q/p) = q\\,c + f(1 - q)$, so the largest probability a rare token can reach, "
        "$\\lim_{p\\to0}\\text{upper}\\cdot p$, solves $L_0(q) = \\delta$. Both limits are computed by `sympy.limit` on "
        "$g_f$ itself; $L_1(r) = L_0(1 - r)$, so the two answers add up to 1 (checked). Fixed clipping "
        "$[1-\\varepsilon, 1+\\varepsilon]$ lets the probability grow by only $\\varepsilon p \\to 0$.",
        "",
        f"| divergence | $L_1(r)$ | $\\lim_{{p\\to1}}$ lower | at $\\delta = {_tex(DELTA_SHOWN)}$ | $L_0(q)$ | "
        f"$\\lim_{{p\\to0}}$ upper·p | at $\\delta = {_tex(DELTA_SHOWN)}$ | fixed clip: $\\lim \\varepsilon p$ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    eps_clip = sp.Symbol("varepsilon", positive=True)
    fixed = sp.limit(eps_clip * p, p, 0, "+")
    for name in list_symbolic():
        lo, up = A.lower_limit_at_one(name), A.upper_probability_at_zero(name)

        def at(res, default):
            if res.numeric:
                return _num(res.numeric[DELTA_SHOWN])
            return _num(default)

        rows.append(
            f"| `{name}` | {_m(lo.equation)} | {_limit_value(lo)} | {at(lo, lo.value)} | {_m(up.equation)} "
            f"| {_limit_value(up)} | {at(up, up.value)} | {_m(fixed)} |"
        )
    rows += ["", "Where a limit saturates (the simplex end is reached):", ""]
    for name in list_symbolic():
        lo, up = A.lower_limit_at_one(name), A.upper_probability_at_zero(name)
        if lo.saturates_from is not None or up.saturates_from is not None:
            rows.append(
                f"* `{name}`: $\\lim_{{p\\to1}}$ lower $= 0$ once $\\delta \\ge {_tex(lo.saturates_from)}$; "
                f"$\\lim_{{p\\to0}}$ upper·p $= 1$ once $\\delta \\ge {_tex(up.saturates_from)}$."
            )
    rows += ["", "Closed forms agree with these limits (the limits of their own expressions):", ""]
    for name in _closed_and_open()[0]:
        res = C.check_closed_form_limits(name)
        line = (f"* `{name}`: $\\lim_{{p\\to1}}$ lower root $= {_tex(res.extra['lower_at_1'])}$, "
                f"$\\lim_{{p\\to0}}$ upper·p $= {_tex(res.extra['upper_p_at_0'])}$")
        if "upper_p_over_sqrt_p_at_0" in res.extra:
            line += (f", and upper·p $/\\sqrt{{p}} \\to {_tex(res.extra['upper_p_over_sqrt_p_at_0'])}$: the margin "
                     "vanishes, but like $\\sqrt{p}$, far slower than $\\varepsilon p$")
        rows.append(line + f" ({'agree' if res.passed else 'DISAGREE'}).")
    return rows + [""]


def _section_expansion() -> list[str]:
    exp = A.generic_expansion()
    rows = [
        SECTIONS[6],
        "",
        "For any $f$ smooth at 1 write $F_k = f^{(k)}(1)$, $\\delta = \\varepsilon^2$ and "
        "$r = 1 + a_1\\varepsilon + a_2\\varepsilon^2 + O(\\varepsilon^3)$. Taylor's theorem at 1 gives "
        "(the $F_1$ terms cancel)",
        "",
        f"$$g_f = {_tex(exp.g_series)} + O(\\varepsilon^4),$$",
        "",
        "and matching $g_f = \\varepsilon^2$ order by order:",
        "",
        f"$$a_1 = {_tex(exp.a1[0])} \\ (\\text{{lower}}), \\quad a_1 = {_tex(exp.a1[1])} \\ (\\text{{upper}}), \\qquad "
        f"a_2 = {_tex(exp.a2)}.$$",
        "",
        "So every smooth f-divergence gives, to leading order, the same band "
        "$1 \\pm \\sqrt{2\\delta(1-p)/(f''(1)\\,p)}$: a χ² band with the curvature $f''(1)$ as the only parameter. "
        "The first correction $a_2\\delta$ is shared by both bounds and depends on $f'''(1)$.",
        "",
        "| divergence | lower | upper | check |",
        "|---|---|---|---|",
    ]
    for name in list_symbolic():
        e = A.expansion_for(name)
        if e is None:
            rows.append(f"| `{name}` | not smooth at 1: exact band $1 \\pm \\delta/p$ is linear in $\\delta$ | | — |")
            continue
        res = C.check_small_delta(name)
        how = "series of g_f, and of the closed form" if res.extra.get("closed_form_difference") is not None else "series of g_f"
        rows.append(f"| `{name}` | {_m(e[0])} | {_m(e[1])} | {'holds' if res.passed else 'FAILS'} ({how}) |")
    return rows + [""]


def _section_summary() -> list[str]:
    rows = [SECTIONS[7], "", "| divergence | check | result | method |", "|---|---|---|---|"]
    for name in list_symbolic():
        for res in C.all_checks(name) + [C.check_generator_matches_bandpo(name)]:
            rows.append(f"| `{name}` | {res.check} | {'pass' if res.passed else 'FAIL'} | {res.method} |")
    return rows + [""]


def _section_dppo() -> list[str]:
    from . import dppo as D

    rows = [
        SECTIONS[8],
        "",
        "DPPO (arXiv 2602.04879) masks a token whose binary divergence between Bernoulli(p) (old) and Bernoulli(r p)",
        "(new) exceeds δ on the side its advantage pushes. With p = 1/(1 + m) and t > 0 (`bandpo_theory.dppo`):",
        "",
        "| divergence | g_f(p, r) − D_binary(p, r p), r = 1 + t | same, r = 1/(1 + t) | ∂g/∂r ÷ claimed form, r > 1 | r < 1 |",
        "|---|---|---|---|---|",
    ]
    for name in D.DPPO_DIVERGENCES:
        gap, mono = D.region_identity(name), D.monotone_sides(name)
        rows.append(f"| `{name}` | {_m(gap['r > 1'])} | {_m(gap['r < 1'])} | {_m(mono['r > 1'])} | {_m(mono['r < 1'])} |")
    grad = D.gradient_identity()
    rows += [
        "",
        "So at equal δ the masked region of DPPO is the complement of the band on each side (claimed form of ∂g/∂r:",
        "p (r − 1)/(r (1 − p r)) for KL, ±p for TV, so g_f(p, ·) is monotone on each side of r = 1). Gradients with",
        "respect to l = log π: PPO's −A·r minus its claim, DPPO's −A·w·l minus −A·w, and the ratio form bandpo uses for",
        f"mask methods simplify to {_m(grad['ppo'])}, {_m(grad['dppo'])} and {_m(grad['dppo_as_ratio'])}: inside the band both",
        "methods give every token the same gradient; outside they differ only through BandPO's cap and dual clip and",
        "DPPO's truncation (the case table in `docs/paper-notes.md`, \"Peers (DPPO)\", checked through the loss code).",
        "",
    ]
    return rows


def build_report() -> str:
    """The whole report as a string."""
    closed, missing = _closed_and_open()
    lines = [
        "# BandPO theory report",
        "",
        f"Generated by `python -m bandpo_theory.report` with sympy {sp.__version__}; do not edit by hand.",
        "",
    ]
    lines += _section_setup()
    lines += _section_generators()
    lines += _section_properties()
    lines += _section_closed(closed)
    lines += _section_missing(missing)
    lines += _section_limits()
    lines += _section_expansion()
    lines += _section_summary()
    lines += _section_dppo()
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m bandpo_theory.report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPORT_PATH), help="where to write (default theory/REPORT.md)")
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = parser.parse_args(argv)
    path = Path(args.out)
    try:  # before the (slow) build
        if args.check and not path.is_file():
            raise ValueError(f"--out {args.out!r} {'is a folder' if path.is_dir() else 'does not exist'}; --check "
                             "compares a written report file (run without --check to write it)")
        check_out_path(args.out)
        old = path.read_text(encoding="utf-8") if args.check else None
    except (OSError, ValueError) as e:
        parser.error(e)
    text = build_report()
    if args.check:
        same = old == text
        print(f"{path}: {'up to date' if same else 'differs from a fresh build'}")
        return 0 if same else 1
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
