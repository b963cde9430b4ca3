"""benchmarks/gpu_first_run.py runs end to end in its --smoke mode on the CPU (so that its first GPU run is not its
first run at all); every section reports, none with an error."""
import json

from benchmarks import gpu_first_run


def test_the_smoke_run_reports_every_section_without_error(tmp_path, capsys):
    result = gpu_first_run.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    sections = ("environment", "hf_static", "engine", "attention", "memory", "images", "embeddings")
    errors = {name: result[name] for name in sections if isinstance(result.get(name), dict) and "error" in result[name]}
    assert not errors and all(name in result for name in sections)
    runs = {(row["cuda_graphs"], row["streams"]): row for row in result["engine"]}
    assert set(runs) == {(graphs, streams) for graphs in (True, False) for streams in (1, 4)}
    for (_, streams), row in runs.items():
        assert row["output_tokens"] == streams * gpu_first_run.SMOKE["output_len"] and row["batched"]
        assert row["graphs_captured"] == 0 and not row["graphs_on"]  # CUDA graphs are CUDA's: off on the CPU
    assert any("scaled_dot_product" in op for op in result["attention"]["ops"])
    assert result["hf_static"][0]["output_tokens_per_s"] > 0 and result["embeddings"]["sentences"] == 16
    assert result["images"]["images_per_s"] > 0
    assert json.loads((tmp_path / "gpu_first_run.json").read_text()) == json.loads(capsys.readouterr().out)
