"""The lateral-connection ablation (paper section 5.5, Figure 7; spec 8.4).

SPAIR's encoder lets each cell see the sampled latents of already-processed neighbours up to L
cells away (``model.n_lookback``; L = 1 is the default, L = 0 removes the lateral connections,
L = 2 widens them to 12 neighbours). The ablation trains SPAIR with each L in the training
conditions ``11-15`` and ``1-5`` of the generalization experiment and tests every run with the same
full-image protocol: best checkpoint (selected on validation crops) applied to full 84×84 images
with exactly n = 1..20 digits; AP, count absolute error and count 0-1 error per n.

Everything but the lookback is shared with :mod:`spair.experiments.generalization`: the data, the
settings (:class:`AblationSettings` extends its settings), SPAIR's configuration
(:func:`~spair.experiments.generalization.spair_config`, with ``model.n_lookback = L`` applied last),
the test protocol, the resumable driver and the panels of the figure. With
``lookback_settings = "shared"`` (the default) the runs differ only in L, so the L = 1 run of a
condition has the configuration of the generalization experiment's run (same settings and seed). With
``"spec"``, each L gets the authors' own tuning of the ablation (spec 8.4 table: kernel size 2,
final count-prior odds F = 0.05 / 0.0125 / 0.1 and count-prior decay D = 4000 / 3000 / 2000 steps
for L = 0 / 1 / 2); D is scaled by the config's own decay steps over the authors' default of 1000
(:func:`lookback_overrides`), so the ``paper`` preset gets the table's numbers and the CPU recipe
(300) gets 1200 / 900 / 600.

**Layout.** ``OUT/<condition>/L<L>/seed<s>/`` is one SPAIR run (with ``result.json`` once tested);
``OUT/results.json``, ``OUT/ablation.png`` (one row of three panels per condition, one line per L)
and ``OUT/examples.png``. Resuming works as in the generalization experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from ..config import apply_overrides, from_dict, param, to_dict
from ..errors import ConfigError
from .generalization import (GeneralizationSettings, Line, Log, no_log, condition_name, parse_condition,
                             plot_panels, run_transfer, spair_config, spread_note)
from .generalization import settings_for_scale as generalization_settings

LOOKBACKS: tuple[int, ...] = (0, 1)
"""Lookbacks of Figure 7 (L = 2 is an option: ``--lookbacks 0,1,2``)."""
ABLATION_CONDITIONS: tuple[str, ...] = ("11-15", "1-5")
"""Training conditions of the ablation (the paper ran 11-15; the authors' plots add 1-5)."""

SPEC_LOOKBACK_SETTINGS: dict[int, dict[str, float]] = {
    0: {"count_prior_decay_steps": 4000, "count_prior_final_odds": 0.05, "kernel_size": 2},
    1: {"count_prior_decay_steps": 3000, "count_prior_final_odds": 0.0125, "kernel_size": 2},
    2: {"count_prior_decay_steps": 2000, "count_prior_final_odds": 0.1, "kernel_size": 2},
}
"""The authors' per-lookback settings of the ablation (spec 8.4; hw_prior_std 0.5 for every L)."""
SPEC_DEFAULT_DECAY_STEPS = 1000.0
"""The authors' default count-prior decay D, against which the table's D are scaled."""


@dataclass
class AblationSettings(GeneralizationSettings):
    """The generalization experiment's settings plus how the runs of different L are configured."""

    lookback_settings: Literal["shared", "spec"] = param(
        "shared", help="'shared': runs differ only in L; 'spec': each L also gets the authors' kernel size, "
                       "final count-prior odds and (scaled) decay steps of spec 8.4")


def settings_for_scale(scale: str) -> AblationSettings:
    """The generalization experiment's budgets for ``scale`` (docs/generalization.md), shared settings."""
    return from_dict(AblationSettings, to_dict(generalization_settings(scale)))


def lookback_overrides(lookback: int, settings: AblationSettings, base: Any) -> list[str]:
    """The TrainConfig overrides that make ``base`` (a condition's config) a run with lookback L.

    ``shared``: ``model.n_lookback = L`` only. ``spec``: also the spec 8.4 row of L; its decay D is
    multiplied by ``base``'s decay steps / 1000 (the authors' default), so that a compressed
    schedule (the CPU recipe's 300) stays compressed. A lookback without a row (L > 2) uses L = 2's.
    """
    out = [f"model.n_lookback={lookback}"]
    if settings.lookback_settings == "spec":
        row = SPEC_LOOKBACK_SETTINGS.get(lookback, SPEC_LOOKBACK_SETTINGS[2])
        decay = row["count_prior_decay_steps"] * base.schedule.count_prior_decay_steps / SPEC_DEFAULT_DECAY_STEPS
        out += [f"model.kernel_size={int(row['kernel_size'])}", f"schedule.count_prior_decay_steps={decay:g}",
                f"schedule.count_prior_final_odds={row['count_prior_final_odds']:g}"]
    return out


def ablation_config(condition: str, lookback: int, settings: AblationSettings, seed: int):
    """SPAIR's TrainConfig for a condition and lookback: :func:`spair_config` of the condition with
    :func:`lookback_overrides` applied last."""
    base = spair_config(condition, settings, seed)
    return apply_overrides(base, lookback_overrides(lookback, settings, base))


def ablation_lines(conditions: Sequence[str], lookbacks: Sequence[int], settings: AblationSettings) -> list[Line]:
    """One curve per condition and lookback, named ``<condition>/L<L>``, one figure row per condition."""
    lines = []
    for c in conditions:
        name = condition_name(c)
        for L in lookbacks:
            label = f"L = {L}" + (" (no lateral connections)" if L == 0 else "")
            lines.append(Line(name=f"{name}/L{L}", label=label, condition=name, lookback=int(L), row=name,
                              config=lambda seed, name=name, L=L: ablation_config(name, L, settings, seed)))
    return lines


def run_ablation(out: str | Path = "results/ablation", scale: str = "quick", seeds: Sequence[int] = (0,),
                 lookbacks: Sequence[int] = LOOKBACKS, conditions: Sequence[str] = ABLATION_CONDITIONS, *,
                 settings: AblationSettings | None = None, overrides: Sequence[str] = (), conncomp: bool = False,
                 cache_dir: str | Path | None = None, command: str = "", log: Log = no_log,
                 progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the ablation of the module docstring; return the contents of ``results.json``.

    ``settings`` replaces the settings of ``scale`` (a :class:`GeneralizationSettings` is taken with
    ``lookback_settings="shared"``); ``overrides`` are ``KEY=VALUE`` changes of them (e.g.
    ``"lookback_settings=spec"``). ``conncomp`` adds ConnComp's curves (as in the
    generalization experiment) to every row.
    """
    names = [condition_name(c) for c in conditions]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"conditions: expected distinct ranges like 11-15, got {list(conditions)}")
    lookbacks = [int(L) for L in lookbacks]
    if not lookbacks or len(set(lookbacks)) != len(lookbacks) or min(lookbacks) < 0 or max(lookbacks) > 4:
        raise ConfigError(f"lookbacks: expected distinct integers in 0..4, got {lookbacks}")
    settings = settings or settings_for_scale(scale)
    if not isinstance(settings, AblationSettings):  # the generalization experiment's settings: shared L settings
        settings = from_dict(AblationSettings, to_dict(settings))
    settings = apply_overrides(settings, list(overrides))
    return run_transfer(
        out, experiment="ablation",
        description="SPAIR with lateral connections reaching L cells back (L = " + ", ".join(map(str, lookbacks))
                    + "), trained on random crops in the conditions " + ", ".join(names) + " and tested on full "
                    "images with exactly n digits (paper section 5.5, Figure 7; spec 8.4)",
        scale=scale, lines=ablation_lines(names, lookbacks, settings), seeds=seeds, settings=settings,
        conncomp=conncomp, plot=plot_ablation, figure_name="ablation.png",
        extra={"lookback_settings": settings.lookback_settings,
               "lookback_overrides": {str(L): lookback_overrides(L, settings, spair_config(names[0], settings, 0))
                                      for L in lookbacks}},
        cache_dir=cache_dir, command=command, log=log, progress=progress)


def plot_ablation(results: dict[str, Any], path: str | Path) -> None:
    """Figure 7: one row per training condition (its range shaded), three panels (AP, count
    absolute error, count 0-1 error) against n, one line per lookback (mean ± sd over seeds)."""
    rows, shade = [], {}
    for c in results["conditions"]:
        title = f"trained on {c} digits"
        rows.append((title, [f"{c}/L{L}" for L in results["lookbacks"]] + ["conncomp", "conncomp_global"]))
        shade[title] = parse_condition(c)
    s = results["settings"]
    plot_panels(results, path, rows,
                f"Lateral connections reaching L cells back: trained on {s['crop_size']}x{s['crop_size']} crops "
                f"(shaded: training range), tested on full {s['image_size']}x{s['image_size']} images "
                f"({spread_note(results)}; lookback settings '{results['lookback_settings']}')", shade=shade)
