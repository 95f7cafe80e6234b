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
