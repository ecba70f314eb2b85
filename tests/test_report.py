"""`genbench report`: the document's structure on a tiny stored run, and the verdict rule on
synthetic populations whose truth is known."""

from __future__ import annotations

import base64
import io
import random
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from genbench import findings as fnd
from tests.helpers import write_suite

TINY = """
name = "{name}"
seeds = [0, 1]
[dataset]
name = "digits"
[model]
name = "mlp"
params = {{ width = 8, depth = 1 }}
[train]
lr = 0.1
batch_size = 256
max_epochs = 2
stop_train_loss = 5.0  # reached by every model: a converged population
[train.track_volume]
estimator = "laplace"
every = 1
[regularizers.dropout]
rate = 0.0
[grid]
"regularizers.dropout.rate" = [0.0, 0.3]
"model.width" = [8, 12]
[measures]
frobenius_distance = {{}}
parameter_norm = {{}}
"""


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """One store, two runs (suites tiny and tiny-again: the same 8 models, trained once)."""
    import genbench

    tmp = tmp_path_factory.mktemp("report")
    store = tmp / "store"
    for name in ("tiny", "tiny-again"):
        genbench.run(write_suite(tmp, TINY.format(name=name), f"{name}.toml"), store=store)
    return store


@pytest.fixture(scope="module")
def written(tiny_store, tmp_path_factory):
    from genbench.report import report

    out = tmp_path_factory.mktemp("out")
    return report(tiny_store, runs=[1], out=out, bootstrap=20), out


def test_every_section_is_there_or_says_why_not(written):
    result, out = written
    md = (out / "report.md").read_text()
    for heading in ("### Provenance", "### Leaderboard", "### Figures", "### Findings"):
        assert heading in md
    for claim in (f.claim for f in fnd.all_findings([], {}, [])):
        assert claim.replace("|", "\\|") in md
    assert "PAC-S terms: not in this suite" in md  # the tiny suite has no PAC-S measure
    assert "suite hash `" in md and "seeds: 0, 1" in md
    assert "8 in the run, 8 trained, 0 failed" in md
    for name in ("frobenius_distance", "parameter_norm"):
        assert f"| {name} |" in md
    verdicts = result["runs"][0]["findings"]
    assert verdicts["dropout-volume"] in (fnd.HOLDS, fnd.REFUTED, fnd.INCONCLUSIVE)
    assert verdicts["reverse-noise"] is None and "not in this suite: needs" in md
    assert len(result["figures"]) == 5  # gap, volume, volume in training, MI, train loss


def test_leaderboard_mi_carries_the_sign_of_tau(written):
    result, out = written
    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| frobenius_distance |")
             or line.startswith("| parameter_norm |")]
    assert len(table) == 2
    # columns: measure, n, dir, MI dropout, GG w1, GG w0, ...; dir is the sign of tau
    for line in table:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        sign, gg0 = cells[2], cells[5].split(" ")[0]
        if sign == "−":
            assert gg0.startswith("-") or float(gg0) == 0
        elif sign == "+":
            assert not gg0.startswith("-")


def _pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return np.asarray(img.convert("L"), dtype=float)


def test_every_png_decodes_and_is_not_blank(written):
    result, out = written
    pngs = sorted(out.glob("*.png"))
    assert {str(p) for p in pngs} == set(result["figures"])
    for p in pngs:
        px = _pixels(p.read_bytes())
        assert px.shape[0] > 200 and px.shape[1] > 300
        assert px.std() > 10, f"{p.name} is (nearly) blank"
        assert (px < 128).mean() > 0.005, f"{p.name} has almost nothing drawn"


def test_html_is_self_contained(written):
    _, out = written
    page = (out / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)['"]""", page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert not re.search(r"https?://|<link|<script|@import|url\(", page)
    # every figure file is embedded, byte for byte
    embedded = {base64.b64decode(r.split(",", 1)[1]) for r in refs}
    assert embedded == {p.read_bytes() for p in out.glob("*.png")}


def test_several_runs_side_by_side(tiny_store, tmp_path):
    from genbench.report import report

    result = report(tiny_store, out=tmp_path, bootstrap=0)  # default: the last run of each suite
    assert [r["suite"] for r in result["runs"]] == ["tiny", "tiny-again"]
    md = (tmp_path / "report.md").read_text()
    assert "## Findings side by side" in md and "| claim | tiny (run 1) | tiny-again (run 2) |" in md
    assert "intervals: not in this run (bootstrap 0)" in md
    assert len(list(tmp_path.glob("tiny-again-*.png"))) == 5


def test_pac_s_terms_figure_when_parts_are_stored(tiny_store, tmp_path):
    from genbench.report import Doc, figure_sections, load_run, pick_runs, stored_runs

    run = load_run(tiny_store, pick_runs(stored_runs(tiny_store), [1], tiny_store)[0], bootstrap=0)
    run.slug = "parts"
    run.suite.measures["pac_s_laplace"] = {}
    for i, m in enumerate(run.models):
        m["measures"]["pac_s_laplace"] = 100.0 + 10 * i
        m["parts"] = {"pac_s_laplace": {"sharpness_term": 90.0 + 10 * i, "volume_term": 10.0}}
    doc = Doc()
    figure_sections(doc, run, tmp_path, lambda _: None)
    captions = [b[2] for b in doc.blocks if b[0] == "figure"]
    caption = next(c for c in captions if c.startswith("PAC-S values split"))
    # the volume term's share is 10 / (100 + 10 i), i = 0..7: median (10/130 + 10/140) / 2
    assert "a median 7.4% of the value" in caption
    assert _pixels((tmp_path / "parts-pac-s-parts.png").read_bytes()).std() > 10


def test_bad_input_is_one_line_before_any_work(tiny_store, tmp_path):
    from genbench.cli import app

    cli = CliRunner()
    cases = [(["--store", str(tmp_path / "nowhere")], "no genbench store there"),
             (["--store", str(tiny_store), "--run", "99"], "--run 99: no such run"),
             (["--store", str(tiny_store), "--out", str(tiny_store / "genbench.sqlite" / "x")],
              "cannot write there")]
    for args, message in cases:
        res = cli.invoke(app, ["report", *args, "--out", str(tmp_path / "o")] if "--out" not in args
                         else ["report", *args])
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "o").exists()


# -- the verdict rule, on populations whose truth is known ----------------------------------------
def population(effect: float, noise: float, seeds: int = 5, rates=(0.0, 0.15, 0.3, 0.45),
               rng_seed: int = 0, gap_effect: float = 0.0) -> list[dict]:
    """Volume = 0.4 + effect * rate + per-seed offset + noise; gap = 0.5 + gap_effect * rate + noise."""
    rng = random.Random(rng_seed)
    out = []
    for seed in range(seeds):
        offset = rng.gauss(0, 0.05)  # seeds differ: what pairing with the twin removes
        for r in rates:
            out.append({"hparams": {"regularizers.dropout.rate": r, "model.width": 8}, "seed": seed,
                        "volume": {"laplace": 0.4 + effect * r + offset + rng.gauss(0, noise)},
                        "gap": 0.5 + gap_effect * r + offset + rng.gauss(0, noise),
                        "test_loss": 1.0})
    return out


def test_t_interval_matches_a_hand_computed_case():
    eff = fnd.mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302653
    assert eff.mean == 2.0 and eff.n == 3
    assert eff.hi - 2.0 == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    assert fnd.mean_interval([5.0]).lo is None


def test_volume_rising_with_dropout_holds_falling_is_refuted_noise_is_inconclusive():
    assert fnd.dropout_raises_volume(population(0.5, 0.01)).verdict == fnd.HOLDS
    assert fnd.dropout_raises_volume(population(-0.5, 0.01)).verdict == fnd.REFUTED
    assert fnd.dropout_raises_volume(population(0.0, 0.01)).verdict == fnd.INCONCLUSIVE
    assert fnd.volume_grows_with_rate(population(0.5, 0.01, gap_effect=-1)).verdict == fnd.HOLDS
    assert fnd.volume_grows_with_rate(population(-0.5, 0.01, gap_effect=-1)).verdict == fnd.REFUTED
    # volume rises but the gap rises too: the two-part claim is refuted
    assert fnd.volume_grows_with_rate(population(0.5, 0.01, gap_effect=+1)).verdict == fnd.REFUTED
    assert fnd.volume_grows_with_rate(population(0.5, 0.01, rates=(0, 0.3))).verdict is None


def test_pure_noise_is_rarely_called_either_way():
    """Under no effect the rule errs at about its level (5%), not more: 400 noise populations."""
    calls = [fnd.dropout_raises_volume(population(0.0, 0.05, rates=(0.0, 0.3), rng_seed=s)).verdict
             for s in range(400)]
    wrong = sum(c != fnd.INCONCLUSIVE for c in calls) / len(calls)
    assert 0.01 < wrong < 0.09


def test_pairing_uses_the_twin_of_the_same_seed_and_other_hyperparameters():
    pop = [{"hparams": {"regularizers.dropout.rate": r, "regularizers.weight_noise.std": w, "model.width": wd},
            "seed": s, "volume": {"laplace": v}, "gap": 0.0, "test_loss": 0.0}
           for r, w, wd, s, v in [(0, 0, 8, 0, 1.0), (0.3, 0, 8, 0, 1.5), (0, 0, 16, 0, 10.0),
                                  (0.3, 0, 16, 0, 10.25), (0, 0, 8, 1, 2.0), (0.3, 0, 8, 1, 2.75),
                                  (0.3, 0.01, 8, 0, 99.0), (0, 0.01, 8, 0, 0.5)]]
    got = fnd.paired_changes(pop, {"dropout"}, fnd.volume_of("laplace"))
    assert got == {"dropout.rate=0.3": [0.5, 0.25, 0.75]}  # both on: neither dropout's nor weight noise's
    assert fnd.paired_changes(pop, {"weight_noise"}, fnd.volume_of("laplace")) == {"weight_noise.std=0.01": [-0.5]}


def test_slopes_recover_a_known_linear_trend():
    pop = population(2.0, 0.0, seeds=3)
    assert fnd.slopes(pop, "regularizers.dropout.rate", fnd.volume_of("laplace")) == pytest.approx([2.0] * 3)


def noise_population(reg_key: str, vol_effect: float, loss_effect: float, dropout: float = 0.2,
                     seeds: int = 4) -> list[dict]:
    rng = random.Random(1)
    out = []
    for seed in range(seeds):
        for key, dv, dl in ((None, 0, 0), (reg_key, vol_effect, loss_effect),
                            ("regularizers.dropout.rate", dropout, 0)):
            hp = {reg_key: 0.0, "regularizers.dropout.rate": 0.0}
            if key:
                hp[key] = 0.3
            out.append({"hparams": hp, "seed": seed, "gap": 0.1,
                        "volume": {"laplace": 0.4 + dv + rng.gauss(0, 0.005)},
                        "test_loss": 1.0 + dl + rng.gauss(0, 0.005)})
    return out


def test_noise_and_control_claims():
    wn = "regularizers.weight_noise.std"
    contracts = fnd.noise_claim(noise_population(wn, -0.1, +0.2), "w", "", {"weight_noise"}, -1, +1)
    assert contracts.verdict == fnd.HOLDS
    expands = fnd.noise_claim(noise_population(wn, +0.1, +0.2), "w", "", {"weight_noise"}, -1, +1)
    assert expands.verdict == fnd.REFUTED
    wd = "regularizers.weight_decay.value"
    assert fnd.controls_barely_move(noise_population(wd, 0.01, 0)).verdict == fnd.HOLDS  # δ = 0.05
    assert fnd.controls_barely_move(noise_population(wd, 0.2, 0)).verdict == fnd.REFUTED
    assert fnd.controls_barely_move(noise_population(wd, 0.05, 0)).verdict == fnd.INCONCLUSIVE
    assert fnd.controls_barely_move(noise_population(wn, 0.01, 0)).verdict is None


def test_estimator_share_from_noise_on_and_off():
    pop = population(0.4, 0.001, rates=(0.0, 0.5))
    for m in pop:  # the estimator's own noise: 0.3 per unit rate (0.15 of the 0.2 at rate 0.5)
        m["volume_noise_off"] = {"laplace": m["volume"]["laplace"] - 0.3 * m["hparams"]["regularizers.dropout.rate"]}
    f = fnd.estimator_share(pop)
    assert f.verdict == fnd.HOLDS
    assert "estimator's share 75%" in f.parts[0].numbers  # (0.2 - 0.05) / 0.2
    assert fnd.estimator_share(population(0.4, 0.001)).verdict is None


def test_undropped_models_anchor_the_noise_off_line():
    """As stored: Laplace gives noise_off only where a noise regularizer is bound, so the
    rate-0 twins have none; their noise-off value is their value (no noise to remove), and
    the share is then computed against them. An estimator that never gives noise_off
    (sampling) gets no noise-off values."""
    from genbench.report import _fill_noise_off

    pop = population(0.4, 0.001, rates=(0.0, 0.5))
    for m in pop:
        m["volume"]["sampling"] = 0.1
        rate = m["hparams"]["regularizers.dropout.rate"]
        m["volume_noise_off"] = ({"laplace": m["volume"]["laplace"] - 0.3 * rate} if rate else {})
    _fill_noise_off(pop)
    assert all(m["volume_noise_off"]["laplace"] == m["volume"]["laplace"]
               for m in pop if m["hparams"]["regularizers.dropout.rate"] == 0)
    assert not any("sampling" in m["volume_noise_off"] for m in pop)
    assert "estimator's share 75%" in fnd.estimator_share(pop).parts[0].numbers


def board(pac: tuple[float, list | None], other: float, tau_other: float = 0.5) -> dict:
    return {"pac_s_laplace": {"mi": {"0": pac[0]}, "kendall_tau": 0.5, "ci": {"mi.0": pac[1]},
                              "sign_error": 0.3},
            "frobenius_distance": {"mi": {"0": other}, "kendall_tau": tau_other, "ci": {},
                                   "sign_error": 0.4}}


def test_pac_s_ranking_rule():
    def verdict(b):
        return fnd.leaderboard_findings(b, [])[0].verdict

    assert verdict(board((0.6, [0.5, 0.7]), 0.2)) == fnd.HOLDS
    assert verdict(board((0.1, [0.05, 0.15]), 0.5)) == fnd.REFUTED
    assert verdict(board((0.6, [0.1, 0.9]), 0.2)) == fnd.INCONCLUSIVE
    assert verdict(board((0.6, None), 0.2)) == fnd.INCONCLUSIVE
    # a measure that ranks the models backwards (tau < 0) has high MI but does not lead
    assert verdict(board((0.3, [0.25, 0.35]), 0.9, tau_other=-0.8)) == fnd.HOLDS
    assert fnd.leaderboard_findings({"frobenius_distance": {}}, [])[0].verdict is None
