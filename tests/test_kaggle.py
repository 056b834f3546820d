"""foldstack.kaggle against a local stand-in of the Kaggle API: the real client, no internet."""

from __future__ import annotations

import inspect
import io
import json
import logging
import socket
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from foldstack.data import kaggle
from foldstack.core.config import PipelineConfig
from foldstack.pipeline import load_pipeline, parse_pipeline
from foldstack.core.errors import FoldstackError
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.data.labels import Classes
from foldstack.stages import bundle, download
from kaggle_standin import KaggleStandIn, make_zip

USERNAME = "standin-user"
KEY = "k3y-0f-the-standin-5e9a1c"
TOKEN = "KGAT_t0ken-0f-the-standin-77d2"
SLUG = "dog-breed-identification"
DATASET = "someone/dog-photos"
FILES = {"labels.csv": b"id,breed\na1,beagle\nb2,pug\n", "sample_submission.csv": b"id,beagle,pug\nc3,0.5,0.5\n",
         "train/a1.jpg": b"\xff\xd8jpeg-a1", "train/b2.jpg": b"\xff\xd8jpeg-b2", "test/c3.jpg": b"\xff\xd8jpeg-c3"}
REPO = Path(__file__).resolve().parents[1]


def pipeline(source: dict, name: str = "dogs") -> PipelineConfig:
    return parse_pipeline({
        "name": name, "metric": "log_loss", "data": {"source": source},
        "models": [{"name": "m", "backbone": "mobilenet_v2"}],
    })


COMPETITION = {"type": "kaggle_competition", "competition": SLUG}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: an empty home, no Kaggle variables, not a kernel."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR",
                 "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL", "XDG_CONFIG_HOME",
                 "FOLDSTACK_KAGGLE_INPUT", "FOLDSTACK_KAGGLE_WORKING", "VERBOSE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")
    return home


def route_to(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every HTTP request of the client to 127.0.0.1:port (see kaggle_standin)."""
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")


@pytest.fixture
def standin(home: Path, monkeypatch: pytest.MonkeyPatch):
    server = KaggleStandIn(USERNAME, KEY, TOKEN, competitions={SLUG: make_zip(FILES)},
                           datasets={DATASET: make_zip(FILES)}, rules_accepted={SLUG})
    route_to(server.start(), monkeypatch)
    yield server
    server.stop()


@pytest.fixture
def env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", KEY)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths.for_pipeline("dogs", root=tmp_path / "project")


@pytest.fixture(autouse=True)
def no_secret_anywhere(tmp_path: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture):
    """After each test: neither key nor token in stdout, stderr, the log or a written file."""
    caplog.set_level(logging.DEBUG)
    yield
    out, err = capfd.readouterr()
    # caplog.text would hold only the teardown's records; the test's own are kept per phase.
    logged = [record.getMessage() for phase in ("setup", "call") for record in caplog.get_records(phase)]
    written = [p.read_bytes().decode(errors="replace") for p in (tmp_path / "project").rglob("*")
               if p.is_file()] if (tmp_path / "project").exists() else []
    for text in (out, err, *logged, *written):
        assert KEY not in text and TOKEN not in text


def raises(error: type[Exception], call: Callable[[], object]) -> str:
    """The one-line message of the ``error`` that ``call`` raises."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, FoldstackError) and "\n" not in message
    assert KEY not in message and TOKEN not in message
    return message


def leftovers(paths: Paths) -> list[str]:
    parent = paths.data.parent
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".")) if parent.exists() else []


# --- downloading ----------------------------------------------------------------------------------


def test_download_competition_unzips_into_data_with_a_marker(standin, env_credentials, paths):
    assert kaggle.download(pipeline(COMPETITION), paths) == paths.data
    for name, content in FILES.items():
        assert (paths.data / name).read_bytes() == content
    marker = json.loads((paths.data / kaggle.MARKER).read_text())
    assert marker["files"] == {name: len(content) for name, content in FILES.items()}
    assert not (paths.data / f"{SLUG}.zip").exists()
    assert leftovers(paths) == []
    assert standin.calls[:2] == ["competitions.CompetitionApiService/DownloadDataFiles",
                                 f"GET /signed/competitions/{SLUG}.zip"]


def test_download_unpacks_the_zips_inside_the_competition(home, env_credentials, paths, monkeypatch):
    """aerial-cactus ships train.zip (members under train/) and test.zip (flat members) inside the
    competition's archive: both are unpacked before the folder takes its place, the same as a
    local source."""
    files = {"train.csv": b"id,has_cactus\na1.jpg,1\n", "sample_submission.csv": b"id,has_cactus\nc3.jpg,0.5\n",
             "train.zip": make_zip({"train/a1.jpg": b"\xff\xd8jpeg-a1"}), "test.zip": make_zip({"c3.jpg": b"\xff\xd8c3"})}
    server = KaggleStandIn(USERNAME, KEY, TOKEN, competitions={SLUG: make_zip(files)}, rules_accepted={SLUG})
    route_to(server.start(), monkeypatch)
    try:
        kaggle.download(pipeline(COMPETITION), paths)
    finally:
        server.stop()
    assert (paths.data / "train" / "a1.jpg").read_bytes() == b"\xff\xd8jpeg-a1"
    assert (paths.data / "test" / "c3.jpg").read_bytes() == b"\xff\xd8c3"
    assert not list(paths.data.glob("*.zip")) and leftovers(paths) == []
    assert set(json.loads((paths.data / kaggle.MARKER).read_text())["files"]) == {
        "train.csv", "sample_submission.csv", "train/a1.jpg", "test/c3.jpg"}


def test_download_dataset(standin, env_credentials, paths):
    cfg = pipeline({"type": "kaggle_dataset", "dataset": DATASET})
    kaggle.download(cfg, paths)
    assert (paths.data / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert "datasets.DatasetApiService/DownloadDataset" in standin.calls


def test_second_download_does_nothing_until_forced_or_changed(standin, env_credentials, paths, caplog):
    cfg = pipeline(COMPETITION)
    kaggle.download(cfg, paths)
    standin.calls.clear()
    kaggle.download(cfg, paths)
    assert standin.calls == [] and "up to date" in caplog.text

    kaggle.download(cfg, paths, force=True)
    assert "competitions.CompetitionApiService/DownloadDataFiles" in standin.calls
    assert leftovers(paths) == []

    standin.calls.clear()
    (paths.data / "train" / "a1.jpg").unlink()
    kaggle.download(cfg, paths)
    assert standin.calls and (paths.data / "train" / "a1.jpg").exists()


def test_extra_data_from_kaggle_is_downloaded_into_its_own_folder_and_read_there(standin, env_credentials, paths):
    """``data.extra`` may name a Kaggle dataset or competition: ``download`` fetches each with the
    client, as it fetches the main data, into a folder of its own with the same marker, and the
    folds stage reads it there."""
    other = "dog-breeds-2019"
    files = {"labels.csv": b"id,breed\nx9,Beagle\n", "train/x9.jpg": b"\xff\xd8x9"}
    standin.competitions[other] = make_zip(files)
    standin.rules_accepted.add(other)
    layout = {"train_csv": "labels.csv", "label_column": "breed", "extension": ".jpg"}
    extra = [{"source": {"type": "kaggle_dataset", "dataset": DATASET}, **layout},
             {"source": {"type": "kaggle_competition", "competition": other}, **layout,
              "label_map": {"Beagle": "beagle", "Pug": "pug"}}]
    cfg = parse_pipeline({"name": "dogs", "metric": "log_loss", "data": {"source": COMPETITION, **layout, "extra": extra},
                          "models": [{"name": "m", "backbone": "mobilenet_v2"}]})
    download.run(cfg, paths)
    folders = [paths.extra_data(item.source) for item in cfg.data.extra]
    assert folders == [paths.root / "data" / "_extra" / "datasets" / "someone" / "dog-photos",
                       paths.root / "data" / "_extra" / "competitions" / other]
    assert (folders[0] / "train" / "a1.jpg").read_bytes() == FILES["train/a1.jpg"]
    assert json.loads((folders[1] / kaggle.MARKER).read_text())["files"] == {name: len(content) for name, content in files.items()}
    assert not list(folders[1].glob("*.zip")) and leftovers(paths) == []
    assert "datasets.DatasetApiService/DownloadDataset" in standin.calls

    extra_rows = tables.load_extra_table(cfg, paths, Classes(("beagle", "pug"), "multiclass"))
    assert extra_rows["id"].tolist() == ["extra0:a1", "extra0:b2", "extra1:x9"]
    assert extra_rows["label"].tolist() == ["beagle", "pug", "beagle"]
    assert extra_rows["path"].tolist()[-1] == str(folders[1] / "train" / "x9.jpg")

    standin.calls.clear()
    download.run(cfg, paths)  # every marker up to date: not one call
    assert standin.calls == []


def test_extra_data_from_kaggle_not_downloaded_is_one_line(home, paths):
    extra = [{"source": {"type": "kaggle_dataset", "dataset": DATASET}}]
    cfg = parse_pipeline({"name": "dogs", "metric": "log_loss", "data": {"source": COMPETITION, "extra": extra},
                          "models": [{"name": "m", "backbone": "mobilenet_v2"}]})
    message = raises(FoldstackError, lambda: tables.load_extra_table(cfg, paths, Classes(("beagle", "pug"), "multiclass")))
    assert "data.extra[0].source (kaggle_dataset)" in message and "run `make download`" in message


def test_does_not_replace_data_it_did_not_download(standin, env_credentials, paths):
    paths.data.mkdir(parents=True)
    (paths.data / "mine.csv").write_text("x\n")
    assert "did not download" in raises(FoldstackError, lambda: kaggle.download(pipeline(COMPETITION), paths))
    assert standin.calls == []


def test_refuses_a_source_that_is_not_on_kaggle(home, paths):
    cfg = pipeline({"type": "embedded", "dataset": "digits"})
    assert "embedded" in raises(FoldstackError, lambda: kaggle.download(cfg, paths))


@pytest.mark.parametrize("where", ["env_pair", "env_token", "home_kaggle_json", "xdg_kaggle_json",
                                   "config_dir_kaggle_json", "access_token_file"])
def test_credentials_from_the_usual_places(standin, paths, monkeypatch, home, tmp_path, where):
    kaggle_json = json.dumps({"username": USERNAME, "key": KEY})
    if where == "env_pair":
        monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
    elif where == "env_token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    elif where == "access_token_file":
        (home / ".kaggle").mkdir()
        (home / ".kaggle" / "access_token").write_text(TOKEN)
    else:
        folder = {"home_kaggle_json": home / ".kaggle", "xdg_kaggle_json": home / ".config" / "kaggle",
                  "config_dir_kaggle_json": tmp_path / "elsewhere"}[where]
        folder.mkdir(parents=True)
        (folder / "kaggle.json").write_text(kaggle_json)
        (folder / "kaggle.json").chmod(0o600)
        if where == "config_dir_kaggle_json":
            monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folder))
    kaggle.download(pipeline(COMPETITION), paths)
    assert (paths.data / "labels.csv").exists()


# --- failures -------------------------------------------------------------------------------------


def test_rules_not_accepted_names_the_rules_page(standin, env_credentials, paths):
    standin.rules_accepted.clear()
    message = raises(kaggle.KaggleAccessError, lambda: kaggle.download(pipeline(COMPETITION), paths))
    assert f"https://www.kaggle.com/competitions/{SLUG}/rules" in message
    assert not paths.data.exists() and leftovers(paths) == []


@pytest.mark.parametrize("variable,value,named", [("KAGGLE_KEY", "wrong-key", "KAGGLE_USERNAME/KAGGLE_KEY"),
                                                  ("KAGGLE_API_TOKEN", "wrong-token", "KAGGLE_API_TOKEN")])
def test_bad_credentials(standin, paths, monkeypatch, variable, value, named):
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv(variable, value)
    message = raises(kaggle.KaggleCredentialsError, lambda: kaggle.download(pipeline(COMPETITION), paths))
    assert "rejected" in message and named in message and value not in message
    assert not paths.data.exists()


def test_unknown_competition(standin, env_credentials, paths):
    cfg = pipeline({"type": "kaggle_competition", "competition": "no-such-thing"})
    message = raises(kaggle.KaggleNotFoundError, lambda: kaggle.download(cfg, paths))
    assert "no-such-thing" in message and "404" in message


def test_network_failure(home, env_credentials, paths, monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    route_to(port, monkeypatch)
    message = raises(kaggle.KaggleNetworkError, lambda: kaggle.download(pipeline(COMPETITION), paths))
    assert "cannot reach" in message
    assert not paths.data.exists() and leftovers(paths) == []


def test_no_credentials_says_where_to_put_them(standin, paths):
    message = raises(kaggle.KaggleCredentialsError, lambda: kaggle.download(pipeline(COMPETITION), paths))
    for place in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "~/.kaggle", "KAGGLE_CONFIG_DIR"):
        assert place in message
    assert standin.calls == []


# --- submitting -----------------------------------------------------------------------------------


def test_submit_uploads_and_reports_the_score(standin, env_credentials, tmp_path):
    file = tmp_path / "submission.csv"
    file.write_text("id,beagle,pug\nc3,0.5,0.5\n")
    submitted = kaggle.submit(pipeline(COMPETITION), file, "stacked lgbm", interval_s=0)
    assert "complete" in submitted.status and standin.public_score in submitted.status
    assert submitted.public_score == float(standin.public_score)
    assert list(standin.uploads.values()) == [file.read_bytes()]
    assert standin.submissions[0]["description"] == "stacked lgbm"


def test_submit_follows_its_submission_from_pending_to_error(standin, env_credentials, tmp_path):
    standin.statuses = ["PENDING", "ERROR"]
    standin.error_description = "Submission has 1 row, expected 4"
    file = tmp_path / "submission.csv"
    file.write_text("id,beagle,pug\nc3,0.5,0.5\n")
    message = raises(kaggle.KaggleError, lambda: kaggle.submit(pipeline(COMPETITION), file, "m", interval_s=0))
    assert "could not score" in message and "Submission has 1 row, expected 4" in message
    assert standin.listings == 2  # pending at the first look, failed at the second


def test_submit_still_pending_after_its_polls(standin, env_credentials, tmp_path):
    standin.statuses = ["PENDING"]
    file = tmp_path / "submission.csv"
    file.write_text("id,beagle,pug\nc3,0.5,0.5\n")
    submitted = kaggle.submit(pipeline(COMPETITION), file, "m", polls=3, interval_s=0)
    assert "still being scored" in submitted.status and standin.listings == 3
    assert submitted.public_score is None


@pytest.mark.parametrize("gives_ref", [True, False])
def test_submit_never_reports_another_submissions_score(standin, env_credentials, tmp_path, gives_ref):
    """A submission from elsewhere, listed first with its own score, is never taken for ours."""
    standin.statuses = ["PENDING"]
    standin.gives_ref = gives_ref
    standin.someone_elses = {"status": "COMPLETE", "publicScore": "0.99999", "description": "other"}
    file = tmp_path / "submission.csv"
    file.write_text("id,beagle,pug\nc3,0.5,0.5\n")
    submitted = kaggle.submit(pipeline(COMPETITION), file, "m", polls=2, interval_s=0)
    assert "0.99999" not in submitted.status and "complete" not in submitted.status
    assert submitted.public_score is None
    assert ("still being scored" if gives_ref else "no reference") in submitted.status


def test_submit_command_prints_what_kaggle_answered(standin, env_credentials, tmp_path, monkeypatch, capfd):
    """`foldstack submit --upload` shows the status and score that the upload came back with."""
    import yaml

    from foldstack import cli

    file = tmp_path / "submission.csv"
    file.write_text("id,beagle,pug\nc3,0.5,0.5\n")
    (tmp_path / "dogs.yaml").write_text(yaml.safe_dump({
        "name": "dogs", "metric": "log_loss", "data": {"source": COMPETITION},
        "models": [{"name": "m", "backbone": "mobilenet_v2"}]}))
    scores = []
    monkeypatch.setattr("foldstack.stages.submit.run", lambda cfg, paths, upload: scores.append(upload(file)))
    monkeypatch.setattr("foldstack.data.kaggle.time.sleep", lambda seconds: None)
    code = cli.main(["submit", "--upload", "-m", "first try", "--pipeline", str(tmp_path / "dogs.yaml"),
                     "--root", str(tmp_path / "project")])
    out = capfd.readouterr().out
    assert code == 0 and f"submitted to {SLUG}: complete, public score {standin.public_score}" in out
    assert KEY not in out and TOKEN not in out
    assert scores == [float(standin.public_score)]  # handed to the submit stage for index.csv


def test_submit_needs_a_competition_and_a_file(home, tmp_path):
    cfg = pipeline({"type": "kaggle_dataset", "dataset": DATASET})
    assert "kaggle_competition" in raises(FoldstackError, lambda: kaggle.submit(cfg, tmp_path, "m"))
    missing = tmp_path / "missing.csv"
    assert "not found" in raises(FoldstackError, lambda: kaggle.submit(pipeline(COMPETITION), missing, "m"))


# --- inside a Kaggle kernel -----------------------------------------------------------------------


@pytest.fixture
def kernel(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A simulated kernel whose input root is tmp_path/input; the network is unreachable."""
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("FOLDSTACK_KAGGLE_INPUT", str(tmp_path / "input"))
    monkeypatch.setenv("FOLDSTACK_KAGGLE_WORKING", str(tmp_path / "working"))
    monkeypatch.setenv("FOLDSTACK_SCRATCH", str(tmp_path / "scratch"))
    route_to(9, monkeypatch)  # the discard port: any request would fail the test
    return tmp_path / "input"


@pytest.mark.parametrize("source,mount", [
    (COMPETITION, f"competitions/{SLUG}"),
    (COMPETITION, SLUG),
    ({"type": "kaggle_dataset", "dataset": DATASET}, "datasets/someone/dog-photos"),
    ({"type": "kaggle_dataset", "dataset": DATASET}, "dog-photos"),
])
def test_kernel_uses_the_mounted_input(kernel, tmp_path, source, mount):
    (kernel / mount).mkdir(parents=True)
    cfg = pipeline(source)
    paths = Paths.for_config(cfg)
    assert paths.data == kernel / mount
    assert paths.root == tmp_path / "working" and paths.submissions == tmp_path / "working/submissions/dogs"
    assert kaggle.download(cfg, paths) == kernel / mount


def test_kernel_unpacks_a_mounted_competition_that_ships_archives(kernel, tmp_path):
    """aerial-cactus is mounted with train.zip and test.zip: the read-only mount cannot hold them
    unpacked, so the data becomes an unpacked copy in scratch (not the 20 GB working disk), made once."""
    mount = kernel / "competitions" / SLUG
    mount.mkdir(parents=True)
    (mount / "train.csv").write_bytes(b"id,has_cactus\na1.jpg,1\n")
    (mount / "train.zip").write_bytes(make_zip({"train/a1.jpg": b"\xff\xd8jpeg-a1"}))
    cfg = pipeline(COMPETITION)
    paths = Paths.for_config(cfg)
    assert paths.data == tmp_path / "scratch" / "data" / "dogs"
    assert kaggle.download(cfg, paths) == paths.data
    assert (paths.data / "train" / "a1.jpg").read_bytes() == b"\xff\xd8jpeg-a1" and (paths.data / "train.csv").is_file()
    assert (mount / "train.zip").is_file() and not (paths.data / "train.zip").exists()
    before = (paths.data / kaggle.MARKER).stat().st_mtime_ns
    kaggle.download(cfg, paths)
    assert (paths.data / kaggle.MARKER).stat().st_mtime_ns == before
    packed = parse_pipeline({"name": "dogs", "metric": "log_loss", "data": {"source": COMPETITION, "unpack": False},
                             "models": [{"name": "m", "backbone": "mobilenet_v2"}]})
    assert Paths.for_config(packed).data == mount


def test_kernel_without_the_input_attached(kernel):
    cfg = pipeline(COMPETITION)
    message = raises(FoldstackError, lambda: kaggle.download(cfg, Paths.for_config(cfg)))
    assert "Add Input" in message and str(kernel / "competitions" / SLUG) in message


def test_paths_outside_a_kernel(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = Paths.for_config(pipeline(COMPETITION))
    assert paths.root == tmp_path and paths.data == tmp_path / "data" / "dogs"


# --- the dog-breed pipeline -----------------------------------------------------------------------


def test_dog_breed_pipeline_is_valid():
    cfg = load_pipeline(REPO / "pipelines" / "dog-breed-identification.yaml")
    assert cfg.data.source.competition == SLUG
    assert (cfg.metric, cfg.submission.format, cfg.data.label_column) == ("log_loss", "probabilities", "breed")


# --- publishing the bundle and pushing the kernel ------------------------------------------------


def bundle_like(folder: Path) -> Path:
    """A folder shaped like a bundle: metadata with the placeholder owner, a file and a sub-folder."""
    (folder / "wheels").mkdir(parents=True)
    (folder / "wheels" / "foldstack-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (folder / "foldstack-bundle.json").write_text("{}")
    (folder / "dataset-metadata.json").write_text(json.dumps({
        "id": f"{kaggle.OWNER_PLACEHOLDER}/foldstack-dogs", "title": "foldstack dogs",
        "licenses": [{"name": "CC0-1.0"}]}))
    return folder


def test_publish_creates_the_dataset_then_versions_it(standin, env_credentials, tmp_path):
    folder = bundle_like(tmp_path / "bundle")
    ref = f"{USERNAME}/foldstack-dogs"
    assert kaggle.publish_dataset(folder, "first") == f"created dataset {ref}: https://www.kaggle.com/datasets/{ref}"
    # The placeholder owner became the signed-in user, in the file too (the kernel names the same id).
    assert json.loads((folder / "dataset-metadata.json").read_text())["id"] == ref
    (first,) = standin.published[ref]
    assert set(first) == {"foldstack-bundle.json", "wheels.zip"} and standin.published_requests[ref]["isPrivate"]
    with zipfile.ZipFile(io.BytesIO(first["wheels.zip"])) as archive:  # a sub-folder travels as a zip
        assert archive.read("foldstack-0.1.0-py3-none-any.whl") == b"wheel"

    (folder / "foldstack-bundle.json").write_text('{"v": 2}')
    assert kaggle.publish_dataset(folder, "second").startswith(f"new version of dataset {ref}")
    assert len(standin.published[ref]) == 2 and standin.published[ref][1]["foldstack-bundle.json"] == b'{"v": 2}'


def test_publish_for_another_owner_is_refused(standin, env_credentials, tmp_path):
    folder = bundle_like(tmp_path / "bundle")
    meta = folder / "dataset-metadata.json"
    meta.write_text(meta.read_text().replace(kaggle.OWNER_PLACEHOLDER, "someone-else"))
    message = raises(kaggle.KaggleAccessError, lambda: kaggle.publish_dataset(folder, "m"))
    assert "someone-else/foldstack-dogs" in message and "HTTP 403" in message


def test_push_kernel_sends_the_script_offline_with_the_bundle_attached(standin, env_credentials, tmp_path):
    kaggle.publish_dataset(bundle_like(tmp_path / "bundle"), "first")
    cfg = pipeline(COMPETITION)
    kernel_dir = tmp_path / "kernel"
    bundle._kernel(cfg, kernel_dir, kaggle.OWNER_PLACEHOLDER, f"{kaggle.OWNER_PLACEHOLDER}/foldstack-dogs")
    ref = f"{USERNAME}/foldstack-dogs-inference"
    assert kaggle.push_kernel(kernel_dir).line() == f"pushed kernel {ref} version 1: https://www.kaggle.com/code/{ref}"
    (pushed,) = standin.kernels[ref]
    assert pushed["enableInternet"] is False and pushed["enableGpu"] is True and pushed["isPrivate"] is True
    assert pushed["dockerImagePinningType"] == "original"
    # The bundle's version is pinned, in the request and in the metadata file.
    assert pushed["datasetDataSources"] == [f"{USERNAME}/foldstack-dogs/1"]
    assert json.loads((kernel_dir / "kernel-metadata.json").read_text())["dataset_sources"] == [f"{USERNAME}/foldstack-dogs/1"]
    assert pushed["competitionDataSources"] == [SLUG] and pushed["kernelType"] == "script"
    assert pushed["text"] == (kernel_dir / "foldstack_kernel.py").read_text()
    assert kaggle.push_kernel(kernel_dir).line().endswith(f"version 2: https://www.kaggle.com/code/{ref}")


def test_push_kernel_before_its_bundle_is_uploaded(standin, env_credentials, tmp_path):
    bundle._kernel(pipeline(COMPETITION), tmp_path, USERNAME, f"{USERNAME}/foldstack-dogs")
    message = raises(kaggle.KaggleNotFoundError, lambda: kaggle.push_kernel(tmp_path))
    assert message == (f"Kaggle has no dataset '{USERNAME}/foldstack-dogs' (HTTP 404); upload the bundle first: "
                       '`make bundle UPLOAD="notes"`')
    assert standin.kernels == {}


def test_push_kernel_needs_its_folder_and_credentials(standin, tmp_path, monkeypatch):
    message = raises(FoldstackError, lambda: kaggle.push_kernel(tmp_path))
    assert "kernel-metadata.json: not found; build it with `make bundle`" in message
    bundle._kernel(pipeline(COMPETITION), tmp_path / "kernel", USERNAME, f"{USERNAME}/foldstack-dogs")
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    message = raises(kaggle.KaggleCredentialsError, lambda: kaggle.push_kernel(tmp_path / "kernel"))
    assert "rejected the credentials from KAGGLE_USERNAME/KAGGLE_KEY (HTTP 401)" in message


# --- code competitions: kernel-push --submit -------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits the client asked for, none of them waited."""
    waited: list[float] = []
    monkeypatch.setattr("foldstack.data.kaggle.time.sleep", waited.append)
    return waited


def published_kernel(standin, tmp_path: Path) -> Path:
    """The bundle uploaded (version 1) and its kernel written, owner still the placeholder."""
    kaggle.publish_dataset(bundle_like(tmp_path / "bundle"), "first")
    kernel_dir = tmp_path / "kernel"
    bundle._kernel(pipeline(COMPETITION), kernel_dir, kaggle.OWNER_PLACEHOLDER, f"{kaggle.OWNER_PLACEHOLDER}/foldstack-dogs")
    return kernel_dir


@pytest.mark.parametrize("yaml_file", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda path: path.stem)
def test_kernel_ids_are_their_titles_slug(yaml_file, tmp_path):
    """Kaggle names a kernel by its title's slug (the client warns when the id is another): for
    every pipeline the id is the slug of the title, by the client's own slugify."""
    from slugify import slugify

    cfg = load_pipeline(yaml_file)
    bundle._kernel(cfg, tmp_path, "someone", "someone/data")
    meta = json.loads((tmp_path / "kernel-metadata.json").read_text())
    assert meta["id"] == f"someone/{slugify(meta['title'])}" and len(meta["title"]) <= bundle.TITLE_LENGTH
    assert cfg.name in meta["title"] or meta["title"].split()[0] in cfg.name


def test_push_waits_for_the_new_dataset_version_and_pins_it(standin, env_credentials, tmp_path, sleeps):
    kernel_dir = published_kernel(standin, tmp_path)
    standin.dataset_statuses = ["BLOBS_RECEIVED", "BLOBS_DECOMPRESSED", "READY"]
    kaggle.publish_dataset(tmp_path / "bundle", "second")  # version 2, processing for two looks
    pushed = kaggle.push_kernel(kernel_dir, kaggle.Polling(interval_s=5))
    ref = f"{USERNAME}/foldstack-dogs-inference"
    assert (pushed.kernel, pushed.version, pushed.competition) == (ref, 1, SLUG)
    assert standin.kernels[ref][0]["datasetDataSources"] == [f"{USERNAME}/foldstack-dogs/2"]
    assert standin.calls.count("datasets.DatasetApiService/GetDatasetStatus") >= 3 and sleeps == [5, 5]


def test_a_client_that_cannot_read_a_dataset_version_is_refused_in_one_line(standin, env_credentials, tmp_path,
                                                                          monkeypatch):
    """kaggle 2.0.2, a Kaggle notebook's own client: ``dataset_status(dataset)`` and no version
    number to pin. Refused in one line naming the client, before anything is pushed (run on the
    published image's own client by tests/test_offline_install.py)."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    kernel_dir = published_kernel(standin, tmp_path)
    if "format" in inspect.signature(KaggleApi.dataset_status).parameters:  # a newer client, made to look like 2.0.2
        monkeypatch.setattr(KaggleApi, "dataset_status", lambda self, dataset: "ready")
    message = raises(kaggle.KaggleError, lambda: kaggle.push_kernel(kernel_dir))
    assert message.startswith(f"kernel-push needs the kaggle client 2.2 or newer to pin {USERNAME}/foldstack-dogs's")
    assert "pip install kaggle==2.2.5" in message and "\n" not in message and standin.kernels == {}


@pytest.mark.parametrize("statuses, expected", [
    (["BLOBS_RECEIVED"], f"dataset {USERNAME}/foldstack-dogs version 2 is still processing (blobs_received) after "
                         "2 min; push the kernel once it is ready"),
    (["BLOBS_RECEIVED", "FAILED"], f"Kaggle could not process dataset {USERNAME}/foldstack-dogs version 2 (failed); "
                                   "upload the bundle again (`make bundle UPLOAD=...`)"),
])
def test_push_stops_on_a_dataset_that_does_not_become_ready(standin, env_credentials, tmp_path, sleeps, statuses,
                                                             expected):
    kernel_dir = published_kernel(standin, tmp_path)
    standin.dataset_statuses = statuses
    kaggle.publish_dataset(tmp_path / "bundle", "second")
    message = raises(kaggle.KaggleError, lambda: kaggle.push_kernel(kernel_dir, kaggle.Polling(interval_s=30, dataset_polls=4)))
    assert message == expected and standin.kernels == {}


def test_a_new_version_while_the_last_is_processing(standin, env_credentials, tmp_path):
    standin.dataset_statuses = ["BLOBS_RECEIVED"]
    folder = bundle_like(tmp_path / "bundle")
    kaggle.publish_dataset(folder, "first")
    message = raises(kaggle.KaggleError, lambda: kaggle.publish_dataset(folder, "second"))
    assert message == (f"Kaggle refused a new version of dataset {USERNAME}/foldstack-dogs (HTTP 403): its last "
                       "version is still processing (blobs_received); upload again once it is ready")


def test_push_with_a_competition_kaggle_will_not_attach(standin, env_credentials, tmp_path):
    kaggle.publish_dataset(bundle_like(tmp_path / "bundle"), "first")
    cfg = pipeline({"type": "kaggle_competition", "competition": "dog-bread-identification"})
    bundle._kernel(cfg, tmp_path / "kernel", USERNAME, f"{USERNAME}/foldstack-dogs")
    message = raises(kaggle.KaggleError, lambda: kaggle.push_kernel(tmp_path / "kernel"))
    assert message.startswith(f"pushed kernel {USERNAME}/foldstack-dogs-inference, but Kaggle would not attach "
                              "competition 'dog-bread-identification' (invalid_competition_sources): ")


@pytest.mark.parametrize("refusals, retry_after, outcome", [
    (2, "7", None),
    (4, "7", "Kaggle's rate limit refused the call 4 times (HTTP 429); it asks to wait 7 s: run the command again then"),
    (1, "3600", "Kaggle's rate limit refused the call 1 times (HTTP 429); it asks to wait 3600 s: run the command "
                "again then"),
])
def test_rate_limit_honours_retry_after_a_few_times(standin, env_credentials, tmp_path, sleeps, refusals, retry_after,
                                                     outcome):
    kernel_dir = published_kernel(standin, tmp_path)
    standin.rate_limits["kernels.KernelsApiService/SaveKernel"] = refusals
    standin.retry_after = retry_after
    if outcome is None:
        assert kaggle.push_kernel(kernel_dir).version == 1 and sleeps == [7.0, 7.0]
    else:
        assert raises(kaggle.KaggleRateLimitError, lambda: kaggle.push_kernel(kernel_dir)) == outcome
        assert standin.kernels == {}


def test_submit_upload_to_a_code_competition_says_to_push_the_kernel(standin, env_credentials, tmp_path):
    standin.code_competitions.add(SLUG)
    file = tmp_path / "submission.csv"
    file.write_text("id,beagle,pug\nc3,0.5,0.5\n")
    message = raises(kaggle.KaggleCodeCompetitionError, lambda: kaggle.submit(pipeline(COMPETITION), file, "m"))
    assert message == (f"{SLUG} is a code competition: Kaggle scores a kernel's output, not an uploaded file; push "
                       'the bundle\'s kernel and submit its output with `make kernel-push SUBMIT="message"` '
                       "(foldstack kernel-push --submit -m MESSAGE)")
    assert standin.submissions == []


def test_kernel_push_submit_from_the_command_line(standin, env_credentials, tmp_path, monkeypatch, capfd, caplog,
                                                  sleeps):
    """`foldstack kernel-push --submit -m MSG`: the bundle's ready version pinned, the kernel pushed
    and followed to completion, its output submitted as a code submission of that version, and
    the public score handed to the submit stage for index.csv, as `submit --upload` does."""
    import yaml

    from foldstack import cli

    standin.code_competitions.add(SLUG)
    standin.statuses = ["PENDING", "COMPLETE"]
    standin.kernel_statuses = ["QUEUED", "RUNNING", "RUNNING", "COMPLETE"]
    (tmp_path / "dogs.yaml").write_text(yaml.safe_dump({
        "name": "dogs", "metric": "log_loss", "data": {"source": COMPETITION},
        "models": [{"name": "m", "backbone": "mobilenet_v2"}]}))
    paths = Paths.for_pipeline("dogs", tmp_path / "project")
    kaggle.publish_dataset(bundle_like(tmp_path / "bundle"), "first")
    bundle._kernel(pipeline(COMPETITION), paths.kernel, kaggle.OWNER_PLACEHOLDER,
                   f"{kaggle.OWNER_PLACEHOLDER}/foldstack-dogs")
    scores = []
    monkeypatch.setattr("foldstack.stages.submit.run",
                        lambda cfg, paths, upload: scores.append(upload(paths.submissions / "dogs.csv")))
    capfd.readouterr()
    code = cli.main(["kernel-push", "--submit", "-m", "5-fold effnet", "--pipeline", str(tmp_path / "dogs.yaml"),
                     "--root", str(tmp_path / "project")])
    out, _ = capfd.readouterr()
    # What the terminal shows: the progress lines (logged, on stderr), then the outcome on stdout.
    progress = [record.getMessage() for record in caplog.records if record.name == "foldstack.data.kaggle"]
    print("\n".join(progress), out, sep="\n")  # shown with -s
    kernel = f"{USERNAME}/foldstack-dogs-inference"
    assert code == 0 and out == f"submitted to {SLUG}: complete, public score {standin.public_score}\n"
    for line in (f"dataset {USERNAME}/foldstack-dogs version 1: ready",
                 f"pushed kernel {kernel} version 1: https://www.kaggle.com/code/{kernel}",
                 f"kernel {kernel} version 1: queued", f"kernel {kernel} version 1: running",
                 f"kernel {kernel} version 1: complete"):
        assert line in progress
    (sent,) = standin.code_submissions
    assert sent == {"competitionName": SLUG, "kernelOwner": USERNAME, "kernelSlug": "foldstack-dogs-inference",
                    "kernelVersion": 1, "fileName": "submission.csv", "submissionDescription": "5-fold effnet"}
    assert standin.kernels[kernel][0]["datasetDataSources"] == [f"{USERNAME}/foldstack-dogs/1"]
    assert scores == [float(standin.public_score)]


def test_kernel_push_submit_stops_at_a_failed_run_or_refused_rules(standin, env_credentials, tmp_path, sleeps):
    kernel_dir = published_kernel(standin, tmp_path)
    kernel = f"{USERNAME}/foldstack-dogs-inference"
    standin.kernel_statuses = ["RUNNING", "ERROR"]
    standin.kernel_failure = "Notebook Threw Exception"
    message = raises(kaggle.KaggleError, lambda: kaggle.submit_kernel(kernel_dir, "m"))
    assert message == (f"kernel {kernel} version 1 failed: Notebook Threw Exception; its log: "
                       f"https://www.kaggle.com/code/{kernel}")
    standin.kernel_statuses = ["COMPLETE"]
    standin.rules_accepted.clear()
    message = raises(kaggle.KaggleAccessError, lambda: kaggle.submit_kernel(kernel_dir, "m"))
    assert message.startswith(f"Kaggle refused competition '{SLUG}' (HTTP 403): accept the competition's rules at "
                              f"https://www.kaggle.com/competitions/{SLUG}/rules")
    assert standin.code_submissions == [] and standin.submissions == []
