"""``ssl-ray sweep``: search spaces rejected up front, and real sweeps (Ray Tune over Ray Train
pretraining runs on a local Ray cluster) tracked in a real MLflow tracking server."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import ONE_WORKER, ROOT, SMALL_RUN, joined_to_the_shared_head, pipeline, run_cli, shared_ray_head
from mlflow.tracking import MlflowClient

from ssl_ray.cli import main
from ssl_ray.config import load_config, load_raw
from ssl_ray.tune.space import SpaceError, parse_space

# Two short epochs on 1,024 images, the kNN monitor on 1,000 / 500 images after each: ASHA's
# one rung below the last (grace 1, factor 2) and a trial that runs on past it.
SWEEP_RUN = [
    *SMALL_RUN,
    "data.train_subset=1024",
    "train.epochs=2",
    "eval.knn_bank_size=1000",
    "eval.knn_query_size=500",
    "eval.knn_at_init=false",
    "eval.knn_raw_pixels=false",
]


@pytest.fixture(scope="module")
def base_raw():
    return load_raw(pipeline("simclr_fashion_mnist"), SWEEP_RUN)


@pytest.mark.parametrize(
    "entries, named, why",
    [
        ({"method.temprature": {"uniform": [0.1, 0.5]}}, "method.temprature", "unknown field"),
        ({"optimiser.base_lr": {"uniform": [0.1, 0.5]}}, "optimiser.base_lr", "unknown field"),
        ({"method.temperature": {"normal": [0.1, 0.5]}}, "method.temperature", "unknown distribution 'normal'"),
        ({"method.temperature": {"uniform": [0.5, 0.5]}}, "method.temperature", "empty range"),
        ({"method.temperature": {"loguniform": [0.0, 0.5]}}, "method.temperature", "0 < low"),
        ({"train.batch_size": {"choice": []}}, "train.batch_size", "non-empty list"),
        ({"train.batch_size": {"randint": [64.5, 128]}}, "train.batch_size", "integers"),
        ({"train.batch_size": {"choice": [128, 0]}}, "train.batch_size", "0 does not make a valid pipeline"),
        ({"train.batch_size": {"choice": [127]}}, "train.batch_size", "multiple of train.num_workers"),
        ({"augment.strength": {"uniform": [0.5, 3.0]}}, "augment.strength", "3.0 does not make a valid pipeline"),
        ({"train.run_name": {"choice": ["a"]}}, "train.run_name", "set by the sweep itself"),
        ({"method.temperature": [0.1, 0.2]}, "method.temperature", "expected one distribution"),
    ],
)
def test_a_bad_space_entry_is_rejected_naming_it(base_raw, entries, named, why):
    with pytest.raises(SpaceError) as error:
        parse_space(entries, base_raw, "space.yaml")
    assert f"space.yaml: {named}:" in str(error.value) and why in str(error.value)


def test_a_space_becomes_tune_distributions(base_raw):
    space = parse_space(
        {
            "method.temperature": {"loguniform": [0.05, 0.5]},
            "train.batch_size": {"grid": [128, 256]},
            "model.width": {"randint": [4, 9]},
        },
        base_raw,
    )
    tune_space = space.param_space()
    assert tune_space["train"]["batch_size"] == {"grid_search": [128, 256]}
    temperature, width = tune_space["method"]["temperature"], tune_space["model"]["width"]
    samples = [temperature.sample() for _ in range(200)]
    assert 0.05 <= min(samples) and max(samples) <= 0.5
    assert {width.sample() for _ in range(200)} == set(range(4, 9))  # high excluded
    assert space.has_grid and space.largest("train.epochs", 3) == 3


def test_the_cli_rejects_a_bad_space_before_starting_anything(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("method.temperature: {uniform: [0.1, 0.5]}\nmodel.widht: {choice: [8, 16]}\n")
    done = run_cli("sweep", pipeline("simclr_fashion_mnist"), "--space", str(space), cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{space}: model.widht: unknown field" in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_every_shipped_space_fits_its_pipelines():
    for space, method in [
        ("simclr", "simclr"),
        ("moco", "moco_v1"),
        ("moco", "moco_v2"),
        ("moco_v3", "moco_v3"),
        ("byol", "byol"),
        ("simsiam", "simsiam"),
    ]:
        from ssl_ray.tune.space import load_space

        load_space(ROOT / "tune_spaces" / f"{space}.yaml", load_raw(pipeline(f"{method}_fashion_mnist")))


def one_at_a_time(space: Path, work: Path) -> list[str]:
    """``ssl-ray sweep`` of SimCLR over ``space``, one sample, trials one after the other."""
    return [
        "sweep",
        pipeline("simclr_fashion_mnist"),
        "--space",
        str(space),
        "--num-samples",
        "1",
        "--max-concurrent",
        "1",
        *SWEEP_RUN,
        f"train.storage_path={work / 'runs'}",
    ]


@pytest.fixture(scope="module")
def asha_sweep(mlflow_server, tmp_path_factory):
    """Two trials, one after the other, differing in their kNN bank: 1,000 images, then 10. The
    second's score is near chance whatever it learns (early epochs of any two honest trials
    are too close to call), so ASHA (grace 1 epoch, factor 2) must stop it after epoch 1."""
    work = tmp_path_factory.mktemp("sweep")
    space = work / "space.yaml"
    space.write_text("eval.knn_bank_size: {grid: [1000, 10]}\nmethod.temperature: {loguniform: [0.1, 0.5]}\n")
    started = time.time()
    done = run_cli(
        *one_at_a_time(space, work),
        "--tracking-uri",
        mlflow_server,
        "--best-config",
        str(work / "best.yaml"),
        "tracking.experiment=sweep-test",
        cwd=work,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {"work": work, "stdout": done.stdout, "uri": mlflow_server, "wall_s": time.time() - started}


def _sweep_runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=100)
    parents = [run for run in runs if run.data.tags.get("ssl_ray.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, experiment_id, parent, children


def test_asha_stops_the_weak_trial_and_mlflow_holds_the_sweep(asha_sweep):
    client, _, parent, children = _sweep_runs(asha_sweep["uri"], "sweep-test")
    assert len(children) == 2
    by_bank = {run.data.params["eval.knn_bank_size"]: run for run in children}
    full_bank, tiny_bank = by_bank["1000"], by_bank["10"]
    for run in children:  # each trial's own params, as a plain pretraining run logs them
        assert 0.1 <= float(run.data.params["method.temperature"]) <= 0.5
        assert run.data.params["eval.knn_every_epochs"] == "1"

    def epochs(run, key):
        return [m.step for m in client.get_metric_history(run.info.run_id, key)]

    # The full_bank trial ran both epochs, with the per-epoch metrics of any pretraining run.
    assert full_bank.info.status == "FINISHED"
    for key in ("loss", "knn_top1", "images_per_s", "collapse_std"):
        assert epochs(full_bank, key) == [1, 2], key
    # The tiny_bank one was stopped by ASHA on its first epoch's score and logged no further
    # epoch (the loop never reports an epoch before the verdict on the last one is in), and its
    # run says so.
    assert epochs(tiny_bank, "knn_top1") == [1] and epochs(tiny_bank, "loss") == [1]
    assert tiny_bank.data.metrics["knn_top1"] < client.get_metric_history(full_bank.info.run_id, "knn_top1")[0].value
    assert tiny_bank.info.status == "KILLED" and tiny_bank.data.tags["ssl_ray.stopped_early"] == "true"
    assert full_bank.data.tags["ssl_ray.stopped_early"] == "false"

    # The parent: a summary, the table, the plot and the best config.
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials"] == 2 and parent.data.metrics["trials_stopped_early"] == 1
    assert parent.data.params["space.eval.knn_bank_size"] == "grid[1000, 10]"
    assert parent.data.params["best.eval.knn_bank_size"] == "1000"
    local = Path(client.download_artifacts(parent.info.run_id, "", str(asha_sweep["work"] / "parent")))
    with open(local / "trials.csv") as handle:
        table = {row["eval.knn_bank_size"]: row for row in csv.DictReader(handle)}
    assert table["1000"]["status"] == "completed" and table["10"]["status"] == "stopped_early"
    assert table["10"]["epochs"] == "1" and table["1000"]["epochs"] == "2"
    assert float(table["1000"]["knn_top1"]) == pytest.approx(full_bank.data.metrics["knn_top1"], abs=1e-6)
    assert (local / "plots" / "score_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (local / "best.yaml").read_text() == (asha_sweep["work"] / "best.yaml").read_text()

    # The best config is a ready-to-run pipeline holding the winning trial's values.
    best = load_config(asha_sweep["work"] / "best.yaml")
    assert best.eval.knn_bank_size == 1000
    assert best.method.temperature == pytest.approx(float(full_bank.data.params["method.temperature"]))
    assert best.train.run_name is None
    assert "Best:" in asha_sweep["stdout"] and "stopped early by ASHA" in asha_sweep["stdout"]


def _chromium() -> tuple[str, str] | None:
    for browser, driver in [("/usr/bin/chromium", "/usr/bin/chromedriver")]:
        if os.access(browser, os.X_OK) and os.access(driver, os.X_OK):
            return browser, driver
    return None


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium and chromium-driver (scripts/setup.sh)")
def test_the_mlflow_ui_lists_the_sweep_and_its_trials(asha_sweep):
    """What a user sees: the experiment page in a real browser lists the parent run, and its
    two nested trial runs once expanded, with a metric column. Read from the page's DOM."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _, experiment_id, parent, children = _sweep_runs(asha_sweep["uri"], "sweep-test")
    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1800,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{asha_sweep['uri']}/#/experiments/{experiment_id}/runs")
        wait = WebDriverWait(driver, 60)
        parent_name = parent.info.run_name
        wait.until(lambda d: parent_name in d.find_element(By.TAG_NAME, "body").text)
        # Nested runs are folded under their parent: unfold them with the run-name cell's
        # expand button, as a user would.
        expand = driver.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
        assert expand, "no expand button beside the parent run"
        expand[0].click()
        child_names = [run.info.run_name for run in children]
        wait.until(lambda d: all(name in d.find_element(By.TAG_NAME, "body").text for name in child_names))
        # Show the kNN top-1 column (Columns -> Metrics -> knn_top1) and read it per row.
        columns = [b for b in driver.find_elements(By.CSS_SELECTOR, "[data-testid='column-selection-dropdown']")]
        next(b for b in columns if "Columns" in b.text).click()
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "input[placeholder='Search columns']"))).send_keys(
            "knn_top1"
        )
        entry = "//*[contains(@class, 'tree-node-content-wrapper')][normalize-space(.)='knn_top1']"
        wait.until(EC.element_to_be_clickable((By.XPATH, entry))).click()
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        shown = {}

        def knn_cells(d):
            for row in d.find_elements(By.CSS_SELECTOR, ".ag-row"):
                cells = row.find_elements(By.CSS_SELECTOR, "[col-id='metrics.`knn_top1`']")
                if cells and cells[0].text not in ("", "-"):
                    shown[row.get_attribute("row-id")] = float(cells[0].text)
            return len(shown) == len(children)

        wait.until(knn_cells)
        for run in children:  # each trial's row shows its own last kNN top-1
            assert shown[run.info.run_id] == pytest.approx(run.data.metrics["knn_top1"], abs=1e-6)
        for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
            if close.is_displayed():
                close.click()  # the assistant panel, so the table has the width
        screenshot = asha_sweep["work"] / "mlflow_sweep.png"
        driver.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("SSL_RAY_UPDATE_DOCS"):  # refresh the README's picture
            (ROOT / "docs").mkdir(exist_ok=True)
            (ROOT / "docs" / "mlflow_sweep.png").write_bytes(screenshot.read_bytes())
    finally:
        driver.quit()


def test_an_interrupted_sweep_resumes_without_repeating_finished_trials(tmp_path, capsys, monkeypatch):
    """Two trials in turn; Ctrl-C once the first has finished (the second is then starting or
    training); ``--resume`` keeps the first and runs the second, from its checkpoint if any.
    The interrupted sweep is the command in its own process (it takes the signal); the resume
    is the command's ``main`` in this one, joined to the same head: a process start less."""
    space = tmp_path / "space.yaml"
    space.write_text("method.temperature: {grid: [0.1, 0.2]}\n")
    args = [
        *one_at_a_time(space, tmp_path),
        "--scheduler",
        "none",
        *ONE_WORKER,
        "tracking.experiment=sweep-resume",
    ]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "ssl_ray.cli", *args],
        cwd=tmp_path,
        env=shared_ray_head(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def experiment_created() -> bool:
        """Read-only, without MLflow: a client opening the file while the CLI's MLflow is still
        creating its tables would run the same schema migration concurrently and fail."""
        try:
            with sqlite3.connect(f"file:{tmp_path / 'mlflow.db'}?mode=ro", uri=True) as db:
                return bool(db.execute("SELECT 1 FROM experiments WHERE name = 'sweep-resume'").fetchall())
        except sqlite3.Error:  # no file yet, no table yet, or locked mid-migration
            return False

    def finished_trials() -> list:
        if not experiment_created():
            return []
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("sweep-resume")
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], "tags.`ssl_ray.trial_id` != ''")
        return [run for run in runs if run.info.status == "FINISHED"]

    deadline = time.time() + 300
    while not finished_trials() and first.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    assert first.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    done_before = {run.data.tags["ssl_ray.trial_id"] for run in finished_trials()}
    assert len(done_before) == 1

    monkeypatch.chdir(tmp_path)
    with joined_to_the_shared_head():
        code = main([*args, "--resume"])
    resumed = capsys.readouterr()
    assert code == 0, resumed.out[-3000:] + resumed.err[-3000:]
    _, _, parent, children = _sweep_runs(uri, "sweep-resume")
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == 2
    # One run per trial, each with every epoch once: nothing finished was run again.
    trial_ids = [run.data.tags["ssl_ray.trial_id"] for run in children]
    assert sorted(trial_ids) == sorted(set(trial_ids)) and len(trial_ids) == 2
    client = MlflowClient(uri)
    for run in children:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    temperatures = sorted(float(run.data.params["method.temperature"]) for run in children)
    assert temperatures == [0.1, 0.2]


def test_optuna_samples_inside_the_space_and_refuses_a_grid(base_raw):
    """Optuna's TPE (through Ray Tune's OptunaSearch) takes the space as parsed and suggests
    trials inside it; a grid entry is refused for it before anything starts."""
    from ssl_ray.config import ConfigError, config_from_dict
    from ssl_ray.tune.sweep import SweepOptions, _search_algorithm, check_sweepable

    space = parse_space(
        {"method.temperature": {"loguniform": [0.05, 0.5]}, "train.batch_size": {"choice": [128, 256]}}, base_raw
    )
    options = SweepOptions(search="optuna")
    check_sweepable(config_from_dict(base_raw), space, options)
    searcher = _search_algorithm(options, max_concurrent=1)
    assert searcher.set_search_properties("knn_top1", "max", space.param_space())
    for i in range(5):
        suggestion = searcher.suggest(f"trial{i}")
        assert 0.05 <= suggestion["method"]["temperature"] <= 0.5
        assert suggestion["train"]["batch_size"] in (128, 256)
    gridded = parse_space({"train.batch_size": {"grid": [128, 256]}}, base_raw)
    with pytest.raises(ConfigError, match="grid entries need --search random"):
        check_sweepable(config_from_dict(base_raw), gridded, options)
