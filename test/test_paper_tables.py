"""`python -m clustvit_core.paper_tables --quick`: the whole pipeline (train or reuse, evaluate, time, report) on
tiny models and 2 CWFID test images."""
import json
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
    capsys.readouterr()
    assert paper_tables.main(["--out", str(tmp_path), "--quick", "--data-root", str(CWFID)]) == 0
    assert capsys.readouterr().out.count("reusing") == len(results)  # a second run trains nothing
