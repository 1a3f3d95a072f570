"""The comparison report groups seeds (mean ± spread) and lists every model."""

import json

from finetune.compare import load_results, render_markdown


def _run(tmp_path, name, model, init, top1, seed, lpc=20):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "name": name, "model": model, "init": init, "head": "finetune", "labels_per_class": lpc,
        "seed": seed, "params": 1.5e6, "gflops_per_clip": 0.25, "train_clips_per_s": 100.0 + seed,
        "top1": top1, "top5": min(1.0, top1 + 0.3)}))
    (d / "confusion.png").write_bytes(b"\x89PNG")
    return d


def test_report_groups_seeds(tmp_path):
    _run(tmp_path, "vit_pt_s0", "vit_test", "pretrained", 0.50, 0)
    _run(tmp_path, "vit_pt_s1", "vit_test", "pretrained", 0.60, 1)
    _run(tmp_path, "c3d_s0", "c3d", "scratch", 0.70, 0)
    results = load_results([str(tmp_path / "*")])
    assert len(results) == 3
    md = render_markdown(results, rel_to=tmp_path, chance=0.1)
    rows = [l for l in md.splitlines() if l.startswith("| vit_test") or l.startswith("| c3d")]
    assert len(rows) == 2
    vit = next(r for r in rows if r.startswith("| vit_test"))
    assert "55.0 ± 5.0" in vit and "| 2 |" in vit
    assert "70.0" in next(r for r in rows if r.startswith("| c3d"))
    assert "Chance level: 10.0%" in md
    assert "(c3d_s0/confusion.png)" in md
