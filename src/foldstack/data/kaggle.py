"""Kaggle: download a competition's or a dataset's files, upload a submission, publish a bundle as
a dataset (created, or versioned when it exists), push an inference kernel pinned to the bundle's
ready version and, for a code competition, submit the kernel's output once it has run.

Everything goes through the official ``kaggle`` package (``KaggleApi``), so credentials are found
where the Kaggle CLI finds them. Every failure a person can fix (no credentials, rules not
accepted, a wrong slug, no network, a rate limit) raises a :class:`KaggleError` with one line
saying what to do; no message, log line or file ever holds a credential. A call refused by the
rate limit (HTTP 429) is tried again after the ``Retry-After`` Kaggle sends, a few times at most.

Inside a Kaggle kernel the data is already mounted under ``/kaggle/input``: :func:`download`
returns that folder and fetches nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import shutil
import time
import zipfile
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterator

from foldstack.core.config import PipelineConfig
from foldstack.core.errors import FoldstackError, one_line
from foldstack.core.files import atomic_dir, write_json
from foldstack.core.paths import Paths, holds_archives, in_kaggle_kernel, kaggle_input_candidates, kaggle_mounted_input
from foldstack.data.sources import MARKER, complete, made_by, up_to_date

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

logger = logging.getLogger(__name__)

TOKEN_PAGE = "https://www.kaggle.com/settings/api"
#: The owner a bundle's dataset and kernel carry until an upload signs in and knows who you are.
OWNER_PLACEHOLDER = "your-kaggle-username"
DATASET_METADATA = "dataset-metadata.json"
#: What the client answers when a submission's upload failed (its COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE).
UPLOAD_FAILED = "Could not submit to competition"
KERNEL_METADATA = "kernel-metadata.json"
WHERE_CREDENTIALS_GO = (
    f"set KAGGLE_API_TOKEN to an API token from {TOKEN_PAGE} (or save it in ~/.kaggle/access_token), "
    "or set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/, ~/.config/kaggle/ "
    "or $KAGGLE_CONFIG_DIR (chmod 600)"
)


class KaggleError(FoldstackError):
    """A Kaggle API call failed; the message says why and what to do."""


class KaggleCredentialsError(KaggleError):
    """No credentials were found, or Kaggle rejected them."""


class KaggleAccessError(KaggleError):
    """Kaggle refused access (HTTP 403), usually because the competition's rules were not accepted."""


class KaggleNotFoundError(KaggleError):
    """No such competition or dataset (HTTP 404)."""


class KaggleNetworkError(KaggleError):
    """The Kaggle API could not be reached."""


class KaggleRateLimitError(KaggleError):
    """Kaggle kept refusing calls for their rate (HTTP 429)."""


class KaggleCodeCompetitionError(KaggleError):
    """A file was uploaded to a competition that takes submissions from notebooks only."""


#: The file a code competition's kernel writes and Kaggle scores (the kernel stage's output).
KERNEL_OUTPUT = "submission.csv"
#: A call refused for its rate (HTTP 429) is tried again this many times, each after the wait its
#: ``Retry-After`` asks (:data:`RATE_LIMIT_WAIT_S` when it names none), if no longer than
#: :data:`RATE_LIMIT_MAX_WAIT_S`.
RATE_LIMIT_RETRIES = 3
RATE_LIMIT_WAIT_S = 60.0
RATE_LIMIT_MAX_WAIT_S = 600.0


@dataclass(frozen=True)
class Polling:
    """How often, and how many times, to ask Kaggle how something goes.

    Attributes:
        interval_s: seconds between two questions.
        dataset_polls: for a new dataset version to be processed (half an hour at 30 s).
        kernel_polls: for the kernel's run (10 h: a code competition's kernel may run 9 h).
        score_polls: for the submission's score (Kaggle runs the kernel again on the hidden
            test set first: as long as the kernel's own run).
    """

    interval_s: float = 30.0
    dataset_polls: int = 60
    kernel_polls: int = 1200
    score_polls: int = 1200


# --- public functions ---------------------------------------------------------------------------


def download(cfg: PipelineConfig, paths: Paths, force: bool = False) -> Path:
    """Fetch a Kaggle competition's or dataset's files into ``paths.data``, unzipped (the zips inside
    too, with ``data.unpack``: ``sources.complete``).

    The archive is fetched and extracted in a temporary folder beside ``paths.data`` and renamed
    into place only when complete; a marker file there lists every file and its size. With that
    marker in place and matching, nothing is fetched again unless ``force``. Inside a Kaggle
    kernel the mounted input is used as it is, unless it ships archives to unpack
    (``data.unpack``): then it is copied under the working root and unpacked there, once.

    Args:
        cfg: a pipeline whose ``data.source`` is ``kaggle_competition`` or ``kaggle_dataset``.
        paths: the pipeline's folders.
        force: fetch again even when the data is up to date.

    Returns:
        The folder that holds the data.

    Raises:
        KaggleError: no credentials, rules not accepted, unknown slug, network failure, ...
        FoldstackError: the source is not on Kaggle, or ``paths.data`` holds files that foldstack
            did not download.
    """
    source = cfg.data.source
    _check_kaggle_source(cfg)
    target = paths.data
    if in_kaggle_kernel():
        mounted = _mounted_input(source, paths.data)
        if target == mounted or not (cfg.data.unpack and holds_archives(mounted)):
            return mounted
        return _unpacked_copy(cfg, mounted, target, force)
    return _download(cfg, source, target, force)


def download_extra(cfg: PipelineConfig, paths: Paths, index: int, force: bool = False) -> Path:
    """Fetch ``data.extra[index]``, a Kaggle dataset or competition, as :func:`download` fetches
    the main data (the same client calls, unpacking and marker), into its own folder
    (``paths.extra_data``); in a Kaggle kernel, the mounted input as it is.

    Returns:
        The folder that holds the dataset.

    Raises:
        KaggleError, FoldstackError: as :func:`download`.
    """
    source = cfg.data.extra[index].source
    target = paths.extra_data(source)
    if in_kaggle_kernel():
        return _mounted_input(source, target)
    return _download(cfg, source, target, force, extra=source)


def _download(cfg: PipelineConfig, source: Any, target: Path, force: bool, extra: Any = None) -> Path:
    """``source`` into ``target``, unless a marker there says it is up to date (``sources.complete``:
    ``extra``, the source of a ``data.extra`` dataset)."""
    if not force and up_to_date(target, source, made_by(cfg, extra)):
        logger.info("%s is up to date with Kaggle %s (force to fetch again)", target, _describe(source))
        return target
    if not force and _holds_other_files(target):
        raise FoldstackError(f"{target} holds files that foldstack did not download; "
                             "move them away or download with force")
    api, credentials = _authenticated_api()
    logger.info("downloading Kaggle %s into %s", _describe(source), target)
    # Fetched beside the target and swapped in whole: the old download goes only once the new one is complete.
    with atomic_dir(target) as staging:
        with _kaggle_errors(source, credentials):
            _fetch(api, source, staging)
        complete(staging, cfg, target, extra)
    return target


@dataclass(frozen=True)
class Submitted:
    """What Kaggle said of an upload: one line for a person, and the public score once scored."""

    status: str
    public_score: float | None = None


def submit(cfg: PipelineConfig, file: Path, message: str, polls: int = 3,
           interval_s: float = 10.0) -> Submitted:
    """Upload ``file`` as a submission to the pipeline's competition and report how it scored.

    Polls the competition's submission list up to ``polls`` times, ``interval_s`` apart, until
    the new submission leaves the pending state.

    Args:
        cfg: a pipeline whose ``data.source`` is a Kaggle competition.
        file: the submission CSV.
        message: the submission's description on Kaggle.
        polls: how many times to ask for the submission's status.
        interval_s: seconds between two polls.

    Returns:
        One line for a person (the status and, once scored, the public score) and the public
        score as a number where Kaggle gave one.

    Raises:
        KaggleError: the upload or the submission failed, or Kaggle could not score the file.
    """
    source = cfg.data.source
    if source.type != "kaggle_competition":
        raise FoldstackError(f"pipeline {cfg.name!r} reads a {source.type} source; "
                             "only a kaggle_competition takes submissions")
    file = Path(file)
    if not file.is_file():
        raise FoldstackError(f"{file}: submission file not found")
    api, credentials = _authenticated_api()
    slug = source.competition
    logger.info("submitting %s to Kaggle competition %s", file, slug)
    with _kaggle_errors(source, credentials):
        with _kaggle_output(), _code_competition_refusal(api, slug):
            response = _retrying(api.competition_submit, str(file), message, slug, quiet=False)
        # The Kaggle image's client (2.0.2) answers the same words but names no constant for them.
        if response.message == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", UPLOAD_FAILED):
            raise KaggleError(f"uploading {file} to Kaggle competition {slug!r} failed; try again")
        return _poll_status(api, slug, response.ref, polls, interval_s)


def publish_dataset(folder: Path, notes: str) -> str:
    """Upload ``folder`` as the dataset its ``dataset-metadata.json`` names: a new dataset (private)
    if there is none by that id yet, else a new version of it.

    Sub-folders are uploaded as zip archives, which Kaggle unpacks into folders of the same names.
    An id still owned by :data:`OWNER_PLACEHOLDER` takes the signed-in user's name first (the
    metadata file is rewritten).

    Args:
        folder: a bundle folder (``make bundle``).
        notes: the version notes (a new dataset takes none).

    Returns:
        One line: what was created, and where.

    Raises:
        KaggleError: no credentials, the upload failed, or Kaggle refused the dataset.
    """
    meta_file = Path(folder) / DATASET_METADATA
    meta = _read_metadata(meta_file)
    api, credentials = _authenticated_api()
    meta = _with_owner(meta_file, meta, api, ("id",))
    ref = meta["id"]
    source = SimpleNamespace(type="bundle", dataset=ref)
    with _kaggle_errors(source, credentials), _client_refusals(ref), _kaggle_output():
        exists = _dataset_exists(api, ref)
        if exists:
            with _still_processing(api, ref):
                response = _retrying(api.dataset_create_version, str(folder), notes, quiet=False, dir_mode="zip")
        else:
            response = _retrying(api.dataset_create_new, str(folder), public=False, quiet=False, dir_mode="zip")
    if response.error:
        raise KaggleError(f"Kaggle refused dataset {ref!r}: {one_line(str(response.error))}")
    what = "new version of dataset" if exists else "created dataset"
    return f"{what} {ref}: {response.url or f'https://www.kaggle.com/datasets/{ref}'}"


@dataclass(frozen=True)
class Pushed:
    """A kernel version Kaggle saved (and runs): ``owner/slug``, its version, where to watch it."""

    kernel: str
    version: int
    url: str
    competition: str | None

    def line(self) -> str:
        return f"pushed kernel {self.kernel} version {self.version}: {self.url}"


def push_kernel(folder: Path, polling: Polling = Polling()) -> Pushed:
    """Push the kernel in ``folder`` (its script and ``kernel-metadata.json``) as a new version, which
    Kaggle then runs; an owner still :data:`OWNER_PLACEHOLDER` becomes the signed-in user.

    First each attached dataset (the bundle) is waited for until its newest version is processed,
    and ``dataset_sources`` names that version (``owner/slug/N``, saved in the metadata file): the
    kernel runs on the bundle just uploaded, never on an older one or on one half processed.

    Raises:
        KaggleError: no credentials, a dataset missing, failed or still processing, or Kaggle
            refused the kernel or one of its sources (one line each).
    """
    meta_file = Path(folder) / KERNEL_METADATA
    meta = _read_metadata(meta_file)
    api, credentials = _authenticated_api()
    return _push(api, credentials, meta_file, meta, polling)


def _push(api: KaggleApi, credentials: str, meta_file: Path, meta: dict, polling: Polling) -> Pushed:
    folder = meta_file.parent
    meta = _with_owner(meta_file, meta, api, ("id", "dataset_sources"))
    ref = meta["id"]
    with _kaggle_errors(SimpleNamespace(type="bundle", dataset=", ".join(meta.get("dataset_sources", []))),
                        credentials), _client_refusals(ref):
        pinned = [_ready_version(api, source, polling) for source in meta.get("dataset_sources", [])]
    if pinned != meta.get("dataset_sources", []):
        meta = {**meta, "dataset_sources": pinned}
        write_json(meta_file, meta)
    with _kaggle_errors(SimpleNamespace(type="kernel", ref=ref), credentials), _client_refusals(ref), \
            _kaggle_output():
        response = _retrying(api.kernels_push, str(folder))
    if response.error:
        raise KaggleError(f"Kaggle refused kernel {ref!r}: {one_line(str(response.error))}")
    if response.invalid_dataset_sources:
        # Saved, but it would run without its bundle and fail: say so now, not after the run.
        raise KaggleError(f"pushed kernel {ref}, but Kaggle has no dataset "
                          f"{', '.join(response.invalid_dataset_sources)} to attach; upload the bundle "
                          "(`make bundle UPLOAD=...`), then push again")
    if response.invalid_competition_sources:
        slug = response.invalid_competition_sources[0]
        raise KaggleError(f"pushed kernel {ref}, but Kaggle would not attach competition {slug!r} "
                          "(invalid_competition_sources): check data.source.competition, join the competition at "
                          f"https://www.kaggle.com/competitions/{slug}/rules, then run `make bundle` and push again")
    competitions = meta.get("competition_sources") or [None]
    return Pushed(ref, int(response.version_number or 0), response.url or f"https://www.kaggle.com/code/{ref}",
                  competitions[0])


def submit_kernel(folder: Path, message: str, polling: Polling = Polling()) -> Submitted:
    """Push the kernel in ``folder`` (:func:`push_kernel`), follow its run to the end, submit its
    :data:`KERNEL_OUTPUT` to the competition it is attached to, and follow that submission to its
    public score: a code competition's submission from the command line.

    Returns:
        What Kaggle said of the submission, as :func:`submit` does.

    Raises:
        KaggleError: any step failed or outlasted its polls (one line naming it and what to do).
    """
    meta_file = Path(folder) / KERNEL_METADATA
    meta = _read_metadata(meta_file)
    if not meta.get("competition_sources"):
        raise FoldstackError(f"{meta_file}: no competition_sources; only a kernel attached to a competition "
                             "can be submitted")
    api, credentials = _authenticated_api()
    pushed = _push(api, credentials, meta_file, meta, polling)
    logger.info("%s", pushed.line())
    slug = pushed.competition
    with _kaggle_errors(SimpleNamespace(type="kernel", ref=pushed.kernel), credentials), \
            _client_refusals(pushed.kernel):
        _follow_kernel(api, pushed, polling)
    with _kaggle_errors(SimpleNamespace(type="kaggle_competition", competition=slug), credentials), \
            _client_refusals(pushed.kernel), _kaggle_output():
        response = _retrying(api.competition_submit_code, KERNEL_OUTPUT, message, slug, kernel=pushed.kernel,
                             kernel_version=pushed.version, quiet=True)
        logger.info("submitted %s of kernel %s version %s to %s", KERNEL_OUTPUT, pushed.kernel, pushed.version, slug)
        return _poll_status(api, slug, response.ref, polling.score_polls, polling.interval_s)


def _ready_version(api: KaggleApi, source: str, polling: Polling) -> str:
    """``source`` (``owner/slug``, or ``owner/slug/N``) as ``owner/slug/N`` of its newest version,
    once Kaggle has processed it."""
    ref = "/".join(source.split("/")[:2])
    if "format" not in inspect.signature(api.dataset_status).parameters:
        # kaggle 2.0.2 (a Kaggle notebook's own client) reads a dataset's status but not its version.
        raise KaggleError(f"kernel-push needs the kaggle client 2.2 or newer to pin {ref}'s version (this one is "
                          f"{metadata.version('kaggle')}): pip install kaggle==2.2.5, or push from your own machine")
    status, version = "unknown", None
    for attempt in range(max(polling.dataset_polls, 1)):
        if attempt:
            time.sleep(polling.interval_s)
        state = json.loads(_retrying(api.dataset_status, ref, format="json(status,current_version_number)"))
        if (state["status"], state["current_version_number"]) != (status, version):
            status, version = state["status"], state["current_version_number"]
            logger.info("dataset %s version %s: %s", ref, version, status)
        if status == "ready":
            return f"{ref}/{version}"
        if status in ("failed", "deleted"):
            raise KaggleError(f"Kaggle could not process dataset {ref} version {version} ({status}); "
                              "upload the bundle again (`make bundle UPLOAD=...`)")
    raise KaggleError(f"dataset {ref} version {version} is still processing ({status}) after "
                      f"{_duration(polling.dataset_polls * polling.interval_s)}; push the kernel once it is ready")


def _follow_kernel(api: KaggleApi, pushed: Pushed, polling: Polling) -> None:
    """Wait for the pushed kernel version's run to complete."""
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    status = None
    for attempt in range(max(polling.kernel_polls, 1)):
        if attempt:
            time.sleep(polling.interval_s)
        response = _retrying(api.kernels_status, f"{pushed.kernel}/{pushed.version}")
        if response.status != status:
            status = response.status
            logger.info("kernel %s version %s: %s", pushed.kernel, pushed.version, status.name.lower())
        if status == KernelWorkerStatus.COMPLETE:
            return
        if status in (KernelWorkerStatus.ERROR, KernelWorkerStatus.CANCEL_REQUESTED,
                      KernelWorkerStatus.CANCEL_ACKNOWLEDGED):
            what = "failed" if status == KernelWorkerStatus.ERROR else "was cancelled"
            raise KaggleError(f"kernel {pushed.kernel} version {pushed.version} {what}: "
                              f"{one_line(response.failure_message or 'no message')}; its log: {pushed.url}")
    raise KaggleError(f"kernel {pushed.kernel} version {pushed.version} still {status.name.lower()} after "
                      f"{_duration(polling.kernel_polls * polling.interval_s)}; once it completes, submit it with "
                      f"`kaggle competitions submit {pushed.competition} -k {pushed.kernel} -v {pushed.version} "
                      f"-f {KERNEL_OUTPUT} -m MESSAGE`")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _read_metadata(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FoldstackError(f"{path}: not found; build it with `make bundle`") from None
    except ValueError as error:
        raise FoldstackError(f"{path}: not valid JSON ({error}); build it again with `make bundle`") from None


def _with_owner(path: Path, meta: dict, api: KaggleApi, keys: tuple[str, ...]) -> dict:
    """``meta`` (read from ``path``) with its placeholder owner replaced by the signed-in user, saved."""
    user = api.get_config_value(api.CONFIG_NAME_USER)
    placeholder = f"{OWNER_PLACEHOLDER}/"

    def owned(value):
        if isinstance(value, list):
            return [owned(item) for item in value]
        return f"{user}/{value[len(placeholder):]}" if value.startswith(placeholder) else value

    fixed = {key: owned(value) if key in keys else value for key, value in meta.items()}
    if fixed != meta:
        if not user:
            raise KaggleCredentialsError(f"{path}: Kaggle did not say who you are; set the owner with --owner")
        write_json(path, fixed)
    return fixed


def _dataset_exists(api: KaggleApi, ref: str) -> bool:
    import requests

    try:
        api.dataset_status(ref)
    except requests.HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return False
        raise
    return True


@contextlib.contextmanager
def _client_refusals(ref: str) -> Iterator[None]:
    """The client checks metadata and uploads itself and says what is wrong with a ValueError."""
    try:
        yield
    except ValueError as error:
        raise KaggleError(f"{ref}: {one_line(str(error))}") from None


def _retrying(call, *args, **kwargs):
    """``call(*args, **kwargs)``, tried again after the wait Kaggle asks for when its rate limit
    refuses it (HTTP 429), :data:`RATE_LIMIT_RETRIES` times at most.

    Raises:
        KaggleRateLimitError: still refused, or Kaggle asks for a wait longer than
            :data:`RATE_LIMIT_MAX_WAIT_S`.
    """
    import requests

    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            return call(*args, **kwargs)
        except requests.HTTPError as error:
            if error.response is None or error.response.status_code != 429:
                raise
            wait = _retry_after(error.response.headers.get("Retry-After"))
            if attempt == RATE_LIMIT_RETRIES or wait > RATE_LIMIT_MAX_WAIT_S:
                raise KaggleRateLimitError(
                    f"Kaggle's rate limit refused the call {attempt + 1} times (HTTP 429); it asks to wait "
                    f"{wait:.0f} s: run the command again then") from None
            logger.info("Kaggle's rate limit (HTTP 429): trying again in %.0f s, as Retry-After asks", wait)
            time.sleep(wait)


def _retry_after(header: str | None) -> float:
    """Seconds a ``Retry-After`` header asks for (a number, or an HTTP date)."""
    if not header:
        return RATE_LIMIT_WAIT_S
    try:
        return max(float(header), 0.0)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return RATE_LIMIT_WAIT_S
    return max(when.timestamp() - time.time(), 0.0)


@contextlib.contextmanager
def _code_competition_refusal(api: KaggleApi, slug: str) -> Iterator[None]:
    """A file upload refused (HTTP 400) by a competition that takes notebooks only, said so."""
    import requests

    try:
        yield
    except requests.HTTPError as error:
        if error.response is None or error.response.status_code != 400 or not _code_competition(api, slug):
            raise
        raise KaggleCodeCompetitionError(
            f"{slug} is a code competition: Kaggle scores a kernel's output, not an uploaded file; push the "
            f"bundle's kernel and submit its output with `make kernel-push SUBMIT=\"message\"` "
            "(foldstack kernel-push --submit -m MESSAGE)") from None


def _code_competition(api: KaggleApi, slug: str) -> bool:
    """Whether competition ``slug`` takes submissions from notebooks only."""
    listed = _retrying(api.competitions_list, search=slug)
    for competition in (listed.competitions if listed else []):
        if competition.ref.rstrip("/").rsplit("/", 1)[-1] == slug:
            return bool(competition.is_kernels_submissions_only)
    return False


@contextlib.contextmanager
def _still_processing(api: KaggleApi, ref: str) -> Iterator[None]:
    """A new version refused (HTTP 403) while the last one is being processed, said so."""
    import requests

    try:
        yield
    except requests.HTTPError as error:
        if error.response is None or error.response.status_code != 403:
            raise
        status = _retrying(api.dataset_status, ref)
        if status == "ready":
            raise
        raise KaggleError(f"Kaggle refused a new version of dataset {ref} (HTTP 403): its last version is "
                          f"still processing ({status}); upload again once it is ready") from None


# --- credentials and the client -------------------------------------------------------------------


def _authenticated_api() -> tuple[KaggleApi, str]:
    """A ``KaggleApi`` signed in with this process's credentials, and where they came from.

    The second item names the source (a variable or a file) for error messages; never the secret.
    """
    with _kaggle_output():
        # Importing kaggle signs in at once and prints a page of help when it finds nothing.
        from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    # KaggleApi reads these when the package is first imported; read them again so the
    # environment of this call counts. Verbose mode is left off: it prints request headers,
    # credentials included.
    api.config_dir = str(_config_dir())
    api.config = os.path.join(api.config_dir, api.config_file)
    api.args = ["--local"] if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" else []

    found = _credentials_source(api)
    if found is None:
        raise KaggleCredentialsError(f"no Kaggle credentials found: {WHERE_CREDENTIALS_GO}")
    try:
        with _kaggle_errors(None, found), _kaggle_output():
            api.authenticate()
    except SystemExit:  # the client gives up this way when no credentials work
        raise _rejected(found, status=None) from None
    return api, found


def _config_dir() -> Path:
    """Where kaggle.json lives: $KAGGLE_CONFIG_DIR, else ~/.kaggle if present, else ~/.config/kaggle."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    legacy = Path.home() / ".kaggle"
    if legacy.exists():
        return legacy
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def _credentials_source(api: KaggleApi) -> str | None:
    """Where the credentials the client will use come from, in its own order; None if nowhere."""
    from kagglesdk.kaggle_creds import KaggleCredentials
    from kagglesdk.kaggle_env import get_access_token_from_env

    token, token_source = get_access_token_from_env()
    if token:
        return "~/.kaggle/access_token" if token_source == "access_token" else token_source
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    with _kaggle_output():
        in_file = api.read_config_file(quiet=True)
    if {api.CONFIG_NAME_USER, api.CONFIG_NAME_KEY} <= in_file.keys():
        return api.config
    oauth = Path(KaggleCredentials.DEFAULT_CREDENTIALS_FILE).expanduser()
    return str(oauth) if oauth.is_file() else None


@contextlib.contextmanager
def _kaggle_output() -> Iterator[None]:
    """Send what the kaggle package prints to the debug log (progress bars stay on stderr)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue().strip():
            logger.debug("kaggle: %s", buffer.getvalue().strip())


# --- errors ---------------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    import requests

    return (requests.ConnectionError, requests.Timeout)


def _network_error(error: BaseException) -> KaggleNetworkError:
    # The exception text is a long repr of the connection pool; its class says enough.
    return KaggleNetworkError(f"cannot reach the Kaggle API ({type(error).__name__}); check the "
                              "network connection (in a Kaggle kernel, switch Internet on)")


@contextlib.contextmanager
def _kaggle_errors(source: Any, credentials: str) -> Iterator[None]:
    """Turn the client's HTTP and network exceptions into one-line :class:`KaggleError`\\ s.

    Args:
        source: the competition or dataset being fetched; None while signing in.
        credentials: where the credentials came from, named when Kaggle rejects them.
    """
    import requests

    try:
        yield
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        raise _http_error(status, str(error), source, credentials) from None
    except _network_errors() as error:
        raise _network_error(error) from None


def _rejected(credentials: str, status: int | None) -> KaggleCredentialsError:
    code = f" (HTTP {status})" if status else ""
    return KaggleCredentialsError(f"Kaggle rejected the credentials from {credentials}{code}; "
                                  f"create a new API token at {TOKEN_PAGE}")


def _http_error(status: int | None, text: str, source: Any, credentials: str) -> KaggleError:
    if status == 401:
        return _rejected(credentials, status)
    if source is None:
        return KaggleError(f"signing in to Kaggle failed (HTTP {status}): {' '.join(text.split())}")
    what = _describe(source)
    if status == 403 and source.type == "kaggle_competition":
        return KaggleAccessError(
            f"Kaggle refused {what} (HTTP 403): accept the competition's rules at "
            f"https://www.kaggle.com/competitions/{source.competition}/rules (and verify your phone number "
            "if Kaggle asks; a closed competition takes no more entries), then run again")
    if status == 403:
        return KaggleAccessError(f"Kaggle refused {what} (HTTP 403); it may be private to its owner")
    if status == 404 and source.type in ("kaggle_competition", "kaggle_dataset"):
        key = "competition" if source.type == "kaggle_competition" else "dataset"
        return KaggleNotFoundError(f"Kaggle has no {what} (HTTP 404); check data.source.{key} "
                                   "in the pipeline file")
    if status == 404 and source.type == "bundle":
        return KaggleNotFoundError(f"Kaggle has no {what} (HTTP 404); upload the bundle first: "
                                   "`make bundle UPLOAD=\"notes\"`")
    if status == 404:
        return KaggleNotFoundError(f"Kaggle has no {what} (HTTP 404)")
    return KaggleError(f"Kaggle API error for {what} (HTTP {status}): {' '.join(text.split())}")


# --- downloading ----------------------------------------------------------------------------------


def _check_kaggle_source(cfg: PipelineConfig) -> None:
    if cfg.data.source.type not in ("kaggle_competition", "kaggle_dataset"):
        raise FoldstackError(f"pipeline {cfg.name!r} reads a {cfg.data.source.type} source, "
                             "not a Kaggle competition or dataset")


def _describe(source: Any) -> str:
    if source.type == "kaggle_competition":
        return f"competition {source.competition!r}"
    if source.type == "kernel":
        return f"kernel {source.ref!r}"
    return f"dataset {source.dataset!r}"


def _mounted_input(source: Any, expected: Path) -> Path:
    """Where a Kaggle kernel mounts ``source`` (a warning if the pipeline's paths expect it
    elsewhere, at ``expected``); an error says how to attach it if it is not."""
    mounted = kaggle_mounted_input(source)
    if mounted is None:
        looked = ", ".join(str(path) for path in kaggle_input_candidates(source))
        raise FoldstackError(f"running in a Kaggle kernel, but {_describe(source)} is not attached "
                             f"(looked in {looked}); add it with 'Add Input'")
    if expected != mounted and not holds_archives(mounted):  # later stages would find nothing there
        logger.warning("%s is not the mounted input %s; build the paths with Paths.for_config",
                       expected, mounted)
    logger.info("using Kaggle %s mounted read-only at %s", _describe(source), mounted)
    return mounted


def _unpacked_copy(cfg: PipelineConfig, mounted: Path, target: Path, force: bool) -> Path:
    """A kernel's read-only input that ships archives (``train.zip``), copied to ``target`` under
    the working root and unpacked there, once, as a download is (``sources.complete``)."""
    if not force and up_to_date(target, cfg.data.source, made_by(cfg)):
        logger.info("%s is up to date with the mounted %s", target, mounted)
        return target
    logger.info("copying %s into %s to unpack its archives", mounted, target)
    with atomic_dir(target) as staging:
        shutil.copytree(mounted, staging, dirs_exist_ok=True)
        complete(staging, cfg, target)
    return target


def _holds_other_files(target: Path) -> bool:
    """Whether ``target`` has files but no download marker: someone else's data, not ours to replace."""
    return target.is_dir() and not (target / MARKER).exists() and any(target.iterdir())


def _fetch(api: KaggleApi, source: Any, folder: Path) -> None:
    """Download the source's archive into ``folder`` and unzip it there."""
    with _kaggle_output():
        # quiet=False for the progress bar, which goes to stderr.
        if source.type == "kaggle_competition":
            download, name = api.competition_download_files, source.competition
        else:
            download, name = api.dataset_download_files, source.dataset
        # The Kaggle image's client (2.0.2) has no `unzip` for competitions: it leaves <slug>.zip.
        unzips = "unzip" in inspect.signature(download).parameters
        download(name, path=str(folder), force=True, quiet=False, **({"unzip": True} if unzips else {}))
    if not unzips:
        for archive in sorted(folder.glob("*.zip")):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(folder)
            archive.unlink()


# --- submitting -----------------------------------------------------------------------------------


def _poll_status(api: KaggleApi, slug: str, ref: int, polls: int, interval_s: float) -> Submitted:
    """Ask for submission ``ref``'s status until it is scored or ``polls`` run out.

    Only the submission with this very ``ref`` counts: the newest one listed may be another
    upload (from another machine, a minute earlier) with another score.
    """
    from kagglesdk.competitions.types.submission_status import SubmissionStatus

    page = f"https://www.kaggle.com/competitions/{slug}/submissions"
    if not ref:
        return Submitted(f"submitted to {slug}; Kaggle gave no reference to follow its score, see {page}")
    submission = None
    for attempt in range(max(polls, 1)):
        if attempt:
            time.sleep(interval_s)
        submissions = _retrying(api.competition_submissions, slug) or []
        submission = next((s for s in submissions if s.ref == ref), None)
        if submission is not None and submission.status != SubmissionStatus.PENDING:
            break
    if submission is None:
        return Submitted(f"submitted to {slug}; submission {ref} is not listed yet, see {page}")
    if submission.status == SubmissionStatus.PENDING:
        return Submitted(f"submitted to {slug}; still being scored, see {page}")
    if submission.status == SubmissionStatus.ERROR:
        raise KaggleError(f"Kaggle could not score the submission to {slug}: "
                          f"{submission.error_description or 'no reason given'} (see {page})")
    return Submitted(f"submitted to {slug}: complete, public score {submission.public_score}",
                     _score(submission.public_score))


def _score(text: str | None) -> float | None:
    """Kaggle's public score (a string, empty while hidden) as a number, or None."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def evaluation_metric(slug: str) -> str | None:
    """The competition's evaluation metric as Kaggle names it (``competitions_list``'s
    ``evaluation_metric``: 'Area Under Receiver Operating Characteristic Curve', ...), or None
    where the client cannot say (no such field, a network or credentials problem: logged)."""
    try:
        api, credentials = _authenticated_api()
        with _kaggle_errors(None, credentials), _kaggle_output():
            found = api.competitions_list(search=slug) or []
    except KaggleError as error:
        logger.warning("cannot read the evaluation of competition %r: %s", slug, error)
        return None
    found = getattr(found, "competitions", found)
    for competition in found:
        ref = str(getattr(competition, "ref", ""))
        if ref.rstrip("/").split("/")[-1] == slug:
            return getattr(competition, "evaluation_metric", None) or getattr(competition, "evaluationMetric", None)
    return None
