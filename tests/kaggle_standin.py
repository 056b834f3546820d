"""A stand-in for the Kaggle API on 127.0.0.1, for tests that drive the real ``kaggle`` client.

With ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the client calls ``http://localhost/api/v1/...`` (port 80,
which a test cannot bind). So the stand-in is an HTTP *proxy* as well as the server:
``HTTP_PROXY=http://127.0.0.1:<port>`` makes ``requests`` send every call — API calls, the signed
download URL and the upload PUT — to the stand-in with the full URL in the request line, and the
client runs unpatched from end to end.

What it serves, as kagglesdk expects it (POST with a JSON body, JSON back, errors as
``{"code": N, "message": ...}``):

- ``security.OAuthService/IntrospectToken``: an API token is active if it is the known one.
- ``competitions.CompetitionApiService/DownloadDataFiles`` and
  ``datasets.DatasetApiService/DownloadDataset``: 302 to a signed ``.zip`` URL, served by GET.
- ``competitions.CompetitionApiService/StartSubmissionUpload``: a blob token and an upload URL,
  then ``PUT`` of the file to that URL, then ``CreateSubmission`` and ``ListSubmissions``.
- ``blobs.BlobApiService/StartBlobUpload`` (then ``PUT``), ``datasets.DatasetApiService/GetDatasetStatus``,
  ``CreateDataset`` and ``CreateDatasetVersion``: datasets published, each version's files by name.
- ``datasets.DatasetApiService/GetDataset``: the current version's number; each new version goes
  through ``dataset_statuses`` (one per ``GetDatasetStatus``, the last one staying), and a version
  uploaded while the last is not ``READY`` is refused with 403, as Kaggle does.
- ``kernels.KernelsApiService/SaveKernel``: a kernel pushed, its request kept, versions counted;
  ``invalidDatasetSources`` (a dataset or version not published) and ``invalidCompetitionSources``
  (a competition unknown).
- ``kernels.KernelsApiService/GetKernelSessionStatus``: a version's run through ``kernel_statuses``.
- ``competitions.CompetitionApiService/CreateCodeSubmission``: a completed kernel version's output
  submitted (403 without the rules, 400 for a version that did not complete), then scored as an
  upload is; ``CreateSubmission`` to a competition of ``code_competitions`` is refused with 400,
  and ``ListCompetitions`` says which those are (``isKernelsSubmissionsOnly``).
- ``rate_limits``: a call named there is refused that many times with 429 and ``Retry-After``.

Every API call needs ``Authorization``: HTTP Basic with the known username and key, or Bearer with
the known token; anything else is a 401.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOST = "http://localhost"


def make_zip(files: dict[str, bytes]) -> bytes:
    """A zip archive of ``files`` (name → content), as Kaggle serves a competition."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@dataclass
class KaggleStandIn:
    """Competitions, datasets and submissions held in memory, served on ``127.0.0.1:port``."""

    username: str
    key: str
    token: str
    competitions: dict[str, bytes] = field(default_factory=dict)
    datasets: dict[str, bytes] = field(default_factory=dict)
    rules_accepted: set[str] = field(default_factory=set)
    public_score: str = "0.41234"
    calls: list[str] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    submissions: list[dict] = field(default_factory=list)
    #: The statuses a new submission shows, one per listing, the last one staying.
    statuses: list[str] = field(default_factory=lambda: ["COMPLETE"])
    error_description: str = ""
    #: Whether the create call answers with the new submission's ref (Kaggle may leave it out).
    gives_ref: bool = True
    #: Listed after ours, as if uploaded a moment later from elsewhere, with another score.
    someone_elses: dict | None = None
    listings: int = 0
    #: Published datasets: ref -> one {file name: content} per version, and the create request.
    published: dict[str, list[dict[str, bytes]]] = field(default_factory=dict)
    published_requests: dict[str, dict] = field(default_factory=dict)
    #: Pushed kernels: ref -> every SaveKernel request, oldest first.
    kernels: dict[str, list[dict]] = field(default_factory=dict)
    blob_names: dict[str, str] = field(default_factory=dict)
    #: The statuses each new dataset version shows, one per GetDatasetStatus, the last one staying.
    dataset_statuses: list[str] = field(default_factory=lambda: ["READY"])
    #: The statuses each pushed kernel version's run shows, one per GetKernelSessionStatus.
    kernel_statuses: list[str] = field(default_factory=lambda: ["RUNNING", "COMPLETE"])
    kernel_failure: str = ""
    #: Competitions that take notebooks only: a file uploaded to them is refused with 400.
    code_competitions: set[str] = field(default_factory=set)
    code_submissions: list[dict] = field(default_factory=list)
    #: Call name -> how many more times it is refused with 429, sending ``retry_after``.
    rate_limits: dict[str, int] = field(default_factory=dict)
    retry_after: str = "7"
    _scripts: dict[int, list[str]] = field(default_factory=dict)
    _dataset_scripts: dict[str, list[str]] = field(default_factory=dict)
    _runs: dict[tuple[str, int], list[str]] = field(default_factory=dict)

    def start(self) -> int:
        """Serve in a daemon thread; returns the port."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # A short poll interval so that stop() returns at once.
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self._server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorized(self, header: str | None) -> bool:
        basic = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return header in (f"Basic {basic}", f"Bearer {self.token}")

    # --- one method per API call: (status, JSON body or redirect URL) ---

    def introspect_token(self, body: dict) -> tuple[int, dict]:
        active = body.get("token") == self.token
        return 200, {"active": active, "username": self.username if active else ""}

    def download_data_files(self, body: dict) -> tuple[int, dict | str]:
        slug = body.get("competitionName", "")
        if slug not in self.competitions:
            return 404, {"code": 404, "message": "Competition not found"}
        if slug not in self.rules_accepted:
            return 403, {"code": 403, "message": "You must accept this competition's rules "
                                                 "before you'll be able to download files"}
        return 302, f"{HOST}/signed/competitions/{slug}.zip?X-Goog-Signature=abc"

    def download_dataset(self, body: dict) -> tuple[int, dict | str]:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return 404, {"code": 404, "message": "Dataset not found"}
        return 302, f"{HOST}/signed/datasets/{ref}.zip?X-Goog-Signature=abc"

    def start_submission_upload(self, body: dict) -> tuple[int, dict]:
        blob = f"blob-{len(self.uploads) + 1}"
        self.uploads[blob] = b""
        return 200, {"token": blob, "createUrl": f"{HOST}/upload/{blob}"}

    def create_submission(self, body: dict) -> tuple[int, dict]:
        slug = body.get("competitionName", "")
        if slug not in self.rules_accepted:
            return 403, {"code": 403, "message": "You must accept this competition's rules"}
        if slug in self.code_competitions:
            return 400, {"code": 400, "message": "Submission not allowed: this competition only accepts "
                                                 "submissions from notebooks"}
        if not self.uploads.get(body.get("blobFileTokens", "")):
            return 400, {"code": 400, "message": "Nothing was uploaded"}
        return self._new_submission(body)

    def create_code_submission(self, body: dict) -> tuple[int, dict]:
        slug = body.get("competitionName", "")
        if slug not in self.rules_accepted:
            return 403, {"code": 403, "message": "You must accept this competition's rules"}
        kernel, version = f"{body.get('kernelOwner')}/{body.get('kernelSlug')}", body.get("kernelVersion")
        if (kernel, version) not in self._runs or self._runs[kernel, version] != ["COMPLETE"]:
            return 400, {"code": 400, "message": f"Kernel {kernel} version {version} has not completed"}
        self.code_submissions.append(body)
        return self._new_submission(body)

    def _new_submission(self, body: dict) -> tuple[int, dict]:
        ref = len(self.submissions) + 1
        self.submissions.insert(0, {"ref": ref, "status": self.statuses[0], "publicScore": self.public_score,
                                    "description": body.get("submissionDescription", ""),
                                    "errorDescription": self.error_description,
                                    "date": "2024-01-01T00:00:00.000Z"})
        self._scripts[ref] = list(self.statuses[1:])
        if self.someone_elses is not None:
            self.submissions.insert(0, {"ref": ref + 1000, "date": "2024-01-01T00:01:00.000Z", **self.someone_elses})
        return 200, {"message": "Successfully submitted", **({"ref": ref} if self.gives_ref else {})}

    def start_blob_upload(self, body: dict) -> tuple[int, dict]:
        blob = f"blob-{len(self.uploads) + 1}"
        self.uploads[blob] = b""
        self.blob_names[blob] = body.get("name", "")
        return 200, {"token": blob, "createUrl": f"{HOST}/upload/{blob}"}

    def dataset_status(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.published:
            return 404, {"code": 404, "message": "Dataset not found"}
        script = self._dataset_scripts.get(ref) or ["READY"]
        status = script.pop(0) if len(script) > 1 else script[0]
        return 200, {"status": status}

    def get_dataset(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.published:
            return 404, {"code": 404, "message": "Dataset not found"}
        return 200, {"ref": ref, "currentVersionNumber": len(self.published[ref])}

    def _processing(self, ref: str) -> bool:
        return (self._dataset_scripts.get(ref) or ["READY"])[0] != "READY"

    def _files(self, files: list[dict]) -> dict[str, bytes] | None:
        tokens = [f.get("token", "") for f in files]
        if not all(self.uploads.get(token) for token in tokens):
            return None
        return {self.blob_names[token]: self.uploads[token] for token in tokens}

    def create_dataset(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        if body.get("ownerSlug") != self.username:
            return 403, {"code": 403, "message": "You cannot create datasets for another user"}
        if ref in self.published:
            return 200, {"error": f"The slug {body.get('slug')} is already in use"}
        files = self._files(body.get("files", []))
        if files is None:
            return 400, {"code": 400, "message": "A file was not uploaded"}
        self.published[ref] = [files]
        self.published_requests[ref] = body
        self._dataset_scripts[ref] = list(self.dataset_statuses)
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def create_dataset_version(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.published:
            return 404, {"code": 404, "message": "Dataset not found"}
        if self._processing(ref):
            return 403, {"code": 403, "message": "The previous version of this dataset is still processing"}
        files = self._files(body.get("body", {}).get("files", []))
        if files is None:
            return 400, {"code": 400, "message": "A file was not uploaded"}
        self.published[ref].append(files)
        self._dataset_scripts[ref] = list(self.dataset_statuses)
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def save_kernel(self, body: dict) -> tuple[int, dict]:
        ref = body.get("slug", "")
        if not ref.startswith(f"{self.username}/"):
            return 403, {"code": 403, "message": "You cannot push kernels for another user"}
        missing = [source for source in body.get("datasetDataSources", []) if not self._version_exists(source)]
        closed = [slug for slug in body.get("competitionDataSources", []) if slug not in self.competitions]
        self.kernels.setdefault(ref, []).append(body)
        version = len(self.kernels[ref])
        self._runs[ref, version] = list(self.kernel_statuses)
        return 200, {"ref": f"/code/{ref}", "url": f"https://www.kaggle.com/code/{ref}", "versionNumber": version,
                     **({"invalidDatasetSources": missing} if missing else {}),
                     **({"invalidCompetitionSources": closed} if closed else {})}

    def _version_exists(self, source: str) -> bool:
        owner, slug, *version = source.split("/")
        versions = self.published.get(f"{owner}/{slug}", [])
        return bool(versions) and (not version or 1 <= int(version[0]) <= len(versions))

    def kernel_session_status(self, body: dict) -> tuple[int, dict]:
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        label = body.get("versionLabel") or f"v{len(self.kernels.get(ref, []))}"
        script = self._runs.get((ref, int(label.removeprefix("v"))))
        if script is None:
            return 404, {"code": 404, "message": "Kernel not found"}
        status = script.pop(0) if len(script) > 1 else script[0]
        return 200, {"status": status, **({"failureMessage": self.kernel_failure} if status == "ERROR" else {})}

    def list_competitions(self, body: dict) -> tuple[int, dict]:
        search = body.get("search", "")
        return 200, {"competitions": [
            {"ref": f"https://www.kaggle.com/competitions/{slug}", "title": slug,
             "isKernelsSubmissionsOnly": slug in self.code_competitions}
            for slug in self.competitions if search in slug]}

    def list_submissions(self, body: dict) -> tuple[int, dict]:
        self.listings += 1
        listed = [dict(submission) for submission in self.submissions]
        for submission in self.submissions:  # each listing moves a submission on to its next status
            script = self._scripts.get(submission["ref"])
            if script:
                submission["status"] = script.pop(0)
        return 200, {"submissions": listed}


_API = {
    "security.OAuthService/IntrospectToken": (KaggleStandIn.introspect_token, False),
    "competitions.CompetitionApiService/DownloadDataFiles": (KaggleStandIn.download_data_files, True),
    "datasets.DatasetApiService/DownloadDataset": (KaggleStandIn.download_dataset, True),
    "competitions.CompetitionApiService/StartSubmissionUpload":
        (KaggleStandIn.start_submission_upload, True),
    "competitions.CompetitionApiService/CreateSubmission": (KaggleStandIn.create_submission, True),
    "competitions.CompetitionApiService/ListSubmissions": (KaggleStandIn.list_submissions, True),
    "blobs.BlobApiService/StartBlobUpload": (KaggleStandIn.start_blob_upload, True),
    "datasets.DatasetApiService/GetDatasetStatus": (KaggleStandIn.dataset_status, True),
    "datasets.DatasetApiService/CreateDataset": (KaggleStandIn.create_dataset, True),
    "datasets.DatasetApiService/CreateDatasetVersion": (KaggleStandIn.create_dataset_version, True),
    "kernels.KernelsApiService/SaveKernel": (KaggleStandIn.save_kernel, True),
    "datasets.DatasetApiService/GetDataset": (KaggleStandIn.get_dataset, True),
    "kernels.KernelsApiService/GetKernelSessionStatus": (KaggleStandIn.kernel_session_status, True),
    "competitions.CompetitionApiService/CreateCodeSubmission": (KaggleStandIn.create_code_submission, True),
    "competitions.CompetitionApiService/ListCompetitions": (KaggleStandIn.list_competitions, True),
}


def _handler_for(standin: KaggleStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_POST(self) -> None:
            path = self._path()
            name = path.removeprefix("/api/v1/")
            standin.calls.append(name)
            if name not in _API:
                return self._json(404, {"code": 404, "message": f"no such call {name}"})
            method, needs_auth = _API[name]
            if needs_auth and not standin.authorized(self.headers.get("Authorization")):
                return self._json(401, {"code": 401, "message": "Unauthenticated"})
            if standin.rate_limits.get(name):
                standin.rate_limits[name] -= 1
                return self._json(429, {"code": 429, "message": "Too many requests"},
                                  {"Retry-After": standin.retry_after})
            status, reply = method(standin, json.loads(self._body() or b"{}"))
            if status == 302:
                self.send_response(302)
                self.send_header("Location", reply)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._json(status, reply)

        def do_GET(self) -> None:
            path = self._path()
            standin.calls.append(f"GET {path}")
            kind, _, ref = path.removeprefix("/signed/").partition("/")
            archives = standin.competitions if kind == "competitions" else standin.datasets
            content = archives.get(ref.removesuffix(".zip"))
            if content is None:
                return self._json(404, {"code": 404, "message": "no such file"})
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def do_PUT(self) -> None:
            path = self._path()
            standin.calls.append(f"PUT {path}")
            blob = path.removeprefix("/upload/")
            if blob not in standin.uploads:
                return self._json(404, {"code": 404, "message": "no such upload"})
            standin.uploads[blob] = self._body()
            self._json(200, {})

        def _path(self) -> str:
            # As a proxy the request line holds the full URL; as a server, just the path.
            return urlsplit(self.path).path

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _json(self, status: int, reply: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(reply).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
