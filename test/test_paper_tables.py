"""`python -m clustvit_core.paper_tables --quick`: the whole pipeline (train or reuse, evaluate, time, report) on
tiny models and 2 CWFID test images."""
import json
import re
from pathlib import Path

import pytest

from clustvit_core import paper_tables

CWFID = Path(__file__).resolve().parents[2] / "shared" / "data" / "cwfid"


@pytest.mark.skipif(not CWFID.is_dir(), reason="CWFID not in ../shared/data/cwfid")
def test_quick_run_writes_tables_and_reuses_checkpoints(tmp_path, capsys):
    assert paper_tables.main(["--out", str(tmp_path), "--quick", "--data-root", str(CWFID)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {r.label for r in paper_tables.table_rows(ablation=False)}
    kinds = {label: r["kind"] for label, r in results.items()}
    assert kinds["vit"] == "vit" and kinds["cts"] == "cts" and kinds["clustvit_k3_ip3"] == "clustvit"
    assert results["cts"]["tokens"]["mean"] < results["vit"]["tokens"]["mean"]
    assert all(r["img_s"] > 0 and r["gflops"]["mean"] > 0 for r in results.values())
    readme = (tmp_path / "README.md").read_text()
    assert "## Table I" in readme and "| clustvit_k3_ip3 | clustvit | segmenter |" in readme and "QUICK RUN" in readme
    assert (tmp_path / "miou_vs_gflops.png").stat().st_size > 1000 and (tmp_path / "machine.json").is_file()
    assert "## Where the FLOPs go" in readme and "## Targets" in readme and "than the ViT at ≤ 1.0 mIoU loss: **" in readme and "oracle's tokens" in readme
    assert all(r["oracle_tokens"] > 0 for r in results.values() if r["kind"] == "clustvit")
    assert (tmp_path / "tokens.png").is_file() and "## Recall by object size in patch tokens" in readme
    # a ClustViT made from the trained ViT row (its weights, only the Cluster module trained), and the same
    # weights merging through the decoder: same tokens, no more head FLOPs (fewer once anything merges; a tiny
    # model after 2 iterations may merge nothing)
    made, dec = results["clustvit_k3_ip3_from_vit"], results["clustvit_k3_ip3_from_vit_decmerge"]
    assert made["weights"] == dec["weights"] and made["tokens"] == dec["tokens"]
    assert dec["row"]["evaluate"] == {"decoder_merge": True} and not made["row"]["evaluate"]
    assert dec["gflops_parts"]["head"] <= made["gflops_parts"]["head"]
    assert re.search(r"clustvit_k3_ip3_from_vit_decmerge(, \w+)*: the vit row's trained weights, then 2 iterations "
                     r"training only backbone.cluster_mlp, evaluated with decoder_merge=true", readme)
    capsys.readouterr()
    assert paper_tables.main(["--out", str(tmp_path), "--quick", "--data-root", str(CWFID)]) == 0
    folders = {r.folder for r in paper_tables.table_rows(ablation=False)}
    assert capsys.readouterr().out.count("reusing") == len(folders) < len(results)  # a second run trains nothing


@pytest.mark.skipif(not CWFID.is_dir(), reason="CWFID not in ../shared/data/cwfid")
def test_rows_budget_and_readme_section(tmp_path, capsys):
    """--rows picks models; --budget 0 trains nothing new and names the rows it leaves out; ablation rows
    equal to a Table I row share its run; the README section gets Table I and the targets."""
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- BEGIN benchmark:paper-tables -->\nold\n<!-- END benchmark:paper-tables -->\n")
    out = tmp_path / "results"
    args = ["--out", str(out), "--quick", "--data-root", str(CWFID)]
    assert paper_tables.main(args + ["--rows", "vit", "k3_ip3", "--update-readme", str(readme)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"vit", "k3_ip3"} and (out / "runs" / "clustvit_k3_ip3_from_vit" / "final.safetensors").is_file()
    text = readme.read_text()
    assert "old" not in text and "| vit | vit | segmenter |" in text and "paper_tables --out" in text
    capsys.readouterr()
    assert paper_tables.main(args + ["--rows", "vit", "clustvit_k3_ip3_from_vit", "cts", "--budget", "0"]) == 0
    captured = capsys.readouterr().out
    assert captured.count("reusing") == 2 and "not trained yet (run again to go on): cts" in captured
    assert "2 of 3 runs trained; to train: 0 made from a trained row (short); 1 from the pretrained start (long): cts" in captured
    assert set(json.loads((out / "results.json").read_text())) == {"vit", "clustvit_k3_ip3_from_vit"}
    assert "Not trained yet (left out): cts" in (out / "README.md").read_text()
    with pytest.raises(SystemExit):
        paper_tables.main(args + ["--rows", "vit", "swin"])
    assert "--rows swin: unknown row; choose from vit, cts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper_tables.main(["--out", str(tmp_path / "empty"), "--quick", "--data-root", str(CWFID), "--budget", "0"])
    assert "no model in" in capsys.readouterr().err
    assert [r.folder for r in paper_tables.table_rows(True) if r.label in ("k3_ip3", "k3_ip4")] == \
        ["k3_ip4", "clustvit_k3_ip3_from_vit"]


def test_training_order_puts_rows_made_from_trained_rows_first(tmp_path):
    """Rows made from a trained row (minutes) train before the rows that need a training from the pretrained
    start (an hour or more), also when their start row must be trained first (it counts)."""
    rows = paper_tables.table_rows(ablation=True)
    by_label = {r.label: r for r in rows}
    left = lambda label: paper_tables.long_trainings_left(by_label[label], tmp_path)  # noqa: E731
    assert left("vit") == left("cts") == left("clustvit_k3_ip3_from_vit") == left("clustvit_k3_ip3_uper_from_vit") == 1
    for folder in ("vit", "vit_uper"):
        (tmp_path / "runs" / folder).mkdir(parents=True)
        (tmp_path / "runs" / folder / "final.safetensors").write_bytes(b"")
    assert left("vit") == left("clustvit_k3_ip3_from_vit") == left("k1_ip4") == left("clustvit_k3_ip3_uper_from_vit") == 0
    assert left("clustvit_k3_ip3_from_vit_refine") == 0 and left("cts") == left("clustvit_k3_ip3_decregen") == 1
    assert paper_tables.training_plan([by_label["clustvit_k3_ip3_uper_from_vit"], by_label["cts"]], tmp_path) == \
        "1 of 3 runs trained; to train: 1 made from a trained row (short): clustvit_k3_ip3_uper_from_vit; " \
        "1 from the pretrained start (long): cts"  # its start row vit_uper counts, trained
    order = [r.label for r in paper_tables.training_order(rows, tmp_path)]
    assert sorted(order) == sorted(by_label) and order.index("k3_ip6") < order.index("cts") < order.index("clustvit_k3_ip3_uper")
    assert order.index("clustvit_k3_ip3_from_vit_decregen") < order.index("cts")


def _row(label: str, kind: str, head: str, img_s: float, gflops: float, miou: float, measured: str) -> dict:
    """A results.json row with the fields the tables read (made up numbers)."""
    row = next(r for r in paper_tables.table_rows(True) if r.label == label)
    buckets = {b: 0.5 for b in paper_tables.BUCKET_NAMES}
    return {"row": row.__dict__, "kind": kind, "head": head, "img_s": img_s, "miou": miou, "measured": measured,
            "gflops": {"mean": gflops, "std": 0.0}, "tokens": {"mean": 100.0, "std": 0.0, "full_mean": 200.0},
            "oracle_tokens": 100.0 if kind == "clustvit" else None, "class_names": ["soil", "crop", "weed"],
            "per_class": {c: {"iou": miou} for c in ("soil", "crop", "weed")}, "images": [],
            "gflops_parts": {"blocks": gflops, "cluster": 0.0, "regenerator": 0.0, "head": 0.0, "total": gflops},
            "size_recall": {"mean": buckets, "objects": {b: 1 for b in buckets}}}


def _machine(measured: str, rows: dict, images: int = 21) -> dict:
    return {"cpu": "x86_64", "cpu_model": f"cpu of {measured}", "torch_threads": 2, "torch": "2.x", "measured": measured,
            "command": f"command of {measured}", "iterations": {k: 1500 for k in rows}, "started_from": {},
            "pretrained": ["dinov2_small"], "seed": 0, "images": images, "quick": False,
            "not_trained": [k for k in ("vit_uper", "clustvit_k3_ip3_uper_from_vit") if k not in rows]}


def test_keep_other_rows_merges_runs_and_compares_speed_only_within_a_run():
    """--keep-other-rows: an earlier run's rows stay, this run's are added in table order; img/s ratios only against
    the ViT timed in the same run; the later run is named with its machine and command; a run on other images fails."""
    old = {"vit": _row("vit", "vit", "segmenter", 1.0, 200.0, 0.70, "A"),
           "cts": _row("cts", "cts", "segmenter", 1.5, 150.0, 0.68, "A"),
           "clustvit_k3_ip3_from_vit": _row("clustvit_k3_ip3_from_vit", "clustvit", "segmenter", 2.0, 80.0, 0.70, "A")}
    new = {"vit_uper": _row("vit_uper", "vit", "uper", 0.5, 300.0, 0.72, "B"),
           "clustvit_k3_ip3_uper_from_vit": _row("clustvit_k3_ip3_uper_from_vit", "clustvit", "uper", 0.9, 150.0, 0.71, "B")}
    results, machine = paper_tables.merge_runs(old, _machine("A", old), new, _machine("B", new))
    assert list(results)[:3] == ["vit", "cts", "clustvit_k3_ip3_from_vit"] and set(results) == set(old) | set(new)
    assert machine["measured"] == "A" and machine["not_trained"] == [] and set(machine["iterations"]) == set(results)
    assert [(r["measured"], r["rows"]) for r in machine["later_runs"]] == [("B", list(new))]
    uper = paper_tables._vs_vit(results, "clustvit_k3_ip3_uper_from_vit")
    assert uper["speedup"] == pytest.approx(1.8) and uper["gflops_ratio"] == pytest.approx(2.0)
    assert paper_tables._vs_vit(results, "clustvit_k3_ip3_from_vit")["speedup"] == pytest.approx(2.0)
    # the Segmenter ViT measured anew: the old Segmenter rows keep mIoU and GFLOP ratios, lose their speed-ups
    again, machine2 = paper_tables.merge_runs(results, machine, {"vit": _row("vit", "vit", "segmenter", 3.0, 200.0, 0.70, "C")},
                                              _machine("C", {"vit": 1}))
    rel = paper_tables._vs_vit(again, "clustvit_k3_ip3_from_vit")
    assert rel["speedup"] is None and rel["gflops_ratio"] == pytest.approx(2.5)
    assert [(r["measured"], r["rows"]) for r in machine2["later_runs"]] == [("B", list(new)), ("C", ["vit"])]
    line = next(x for x in paper_tables.table(again, ["clustvit_k3_ip3_from_vit"], ["soil"]) if x.startswith("| clustvit"))
    assert line.endswith("| 2.50× | – | – | +0.0 |")
    text = paper_tables.summary(again, machine2, Path("results"))
    assert "vit_uper, clustvit_k3_ip3_uper_from_vit: trained, evaluated and timed in a later run (B; cpu of B" in text
    assert "by `command of B`" in text and "vit: trained, evaluated and timed in a later run (C" in text
    targets = "\n".join(paper_tables.targets(again))
    assert "beaten by" not in targets  # CTS was timed with run A, the ClustViTs' ViT with C: img/s not compared
    with pytest.raises(paper_tables.ConfigError, match="measured 21 images.*this one 2"):
        paper_tables.merge_runs(old, _machine("A", old), new, _machine("B", new, images=2))


def test_keep_other_rows_without_an_earlier_run_fails_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        paper_tables.main(["--out", str(tmp_path), "--quick", "--rows", "vit", "--keep-other-rows"])
    err = capsys.readouterr().err
    assert "--keep-other-rows: cannot read the earlier run's" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_committed_tables_are_what_the_command_writes(tmp_path, monkeypatch):
    """results/README.md and the README's paper-tables section are exactly what `--render` writes from the
    committed results/*.json (no hand-edited figure); --render measures nothing and keeps the section's command."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "results"
    out.mkdir()
    for name in ("results.json", "machine.json"):
        (out / name).write_text((root / "results" / name).read_text())
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text())
    monkeypatch.chdir(tmp_path)  # the section links results/README.md as the command names it
    assert paper_tables.main(["--out", "results", "--render", "--update-readme", "README.md"]) == 0
    assert (out / "README.md").read_text() == (root / "results" / "README.md").read_text()
    assert readme.read_text() == (root / "README.md").read_text()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in (root / "results").glob("*.png"))
    assert not (out / "runs").exists()
