"""`pipelines predict`: every task against a running Bento (--url) and in process from the store (--model),
with the same answers both ways; one-line errors with a non-zero exit."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.bench import cpu_features, machine_label
from services.runtime import cpu_identity, int8_kernels
from tests.helpers import bentoml_server, free_port
from tests.test_cli import assert_clean_failure, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(siamese_run, unet_run, text_run, tabular_run, classifier_run):
    with bentoml_server("services.pipelines:Pipelines", env={"PIPELINES_PROVIDER": "cpu"}, timeout=180) as served:
        yield served


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits_folder):
    folder = tmp_path_factory.mktemp("predict")
    images = sorted(Path(digits_folder).glob("*.jpg"))
    scene = folder / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)).save(scene)
    import palmerpenguins

    frame = palmerpenguins.load_penguins().head(1500 // 5)
    frame.to_csv(folder / "penguins.csv", index=False)
    (folder / "texts.txt").write_text("A lovely, fresh coffee.\n\nStale and bland, never again.\n")
    return {"a": images[0], "b": images[-1], "scene": scene, "csv": folder / "penguins.csv",
            "texts": folder / "texts.txt", "folder": folder}


def both_ways(url, *args):
    """The same command against the server and in process; both must succeed and print the same."""
    task = args[0]
    served = run_cli("predict", "--url", url, *args)
    local = run_cli("predict", "--model", f"{task}:latest", *args)
    assert served.returncode == 0, served.stderr[-2000:]
    assert local.returncode == 0, local.stderr[-2000:]
    return served.stdout, local.stdout


def test_siamese_text_and_classifier_give_the_same_answers_served_and_in_process(url, inputs):
    served, local = both_ways(url, "siamese", str(inputs["a"]), str(inputs["b"]))
    assert served == local and ("same" in served or "different" in served)
    served, local = both_ways(url, "text", "--file", str(inputs["texts"]))
    assert served == local and len(served.strip().splitlines()) == 2
    served, local = both_ways(url, "classifier", str(inputs["a"]), str(inputs["b"]), "-k", "2")
    assert served == local and served.count(":") == 2


def test_unet_writes_the_mask_and_never_overwrites(url, inputs, tmp_path):
    masks = [tmp_path / "served.png", tmp_path / "local.png"]
    for where, mask in zip((("--url", url), ("--model", "unet:latest")), masks):
        completed = run_cli("predict", *where, "unet", str(inputs["scene"]), "-o", str(mask))
        assert completed.returncode == 0, completed.stderr[-2000:]
    first, second = (np.asarray(Image.open(mask)) for mask in masks)
    assert first.shape == (64, 96) and np.array_equal(first, second)
    again = run_cli("predict", "--url", url, "unet", str(inputs["scene"]), "-o", str(masks[0]))
    assert_clean_failure(again)
    assert "already exists" in again.stderr


def test_tabular_csv_in_chunks_keeps_the_input_columns(url, inputs, tmp_path, monkeypatch):
    outputs = [tmp_path / "served.csv", tmp_path / "local.csv"]
    for where, output in zip((("--url", url), ("--model", "tabular:latest")), outputs):
        completed = run_cli("predict", *where, "tabular", "--csv", str(inputs["csv"]), "--out", str(output))
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert "wrote 300 predictions" in completed.stdout
    rows = [list(csv.DictReader(open(output))) for output in outputs]
    assert len(rows[0]) == 300
    source = list(csv.DictReader(open(inputs["csv"])))
    assert all(row["island"] == original["island"] for row, original in zip(rows[0], source))
    assert {"prediction", "probability_Adelie"} <= set(rows[0][0])
    assert [r["prediction"] for r in rows[0]] == [r["prediction"] for r in rows[1]]


def test_predict_errors_are_one_line(url, inputs, tmp_path):
    cases = [
        (("--url", f"http://127.0.0.1:{free_port()}", "text", "hello"), "cannot reach the server"),
        (("--url", url, "siamese", str(inputs["a"]), str(tmp_path / "missing.jpg")), "no such file"),
        (("--url", url, "siamese", str(inputs["texts"]), str(inputs["a"])), "image_a"),
        (("--model", "tabular:latest", "siamese", str(inputs["a"]), str(inputs["b"])), "is a 'tabular' model"),
        (("--model", "nosuchmodel:latest", "text", "hi"), "no such model"),
        (("text", "hi"), "give --url"),
    ]
    for args, message in cases:
        completed = run_cli("predict", *args)
        assert_clean_failure(completed)
        assert message in completed.stderr, (args, completed.stderr)
    for content, message in (("island,bill_length_mm\nBiscoe,40\nBiscoe,Infinity\n", "row 2, column 'bill_length_mm'"),
                             ("island\nBiscoe\n", "CSV rows 1-1")):
        bad = tmp_path / "bad.csv"
        bad.write_text(content)
        completed = run_cli("predict", "--url", url, "tabular", "--csv", str(bad), "--out", str(tmp_path / "o.csv"))
        assert_clean_failure(completed, message)
        assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.csv.partial").exists()


def test_bench_in_process_and_against_the_url_write_a_table_a_log_and_a_chart(url, tabular_run, tmp_path):
    _, result = tabular_run
    completed = run_cli("bench", str(result.output_dir), "--rounds", "2", "--repeats", "1", "--no-openvino",
                        "--results", str(tmp_path))
    assert completed.returncode == 0, completed.stderr[-2000:]
    for runtime in ("fastai/PyTorch eager", "ONNX Runtime fp32"):
        assert runtime in completed.stdout
    assert "| batch 16 |" in completed.stdout
    completed = run_cli("bench", "--url", url, "--concurrency", "1,2", "--requests", "4", "--seconds", "20",
                        "--results", str(tmp_path))
    assert completed.returncode == 0, completed.stderr[-2000:]
    for route in ("/siamese/predict", "/unet/segment", "/text/classify", "/tabular/predict", "/classifier/predict"):
        assert f"| {route} | 2 |" in completed.stdout
    logs = sorted(tmp_path.glob("*.log"))
    assert [log.name.split("_")[1] for log in logs] == ["tabular", "url"]
    assert all(log.with_suffix(".png").is_file() for log in logs)
    assert "command: pipelines bench --url" in logs[1].read_text()
    assert "| 0 |" in logs[1].read_text()  # no errors
    model, features = cpu_features()
    for log in logs:  # which CPU measured it: in the log and in its name
        machine = next(line for line in log.read_text().splitlines() if line.startswith("machine: "))
        identity = cpu_identity()
        assert machine.startswith(f"machine: {model} ({identity}), " if identity else f"machine: {model}, ")
        assert all(feature in machine for feature in features)
        assert log.name.split("_")[2] == machine_label()


def test_bench_compares_servers_in_alternating_rounds(url, tmp_path):
    with bentoml_server("services.pipelines:Pipelines", timeout=180,
                        env={"PIPELINES_PROVIDER": "cpu", "PIPELINES_REQUEST_THREADS": "2"}) as other:
        completed = run_cli("bench", "--url", url, "--url", other, "--endpoint", "/tabular/predict",
                            "--concurrency", "2", "--requests", "4", "--rounds", "2", "--results", str(tmp_path))
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| server | endpoint | clients |" in completed.stdout
    for server in (url, other):
        assert f"| {server} | /tabular/predict | 2 | 4 |" in completed.stdout  # 2 rounds of 2 requests each
    log = next(tmp_path.glob("bench_url_*.log")).read_text()
    assert f"served at {url}: tabular: " in log and f"served at {other}: tabular: " in log
    assert "request threads: 16" in log and "request threads: 2" in log
    completed = run_cli("bench", "--url", url, "--url", f"{url}/")
    assert_clean_failure(completed, f"--url {url} given more than once")


def test_bench_measures_the_siamese_two_pass_baseline_and_leaves_no_scratch_files(siamese_run, tmp_path):
    _, result = siamese_run
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    completed = run_cli("bench", str(result.output_dir), "--rounds", "2", "--repeats", "1", "--no-openvino",
                        "--results", str(tmp_path), env={"TMPDIR": str(scratch)})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "ONNX Runtime fp32, two-pass" in completed.stdout and "vs ORT fp32 two-pass" in completed.stdout
    assert not list(scratch.glob("bench-*")) and not list(scratch.rglob("*.onnx"))


def test_bench_of_a_missing_folder_or_an_unknown_model_fails_in_one_line(tmp_path):
    for target in (str(tmp_path / "no" / "such" / "folder"), "no-such-model:latest"):
        completed = run_cli("bench", target, env={"BENTOML_HOME": str(tmp_path / "bentoml")})
        assert_clean_failure(completed, f"{target}: neither an artifact folder nor a model in the BentoML store")


@pytest.mark.parametrize("flags, label, kernels", [
    ("fpu sse4_2 avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8", "amxint8", "amx"),
    ("fpu sse4_2 fma avx2 sha_ni", "avx2", "no-vnni"),
    ("fpu sse4_2 avx2 avx512f avx512_vnni", "avx512vnni", "vnni"),
    ("fpu sse4_2 avx2 avx_vnni", "avxvnni", "vnni"),
    ("fpu sse4_2 avx2 avx512f", "avx512f", "no-vnni"),
])
def test_bench_logs_name_the_cpu_by_its_best_instruction_set(flags, label, kernels, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    model, features = cpu_features(cpuinfo)
    assert model == "Some CPU"
    assert machine_label(cpuinfo).endswith(f"-{label}")
    # two CPUs with the same best feature (an Ice Lake Xeon, a Zen 5 EPYC) are told apart by vendor and model
    for vendor, family, model_number, identity in (("GenuineIntel", 6, 106, "intel-f6m106"),
                                                    ("AuthenticAMD", 26, 2, "amd-f26m2")):
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
                           f"model\t\t: {model_number}\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n"
                           f"processor\t: 1\nvendor_id\t: {vendor}\nmodel\t\t: 999\n")
        assert machine_label(cpuinfo).endswith(f"-{label}-{identity}")
        assert "_" not in machine_label(cpuinfo) and "." not in machine_label(cpuinfo)
    # what an int8 verdict depends on (16-bit sums that can saturate without VNNI)
    assert int8_kernels(features, machine="x86_64") == kernels
    assert int8_kernels(features, machine="aarch64") == "aarch64"
